"""Jitted k-means: k-means++ init, Lloyd iterations, restarts, balanced mode.

Everything runs inside one `jax.jit` per (N, D, K) shape: the restarts are a
`lax.map`, the Lloyd iterations a `lax.fori_loop`, so residual levels with the
same codebook size reuse one compilation.

Distances use ||c||^2 - 2 x.c (the ||x||^2 term does not change the argmin)
computed in float32 at full precision; the centre update is a `segment_sum` of
the (weighted) points. Empty clusters are re-seeded with the points farthest
from their centres. Points with weight 0 are padding: they never become
centres and do not move them (used by the hierarchical mode to pad groups to a
few fixed sizes).

Balanced mode replaces the nearest-centre assignment by an entropic optimal
transport assignment (log-domain Sinkhorn) with uniform cluster marginals;
`balanced_assign` then enforces hard capacities ceil(N/K) greedily.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass
class KMeansResult:
  """A fitted codebook and the assignment of the fitted points."""

  centroids: np.ndarray  # float32 [K, D]
  assign: np.ndarray  # int32 [N]
  error: float  # mean squared distance of a point to its centre
  restart_errors: np.ndarray  # float32 [R]
  iterations: np.ndarray  # int32 [R] Lloyd iterations run per restart


def _sq_norms(x):
  return jnp.sum(x * x, axis=-1)


def _scores(x, c):
  """||c||^2 - 2 x.c: squared distance up to the per-point ||x||^2."""
  xc = jnp.einsum("ND,KD->NK", x, c, precision=_HIGHEST)  # [N, K]
  return _sq_norms(c)[None, :] - 2.0 * xc


def nearest(x, c, chunk: int = 0):
  """int32 [N] nearest centre and float32 [N] squared distance.

  With chunk > 0 (N a multiple of chunk) the [chunk, K] score blocks are
  reduced one at a time (`lax.map`), which keeps them in cache.
  """
  n, d = x.shape
  if chunk and n > chunk:
    idx, best = lax.map(
        lambda xb: _nearest_scores(xb, c), x.reshape(n // chunk, chunk, d))
    idx, best = idx.reshape(n), best.reshape(n)
  else:
    idx, best = _nearest_scores(x, c)
  return idx, jnp.maximum(best + _sq_norms(x), 0.0)


def _nearest_scores(x, c):
  s = _scores(x, c)  # [N, K]
  idx = jnp.argmin(s, axis=1).astype(jnp.int32)
  return idx, jnp.take_along_axis(s, idx[:, None], axis=1)[:, 0]


def _kmeanspp(x, w, key, k, trials: int = 1):
  """k-means++ seeding (D^2 sampling) restricted to points with w > 0.

  With trials > 1 this is greedy k-means++ (as scikit-learn): each step
  draws `trials` candidates and keeps the one that lowers the potential most.
  """
  n, d = x.shape
  k0, key = jax.random.split(key)
  logw = jnp.where(w > 0, 0.0, -jnp.inf)
  first = jax.random.categorical(k0, logw)
  c = jnp.zeros((k, d), x.dtype).at[0].set(x[first])
  x2 = _sq_norms(x)

  def d2_to(p):  # p [T, D] -> [T, N]
    return jnp.maximum(
        x2[None, :] - 2.0 * jnp.einsum("ND,TD->TN", x, p, precision=_HIGHEST)
        + jnp.sum(p * p, axis=1)[:, None], 0.0)

  min_d2 = d2_to(x[first][None])[0]

  def body(j, carry):
    c, min_d2 = carry
    # D^2 sampling by inverse CDF: one uniform number per candidate.
    cdf = jnp.cumsum(jnp.where(w > 0, min_d2, 0.0))
    u = jax.random.uniform(jax.random.fold_in(key, j), (trials,)) * cdf[-1]
    idx = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)  # [T]
    cand = jnp.minimum(min_d2[None, :], d2_to(x[idx]))  # [T, N]
    best = jnp.argmin(jnp.sum(cand * w[None, :], axis=1))
    c = c.at[j].set(x[idx[best]])
    return c, cand[best]

  c, _ = lax.fori_loop(1, k, body, (c, min_d2))
  return c


def _random_init(x, w, key, k):
  """k distinct points drawn with probability proportional to w > 0."""
  g = jax.random.gumbel(key, w.shape) + jnp.where(w > 0, 0.0, -jnp.inf)
  _, idx = lax.top_k(g, k)
  return x[idx]


def _init(x, w, key, k, init, init_sample):
  """Initial centres; k-means++ runs on a random subsample when asked."""
  n = x.shape[0]
  if init_sample and init_sample < n:
    ks, key = jax.random.split(key)
    g = jax.random.gumbel(ks, (n,)) + jnp.where(w > 0, 0.0, -jnp.inf)
    _, idx = lax.top_k(g, init_sample)
    # Padding points can only be drawn when fewer than init_sample are real.
    x, w = x[idx], w[idx]
  if init == "kmeans++":
    return _kmeanspp(x, w, key, k)
  if init == "greedy_kmeans++":
    return _kmeanspp(x, w, key, k, trials=2 + int(np.log(k)))
  if init == "random":
    return _random_init(x, w, key, k)
  raise ValueError(f"unknown k-means init {init!r} "
                   "(kmeans++, greedy_kmeans++, random)")


def _sinkhorn_assign(s, w, k, epsilon, iters, g0=None):
  """Balanced assignment from scores s [N, K] by log-domain Sinkhorn.

  Rows carry mass w / sum(w), columns 1 / K each. Returns the argmin of
  (s - g_k) with the column potentials g (i.e. the argmax of the transport
  plan) and g in units of the normalised scores, to warm-start the next call.
  """
  scale = jnp.maximum(jnp.std(s), 1e-12)
  cost = s / scale  # [N, K]
  log_a = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-30) / jnp.sum(w)), -jnp.inf)
  log_b = jnp.full((k,), -jnp.log(k))
  valid = (w > 0)[:, None]

  def body(_, g):
    f = epsilon * (log_a - jax.nn.logsumexp((g[None, :] - cost) / epsilon, axis=1))
    f = jnp.where(w > 0, f, 0.0)
    z = jnp.where(valid, (f[:, None] - cost) / epsilon, -jnp.inf)
    return epsilon * (log_b - jax.nn.logsumexp(z, axis=0))

  g0 = jnp.zeros((k,), s.dtype) if g0 is None else g0
  g = lax.fori_loop(0, iters, body, g0)
  return jnp.argmin(cost - g[None, :], axis=1).astype(jnp.int32), g


def _lloyd_step(x, w, x2, c, g, *, balanced, epsilon, sinkhorn_iters, chunk):
  """One assignment + update; empty clusters get the farthest points.

  g [K] are the Sinkhorn column potentials of the previous step (balanced
  mode warm start; unused otherwise).
  """
  k = c.shape[0]
  if balanced:
    s = _scores(x, c)  # [N, K]
    assign, g = _sinkhorn_assign(s, w, k, epsilon, sinkhorn_iters, g)
    d2 = jnp.take_along_axis(s, assign[:, None], axis=1)[:, 0] + x2  # [N]
  else:
    assign, d2 = nearest(x, c, chunk)
  sums = jax.ops.segment_sum(x * w[:, None], assign, num_segments=k)  # [K, D]
  counts = jax.ops.segment_sum(w, assign, num_segments=k)  # [K]
  new_c = sums / jnp.maximum(counts, 1e-12)[:, None]
  empty = counts <= 0

  def reseed(new_c):
    far = jnp.where(w > 0, d2, -jnp.inf)
    _, idx = lax.top_k(far, k)  # the k farthest points, farthest first
    rank = jnp.cumsum(empty) - 1  # [K]: i-th empty cluster takes idx[i]
    return jnp.where(empty[:, None], x[idx[jnp.clip(rank, 0, k - 1)]], new_c)

  any_empty = jnp.any(empty)
  return lax.cond(any_empty, reseed, lambda c: c, new_c), assign, any_empty, g


@functools.partial(
    jax.jit,
    static_argnames=("k", "iters", "restarts", "init", "init_sample",
                     "balanced", "epsilon", "sinkhorn_iters", "tol", "chunk"))
def _fit(x, w, key, *, k, iters, restarts, init, init_sample, balanced,
         epsilon, sinkhorn_iters, tol, chunk):
  n = x.shape[0]
  if balanced or n <= chunk:
    chunk = 0
  if chunk and n % chunk:
    # Pad once to a multiple of the chunk with weight-0 points.
    x = jnp.pad(x, ((0, chunk - n % chunk), (0, 0)))
    w = jnp.pad(w, (0, chunk - n % chunk))
  x2 = _sq_norms(x)
  step = functools.partial(_lloyd_step, balanced=balanced, epsilon=epsilon,
                           sinkhorn_iters=sinkhorn_iters, chunk=chunk)

  def one(key):
    c = _init(x, w, key, k, init, init_sample)

    # Lloyd until `iters` or a fixed point (no point changes its cluster and
    # none was empty; faiss stops too when the objective stops changing).
    def cond(carry):
      i, _, _, moved, _ = carry
      return (i < iters) & (moved > tol * x.shape[0])

    def body(carry):
      i, c, prev, _, g = carry
      c, assign, reseeded, g = step(x, w, x2, c, g)
      moved = jnp.sum((assign != prev) & (w > 0))
      moved = jnp.where(reseeded, x.shape[0] + 1, moved)
      return i + 1, c, assign, moved, g

    init_carry = (jnp.int32(0), c, jnp.full(x.shape[0], -1, jnp.int32),
                  jnp.int32(x.shape[0] + 1), jnp.zeros((k,), x.dtype))
    n_iter, c, _, _, g = lax.while_loop(cond, body, init_carry)
    if balanced:
      s = _scores(x, c)
      assign, _ = _sinkhorn_assign(s, w, k, epsilon, sinkhorn_iters, g)
      d2 = jnp.take_along_axis(s, assign[:, None], axis=1)[:, 0] + x2
    else:
      assign, d2 = nearest(x, c, chunk)
    err = jnp.sum(jnp.maximum(d2, 0.0) * w) / jnp.sum(w)
    return c, assign, err, n_iter

  cs, assigns, errs, n_iters = lax.map(one, jax.random.split(key, restarts))
  best = jnp.argmin(errs)
  return cs[best], assigns[best][:n], errs[best], errs, n_iters


def kmeans(x, k: int, *, seed: int = 0, iters: int = 20, restarts: int = 1,
           init: str = "kmeans++", init_sample: int = 0,
           weights=None, balanced: bool = False, epsilon: float = 0.05,
           sinkhorn_iters: int = 10, tol: float = 0.0,
           chunk: int = 512) -> KMeansResult:
  """Fits k centres to x (float32 [N, D]); returns the best of `restarts`.

  Args:
    x: float32 [N, D] points.
    k: number of centres (static: one compilation per (N, D, k)).
    seed: PRNG seed; the same seed gives the same centres.
    iters: Lloyd iterations per restart.
    restarts: independent initialisations; the lowest error wins.
    init: "kmeans++" (D^2 sampling), "greedy_kmeans++" (best of 2 + ln k
      D^2 candidates per centre) or "random" (k distinct points).
    init_sample: run the init on this many random points (0 = all).
    weights: float32 [N] point weights; 0 marks padding. Default all ones.
    balanced: Sinkhorn (equal cluster mass) assignment instead of nearest.
    epsilon: entropic regularisation of the balanced assignment (relative
      to the std of the scores).
    sinkhorn_iters: Sinkhorn iterations per assignment.
    tol: stop a restart early once at most tol * N points change cluster in
      an iteration (0: only at a fixed point).
    chunk: points per block of the nearest-centre search (0: one block).

  Returns:
    KMeansResult; `assign` is nearest-centre (or Sinkhorn when balanced).
  """
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
  real = int((w > 0).sum())
  if real < k:
    raise ValueError(f"k-means: {real} points cannot fill {k} clusters")
  if not np.isfinite(x).all():
    raise ValueError("k-means: input has NaN or infinite values")
  c, a, e, errs, its = _fit(
      jnp.asarray(x), jnp.asarray(w), jax.random.key(seed), k=k, iters=iters,
      restarts=restarts, init=init, init_sample=min(init_sample, n) if init_sample else 0,
      balanced=balanced, epsilon=float(epsilon), sinkhorn_iters=sinkhorn_iters,
      tol=float(tol), chunk=int(chunk))
  return KMeansResult(np.asarray(c), np.asarray(a), float(e), np.asarray(errs),
                      np.asarray(its))


def assign_nearest(x, c) -> tuple[np.ndarray, np.ndarray]:
  """Nearest centre (int32 [N]) and squared distance (float32 [N])."""
  idx, d2 = jax.jit(nearest)(jnp.asarray(x, jnp.float32), jnp.asarray(c, jnp.float32))
  return np.asarray(idx), np.asarray(d2)


def capacity_assign(cost: np.ndarray, capacity: int | np.ndarray,
                    weights: np.ndarray | None = None) -> np.ndarray:
  """Hard capacity-constrained assignment, greedy by regret.

  Every point takes its cheapest cluster that still has room. Points are
  served in decreasing order of regret (second best minus best cost), so
  those with a clear favourite are placed first. Deterministic (stable sort).

  Args:
    cost: float [N, K] assignment costs.
    capacity: the most points per cluster (int or int [K]);
      sum(capacity) >= N.
    weights: optional [N]; points with weight 0 are ignored (assigned -1).

  Returns:
    int32 [N] cluster per point.
  """
  cost = np.asarray(cost, np.float64)
  n, k = cost.shape
  cap = np.broadcast_to(np.asarray(capacity, np.int64), (k,)).copy()
  active = np.ones(n, bool) if weights is None else np.asarray(weights) > 0
  if cap.sum() < active.sum():
    raise ValueError(f"capacities {int(cap.sum())} < {int(active.sum())} points")
  part = np.partition(cost, 1, axis=1) if k > 1 else np.concatenate([cost, cost], 1)
  regret = part[:, 1] - part[:, 0]
  order = np.argsort(-regret, kind="stable")
  out = np.full(n, -1, np.int32)
  full_penalty = np.zeros(k)
  for i in order:
    if not active[i]:
      continue
    j = int(np.argmin(cost[i] + full_penalty))
    out[i] = j
    cap[j] -= 1
    if cap[j] == 0:
      full_penalty[j] = np.inf
  return out


@jax.jit
def _sq_dists(x, c):
  return jnp.maximum(_scores(x, c) + _sq_norms(x)[:, None], 0.0)


def sq_dists(x, c) -> np.ndarray:
  """float32 [N, K] squared Euclidean distances between rows of x and c."""
  return np.asarray(_sq_dists(jnp.asarray(x, jnp.float32), jnp.asarray(c, jnp.float32)))


@functools.partial(jax.jit, static_argnames=("k",))
def _segment_means(x, assign, c, *, k):
  sums = jax.ops.segment_sum(x, assign, num_segments=k)  # [K, D]
  counts = jax.ops.segment_sum(jnp.ones_like(assign, x.dtype), assign,
                               num_segments=k)  # [K]
  return jnp.where(counts[:, None] > 0,
                   sums / jnp.maximum(counts, 1.0)[:, None], c)


def segment_means(x, assign, c) -> np.ndarray:
  """float32 [K, D]: mean of each cluster's points; empty clusters keep c."""
  return np.asarray(_segment_means(
      jnp.asarray(x, jnp.float32), jnp.asarray(assign, jnp.int32),
      jnp.asarray(c, jnp.float32), k=int(c.shape[0])))
