"""The generate-and-rank cross-encoder ranker (train_ranker stage).

python -m binaries.train_ranker --config=configs/gar_ranker.py --workdir=runs/lastfm

A cross-encoder initialised from the MiniLM weights (METHODS.md section 7
and its addendum) reads one (query text, item) pair:

  [CLS] <item vector> query tokens [SEP] item-name tokens [SEP]

where <item vector> is the item's embeddings/items.npy row (L2-normalised,
a linear map to the model width) in place of a word embedding; mean
pooling over all real positions, a linear layer to one logit, BCE. Each
positive (a training text's item) gets one hard negative: an item with the
same SID that the text does not hold (random among them), else one sharing
the longest SID prefix (with 87 % unique SIDs most positives have no
same-SID item outside the text), else a random item the text does not hold. The word-embedding table stays frozen by
default (`model.train_word_embeddings`): the pairs are short and the
table's gradient would cost more than the layers'.

Validation: precision / recall / F1 (logit > 0) on the valid texts' pairs
built the same way; the best F1 is kept (the original's selection). The
ranker then re-scores the candidates of a generator folder
(`<generator>/candidates.json`): the original sorts them by the ranker's
logit alone (`ranker_only/*` metrics); the final list fuses the ranker's
order with the generator's (`fuse`: weighted reciprocal ranks, the weight
chosen on valid NDCG@20 from `fusion_weights` and kept in model.json). Writes WORKDIR/<name>/: model folder (kind
"gar_ranker": model.json + params/ without the frozen table, which comes
back from the MiniLM folder), metrics.json (test/valid Recall/NDCG@K of
generate + rank, the generator's own figures under `generator/`, P/R/F1),
examples.json (a few test queries), train_log.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrec_jax import model_folder
from genrec_jax import weights
from genrec_jax.data.dataset import DataError, atomic_write_json
from genrec_jax.gar import generator as generator_lib
from genrec_jax.gar import lastfm
from genrec_jax.gar import queries as queries_lib
from genrec_jax.models import bert
from genrec_jax.models import layers
from genrec_jax.semantic_ids import build as sid_build
from genrec_jax.semantic_ids import encoders
from genrec_jax.training import loop
from genrec_jax.training import sharding

KIND = "gar_ranker"
SELECT = "valid/f1"
# The <item vector> slot (right after [CLS]).
VEC_POS = 1
# Rank offset of the reciprocal-rank fusion (candidate lists of ~100).
FUSION_K = 10


class Frozen(nnx.Variable):
  """A pretrained weight that is not trained (the trainer passes it as a
  per-run constant, not a parameter)."""


class CrossEncoder(nnx.Module):
  """MiniLM over (item vector, query, item name) -> one relevance logit."""

  def __init__(self, encoder: bert.BertModel, item_dim: int, *,
               train_word_embeddings: bool, rngs: nnx.Rngs):
    self.bert = encoder
    D = encoder.config.hidden_size
    if not train_word_embeddings:
      encoder.word_emb = Frozen(encoder.word_emb[...])
    self.item_dim = item_dim
    self.vec_proj = layers.param(rngs, layers.normal(item_dim ** -0.5),
                                 (item_dim, D), ("embed", "mlp"), jnp.float32)
    self.vec_bias = layers.param(rngs, layers.ZEROS, (D,), ("mlp",),
                                 jnp.float32)
    self.head = layers.param(rngs, layers.normal(D ** -0.5), (D, 1),
                             ("embed", None), jnp.float32)
    self.head_bias = layers.param(rngs, layers.ZEROS, (1,), (None,),
                                  jnp.float32)

  def __call__(self, ids, types, mask, vectors) -> jax.Array:
    """int32 [B, T] ids / type ids / mask, float [B, item_dim] item vectors
    -> float32 [B] logits."""
    emb = self.bert.word_emb[...][ids]  # [B, T, D]
    vec = vectors.astype(jnp.float32) @ self.vec_proj[...] + self.vec_bias[...]
    emb = emb.at[:, VEC_POS].set(vec.astype(emb.dtype))
    h = self.bert(ids, mask, types, embeds=emb)  # [B, T, D]
    pooled = encoders.masked_mean(h, mask, normalize=False)  # [B, D]
    return (pooled @ self.head[...] + self.head_bias[...])[:, 0]


# ----------------------------------------------------------------------------
# Pairs.


@dataclasses.dataclass
class PairEncoder:
  """Builds the token rows of (text, item) pairs from per-text and per-item
  token lists (each tokenized once)."""

  text_tokens: list[list[int]]
  item_tokens: list[list[int]]
  cls: int
  sep: int
  length: int

  def rows(self, texts: np.ndarray, items: np.ndarray):
    """int32 [B, length] ids, types, mask for pairs (texts[b], items[b])."""
    n = len(texts)
    ids = np.zeros((n, self.length), np.int32)
    types = np.zeros((n, self.length), np.int32)
    mask = np.zeros((n, self.length), np.int32)
    room = self.length - 4  # [CLS] <vec> [SEP] [SEP]
    for b, (t, i) in enumerate(zip(texts, items)):
      q, a = self.text_tokens[t], self.item_tokens[i]
      nq = min(len(q), max(room - min(len(a), room // 2), room // 2))
      na = min(len(a), room - nq)
      row = [self.cls, 0, *q[:nq], self.sep, *a[:na], self.sep]
      ids[b, :len(row)] = row
      types[b, 1] = 1
      types[b, nq + 3:len(row)] = 1
      mask[b, :len(row)] = 1
    return ids, types, mask


def make_tokenizer(model_dir: pathlib.Path):
  import tokenizers  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(model_dir) / "tokenizer.json"
  if not path.exists():
    raise ValueError(f"{path}: missing (ranker.model_dir must be a local "
                     "Hugging Face BERT folder)")
  tok = tokenizers.Tokenizer.from_file(str(path))
  tok.no_padding()
  tok.no_truncation()
  return tok


def bare_tokens(tok, texts: Sequence[str]) -> list[list[int]]:
  """Token ids without [CLS]/[SEP]."""
  return [e.ids[1:-1] for e in tok.encode_batch(list(texts))]


def prefix_groups(item_codes: np.ndarray) -> list[dict[tuple, list[int]]]:
  """Per depth d = L..1: SID prefix of length d -> its items (in id order)."""
  groups = []
  for d in range(item_codes.shape[1], 0, -1):
    g: dict[tuple, list[int]] = {}
    for i, row in enumerate(item_codes[:, :d].tolist()):
      g.setdefault(tuple(row), []).append(i)
    groups.append(g)
  return groups


def hard_negatives(positives: Sequence[int], holds: set[int],
                   item_codes: np.ndarray, groups, rng: np.random.Generator
                   ) -> tuple[np.ndarray, list[int]]:
  """One negative per positive, the hardest available: an item with the
  positive's SID that the text does not hold (random among them), else one
  sharing the longest SID prefix, else a uniform item the text does not
  hold.

  Args:
    positives: the text's positive items.
    holds: every item of the text (never a negative).
    item_codes: int [N, L] each item's SID.
    groups: prefix_groups(item_codes).
    rng: the draws.

  Returns:
    (negatives, counts [L + 1]: how many shared the full SID, L-1 codes,
    ..., none).
  """
  L = item_codes.shape[1]
  out, counts = [], [0] * (L + 1)
  for p in positives:
    for depth, g in enumerate(groups):
      same = [i for i in g[tuple(item_codes[p, :L - depth].tolist())]
              if i not in holds]
      if same:
        out.append(int(same[rng.integers(len(same))]))
        counts[depth] += 1
        break
    else:
      counts[L] += 1
      while True:
        i = int(rng.integers(len(item_codes)))
        if i not in holds:
          out.append(i)
          break
  return np.asarray(out, np.int64), counts


def labelled_pairs(split: queries_lib.QuerySplit, item_codes: np.ndarray,
                   max_positives: int, seed: int) -> dict[str, Any]:
  """(text, item, label) arrays: each text's first max_positives items (by
  taggers) and one hard negative each; `negatives_by_shared_codes`."""
  rng = np.random.default_rng([seed, 7])
  groups = prefix_groups(item_codes)
  texts, items, labels = [], [], []
  counts = np.zeros(item_codes.shape[1] + 1, np.int64)
  for t, its in enumerate(split.text_items()):
    pos = its[:max_positives] if max_positives else its
    neg, c = hard_negatives(pos, set(its), item_codes, groups, rng)
    counts += c
    texts += [t] * (2 * len(pos))
    items += [*pos, *neg.tolist()]
    labels += [1] * len(pos) + [0] * len(pos)
  L = item_codes.shape[1]
  return {"text": np.asarray(texts, np.int64),
          "item": np.asarray(items, np.int64),
          "label": np.asarray(labels, np.float32),
          # Negatives sharing L, L-1, ..., 0 leading codes with their positive.
          "negatives_by_shared_codes": {str(L - d): int(n)
                                        for d, n in enumerate(counts)}}


@dataclasses.dataclass
class PairBatches:
  """The trainer's BatchSource: seeded per-epoch permutations of the pairs."""

  pairs: dict[str, np.ndarray]
  encoder: PairEncoder
  vectors: np.ndarray
  batch_size: int
  seed: int

  @property
  def batches_per_epoch(self) -> int:
    return max(1, len(self.pairs["label"]) // self.batch_size)

  def next_batch(self, model, step: int) -> dict[str, np.ndarray]:
    del model
    epoch, i = divmod(step, self.batches_per_epoch)
    n = len(self.pairs["label"])
    perm = np.random.default_rng([self.seed, epoch]).permutation(n)
    rows = np.resize(perm[i * self.batch_size:(i + 1) * self.batch_size],
                     self.batch_size)
    t, it = self.pairs["text"][rows], self.pairs["item"][rows]
    ids, types, mask = self.encoder.rows(t, it)
    return {"ids": ids, "types": types, "mask": mask,
            "vectors": self.vectors[it], "labels": self.pairs["label"][rows]}


def loss_fn(model: CrossEncoder, batch, key):
  del key
  logits = model(batch["ids"], batch["types"], batch["mask"],
                 batch["vectors"])
  y = batch["labels"]
  loss = optax.sigmoid_binary_cross_entropy(logits, y).mean()
  correct = ((logits > 0) == (y > 0.5)).sum()
  return loss, {"pairs": jnp.asarray(y.shape[0], jnp.float32),
                "correct": correct.astype(jnp.float32)}


# ----------------------------------------------------------------------------
# Scoring.


@dataclasses.dataclass
class Ranker:
  """A loaded cross-encoder with its inputs (tokenizer, item vectors)."""

  model: CrossEncoder
  tokenizer: Any
  item_tokens: list[list[int]]
  vectors: np.ndarray
  length: int
  batch_size: int = 256

  def __post_init__(self):
    self.graphdef, self.state = nnx.split(self.model)
    self.cls = self.tokenizer.token_to_id("[CLS]")
    self.sep = self.tokenizer.token_to_id("[SEP]")

  def pair_encoder(self, text_tokens) -> PairEncoder:
    return PairEncoder(text_tokens, self.item_tokens, self.cls, self.sep,
                       self.length)

  def score_pairs(self, pe: PairEncoder, texts: np.ndarray,
                  items: np.ndarray) -> np.ndarray:
    """float32 [P] logits of (texts[p], items[p])."""
    out = np.zeros(len(texts), np.float32)
    bs = self.batch_size
    for s in range(0, len(texts), bs):
      t = np.resize(texts[s:s + bs], bs)
      i = np.resize(items[s:s + bs], bs)
      ids, types, mask = pe.rows(t, i)
      logits = _score(self.graphdef, self.state, ids, types, mask,
                      self.vectors[i])
      m = min(bs, len(texts) - s)
      out[s:s + m] = np.asarray(logits)[:m]
    return out

  def logits(self, texts: Sequence[str], candidates: Sequence[np.ndarray]
             ) -> list[np.ndarray]:
    """Per text: the logit of each of its candidates (candidate order)."""
    pe = self.pair_encoder(bare_tokens(self.tokenizer, texts))
    t = np.concatenate([np.full(len(c), j) for j, c in enumerate(candidates)]
                       ).astype(np.int64)
    i = np.concatenate([np.asarray(c, np.int64) for c in candidates])
    scores = self.score_pairs(pe, t, i)
    bounds = np.cumsum([0] + [len(c) for c in candidates])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def fuse(candidates: Sequence[np.ndarray], logits: Sequence[np.ndarray],
         weight: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per text: candidates by weighted reciprocal-rank fusion of the
  generator's order and the ranker's logits,

    score = weight / (FUSION_K + generator rank)
            + (1 - weight) / (FUSION_K + ranker rank)

  (0-based ranks; weight 0 = the ranker's order alone, as the original
  sorts; 1 = the generator's). Ties keep the generator's order.
  """
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f"fusion weight {weight} outside [0, 1]")
  out_items, out_scores = [], []
  for c, lg in zip(candidates, logits):
    n = len(c)
    r_rank = np.empty(n, np.int64)
    r_rank[np.argsort(-lg, kind="stable")] = np.arange(n)
    score = (weight / (FUSION_K + np.arange(n))
             + (1.0 - weight) / (FUSION_K + r_rank))
    order = np.argsort(-score, kind="stable")
    out_items.append(np.asarray(c)[order])
    out_scores.append(score[order])
  return out_items, out_scores


@functools.partial(jax.jit, static_argnums=0)
def _score_impl(graphdef, state, ids, types, mask, vectors):
  return nnx.merge(graphdef, state)(ids, types, mask, vectors)


def _score(graphdef, state, ids, types, mask, vectors):
  return _score_impl(graphdef, state, jnp.asarray(ids), jnp.asarray(types),
                     jnp.asarray(mask), jnp.asarray(vectors, jnp.float32))


def classification(logits: np.ndarray, labels: np.ndarray,
                   prefix: str) -> dict[str, float]:
  """Precision / recall / F1 / accuracy of logit > 0."""
  pred = logits > 0
  y = labels > 0.5
  tp = float((pred & y).sum())
  p = tp / max(float(pred.sum()), 1.0)
  r = tp / max(float(y.sum()), 1.0)
  return {f"{prefix}precision": p, f"{prefix}recall": r,
          f"{prefix}f1": 0.0 if p + r == 0 else 2 * p * r / (p + r),
          f"{prefix}accuracy": float((pred == y).mean())}


def unit_vectors(x: np.ndarray) -> np.ndarray:
  return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
          ).astype(np.float32)


# ----------------------------------------------------------------------------
# Model folders.


def _build(model_dir, item_dim: int, train_word_embeddings: bool,
           seed: int) -> CrossEncoder:
  enc = weights.load_pretrained(model_dir)
  if not isinstance(enc, bert.BertModel):
    raise ValueError(f"{model_dir}: not a BERT folder")
  return CrossEncoder(enc, item_dim,
                      train_word_embeddings=train_word_embeddings,
                      rngs=nnx.Rngs(seed))


def load(workdir, name: str) -> tuple[Ranker, dict[str, Any]]:
  """A ranker model folder of `workdir` (and its model.json)."""
  model_dir, items, spec = lastfm.read_model_spec(workdir, name, KIND)
  vectors, _ = sid_build.load_embeddings(workdir, len(items["artist_ids"]))
  mdir = pathlib.Path(spec["model_dir"])
  model = _build(mdir, vectors.shape[1], bool(spec["train_word_embeddings"]),
                 0)
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  params = model_folder.restore_params(model_dir, abstract)
  tok = make_tokenizer(mdir)
  return Ranker(nnx.merge(graphdef, params, rest), tok,
                bare_tokens(tok, items["names"]), unit_vectors(vectors),
                int(spec["length"])), spec


# ----------------------------------------------------------------------------
# The stage.


def run(config, workdir) -> dict[str, Any]:
  """Trains the ranker, re-scores the generator's candidates."""
  t_start = time.time()
  sharding.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).resolve()
  items = lastfm.load_items(workdir)
  splits = queries_lib.load_splits(workdir)
  gen_dir = workdir / config.generator
  gen_spec = model_folder.read_spec(gen_dir, kind=generator_lib.KIND,
                                    num_items=len(items["artist_ids"]))
  cand_path = gen_dir / "candidates.json"
  if not cand_path.exists():
    raise DataError(f"{cand_path}: missing; run binaries.train_generator "
                    f"for {config.generator!r} first")
  candidates = json.loads(cand_path.read_text())
  popular = np.asarray(gen_spec["popular"], np.int64)
  cat = generator_lib.load_catalogue(workdir, gen_spec["sids_dir"], popular)
  vectors = unit_vectors(sid_build.load_embeddings(
      workdir, len(popular))[0])
  mdir = pathlib.Path(config.model.model_dir or encoders.default_model_dir())
  tok = make_tokenizer(mdir)
  item_tokens = bare_tokens(tok, items["names"])

  item_codes = cat.codes[cat.sid_of_item]  # [N, L]
  pairs = {s: labelled_pairs(splits[s], item_codes, config.data.max_positives,
                             config.seed + (s == "valid"))
           for s in ("train", "valid")}
  model = _build(mdir, vectors.shape[1], config.model.train_word_embeddings,
                 config.seed)
  tcfg = config.train
  mesh = sharding.mesh_from_config(config.mesh)
  sharding.check_batch_size(tcfg.batch_size, mesh)
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  pe = {s: PairEncoder(bare_tokens(tok, splits[s].texts), item_tokens, cls,
                       sep, config.model.length) for s in splits}
  data = PairBatches(pairs["train"], pe["train"], vectors, tcfg.batch_size,
                     config.seed)
  num_steps = int(tcfg.num_steps or data.batches_per_epoch * tcfg.num_epochs)
  nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  logging.info("%s: %.1fM trained params; %d train pairs (negatives by "
               "SID codes shared with their positive: %s), %d valid pairs; "
               "%d steps (%d per epoch)",
               config.name, nparams / 1e6, len(pairs["train"]["label"]),
               pairs["train"]["negatives_by_shared_codes"],
               len(pairs["valid"]["label"]), num_steps,
               data.batches_per_epoch)

  def ranker_of(m) -> Ranker:
    return Ranker(m, tok, item_tokens, vectors, config.model.length,
                  config.eval_batch_size)

  def evaluate(m):
    r = ranker_of(m)
    v = pairs["valid"]
    return classification(r.score_pairs(pe["valid"], v["text"], v["item"]),
                          v["label"], "valid/")

  out = workdir / config.name
  out.mkdir(parents=True, exist_ok=True)
  loop.reset_stale_checkpoints(out / "checkpoints", loop.fingerprint(
      config, ("seed", "model", "data", "generator", "mesh"),
      num_steps=num_steps))
  result = loop.train(
      model, loss_fn, data, tcfg, mesh=mesh, ckpt_dir=out / "checkpoints",
      num_steps=num_steps, seed=config.seed, evaluate=evaluate,
      select=SELECT, summary_dir=out / "tb", examples_key="labels",
      derived=lambda w: {"accuracy": w["correct"] / max(w["pairs"], 1)},
      name=config.name)
  loop.write_train_log(out / "train_log.json", result)
  ranker = ranker_of(result.model)

  t_eval = time.time()
  metrics: dict[str, Any] = {}
  v = pairs["valid"]
  metrics.update(classification(
      ranker.score_pairs(pe["valid"], v["text"], v["item"]), v["label"],
      "valid/"))
  depth = max(queries_lib.KS)
  cands, logits = {}, {}
  for s in ("valid", "test"):
    if [c["text"] for c in candidates[s]] != splits[s].texts:
      raise DataError(f"{cand_path}: its {s} texts differ from "
                      f"{workdir / 'lastfm/queries.json'} (re-run the "
                      "generator)")
    cands[s] = [np.asarray(c["items"], np.int64) for c in candidates[s]]
    logits[s] = ranker.logits(splits[s].texts, cands[s])

  def evaluate_fused(s, weight, prefix):
    ranked, _ = fuse(cands[s], logits[s], weight)
    return queries_lib.evaluate(generator_lib.ranked_matrix(ranked, depth),
                                splits[s], prefix=prefix)

  # The fusion weight: the best valid NDCG@20 over the grid (ties: the
  # smaller weight, i.e. more of the ranker).
  grid = [round(float(w), 3) for w in config.fusion_weights]
  valid_ndcg = {w: evaluate_fused("valid", w, "valid/")["valid/ndcg@20"]
                for w in grid}
  weight = max(grid, key=lambda w: (valid_ndcg[w], -w))
  for s in ("valid", "test"):
    metrics.update(evaluate_fused(s, weight, f"{s}/"))
    # The original's list: the candidates by the ranker's logit alone.
    metrics.update(evaluate_fused(s, 0.0, f"ranker_only/{s}/"))
  metrics["fusion_weight"] = weight
  metrics["fusion_valid_ndcg@20"] = {str(w): round(v, 5)
                                     for w, v in valid_ndcg.items()}
  ranked, scores = fuse(cands["test"], logits["test"], weight)
  examples = [{
      "query": splits["test"].texts[t],
      "top10": [[items["names"][i], round(float(x), 4)]
                for i, x in zip(ranked[t][:10], scores[t][:10])],
      "generator_top10": [items["names"][i] for i in cands["test"][t][:10]]}
              for t in range(min(config.num_examples, len(ranked)))]
  gen_metrics = json.loads((gen_dir / "metrics.json").read_text())
  for k in ("valid/pool_recall", "test/pool_recall", "valid/pool_size",
            "test/pool_size"):
    metrics[k] = gen_metrics.get(k)
  metrics.update({f"generator/{k}": v for k, v in gen_metrics.items()
                  if k.startswith("test/")})
  model_folder.save(out, {
      "kind": KIND, "model_dir": str(mdir), "length": config.model.length,
      "item_dim": int(vectors.shape[1]),
      "train_word_embeddings": bool(config.model.train_word_embeddings),
      "num_items": len(popular), "generator": config.generator,
      "fusion_weight": weight},
      nnx.state(result.model, nnx.Param))
  atomic_write_json(out / "examples.json", examples)
  metrics.update({
      "kind": KIND, "generator": config.generator, "steps": result.step,
      "best_step": result.best_step, "stop_reason": result.stop_reason,
      "train_pairs": int(len(pairs["train"]["label"])),
      "negatives_by_shared_codes": pairs["train"]["negatives_by_shared_codes"],
      "num_params": nparams, "train_seconds": round(result.seconds, 1),
      "eval_seconds": round(time.time() - t_eval, 1),
      "seconds": round(time.time() - t_start, 1)})
  atomic_write_json(out / "metrics.json", metrics)
  logging.info("%s test: recall@20 %.4f ndcg@20 %.4f with fusion weight "
               "%g (ranker order alone %.4f / %.4f, generator alone "
               "%.4f / %.4f); valid F1 %.3f; %.0fs", config.name,
               metrics["test/recall@20"], metrics["test/ndcg@20"], weight,
               metrics["ranker_only/test/recall@20"],
               metrics["ranker_only/test/ndcg@20"],
               gen_metrics["test/recall@20"], gen_metrics["test/ndcg@20"],
               metrics["valid/f1"], metrics["seconds"])
  return metrics
