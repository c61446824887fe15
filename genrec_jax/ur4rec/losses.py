"""UR4Rec losses (METHODS.md section 8): pure functions of arrays.

Retrieval: `bce_candidates` (BCE with logits over a candidate list, the
target = 1), `bpr`, in-batch `info_nce`. Multimodal regularisers:
`modality_consistency` (MSE between L2-normalised views),
`symmetric_info_nce` (text <-> visual), `diversity_logdet` /
`diversity_cosine`. Combining them: `fixed_weights`, or `UncertaintyWeights`
(Kendall et al., 2018: sum_i exp(-s_i) L_i + s_i, s_i = log sigma_i^2).
Every loss is a float32 scalar.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from genrec_jax.models import layers

Array = jax.Array

NEG_INF = layers.NEG_INF
# Floor of a vector norm before dividing by it.
NORM_EPS = 1e-12

Losses = Mapping[str, Array] | Array


def _normalize(x: Array) -> Array:
  """x / max(|x|, NORM_EPS) over the last axis (finite gradient at 0)."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS * NORM_EPS))


def _masked_mean(x: Array, mask: Array | None) -> Array:
  if mask is None:
    return jnp.mean(x)
  m = mask.astype(jnp.float32)
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def bce_candidates(logits: Array, labels: Array,
                   mask: Array | None = None) -> Array:
  """Binary cross-entropy with logits over candidate lists.

  Args:
    logits: float [B, C].
    labels: 0/1 [B, C] (1 = the target).
    mask: bool/0-1 [B, C], 1 for real candidates; None: all real.

  Returns:
    float32 [] mean over the real candidates.
  """
  x = logits.astype(jnp.float32)  # [B, C]
  y = labels.astype(jnp.float32)
  # max(x, 0) - x y + log(1 + exp(-|x|)): stable for any x.
  per = jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
  return _masked_mean(per, mask)


def bpr(pos: Array, neg: Array, mask: Array | None = None) -> Array:
  """Bayesian personalised ranking: mean of -log sigmoid(pos - neg).

  Args:
    pos: float [B] target scores.
    neg: float [B, N] sampled negatives' scores.
    mask: bool/0-1 [B, N], 1 for real negatives; None: all real.

  Returns:
    float32 [].
  """
  diff = pos.astype(jnp.float32)[:, None] - neg.astype(jnp.float32)  # [B, N]
  return _masked_mean(-jax.nn.log_sigmoid(diff), mask)


def info_nce(a: Array, b: Array, temperature: float,
             valid: Array | None = None) -> Array:
  """In-batch InfoNCE: row i of a against every row of b, b[i] positive.

  Logits are cosine similarities / temperature (both sides L2-normalised).

  Args:
    a: float [B, D] anchors.
    b: float [B, D] positives (row i for a[i]; the others are negatives).
    temperature: logit divisor.
    valid: optional bool [B, B], False where b[j] must not be a negative of
      a[i] (e.g. the same item as b[i]); the diagonal is always kept.

  Returns:
    float32 [] mean over rows of -log softmax(logits)[i, i].
  """
  logits = jnp.einsum("BD,SD->BS", _normalize(a), _normalize(b)) / temperature
  n = a.shape[0]
  if valid is not None:
    keep = valid.astype(bool) | jnp.eye(n, dtype=bool)  # [B, S=B]
    logits = jnp.where(keep, logits, NEG_INF)
  logp = jax.nn.log_softmax(logits, axis=-1)  # [B, S=B]
  return -jnp.mean(jnp.diagonal(logp))


def symmetric_info_nce(a: Array, b: Array, temperature: float = 0.07,
                       valid: Array | None = None) -> Array:
  """Mean of info_nce(a, b) and info_nce(b, a) (CLIP-style).

  Args:
    a: float [B, D] one view (e.g. text).
    b: float [B, D] the other view (e.g. visual), row i paired with a[i].
    temperature: logit divisor.
    valid: optional bool [B, B] negatives mask (symmetric; see info_nce).

  Returns:
    float32 [].
  """
  vt = None if valid is None else valid.T
  return 0.5 * (info_nce(a, b, temperature, valid) +
                info_nce(b, a, temperature, vt))


def modality_consistency(text: Array, visual: Array) -> Array:
  """MSE between L2-normalised views (mean over rows and dimensions).

  Args:
    text: float [B, D].
    visual: float [B, D].

  Returns:
    float32 [].
  """
  return jnp.mean(jnp.square(_normalize(text) - _normalize(visual)))


def diversity_logdet(x: Array, eps: float = 1e-3) -> Array:
  """-log det(G + eps I), G the Gram matrix of the L2-normalised rows.

  Minimal for orthogonal rows; bounded below by -B log(1 + eps) and above by
  -B log(eps) (duplicated rows), so it stays finite.

  Args:
    x: float [B, D].
    eps: ridge added to the Gram matrix.

  Returns:
    float32 [].
  """
  z = _normalize(x)
  n = z.shape[0]
  gram = jnp.einsum("BD,SD->BS", z, z) + eps * jnp.eye(n)  # [B, S=B]
  # Symmetric positive definite: log det = 2 sum log diag(cholesky).
  chol = jnp.linalg.cholesky(gram)  # [B, B]
  return -2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def diversity_cosine(x: Array) -> Array:
  """Mean cosine similarity over ordered pairs of distinct rows.

  Args:
    x: float [B, D], B >= 2.

  Returns:
    float32 [].
  """
  z = _normalize(x)
  n = z.shape[0]
  sim = jnp.einsum("BD,SD->BS", z, z)  # [B, S=B]
  off = jnp.sum(sim) - jnp.sum(jnp.diagonal(sim))
  return off / (n * (n - 1))


def _stack(losses: Losses, names: Sequence[str] | None) -> Array:
  """Losses as a float32 [K] array (a mapping ordered by `names`)."""
  if isinstance(losses, Mapping):
    if names is None:
      names = sorted(losses)
    if set(losses) != set(names):
      raise ValueError(f"losses {sorted(losses)} != names {sorted(names)}")
    return jnp.stack([jnp.asarray(losses[k], jnp.float32) for k in names])
  return jnp.asarray(losses, jnp.float32).reshape(-1)


def fixed_weights(losses: Losses,
                  weights: Mapping[str, float] | Sequence[float]) -> Array:
  """sum_i w_i L_i.

  Args:
    losses: {name: float []} or float [K].
    weights: {name: w} with the same names, or K floats.

  Returns:
    float32 [].
  """
  if isinstance(losses, Mapping):
    if not isinstance(weights, Mapping) or set(weights) != set(losses):
      raise ValueError(f"weights {weights} do not name the losses "
                       f"{sorted(losses)}")
    names = sorted(losses)
    return jnp.sum(_stack(losses, names) *
                   jnp.asarray([weights[k] for k in names], jnp.float32))
  vals = _stack(losses, None)  # [K]
  w = jnp.asarray(weights, jnp.float32).reshape(-1)
  if w.shape != vals.shape:
    raise ValueError(f"{w.shape[0]} weights for {vals.shape[0]} losses")
  return jnp.sum(vals * w)


class UncertaintyWeights(nnx.Module):
  """Homoscedastic-uncertainty weighting: sum_i exp(-s_i) L_i + s_i.

  s_i = log sigma_i^2 are learnable (init 0: every weight starts at 1).

  Args:
    names: the loss names (a dict of losses must have exactly these keys),
      or the number K of losses (then losses come as a [K] array).
  """

  def __init__(self, names: Sequence[str] | int, *,
               rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init
    if isinstance(names, int):
      self.names = None
      k = names
    else:
      self.names = tuple(names)
      k = len(self.names)
    self.log_var = layers.param(None, layers.ZEROS, (k,), (None,),
                                jnp.float32)

  def weights(self) -> Array:
    """exp(-s_i), float32 [K]."""
    return jnp.exp(-self.log_var[...])

  def __call__(self, losses: Losses) -> Array:
    """{name: float []} or float [K] -> float32 [] weighted total."""
    if isinstance(losses, Mapping) and self.names is None:
      raise ValueError("UncertaintyWeights(K) takes a [K] array of losses")
    vals = _stack(losses, self.names)  # [K]
    s = self.log_var[...]
    if vals.shape != s.shape:
      raise ValueError(f"{vals.shape[0]} losses for {s.shape[0]} weights")
    return jnp.sum(jnp.exp(-s) * vals + s)
