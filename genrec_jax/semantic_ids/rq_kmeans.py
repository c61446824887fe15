"""Residual k-means quantizers: plain, balanced and hierarchical.

* `rq_kmeans`: level 1 clusters x, level l clusters the residual left by
  levels 1..l-1 (METHODS.md 1.2). One jitted k-means per level.
* `balanced`: the same, with a Sinkhorn (equal-mass) assignment inside Lloyd
  and a hard capacity ceil(N / K) per code at the end (METHODS.md 1.3).
* `hierarchical`: level l is clustered separately inside each parent cluster
  (the prefix of codes 1..l-1), on the residual; codebook sizes may differ per
  level (e.g. [128, 128, 256]). A group with at most K_l items gives each item
  its own code. `kmeans.balanced` makes every group's k-means balanced (the
  music original's hierarchical balanced RQ-KMeans, METHODS.md 7);
  `kmeans.last_level = "global"` fits the last level as one k-means over all
  residuals instead (a codebook shared by every prefix, as the original's
  level 3), so items under one prefix can share a last code: collisions that
  the `keep` strategy keeps.

Config fields read (see configs/sids.py): `codebook_sizes`, `seed`,
`kmeans.{iters, restarts, init, init_sample, tol, epsilon, sinkhorn_iters}`,
and for `hierarchical` `kmeans.{balanced, last_level}`.
"""

from __future__ import annotations

import math
import time

from absl import logging
import numpy as np

from genrec_jax.semantic_ids import kmeans as km
from genrec_jax.semantic_ids.quantizers import Quantized, register


def check_sizes(n: int, sizes) -> list[int]:
  """Codebook sizes as ints; a level needs at least as many items as codes."""
  sizes = [int(k) for k in sizes]
  if not sizes or min(sizes) < 1:
    raise ValueError(f"codebook_sizes must be positive, got {sizes}")
  for level, k in enumerate(sizes, 1):
    if n < k:
      raise ValueError(
          f"codebook_sizes: level {level} has {k} codes but there are only "
          f"{n} items; use smaller codebooks")
  return sizes


def _kmeans_args(config) -> dict:
  kc = config.kmeans
  return dict(iters=kc.iters, restarts=kc.restarts, init=kc.init,
              init_sample=kc.init_sample, tol=kc.tol)


def fit_residual(x: np.ndarray, sizes, *, seed: int, balanced: bool = False,
                 epsilon: float = 0.05, sinkhorn_iters: int = 10,
                 **kmeans_args) -> Quantized:
  """Residual k-means over len(sizes) levels.

  Args:
    x: float32 [N, D] item vectors.
    sizes: codes per level.
    seed: base seed; level l uses seed * 1000 + l.
    balanced: equal-size clusters (Sinkhorn in Lloyd + hard capacities).
    epsilon, sinkhorn_iters: balanced assignment settings.
    **kmeans_args: iters, restarts, init, init_sample, tol.

  Returns:
    Quantized with the per-level codebooks in info["codebooks"].
  """
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  sizes = check_sizes(n, sizes)
  r = x.copy()
  recon = np.zeros_like(x)
  codes, books, level_info = [], [], []
  last_cost = None
  for level, k in enumerate(sizes):
    t0 = time.perf_counter()
    res = km.kmeans(r, k, seed=seed * 1000 + level, balanced=balanced,
                    epsilon=epsilon, sinkhorn_iters=sinkhorn_iters,
                    **kmeans_args)
    c, assign = res.centroids, res.assign
    cost = None
    if balanced:
      cost = km.sq_dists(r, c)  # [N, K]
      assign = km.capacity_assign(cost, math.ceil(n / k))
      c = km.segment_means(r, assign, c)
      cost = None
    if level == len(sizes) - 1:
      last_cost = km.sq_dists(r, c) if cost is None else cost
    q = c[assign]  # [N, D]
    recon += q
    r = r - q
    err = float(np.mean(np.sum(r * r, axis=1)))
    secs = time.perf_counter() - t0
    logging.info("level %d: k=%d error %.4f (%d Lloyd iterations, %.2fs)",
                 level + 1, k, err, int(res.iterations.max()), secs)
    level_info.append({"k": k, "error_after": err, "seconds": secs,
                       "iterations": res.iterations.tolist(),
                       "restart_errors": res.restart_errors.tolist()})
    codes.append(assign.astype(np.int32))
    books.append(c)
  return Quantized(codes=np.stack(codes, 1), codebook_sizes=sizes,
                   recon=recon, last_cost=last_cost,
                   info={"levels": level_info, "codebooks": books})


@register("rq_kmeans")
def fit_rq_kmeans(x: np.ndarray, config) -> Quantized:
  """Plain residual k-means (k-means++ init, restarts, re-seeding)."""
  return fit_residual(x, config.codebook_sizes, seed=config.seed,
                      **_kmeans_args(config))


@register("balanced")
def fit_balanced(x: np.ndarray, config) -> Quantized:
  """Residual k-means with equal-size clusters at every level."""
  return fit_residual(x, config.codebook_sizes, seed=config.seed,
                      balanced=True, epsilon=config.kmeans.epsilon,
                      sinkhorn_iters=config.kmeans.sinkhorn_iters,
                      **_kmeans_args(config))


def _bucket(n: int, minimum: int) -> int:
  """Padded size for a group of n points: the next power of two."""
  return max(minimum, 1 << (n - 1).bit_length())


# Where the hierarchical quantizer fits its last level (kmeans.last_level).
LAST_LEVELS = ("per_group", "global")


def _fit_group(r: np.ndarray, k: int, size: int, seed: int, *,
               balanced: bool, epsilon: float, sinkhorn_iters: int,
               **kmeans_args) -> tuple[np.ndarray, np.ndarray]:
  """k centres (float32 [k, D]) and codes (int32 [m]) of one group's rows.

  The m rows are padded with weight-0 rows to `size` (one compilation per
  level). Balanced: Sinkhorn k-means, then a hard capacity ceil(m / k) per
  code over the m real rows only (padding takes no capacity), centres moved
  to the means of their rows, as `fit_residual`.
  """
  m, d = r.shape
  pad = np.zeros((size, d), np.float32)  # [size, D]
  pad[:m] = r
  w = np.zeros(size, np.float32)  # [size]
  w[:m] = 1.0
  res = km.kmeans(pad, k, seed=seed, weights=w, balanced=balanced,
                  epsilon=epsilon, sinkhorn_iters=sinkhorn_iters,
                  **kmeans_args)
  c, assign = res.centroids, res.assign[:m]
  if balanced:
    assign = km.capacity_assign(km.sq_dists(r, c), math.ceil(m / k))
    c = km.segment_means(r, assign, c)
  return c, assign.astype(np.int32)


@register("hierarchical")
def fit_hierarchical(x: np.ndarray, config) -> Quantized:
  """Each level clustered inside its parent cluster, on the residual.

  With `kmeans.last_level == "global"` the last level is one k-means over
  every item's residual (one group). `kmeans.balanced` balances every
  group's clusters (capacity ceil(m / K_l) in a group of m items).
  """
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  sizes = check_sizes(n, config.codebook_sizes)
  args = _kmeans_args(config)
  balanced = bool(config.kmeans.balanced)
  last_level = config.kmeans.last_level
  if last_level not in LAST_LEVELS:
    raise ValueError(f"kmeans.last_level must be one of {LAST_LEVELS}, got "
                     f"{last_level!r}")
  r = x.copy()
  recon = np.zeros_like(x)
  codes = np.zeros((n, len(sizes)), np.int32)
  last_cost = None
  level_info = []
  for level, k in enumerate(sizes):
    t0 = time.perf_counter()
    is_last = level == len(sizes) - 1
    if is_last:
      last_cost = np.full((n, k), np.inf, np.float32)
    if level == 0 or (is_last and last_level == "global"):
      groups = [np.arange(n)]
    else:
      _, inv = np.unique(codes[:, :level], axis=0, return_inverse=True)
      inv = inv.reshape(-1)
      order = np.argsort(inv, kind="stable")
      bounds = np.flatnonzero(np.diff(inv[order])) + 1
      groups = np.split(order, bounds)
    q = np.zeros_like(x)
    clustered = 0
    # One padded size per level (the largest group's bucket): one compile.
    size = n if len(groups) == 1 else _bucket(max(len(g) for g in groups), k)
    for gi, idx in enumerate(groups):
      m = len(idx)
      if m <= k:
        # Every item its own code (in item order), the item itself as centre.
        c = r[idx]
        assign = np.arange(m, dtype=np.int32)
      else:
        clustered += 1
        c, assign = _fit_group(
            r[idx], k, size, config.seed * 1000 + level * 7919 + gi,
            balanced=balanced, epsilon=config.kmeans.epsilon,
            sinkhorn_iters=config.kmeans.sinkhorn_iters, **args)
      codes[idx, level] = assign
      q[idx] = c[assign]
      if is_last:
        last_cost[idx, : c.shape[0]] = km.sq_dists(r[idx], c)
    recon += q
    r = r - q
    err = float(np.mean(np.sum(r * r, axis=1)))
    secs = time.perf_counter() - t0
    logging.info("hierarchical level %d: k=%d, %d groups (%d clustered), "
                 "error %.4f, %.2fs", level + 1, k, len(groups), clustered,
                 err, secs)
    level_info.append({"k": k, "groups": len(groups), "clustered_groups": clustered,
                       "error_after": err, "seconds": secs})
  return Quantized(codes=codes, codebook_sizes=sizes, recon=recon,
                   last_cost=last_cost,
                   info={"levels": level_info, "balanced": balanced,
                         "last_level": last_level})
