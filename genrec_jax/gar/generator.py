"""Text query -> a list of semantic IDs: the generate-and-rank generator.

python -m binaries.train_generator --config=configs/gar_generator.py --workdir=runs/lastfm

No pretrained T5 exists offline, and 757 training texts are far too few to
learn language from scratch, so the generator reads the query through the
pretrained MiniLM encoder (frozen: its token states are computed once per
text) and generates with a small T5 decoder trained from scratch on the SID
vocabulary:

  MiniLM token states [S, 384] -> linear -> d_model -> T5 encoder blocks
  (from scratch) -> cross-attention of a T5 decoder over the SID vocabulary
  (PAD = decoder start 0, EOS 1, the level-l code c at SID_BASE + offset_l + c)

Target (METHODS.md section 7): the SIDs of the query's items in a fixed
order, each SID once, at most `data.max_sids`, then EOS. Several items may
share an SID (the sids are built with collisions kept): an SID stands for
its items. Orders: "relevance" (the text's items by number of taggers, the
default: a truncated target keeps the most relevant items, and generation
order means confidence), "item_id" (the original's song-id order) or "sid"
(lexicographic SID order).

Decoding uses the repeating trie (`decoding/set_search.py`): beam search or
sampling; each generated SID gets a vote score, and the candidates are the
items of the voted SIDs, best SID first (items of one SID by popularity),
then popular items to fill `decode.top_n` when the SIDs hold fewer.

The stage trains on the trainer (early stopping on valid NDCG@20), writes
WORKDIR/<name>/ as a model folder (kind "gar_generator": model.json +
params/), metrics.json (valid/test Recall/NDCG@K of the generator alone,
candidate-pool recall and size), candidates.json (each valid/test text's
candidate items and scores, which the ranker stage re-scores) and
train_log.json.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genrec_jax import model_folder
from genrec_jax.data.dataset import DataError, Ragged, atomic_write_json
from genrec_jax.decoding import beam_search
from genrec_jax.decoding import set_search
from genrec_jax.decoding.trie import build_trie
from genrec_jax.gar import lastfm
from genrec_jax.gar import queries as queries_lib
from genrec_jax.models import layers
from genrec_jax.models import t5
from genrec_jax.semantic_ids import encoders
from genrec_jax.training import loop
from genrec_jax.training import sharding

KIND = "gar_generator"
PAD, EOS = 0, 1
SID_BASE = 2
ORDERS = ("relevance", "item_id", "sid")
METHODS = ("beam", "sample")
SELECT = "valid/ndcg@20"


# ----------------------------------------------------------------------------
# The SID catalogue with collisions kept.


@dataclasses.dataclass(frozen=True)
class Catalogue:
  """Unique SIDs and the items behind each.

  Attributes:
    codes: int32 [num_sids, L] the distinct SID paths, sorted.
    sizes: codes per level.
    sid_of_item: int32 [N] each item's SID index.
    items_of_sid: ragged [num_sids] the items of each SID, most popular
      first.
    popular: int [N] every item, most popular first (the fill-up order).
  """

  codes: np.ndarray
  sizes: tuple[int, ...]
  sid_of_item: np.ndarray
  items_of_sid: Ragged
  popular: np.ndarray

  @property
  def num_sids(self) -> int:
    return len(self.codes)

  @property
  def sid_tokens(self) -> beam_search.SidTokens:
    return beam_search.SidTokens.contiguous(self.sizes, SID_BASE)

  @property
  def vocab_size(self) -> int:
    return self.sid_tokens.end

  def tables(self):
    """The repeating-trie tables of the distinct SIDs."""
    return set_search.set_tables(build_trie(self.codes, self.sizes))

  def items(self, sids: Sequence[int], top_n: int) -> tuple[np.ndarray, int]:
    """(int [top_n] the items of `sids` in order, then popular ones; how
    many came from `sids`)."""
    out, seen = [], set()
    for s in sids:
      for i in self.items_of_sid[int(s)].tolist():
        if i not in seen and len(out) < top_n:
          seen.add(i)
          out.append(i)
    pool = len(out)
    for i in self.popular.tolist():
      if len(out) >= top_n:
        break
      if i not in seen:
        out.append(i)
    return np.asarray(out, np.int64), pool


def load_catalogue(workdir, sids_dir: str, popular: np.ndarray) -> Catalogue:
  """WORKDIR/<sids_dir>/codes.npy -> Catalogue (popular: items, best first)."""
  path = pathlib.Path(workdir) / sids_dir / "codes.npy"
  report = path.parent / "report.json"
  if not report.exists():
    raise DataError(f"{report}: missing; run binaries.build_sids first")
  codes = np.load(path)
  if codes.ndim != 2 or len(codes) != len(popular):
    raise DataError(f"{path}: shape {codes.shape}, expected [{len(popular)}, "
                    "levels] (one row per item)")
  sizes = tuple(int(k) for k in json.loads(report.read_text())
                ["codebook_sizes"])
  uniq, sid_of_item = np.unique(codes, axis=0, return_inverse=True)
  sid_of_item = sid_of_item.reshape(-1).astype(np.int32)
  rank = np.empty(len(popular), np.int64)
  rank[popular] = np.arange(len(popular))
  order = np.lexsort((rank, sid_of_item))  # by SID, then popularity
  lengths = np.bincount(sid_of_item, minlength=len(uniq))
  return Catalogue(uniq.astype(np.int32), sizes, sid_of_item,
                   Ragged.from_lengths(lengths, order), np.asarray(popular))


def target_sids(split: queries_lib.QuerySplit, cat: Catalogue, order: str,
                max_sids: int) -> list[list[int]]:
  """Per query, its items' SIDs (each once) in `order`, at most max_sids."""
  if order not in ORDERS:
    raise ValueError(f"config field 'data.target_order': {order!r} not in "
                     f"{ORDERS}")
  rel = [{i: r for r, i in enumerate(items)} for items in split.text_items()]
  out = []
  for q in range(len(split)):
    items = split.targets[q].tolist()
    if order == "relevance":
      items = sorted(items, key=lambda i, r=rel[split.text_of[q]]: (r[i], i))
    elif order == "item_id":
      items = sorted(items)
    sids = list(dict.fromkeys(int(cat.sid_of_item[i]) for i in items))
    if order == "sid":
      sids = sorted(sids, key=lambda s: tuple(cat.codes[s]))
    out.append(sids[:max_sids])
  return out


def target_tokens(sid_lists: Sequence[Sequence[int]], cat: Catalogue,
                  max_sids: int) -> np.ndarray:
  """int32 [Q, max_sids * L + 1]: SID tokens, EOS, PAD after."""
  L = len(cat.sizes)
  out = np.full((len(sid_lists), max_sids * L + 1), PAD, np.int32)
  for q, sids in enumerate(sid_lists):
    toks = cat.sid_tokens.tokens(cat.codes[list(sids)]).reshape(-1)
    out[q, :len(toks)] = toks
    out[q, len(toks)] = EOS
  return out


# ----------------------------------------------------------------------------
# The model.


def model_config(mcfg, vocab_size: int) -> t5.T5Config:
  """T5Config of the generator's encoder blocks and decoder."""
  return t5.T5Config(
      vocab_size=vocab_size, d_model=mcfg.d_model, d_kv=mcfg.d_kv,
      d_ff=mcfg.d_ff, num_layers=mcfg.num_layers,
      num_decoder_layers=mcfg.num_decoder_layers, num_heads=mcfg.num_heads,
      feed_forward_proj=mcfg.feed_forward_proj,
      relative_attention_num_buckets=mcfg.relative_attention_num_buckets,
      relative_attention_max_distance=mcfg.relative_attention_max_distance,
      tie_word_embeddings=True, decoder_start_token_id=PAD, pad_token_id=PAD,
      eos_token_id=EOS)


class SetGenerator(nnx.Module):
  """Text-encoder states -> T5 encoder blocks -> T5 decoder over SIDs."""

  def __init__(self, config: t5.T5Config, text_dim: int, *, rngs: nnx.Rngs):
    self.config = config
    self.text_dim = text_dim
    # Maps the (frozen) text encoder's states to the T5 width.
    self.bridge = layers.param(rngs, layers.normal(text_dim ** -0.5),
                               (text_dim, config.d_model), ("embed", "mlp"),
                               config.dtype)
    self.t5 = t5.T5Model(config, rngs=rngs)

  def encode(self, states: jax.Array, mask: jax.Array) -> jax.Array:
    """float [B, S, text_dim] states, [B, S] mask -> [B, S, d_model]."""
    x = states.astype(self.config.dtype) @ self.bridge[...]
    return self.t5.encode_embeddings(x, mask.astype(bool))

  def __call__(self, states, mask, decoder_ids) -> jax.Array:
    """Teacher-forced logits float32 [B, T, V]."""
    enc = self.encode(states, mask)
    return self.t5.decode(decoder_ids, enc, mask.astype(bool))

  # The T5Scorer protocol (beam_search.T5Scorer decodes through these).
  def cross_kv(self, enc):
    return self.t5.cross_kv(enc)

  def init_cache(self, batch_size, max_decode_len, dtype=jnp.float32):
    return self.t5.init_cache(batch_size, max_decode_len, dtype)

  def decode_step(self, tokens, enc, encoder_mask, cache, cross=None):
    return self.t5.decode_step(tokens, enc, encoder_mask, cache, cross=cross)


@dataclasses.dataclass(frozen=True)
class StatesScorer(beam_search.T5Scorer):
  """T5Scorer whose prompt is text-encoder states: {"input_ids": float
  [S, text_dim], "attention_mask": [S]}."""

  def check_prompts(self, prompts, num_new):
    x = np.asarray(prompts["input_ids"])
    mask = np.asarray(prompts["attention_mask"]).astype(bool)
    if x.ndim != 3 or mask.shape != x.shape[:2]:
      raise ValueError(f"prompts must be [batch, length, dim] states with a "
                       f"[batch, length] mask, got {x.shape} / {mask.shape}")
    # The mask and cache checks of token prompts (token ids are not used).
    super().check_prompts({"input_ids": np.zeros(mask.shape, np.int32),
                           "attention_mask": mask}, num_new)


def loss_fn(model: SetGenerator, batch, key):
  """Token cross-entropy of the targets (EOS included, PAD masked)."""
  del key
  logits = model(batch["states"], batch["mask"], batch["decoder_ids"])
  tgt = batch["targets"]
  real = (tgt != PAD).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
  tokens = real.sum()
  loss = (ce * real).sum() / jnp.maximum(tokens, 1.0)
  acc = ((logits.argmax(-1) == tgt) * real).sum()
  return loss, {"tokens": tokens, "correct": acc}


@dataclasses.dataclass
class QueryBatches:
  """The trainer's BatchSource: query batches as a function of the step.

  Every epoch is a seeded permutation of the queries (batches of
  `batch_size`, the last partial one dropped), so a resumed run sees the
  same batches. The text states come from the per-text cache.
  """

  states: np.ndarray  # float32 [texts, S, D]
  mask: np.ndarray  # int32 [texts, S]
  text_of: np.ndarray  # int [Q]
  targets: np.ndarray  # int32 [Q, T]
  batch_size: int
  seed: int

  @property
  def batches_per_epoch(self) -> int:
    return max(1, len(self.text_of) // self.batch_size)

  def next_batch(self, model, step: int) -> dict[str, np.ndarray]:
    del model
    epoch, i = divmod(step, self.batches_per_epoch)
    perm = np.random.default_rng([self.seed, epoch]).permutation(
        len(self.text_of))
    rows = perm[i * self.batch_size:(i + 1) * self.batch_size]
    if len(rows) < self.batch_size:  # fewer queries than one batch
      rows = np.resize(perm, self.batch_size)
    t = self.text_of[rows]
    tgt = self.targets[rows]
    dec = np.concatenate([np.full((len(rows), 1), PAD, np.int32),
                          tgt[:, :-1]], axis=1)
    return {"states": self.states[t], "mask": self.mask[t],
            "decoder_ids": dec, "targets": tgt}


# ----------------------------------------------------------------------------
# Decoding: texts -> ranked candidate items.


@dataclasses.dataclass
class Generator:
  """A trained generator ready to decode (model, catalogue, settings)."""

  model: SetGenerator
  catalogue: Catalogue
  decode: ml_collections.ConfigDict | dict
  tables: Any = None

  def __post_init__(self):
    if self.tables is None:
      self.tables = self.catalogue.tables()
    self.graphdef, self.params = nnx.split(self.model)

  def search(self, states: np.ndarray, mask: np.ndarray, seed: int = 0):
    """The raw set_search result for [B, S, D] states."""
    d = self.decode
    cat = self.catalogue
    L = len(cat.sizes)
    scorer = StatesScorer(self.graphdef, start_token=PAD,
                          max_decode_len=int(d["max_sids"]) * L + 2)
    prompts = {"input_ids": np.asarray(states, np.float32),
               "attention_mask": np.asarray(mask)}
    common = dict(sid_tokens=cat.sid_tokens, eos_token=EOS, pad_token=PAD,
                  max_sids=int(d["max_sids"]))
    if d["method"] == "beam":
      return set_search.set_beam_search(
          scorer, self.params, prompts, self.tables,
          beam_size=int(d["beam_size"]), **common)
    if d["method"] == "sample":
      return set_search.set_sample(
          scorer, self.params, prompts, self.tables,
          num_samples=int(d["num_samples"]),
          temperature=float(d["temperature"]),
          rng=jax.random.key(seed), **common)
    raise ValueError(f"config field 'decode.method': {d['method']!r} not in "
                     f"{METHODS}")

  def candidates(self, states: np.ndarray, mask: np.ndarray, *,
                 batch_size: int = 32, seed: int = 0
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per text: (decode.top_n items, best first; their SID vote scores;
    pool size).

    The pool is the items of the generated SIDs, best vote first, cut at
    decode.top_n; it is filled up with popular items to decode.top_n
    (those score -inf)."""
    d = self.decode
    weighting = "beam" if d["method"] == "beam" else "count"
    out_items, out_scores, pools = [], [], []
    n = len(states)
    for s in range(0, n, batch_size):
      rows = slice(s, min(n, s + batch_size))
      m = rows.stop - s
      st = np.zeros((batch_size,) + states.shape[1:], np.float32)
      mk = np.zeros((batch_size, mask.shape[1]), mask.dtype)
      mk[:, 0] = 1
      st[:m], mk[:m] = states[rows], mask[rows]
      res = jax.device_get(self.search(st, mk, seed=seed + s))
      voted = set_search.votes(res, self.catalogue.num_sids, weighting,
                               discount=bool(d.get("discount", True)))
      for b in range(m):
        n_sids = int((voted.sids[b] >= 0).sum())
        sids, sid_scores = voted.sids[b, :n_sids], voted.scores[b, :n_sids]
        items, pool = self.catalogue.items(sids, int(d["top_n"]))
        score_of = {}
        for sid, sc in zip(sids, sid_scores):
          for i in self.catalogue.items_of_sid[int(sid)].tolist():
            score_of.setdefault(i, float(sc))
        out_items.append(items)
        out_scores.append(np.array([score_of.get(int(i), -np.inf)
                                    for i in items], np.float32))
        pools.append(pool)
    return out_items, out_scores, pools


def ranked_matrix(items: Sequence[np.ndarray], depth: int) -> np.ndarray:
  """int [texts, depth] lists (-1 padded) from per-text item arrays."""
  out = np.full((len(items), depth), -1, np.int64)
  for t, it in enumerate(items):
    out[t, :min(depth, len(it))] = it[:depth]
  return out


# ----------------------------------------------------------------------------
# Model folders.


def save(model_dir, gen: Generator, *, spec_extra: dict[str, Any]) -> None:
  spec = {"kind": KIND,
          "model_config": model_folder.config_dict(gen.model.config),
          "text_dim": int(gen.model.text_dim),
          "num_items": int(len(gen.catalogue.sid_of_item)),
          "decode": dict(gen.decode), **spec_extra}
  model_folder.save(model_dir, spec, nnx.state(gen.model, nnx.Param))


def load(workdir, name: str) -> tuple[Generator, dict[str, Any]]:
  """A generator model folder of `workdir` (and its model.json)."""
  model_dir, _, spec = lastfm.read_model_spec(workdir, name, KIND)
  popular = np.asarray(spec["popular"], np.int64)
  cat = load_catalogue(workdir, spec["sids_dir"], popular)
  mc = dict(spec["model_config"])
  mc.pop("dtype", None)
  cfg = t5.T5Config(**mc)
  if cfg.vocab_size != cat.vocab_size:
    raise ValueError(f"{model_dir / model_folder.MODEL_JSON}: vocabulary "
                     f"{cfg.vocab_size}, but {spec['sids_dir']}/ gives "
                     f"{cat.vocab_size} (the SIDs were rebuilt?)")
  model = SetGenerator(cfg, int(spec["text_dim"]), rngs=nnx.Rngs(0))
  graphdef, abstract = nnx.split(model, nnx.Param)
  params = model_folder.restore_params(model_dir, abstract)
  return Generator(nnx.merge(graphdef, params), cat, spec["decode"]), spec


# ----------------------------------------------------------------------------
# The stage.


def text_states(encoder_cfg, texts: dict[str, Sequence[str]]):
  """MiniLM token states of each group of texts (the encoder loaded once):
  name -> (float32 [T, S, D], int32 [T, S])."""
  enc = encoders.make(encoder_cfg)
  return {k: enc.token_states(list(t), int(encoder_cfg.max_length))
          for k, t in texts.items()}


def _evaluate_split(gen: Generator, states, mask, split, prefix: str,
                    seed: int) -> tuple[dict[str, float], dict]:
  items, scores, pools = gen.candidates(states, mask, seed=seed)
  depth = max(queries_lib.KS)
  m = queries_lib.evaluate(ranked_matrix(items, depth), split, prefix=prefix)
  pool_items = [it[:p] for it, p in zip(items, pools)]
  m[f"{prefix}pool_recall"] = queries_lib.pool_recall(pool_items, split)
  m[f"{prefix}pool_size"] = float(np.mean(pools))
  cands = [{"text": t, "items": it.tolist(),
            "scores": [None if not np.isfinite(x) else round(float(x), 6)
                       for x in sc], "pool": int(p)}
           for t, it, sc, p in zip(split.texts, items, scores, pools)]
  return m, cands


def run(config, workdir) -> dict[str, Any]:
  """Trains the generator, writes WORKDIR/<name>/; returns its metrics."""
  t_start = time.time()
  sharding.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).resolve()
  items = lastfm.load_items(workdir)
  splits = queries_lib.load_splits(workdir)
  popular = queries_lib.popularity_order(splits, items["listeners"])
  cat = load_catalogue(workdir, config.sids_dir, popular)
  dcfg = config.data
  train = splits["train"]
  keep = np.isin(np.where(train.users >= 0, 1, 0),
                 [{"tag": 0, "user_tag": 1}[k] for k in dcfg.kinds])
  sid_lists = target_sids(train, cat, dcfg.target_order, dcfg.max_sids)
  targets = target_tokens(sid_lists, cat, dcfg.max_sids)[keep]
  t0 = time.time()
  texts = {s: splits[s].texts for s in ("train", "valid", "test")}
  states = text_states(config.encoder, texts)
  logging.info("%s: text states of %s texts in %.1fs", config.name,
               {s: len(t) for s, t in texts.items()}, time.time() - t0)

  mcfg = model_config(config.model, cat.vocab_size)
  text_dim = states["train"][0].shape[-1]
  model = SetGenerator(mcfg, text_dim, rngs=nnx.Rngs(config.seed))
  tcfg = config.train
  mesh = sharding.mesh_from_config(config.mesh)
  sharding.check_batch_size(tcfg.batch_size, mesh)
  data = QueryBatches(*states["train"], train.text_of[keep], targets,
                      tcfg.batch_size, config.seed)
  num_steps = int(tcfg.num_steps or data.batches_per_epoch * tcfg.num_epochs)
  nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  logging.info("%s: %.2fM params, vocab %d (%d SIDs for %d items), %d "
               "queries, %d steps (%d per epoch)", config.name, nparams / 1e6,
               cat.vocab_size, cat.num_sids, len(cat.sid_of_item),
               len(targets), num_steps, data.batches_per_epoch)
  decode = config.decode.to_dict()

  def evaluate(m):
    gen = Generator(m, cat, decode, tables)
    res, _ = _evaluate_split(gen, *states["valid"], splits["valid"],
                             "valid/", config.seed)
    return {SELECT: res[SELECT], "valid/recall@20": res["valid/recall@20"]}

  tables = cat.tables()
  out = workdir / config.name
  out.mkdir(parents=True, exist_ok=True)
  loop.reset_stale_checkpoints(out / "checkpoints", loop.fingerprint(
      config, ("seed", "model", "data", "sids_dir", "mesh"),
      num_steps=num_steps, num_sids=cat.num_sids))
  result = loop.train(
      model, loss_fn, data, tcfg, mesh=mesh, ckpt_dir=out / "checkpoints",
      num_steps=num_steps, seed=config.seed, evaluate=evaluate,
      select=SELECT, summary_dir=out / "tb", examples_key="targets",
      derived=lambda w: {"token_accuracy": w["correct"] / max(w["tokens"], 1)},
      name=config.name)
  loop.write_train_log(out / "train_log.json", result)
  gen = Generator(result.model, cat, decode, tables)

  t_eval = time.time()
  metrics: dict[str, Any] = {}
  candidates = {}
  for s in ("valid", "test"):
    m, candidates[s] = _evaluate_split(gen, *states[s], splits[s], f"{s}/",
                                       config.seed)
    metrics.update(m)
  save(out, gen, spec_extra={"sids_dir": config.sids_dir,
                             "encoder": config.encoder.to_dict(),
                             "popular": popular.tolist()})
  atomic_write_json(out / "candidates.json", candidates)
  metrics.update({
      "kind": KIND, "steps": result.step, "best_step": result.best_step,
      "stop_reason": result.stop_reason,
      "epochs": round(result.step / data.batches_per_epoch, 3),
      "num_params": nparams, "num_sids": cat.num_sids,
      "train_seconds": round(result.seconds, 1),
      "eval_seconds": round(time.time() - t_eval, 1),
      "decode": decode, "target_order": dcfg.target_order,
      "seconds": round(time.time() - t_start, 1)})
  atomic_write_json(out / "metrics.json", metrics)
  logging.info("%s test: recall@20 %.4f ndcg@20 %.4f, pool %.0f items "
               "(recall %.3f), %d steps, %.0fs", config.name,
               metrics["test/recall@20"], metrics["test/ndcg@20"],
               metrics["test/pool_size"], metrics["test/pool_recall"],
               result.step, metrics["seconds"])
  return metrics
