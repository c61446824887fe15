"""Batched autoregressive sampling on the KV cache of our decoder (jitted).

  settings = SamplingSettings(max_new_tokens=64, temperature=0.7, top_k=50,
                              top_p=0.9, eos_ids=(2,), pad_id=2)
  graphdef, state = nnx.split(model)
  out = sample(graphdef, state, ids, mask, jax.random.key(0), settings)
  out.tokens   # int32 [B, M]: generated tokens, EOS kept, pad_id after it
  out.lengths  # int32 [B]: tokens before the EOS (or M)
  out.finished # bool [B]: the row produced an EOS

The whole generation is one jitted function of (graphdef, params, ids, mask,
key, settings): prefill of the prompts into a fresh cache (only the last
position goes through the output projection), then a `lax.while_loop` of
`decode_step`s that stops when every row has produced an EOS or after
`max_new_tokens` tokens. Works with any model exposing the
`genrec_jax.models.decoder.Decoder` cache API (`init_cache`, `decode_step`,
`prefill(..., last_only=True)`, so that the [B, T, V] logits of the whole
prompt are never built).

Prompts may be left-padded or carry any mask: the real tokens of every row
are moved to the right end (stable) before the prefill, so right padding
and holes work too. Positions count real tokens only, so a prompt gives the
same distribution whatever its padding.

Per-token filtering, in this order: temperature (0 = greedy argmax, no
randomness), top-k (0 = off), top-p nucleus (1.0 = off: the smallest set
of most likely tokens whose probability reaches top_p; the most likely
token is always kept). A key of shape [] is split into one key per row; a
key array of shape [B] gives each row its own stream (a row's output then
does not depend on the other rows of the batch). Step t of row b draws
with `fold_in(key_b, t)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array

# Logit of a token removed by top-k / top-p (finite: no NaN in softmax).
NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """Static settings of `sample` (hashable: one compilation per value)."""
  # New tokens per row at most (M).
  max_new_tokens: int
  # Softmax temperature; 0 = greedy argmax.
  temperature: float = 1.0
  # Keep the k most likely tokens (0 = all).
  top_k: int = 0
  # Nucleus mass in (0, 1] (1.0 = off).
  top_p: float = 1.0
  # Token ids that end a row (kept in the output, then pad_id).
  eos_ids: tuple[int, ...] = ()
  # Written after a row's EOS.
  pad_id: int = 0
  # KV cache dtype (None: the model's dtype).
  cache_dtype: Any = None

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got "
                       f"{self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))


class SampleOutput(NamedTuple):
  """What `sample` returns."""
  # int32 [B, M]: sampled tokens; after a row's EOS, pad_id.
  tokens: Array
  # int32 [B]: tokens before the first EOS (M when none).
  lengths: Array
  # bool [B]: the row produced an EOS.
  finished: Array


def _nucleus(sorted_x: Array, top_p: float) -> Array:
  """Number of tokens of the top-p nucleus, from logits sorted descending.

  Args:
    sorted_x: float32 [..., K] logits in descending order.
    top_p: nucleus mass in (0, 1].

  Returns:
    int32 [..., 1]: the smallest n whose n most likely tokens reach top_p
    (>= 1).
  """
  probs = jax.nn.softmax(sorted_x, axis=-1)  # [..., K]
  before = jnp.cumsum(probs, axis=-1) - probs  # mass above each token
  n_keep = jnp.sum(before < top_p, axis=-1, keepdims=True)  # [..., 1]
  return jnp.maximum(n_keep, 1).astype(jnp.int32)


def filter_logits(logits: Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  """Temperature, top-k and top-p applied to full-vocabulary logits.

  Args:
    logits: float [..., V].
    temperature: > 0 (greedy is handled by the caller).
    top_k: keep the k largest logits (0: all).
    top_p: keep the smallest set of most likely tokens whose probability
      (after temperature and top-k) reaches top_p; 1.0: all.

  Returns:
    float32 [..., V]: the scaled logits, removed tokens at NEG_INF.
  """
  x = logits.astype(jnp.float32) / temperature  # [..., V]
  V = x.shape[-1]
  if 0 < top_k < V:
    kth = jax.lax.top_k(x, top_k)[0][..., -1:]  # [..., 1]
    x = jnp.where(x < kth, NEG_INF, x)
  if top_p < 1.0:
    srt = -jnp.sort(-x, axis=-1)  # [..., V] descending
    n_keep = _nucleus(srt, top_p)  # [..., 1]
    cutoff = jnp.take_along_axis(srt, n_keep - 1, axis=-1)  # [..., 1]
    x = jnp.where(x < cutoff, NEG_INF, x)
  return x


def next_token(logits: Array, keys: Array, settings: SamplingSettings
               ) -> Array:
  """One token per row from logits [B, V] with per-row keys [B] -> [B].

  With top_k the draw is over the k best tokens only (no sort or noise over
  the whole vocabulary); the distribution is that of `filter_logits`.
  """
  if settings.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  x = logits.astype(jnp.float32) / settings.temperature  # [B, V]
  V = x.shape[-1]
  if 0 < settings.top_k < V:
    vals, idx = jax.lax.top_k(x, settings.top_k)  # [B, k] descending
    if settings.top_p < 1.0:
      n_keep = _nucleus(vals, settings.top_p)  # [B, 1]
      rank = jnp.arange(settings.top_k)[None]  # [1, k]
      vals = jnp.where(rank < n_keep, vals, NEG_INF)
    pick = jax.vmap(jax.random.categorical)(keys, vals)  # [B]
    return jnp.take_along_axis(idx, pick[:, None], axis=1)[:, 0].astype(
        jnp.int32)
  x = filter_logits(x, 1.0, 0, settings.top_p)  # [B, V]
  return jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)


def _left_align(ids: Array, mask: Array) -> tuple[Array, Array]:
  """Moves each row's real tokens to the right end, order kept."""
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)  # [B, T]
  return (jnp.take_along_axis(ids, order, axis=1),
          jnp.take_along_axis(mask, order, axis=1))


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _sample(graphdef, state, ids, mask, key, settings):
  model = nnx.merge(graphdef, state)
  B, T = ids.shape
  M = settings.max_new_tokens
  ids, mask = _left_align(ids.astype(jnp.int32), mask.astype(bool))
  if key.ndim == 0:
    keys = jax.random.split(key, B)  # [B]
  else:
    keys = key  # [B]
  dtype = settings.cache_dtype or model.config.dtype
  cache = model.init_cache(B, T + M, dtype=dtype)
  logits, cache = model.prefill(ids, mask, cache, last_only=True)  # [B, V]
  eos = jnp.asarray(settings.eos_ids or (-1,), jnp.int32)  # [E]

  def cond(carry):
    t, _, _, done, _ = carry
    return (t < M) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, done, out = carry
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)  # [B]
    tok = next_token(logits, step_keys, settings)  # [B]
    tok = jnp.where(done, settings.pad_id, tok)  # [B]
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], t, axis=1)
    done = done | jnp.any(tok[:, None] == eos[None], axis=1)  # [B]

    def step(c):
      return model.decode_step(tok, c)

    def skip(c):
      return logits, c

    logits, cache = jax.lax.cond((t + 1 < M) & ~jnp.all(done), step, skip,
                                 cache)
    return t + 1, logits, cache, done, out

  out = jnp.full((B, M), settings.pad_id, jnp.int32)  # [B, M]
  init = (jnp.int32(0), logits, cache, jnp.zeros((B,), bool), out)
  _, _, _, done, out = jax.lax.while_loop(cond, body, init)
  is_eos = jnp.any(out[:, :, None] == eos[None, None], axis=-1)  # [B, M]
  lengths = jnp.where(jnp.any(is_eos, axis=1),
                      jnp.argmax(is_eos, axis=1), M).astype(jnp.int32)
  return SampleOutput(out, lengths, done)


def sample(graphdef: nnx.GraphDef, state: Any, input_ids: Array,
           attention_mask: Array, key: Array,
           settings: SamplingSettings) -> SampleOutput:
  """Samples continuations of a batch of prompts (one jitted call).

  Args:
    graphdef: the decoder's `nnx.split` GraphDef (static).
    state: its state (parameters), a jit argument.
    input_ids: int32 [B, T] prompts (padding anywhere the mask is False).
    attention_mask: bool [B, T], True on real tokens; every row needs one.
    key: a PRNG key [] (split per row) or per-row keys [B].
    settings: `SamplingSettings` (static).

  Returns:
    `SampleOutput` (tokens [B, M], lengths [B], finished [B]).
  """
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a legacy uint32 PRNGKey
  return _sample(graphdef, state, jnp.asarray(input_ids, jnp.int32),
                 jnp.asarray(attention_mask, bool), key, settings)


def sample_model(model, input_ids: Array, attention_mask: Array, key: Array,
                 settings: SamplingSettings) -> SampleOutput:
  """`sample` on an NNX model (splits it; prefer `sample` in loops)."""
  graphdef, state = nnx.split(model)
  return sample(graphdef, state, input_ids, attention_mask, key, settings)
