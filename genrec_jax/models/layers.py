"""Shared transformer maths: parameters, norms, RoPE, attention, MLPs.

The models in this package keep each layer's weights stacked on a leading
"layers" axis (one `nnx.Param` per weight kind, `[L, ...]`) and run the blocks
with `jax.lax.scan`, so compile time does not grow with depth. The per-layer
maths below are pure functions of arrays, shared by the decoder (Qwen2/Llama),
T5 and BERT; the `Attend` kinds (full, per-row cache, shared prefix) plug
into the decoder and T5 blocks.

Logical axis names used on parameters (mapped to mesh axes by the rules in
`genrec_jax/training/sharding.py`):
  layers, vocab, embed, heads, kv_heads, kv, mlp, norm, pos, buckets.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Additive mask value; finite so that fully masked rows stay NaN-free.
NEG_INF = -1e9


def param(rngs: nnx.Rngs | None, init: Callable[..., Array],
          shape: Sequence[int], axes: Sequence[str | None],
          dtype: Any) -> nnx.Param:
  """A parameter annotated with logical axis names.

  Under `jax.set_mesh(mesh)` + `nnx.logical_axis_rules(rules)` the value is
  placed with the resolved sharding at creation; without a mesh the names are
  kept as metadata only (eager sharding would otherwise raise).

  Args:
    rngs: the params stream is used for the random init.
    init: a jax initializer `init(key, shape, dtype)`.
    shape: the parameter shape.
    axes: one logical name (or None) per dimension.
    dtype: the parameter dtype.

  Returns:
    The `nnx.Param`, with `out_sharding=axes` metadata.
  """
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  key = rngs.params() if rngs is not None else jax.random.key(0)
  value = init(key, tuple(shape), dtype)
  if jax.sharding.get_abstract_mesh().empty:
    with nnx.use_eager_sharding(False):
      return nnx.Param(value, out_sharding=tuple(axes))
  return nnx.Param(value, out_sharding=tuple(axes))


def _concrete(key) -> bool:
  return not isinstance(key, jax.core.Tracer)


def normal(stddev: float = 0.02) -> Callable[..., Array]:
  """N(0, stddev^2) init; eager calls draw with numpy (no XLA compile per
  shape, which costs seconds on a loaded CPU), traced calls use jax.random."""

  def init(key, shape, dtype):
    if not _concrete(key):
      return (stddev * jax.random.normal(key, shape, jnp.float32)).astype(
          dtype)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    rng = np.random.default_rng(seed)
    return jnp.asarray(stddev * rng.standard_normal(shape, np.float32), dtype)

  return init


def _const(c: float) -> Callable[..., Array]:
  def init(key, shape, dtype):
    if not _concrete(key):
      return jnp.full(shape, c, dtype)
    return jnp.asarray(np.full(shape, c, np.float32), dtype)

  return init


ZEROS = _const(0.0)
ONES = _const(1.0)


def resolve_spec(names: Sequence[str | None], shape: Sequence[int],
                 mesh_shape: dict[str, int],
                 rules) -> jax.sharding.PartitionSpec:
  """PartitionSpec from logical names via rules [(logical, mesh axes)].

  Mesh axes absent from the mesh, already used by another dimension, or not
  dividing the dimension are dropped (that dimension is replicated on them).
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    target = table.get(name) if name is not None else None
    if target is None:
      out.append(None)
      continue
    axes = (target,) if isinstance(target, str) else tuple(target)
    keep, size = [], 1
    for a in axes:
      if a not in mesh_shape or a in used or dim % (size * mesh_shape[a]):
        continue
      keep.append(a)
      size *= mesh_shape[a]
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else
               tuple(keep))
  return jax.sharding.PartitionSpec(*out)


def constrain(x: Array, names: Sequence[str | None]) -> Array:
  """Logical sharding constraint on an activation (block boundaries).

  A no-op unless a mesh (`jax.set_mesh`) and logical rules
  (`nnx.logical_axis_rules`) are active, so models run unchanged on one
  device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  from flax.core import spmd  # pylint: disable=g-import-not-at-top
  rules = spmd.get_logical_axis_rules()
  if not rules:
    return x
  spec = resolve_spec(names, x.shape, dict(mesh.shape), rules)
  return jax.lax.with_sharding_constraint(x, spec)


def stacked(module: nnx.Module) -> dict[str, Array]:
  """The module's direct `nnx.Param` attributes as a dict of arrays."""
  out = {}
  for name, value in vars(module).items():
    if isinstance(value, nnx.Param):
      out[name] = value[...]
  return out


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
  """RMSNorm (Llama/Qwen2/T5): computed in float32, cast back to x.dtype."""
  x32 = x.astype(jnp.float32)
  var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
  y = x32 * jax.lax.rsqrt(var + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """LayerNorm (BERT): computed in float32, cast back to x.dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(
      x.dtype)


def activation(name: str) -> Callable[[Array], Array]:
  """HF activation names -> functions."""
  if name == "gelu":  # exact erf GELU (BERT)
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  if name in ("silu", "swish"):
    return jax.nn.silu
  raise ValueError(f"unsupported activation {name!r}")


def rope_tables(positions: Array, head_dim: int,
                theta: float) -> tuple[Array, Array]:
  """cos/sin tables for rotate-half RoPE (HF Llama/Qwen2 convention).

  Args:
    positions: int32 [B, T] position ids.
    head_dim: H (even).
    theta: the RoPE base (config `rope_theta`).

  Returns:
    (cos, sin), each float32 [B, T, H].
  """
  inv_freq = 1.0 / (theta**(jnp.arange(0, head_dim, 2, dtype=jnp.float32) /
                            head_dim))  # [H/2]
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, H]
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotate-half RoPE on x [B, T, N, H] with tables [B, T, H]."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  y = x32 * cos[:, :, None, :] + rot * sin[:, :, None, :]
  return y.astype(x.dtype)


def attention(q: Array, k: Array, v: Array, mask: Array | None,
              scale: float, bias: Array | None = None) -> Array:
  """Grouped-query dot-product attention.

  Args:
    q: [B, T, N, H] queries.
    k: [B, S, K, H] keys (N = K * G).
    v: [B, S, K, H] values.
    mask: bool [B, T, S] (True = may attend) or None.
    scale: multiplier of the logits (1/sqrt(H); 1.0 for T5).
    bias: optional additive float [B or 1, N, T, S] (T5 position bias).

  Returns:
    [B, T, N, H] in q.dtype.
  """
  b, t, n, h = q.shape
  kh = k.shape[2]
  g = n // kh
  qg = q.reshape(b, t, kh, g, h)  # [B, T, K, G, H]
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    s = k.shape[1]
    logits = logits + bias.astype(jnp.float32).reshape(-1, kh, g, t, s)
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :, :], logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, K, G, T, S]
  out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
  return out.reshape(b, t, n, h)



# -- attention kinds for the scanned blocks ------------------------------------
# A block (decoder.py `Decoder._block`, t5.py `T5Model._block`) projects its
# T new tokens and hands them to an `Attend`, which decides where keys and
# values come from and go to:
#   attend(q, k, v, cache, layer) -> (out, cache, ys)
#     q [B, T, N, H]; k, v [B, T, K, H] (after RoPE where the model has it);
#     cache: the pytree carried through the layer scan (None if there is
#       none); layer: int32 [] block index; out [B, T, N, H] in q.dtype;
#     ys: what the scan stacks per layer (None for nothing).
Attend = Callable[[Array, Array, Array, Any, Array], tuple[Array, Any, Any]]


def full_attention(mask: Array, scale: float, bias: Array | None = None,
                   keep_kv: bool = False) -> Attend:
  """Attention among the new tokens (training, prefill, T5 encoder).

  Args:
    mask: bool [B, T, S=T] (causal and/or padding).
    scale: logit multiplier.
    bias: optional additive [B or 1, N, T, T].
    keep_kv: return each layer's (k, v) as the scan output (prefill).

  Returns:
    The `Attend`; it leaves the cache untouched.
  """

  def attend(q, k, v, cache, layer):
    del layer
    out = attention(q, k, v, mask, scale, bias)  # [B, T, N, H]
    return out, cache, ((k, v) if keep_kv else None)

  return attend


def write_token(cache: tuple[Array, Array], k: Array, v: Array, layer: Array,
                index: Array) -> tuple[tuple[Array, Array], Array, Array]:
  """Writes one token per row into a layer-stacked cache, reads the layer.

  Args:
    cache: (keys, values), each [B, L, S, K, H].
    k: [B, 1, K, H] the new token's keys (v likewise).
    v: [B, 1, K, H].
    layer: int32 [] block index.
    index: int32 [B] slot to write in each row.

  Returns:
    (cache, k_layer, v_layer): the updated cache and the block's keys and
    values, [B, S, K, H] in k.dtype.
  """
  kc, vc = cache
  rows = jnp.arange(kc.shape[0])  # [B]
  kc = kc.at[rows, layer, index].set(k[:, 0].astype(kc.dtype))
  vc = vc.at[rows, layer, index].set(v[:, 0].astype(vc.dtype))
  kl = jax.lax.dynamic_index_in_dim(kc, layer, axis=1, keepdims=False)
  vl = jax.lax.dynamic_index_in_dim(vc, layer, axis=1, keepdims=False)
  return (kc, vc), kl.astype(k.dtype), vl.astype(v.dtype)


def cached_attention(index: Array, mask: Array, scale: float,
                     bias: Array | None = None) -> Attend:
  """One new token per row, written to the cache and then attending to it.

  The cache is (keys, values), each [B, L, S, K, H] (batch-first).

  Args:
    index: int32 [B] slot of the new token in each row.
    mask: bool [B, 1, S] slots to attend to (including the new one).
    scale: logit multiplier.
    bias: optional additive [B or 1, N, 1, S].

  Returns:
    The `Attend` (T = 1).
  """

  def attend(q, k, v, cache, layer):
    cache, kl, vl = write_token(cache, k, v, layer, index)  # [B, S, K, H]
    return attention(q, kl, vl, mask, scale, bias), cache, None

  return attend


def prefix_suffix_attention(q: Array, pk: Array, pv: Array, p_mask: Array,
                            sk: Array, sv: Array, s_mask: Array,
                            scale: float) -> Array:
  """One query per beam over a shared prefix and a per-beam suffix.

  One softmax over the S prefix slots followed by the M suffix slots; equal
  to `attention` on W copies of the prefix concatenated with each suffix.

  Args:
    q: [W, 1, N, H] queries.
    pk: [S, K, H] prefix keys, shared by the beams (pv likewise).
    pv: [S, K, H].
    p_mask: bool [S] real prefix slots.
    sk: [W, M, K, H] suffix keys (sv likewise).
    sv: [W, M, K, H].
    s_mask: bool [W, M] filled suffix slots.
    scale: logit multiplier.

  Returns:
    [W, 1, N, H] in q.dtype.
  """
  W, _, N, H = q.shape
  K = pk.shape[1]
  S = pk.shape[0]
  qg = q[:, 0].reshape(W, K, N // K, H)  # [W, K, G, H]
  lp = jnp.einsum("WKGH,SKH->WKGS", qg, pk,
                  preferred_element_type=jnp.float32) * scale
  lp = jnp.where(p_mask[None, None, None], lp, NEG_INF)  # [W, K, G, S]
  ls = jnp.einsum("WKGH,WMKH->WKGM", qg, sk,
                  preferred_element_type=jnp.float32) * scale
  ls = jnp.where(s_mask[:, None, None], ls, NEG_INF)  # [W, K, G, M]
  probs = jax.nn.softmax(jnp.concatenate([lp, ls], -1), -1)
  probs = probs.astype(q.dtype)  # [W, K, G, S + M]
  o = (jnp.einsum("WKGS,SKH->WKGH", probs[..., :S], pv)
       + jnp.einsum("WKGM,WMKH->WKGH", probs[..., S:], sv))
  return o.reshape(W, 1, N, H)


def shared_prefix_attention(prefix_k: Array, prefix_v: Array,
                            prefix_mask: Array, index: Array,
                            suffix_mask: Array, scale: float) -> Attend:
  """One new token per beam after a prompt cache shared by the beams.

  The carried cache is the per-beam suffix (keys, values), each
  [W, L, M, K, H]; the new token is written at slot index[w] and attends to
  the shared prompt and to the suffix slots in suffix_mask.

  Args:
    prefix_k: [L, S, K, H] the prompt's keys, one copy (prefix_v likewise).
    prefix_v: [L, S, K, H].
    prefix_mask: bool [S] real prompt slots.
    index: int32 [W] suffix slot of the new token in each beam.
    suffix_mask: bool [W, M] filled suffix slots (including the new one).
    scale: logit multiplier.

  Returns:
    The `Attend` (T = 1).
  """

  def attend(q, k, v, cache, layer):
    cache, sk, sv = write_token(cache, k, v, layer, index)  # [W, M, K, H]
    pk = jax.lax.dynamic_index_in_dim(prefix_k, layer, 0, False)  # [S, K, H]
    pv = jax.lax.dynamic_index_in_dim(prefix_v, layer, 0, False)
    out = prefix_suffix_attention(q, pk.astype(q.dtype), pv.astype(q.dtype),
                                  prefix_mask, sk, sv, suffix_mask,
                                  scale)
    return out, cache, None

  return attend


def dropout(x: Array, rate: float, key: Array | None, site: int = 0) -> Array:
  """Inverted dropout at `rate`; identity without a key or at rate 0.

  `site` tells apart the places that share one key (folded into it). Each
  element gets 16 random bits (half as many 32-bit threefry words, bitcast):
  it is kept when `bits >= round(rate * 2**16)` (the rate exact to 2**-16)
  and scaled by the exact inverse keep probability. The bits are drawn over
  x's shape (last axis halved), so a batch-sharded x gets a batch-sharded
  mask, equal to the one-device mask. `jax.random.bernoulli` (32 bits and a
  float conversion an element) made a TIGER training step at rate 0.1 ~2.1x
  a step without dropout on 2 CPU cores; this ~1.55x (`train_generative`'s
  examples/s; `benchmarks/train_step.py`'s `tiger_paper` trains at 0.1).
  """
  if key is None or rate == 0.0:
    return x
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate {rate} not in [0, 1)")
  *lead, last = x.shape
  words = jax.random.bits(jax.random.fold_in(key, site),
                          (*lead, (last + 1) // 2), jnp.uint32)
  bits = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [..., W, 2]
  bits = bits.reshape(*lead, -1)[..., :last]
  drop = round(rate * 65536)
  if drop >= 65536:
    return jnp.zeros_like(x)
  keep = bits >= jnp.uint16(drop)
  return jnp.where(keep, x * (65536.0 / (65536 - drop)), 0.0).astype(x.dtype)


def _dot2(a: Array, b: Array, ca: int, cb: int, dtype) -> Array:
  """2-D a @ b contracting a's axis ca with b's axis cb, accumulated in f32."""
  return jax.lax.dot_general(a, b, (((ca,), (cb,)), ((), ())),
                             preferred_element_type=jnp.float32).astype(dtype)


@jax.custom_vjp
def _bf16_matmul(x: Array, kernel: Array) -> Array:
  """bf16 x [M, D] @ bf16 kernel [D, F] -> f32 [M, F] (f32 accumulation)."""
  return _dot2(x, kernel, 1, 0, jnp.float32)


def _bf16_matmul_fwd(x, kernel):
  return _bf16_matmul(x, kernel), (x, kernel)


def _bf16_matmul_bwd(res, g):
  # Both gradients as products of bf16 operands accumulated in f32: JAX's
  # own transpose of a bf16 -> f32 product multiplies the f32 cotangent by
  # a bf16 operand, which XLA:CPU runs as an f32 product (half the speed).
  x, kernel = res
  g = g.astype(jnp.bfloat16)
  return _dot2(g, kernel, 1, 1, x.dtype), _dot2(x, g, 0, 0, kernel.dtype)


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def matmul(x: Array, kernel: Array, *, transpose_kernel: bool = False,
           preferred_element_type=None) -> Array:
  """x [..., D] @ kernel [D, F] (or kernel [F, D] with transpose_kernel).

  The leading axes are flattened into one before the product: XLA:CPU picks
  layouts with transposes (copies of the activations) for the gradients of a
  3-D `...D,DF` contraction, and a 2-D product avoids them (the SID
  decoder's training step on Beauty batches: ~20% faster; measured in
  `benchmarks/train_step.py`). The kernel is cast to x.dtype. A bfloat16
  product (`train.compute_dtype="bfloat16"`) and its gradients take bf16
  operands and accumulate in float32 (XLA:CPU with AVX512-BF16: ~2x the
  float32 rate; on GPU/TPU the native bf16 path), the result in
  preferred_element_type (default x.dtype).
  """
  d = x.shape[-1]
  kernel = kernel.astype(x.dtype)
  f = kernel.shape[0 if transpose_kernel else 1]
  out = preferred_element_type or x.dtype
  x2 = x.reshape(-1, d)
  if x.dtype == jnp.bfloat16:
    y = _bf16_matmul(x2, kernel.T if transpose_kernel else kernel).astype(out)
  else:
    contract = 1 if transpose_kernel else 0
    y = jax.lax.dot_general(x2, kernel, (((1,), (contract,)), ((), ())),
                            preferred_element_type=preferred_element_type)
  return y.reshape(*x.shape[:-1], f)


def dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """x [..., D] @ kernel [D, F] (+ bias) with the kernel cast to x.dtype."""
  y = matmul(x, kernel)
  if bias is not None:
    y = y + bias.astype(x.dtype)
  return y


def project_heads(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """x [..., D] @ kernel [D, N, H] (+ bias [N, H]) -> [..., N, H]."""
  d, n, h = kernel.shape
  y = matmul(x, kernel.reshape(d, n * h)).reshape(*x.shape[:-1], n, h)
  if bias is not None:
    y = y + bias.astype(x.dtype)
  return y


def merge_heads(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """x [..., N, H] @ kernel [N, H, D] (+ bias [D]) -> [..., D]."""
  n, h, d = kernel.shape
  y = matmul(x.reshape(*x.shape[:-2], n * h), kernel.reshape(n * h, d))
  if bias is not None:
    y = y + bias.astype(x.dtype)
  return y


def swiglu(x: Array, gate: Array, up: Array, down: Array) -> Array:
  """Llama/Qwen2 MLP: down(silu(gate x) * up x)."""
  return dense(jax.nn.silu(dense(x, gate)) * dense(x, up), down)


def causal_mask(t: int) -> Array:
  """bool [T, T], True on and below the diagonal."""
  return jnp.tril(jnp.ones((t, t), dtype=bool))


def positions_from_mask(mask: Array) -> Array:
  """Position ids counting only real tokens: cumsum(mask) - 1, floor 0.

  Args:
    mask: bool/int [B, T] (True = real token; prompts are left-padded).

  Returns:
    int32 [B, T].
  """
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def default_head_dim(hidden: int, heads: int) -> int:
  if hidden % heads:
    raise ValueError(f"hidden size {hidden} not divisible by {heads} heads")
  return hidden // heads


def inv_sqrt(h: int) -> float:
  return 1.0 / math.sqrt(h)
