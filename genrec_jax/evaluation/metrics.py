"""Ranking metrics: HR/Recall, NDCG and MRR at K.

Two entry points:
  * `ranks_from_scores` for models that score items (full catalogue or a
    sampled candidate list), jitted and batched;
  * `ranks_from_lists` for generative models that return ranked item lists.
Both produce 0-based ranks per target; `metrics_from_ranks` turns ranks into
metric means.

Ties (one rule everywhere): **pessimistic**. A target's rank is the number of
other ranked items whose score is >= the target's score, so a constant scorer
ranks every target last, never first. Items in `exclude` (e.g. the user's
training items) are removed from the ranking; targets are never excluded.

With one target per row `recall@K == hr@K`. With several (LightGCN splits):
  hr@K     = 1 if any target ranks < K
  recall@K = (#targets ranked < K) / #targets
  ndcg@K   = sum_t [r_t < K] / log2(r_t + 2) / IDCG, IDCG over min(#targets, K)
  mrr      = 1 / (1 + best target rank) (no cut-off)
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.data.dataset import EvalExamples, Ragged

KS = (1, 3, 5, 10, 20)
# Masked scores: finite so that comparisons stay well-defined.
NEG_INF = -1e30
# Rank given to a target that is absent from a ranked list.
NOT_FOUND = np.iinfo(np.int32).max // 2


@jax.jit
def ranks_from_candidate_scores(scores, mask, target_col):
  """Pessimistic 0-based rank of each row's target column among candidates.

  The rank is the number of OTHER valid candidates whose score is >= the
  target's (ties count against the target); invalid candidates never count.

  Args:
    scores: float [B, C] candidate scores (compared in their own dtype).
    mask: bool [B, C], True for valid candidates.
    target_col: int [B] column of each row's target; < 0: the target is not
      among the candidates.

  Returns:
    int32 [B] ranks: NOT_FOUND where target_col < 0; C' = the number of other
    valid candidates (last) where the target's column is masked.
  """
  B, C = scores.shape
  mask = mask.astype(bool)  # [B, C]
  found = target_col >= 0  # [B]
  t = jnp.clip(target_col, 0, C - 1).astype(jnp.int32)[:, None]  # [B, 1]
  t_score = jnp.take_along_axis(scores, t, axis=1)  # [B, 1]
  t_valid = jnp.take_along_axis(mask, t, axis=1)[:, 0]  # [B]
  others = mask & (jnp.arange(C)[None, :] != t)  # [B, C]
  ge = jnp.sum(others & (scores >= t_score), axis=1)  # [B]
  last = jnp.sum(others, axis=1)  # [B]
  ranks = jnp.where(t_valid, ge, last)  # [B]
  return jnp.where(found, ranks, NOT_FOUND).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _ranks_full(scores, targets, exclude_mask, chunk: int = 8):
  """Pessimistic 0-based ranks of `targets` among all items.

  Args:
    scores: float [B, N] item scores.
    targets: int32 [B, T] target items, -1 for padding.
    exclude_mask: bool [B, N], True for items removed from the ranking.
    chunk: targets compared at once (bounds memory at chunk * B * N).

  Returns:
    int32 [B, T] ranks; padding targets get NOT_FOUND.
  """
  valid = targets >= 0
  safe_t = jnp.maximum(targets, 0)
  # Targets are never excluded.
  is_target = jnp.zeros_like(exclude_mask).at[
      jnp.arange(scores.shape[0])[:, None], safe_t].max(valid)
  keep = ~(exclude_mask & ~is_target)  # [B, N]
  scores = scores.astype(jnp.float32)

  def rank_of(t):  # t: [B] item ids (= columns), -1 padding
    return ranks_from_candidate_scores(scores, keep, t)  # [B]

  return jax.lax.map(rank_of, targets.T, batch_size=chunk).T  # [B, T]


@jax.jit
def _ranks_sampled(cand_scores):
  """Pessimistic rank of column 0 among float [B, C] candidate scores."""
  B, C = cand_scores.shape
  ranks = ranks_from_candidate_scores(
      cand_scores, jnp.ones((B, C), bool), jnp.zeros((B,), jnp.int32))  # [B]
  return ranks[:, None]  # [B, 1]


def ranks_from_scores(
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    examples: EvalExamples,
    num_items: int,
    *,
    max_history: int = 50,
    batch_size: int = 256,
    sampled: bool = False,
    pad_id: int | None = None,
) -> np.ndarray:
  """Ranks of every target, scoring rows in batches.

  Args:
    score_fn: (users int32 [B], history int32 [B, max_history] left-padded
      with `pad_id`) -> float [B, num_items] scores. The last batch is padded
      to `batch_size` so the function sees one shape.
    examples: the evaluation rows.
    num_items: catalogue size.
    max_history: history length passed to score_fn (the last items).
    batch_size: rows per call.
    sampled: rank among `examples.candidates` instead of the catalogue.
    pad_id: history padding value (default num_items).

  Returns:
    int32 [E, T] ranks (NOT_FOUND for padding targets).
  """
  if pad_id is None:
    pad_id = num_items
  n = len(examples)
  t_max = int(examples.targets.lengths().max()) if n else 1
  targets = examples.targets.padded(t_max, -1, left=False)
  history = examples.history.padded(max_history, pad_id, left=True)
  if sampled and examples.candidates is None:
    raise ValueError("sampled ranking needs examples.candidates")
  out = np.empty((n, 1 if sampled else t_max), dtype=np.int32)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    rows = np.arange(start, stop)
    fill = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    scores = score_fn(examples.users[fill], history[fill])  # [B, N]
    if sampled:
      cand = examples.candidates[fill]
      cs = jnp.take_along_axis(jnp.asarray(scores), jnp.asarray(cand), axis=1)
      r = _ranks_sampled(cs)
    else:
      mask = np.zeros((batch_size, num_items), dtype=bool)
      if examples.exclude is not None:
        ex = examples.exclude.take(fill)
        mask[ex.row_ids(), ex.values] = True
      r = _ranks_full(scores, targets[fill], mask)
    out[start:stop] = np.asarray(r)[: len(rows)]
  return out


def ranks_from_lists(ranked: np.ndarray, targets: Ragged) -> np.ndarray:
  """0-based position of each target in int [E, M] ranked item lists.

  A target absent from its list gets NOT_FOUND. Lists are assumed duplicate
  free (ties cannot occur: the list order is the ranking).
  """
  ranked = np.asarray(ranked)
  t_max = int(targets.lengths().max()) if len(targets) else 1
  tgt = targets.padded(t_max, -1, left=False)  # [E, T]
  match = ranked[:, None, :] == tgt[:, :, None]  # [E, T, M]
  found = match.any(-1)
  pos = match.argmax(-1)
  return np.where(found & (tgt >= 0), pos, NOT_FOUND).astype(np.int32)


def metrics_from_ranks(
    ranks: np.ndarray, num_targets: np.ndarray | None = None,
    ks=KS, prefix: str = "",
) -> dict[str, float]:
  """Mean HR/Recall/NDCG@K and MRR from int [E, T] ranks.

  Args:
    ranks: 0-based ranks, NOT_FOUND for padding or missed targets.
    num_targets: int [E] true target count per row (default: T for all).
    ks: cut-offs.
    prefix: prepended to every key (e.g. "test/").
  """
  ranks = np.asarray(ranks, dtype=np.int64)
  e, t = ranks.shape
  if num_targets is None:
    num_targets = np.full(e, t)
  num_targets = np.maximum(np.asarray(num_targets), 1)
  out = {}
  gains = np.where(ranks < NOT_FOUND, 1.0 / np.log2(ranks + 2.0), 0.0)
  for k in ks:
    hit = ranks < k  # [E, T]
    n_hit = hit.sum(1)
    ideal = np.array([np.sum(1.0 / np.log2(np.arange(min(n, k)) + 2.0))
                      for n in range(1, t + 1)])
    idcg = ideal[np.minimum(num_targets, t) - 1]
    out[f"{prefix}hr@{k}"] = float(np.mean(n_hit > 0))
    out[f"{prefix}recall@{k}"] = float(np.mean(n_hit / num_targets))
    out[f"{prefix}ndcg@{k}"] = float(np.mean((gains * hit).sum(1) / idcg))
  best = ranks.min(1)
  out[f"{prefix}mrr"] = float(np.mean(np.where(best < NOT_FOUND, 1.0 / (best + 1.0), 0.0)))
  return out


def paired_gain(ranks_a, ranks_b, k: int = 10) -> tuple[float, float]:
  """Mean and standard error of B's per-row NDCG@k minus A's.

  For int [E] 0-based ranks of one target per row (NOT_FOUND: missed) of two
  models on the same rows: the paired difference's mean and its standard
  error std(d, ddof=1) / sqrt(E), so a gain can be read against the test
  sample's own noise.
  """
  def ndcg(r):
    r = np.asarray(r, np.int64)
    return np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0)

  d = ndcg(ranks_b) - ndcg(ranks_a)
  se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
  return float(d.mean()), se


def evaluate_scorer(
    score_fn, examples: EvalExamples, num_items: int, *, prefix: str,
    ks=KS, max_history: int = 50, batch_size: int = 256,
    pad_id: int | None = None,
) -> dict[str, float]:
  """Full-ranking metrics, plus `sampled_*` ones when candidates are given."""
  ranks = ranks_from_scores(score_fn, examples, num_items, max_history=max_history,
                            batch_size=batch_size, pad_id=pad_id)
  out = metrics_from_ranks(ranks, examples.targets.lengths(), ks, prefix)
  if examples.candidates is not None:
    sranks = ranks_from_scores(score_fn, examples, num_items, max_history=max_history,
                               batch_size=batch_size, sampled=True, pad_id=pad_id)
    out.update(metrics_from_ranks(sranks, None, ks, prefix + "sampled_"))
  return out
