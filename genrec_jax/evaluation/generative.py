"""Ranking metrics of models that return ranked item lists (generative).

`evaluate_generative(rank_fn, examples, ...)` is model-agnostic:
`rank_fn(batch: EvalExamples) -> int [B, N]` returns ranked item ids (-1 =
no item) for a batch of evaluation rows (a constrained beam search, or any
`model_folder.Ranker`); it computes HR/Recall/NDCG@K and MRR with
`metrics.ranks_from_lists` / `metrics_from_ranks`, and `invalid_rate`: the
fraction of returned ids that are not valid items, measured on every
returned id (0 by construction of the constrained search; checked, not
assumed).
"""

from __future__ import annotations

import time
from typing import Callable

from absl import logging
import numpy as np

from genrec_jax.data.dataset import EvalExamples
from genrec_jax.evaluation import metrics as metrics_lib


def take_examples(examples: EvalExamples, rows: np.ndarray) -> EvalExamples:
  """The rows `rows` of `examples`, in that order."""
  rows = np.asarray(rows, dtype=np.int64)
  return EvalExamples(
      users=examples.users[rows],
      history=examples.history.take(rows),
      targets=examples.targets.take(rows),
      exclude=None if examples.exclude is None else examples.exclude.take(rows),
      candidates=(None if examples.candidates is None
                  else examples.candidates[rows]),
  )


def evaluate_generative(
    search_fn: Callable[[EvalExamples], np.ndarray],
    examples: EvalExamples,
    *,
    is_valid_item: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
    prefix: str = "test/",
    ks=metrics_lib.KS,
    log_every_s: float = 30.0,
) -> dict[str, float]:
  """Ranking metrics of ranked item lists produced batch by batch.

  Args:
    search_fn: maps a batch of rows to int [B, N] ranked item ids, best
      first, -1 for empty slots. Batches always hold `batch_size` rows (the
      last one is padded by repeating its last row; the padding is dropped),
      so a jitted search compiles once.
    examples: evaluation rows (targets as item ids).
    is_valid_item: int array -> bool array, True for real items of the
      catalogue that have an SID (e.g. `trie.is_valid_item`).
    batch_size: rows per search_fn call.
    prefix: metric key prefix ("test/" or "valid/").
    ks: cut-offs; only K <= N are reported.
    log_every_s: progress log period.

  Returns:
    {prefix + "hr@K", "recall@K", "ndcg@K", "mrr"}, plus `invalid_rate`
    (returned ids that are not valid items / all returned ids), and
    `empty_rate` (list slots left at -1 because fewer than N items could
    be decoded), `num_eval_users`, `seconds`, `rows_per_second`.

  Raises:
    ValueError: search_fn returned a bad shape or duplicate items in a list.
  """
  n = len(examples)
  if n == 0:
    raise ValueError("no evaluation rows")
  t0 = time.perf_counter()
  last_log = t0
  lists = None
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    rows = np.arange(start, stop)
    fill = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    out = np.asarray(search_fn(take_examples(examples, fill)))
    if out.ndim != 2 or out.shape[0] != batch_size:
      raise ValueError(f"search_fn returned shape {out.shape}, expected "
                       f"[{batch_size}, N]")
    if lists is None:
      lists = np.full((n, out.shape[1]), -1, dtype=np.int64)
    lists[start:stop] = out[: len(rows)]
    now = time.perf_counter()
    if now - last_log > log_every_s or stop == n:
      rate = stop / (now - t0)
      logging.info("evaluate %s: %d/%d rows, %.1f rows/s, ETA %.0fs", prefix,
                   stop, n, rate, (n - stop) / max(rate, 1e-9))
      last_log = now
  seconds = time.perf_counter() - t0
  top_n = lists.shape[1]
  returned = lists >= 0
  srt = np.sort(np.where(returned, lists, -1 - np.arange(top_n)[None]), 1)
  if (np.diff(srt, axis=1) == 0).any():
    raise ValueError("search_fn returned an item twice in one list")
  valid = is_valid_item(lists) & returned
  num_returned = int(returned.sum())
  ranks = metrics_lib.ranks_from_lists(lists, examples.targets)
  ks = tuple(k for k in ks if k <= top_n)
  out = metrics_lib.metrics_from_ranks(ranks, examples.targets.lengths(), ks,
                                       prefix)
  out.update({
      "invalid_rate": float((num_returned - int(valid.sum())) /
                            max(num_returned, 1)),
      "empty_rate": float(1.0 - num_returned / lists.size),
      "num_eval_users": int(n),
      "seconds": round(seconds, 3),
      "rows_per_second": round(n / max(seconds, 1e-9), 2),
  })
  return out
