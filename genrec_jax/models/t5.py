"""T5 encoder-decoder (v1.0 ReLU FFN and v1.1 gated-GELU FFN).

Relative position buckets (bias computed once per stack and shared by its
layers), no 1/sqrt(d) attention scaling, RMS layer norm without bias, and the
tied head scaled by d_model**-0.5. One block function (`T5Model._block`)
serves the encoder, the teacher-forced decoder and `decode_step`; the
self-attention (`layers.Attend`) and cross-attention plug into it.

  logits = model(encoder_ids, decoder_ids)               # f32 [B, T, V]
  enc = model.encode(encoder_ids, encoder_mask)           # [B, S, D]
  cache = model.init_cache(B, max_decode_len)
  logits, cache = model.decode_step(tokens, enc, encoder_mask, cache)  # [B, V]

The decode cache is a dict of batch-first arrays:
  k, v   [B, L, T, N, H]  decoder self-attention keys/values
  index  int32 [B]         number of decoder tokens already fed
Cross-attention keys/values are projected from `enc` at each step, unless
`cross_kv(enc)` computed them once (decode_step(..., cross=...), as beam
search does: [layers, 1, S, N, H] shared by the beams).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from genrec_jax.models import layers

Array = jax.Array
Cache = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 hyper-parameters (names follow HF `T5Config`)."""
  # Vocabulary size V.
  vocab_size: int = 32128
  # Model width D.
  d_model: int = 512
  # Per-head width H (inner width is num_heads * d_kv).
  d_kv: int = 64
  # FFN width F.
  d_ff: int = 2048
  # Encoder blocks.
  num_layers: int = 6
  # Decoder blocks (None: same as num_layers).
  num_decoder_layers: int | None = None
  # Attention heads N.
  num_heads: int = 8
  # Relative position buckets and the distance where they saturate.
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # "relu" (v1.0) or "gated-gelu" (v1.1) ("gated-<act>" / "<act>").
  feed_forward_proj: str = "relu"
  # RMS norm epsilon.
  layer_norm_epsilon: float = 1e-6
  # Head shares `shared` (no separate lm_head).
  tie_word_embeddings: bool = True
  # Scale the decoder output by d_model**-0.5 before the head (T5 v1.0;
  # None: same as tie_word_embeddings, the transformers 4.x rule).
  scale_decoder_outputs: bool | None = None
  # Decoder start / pad / eos ids.
  decoder_start_token_id: int = 0
  pad_token_id: int = 0
  eos_token_id: int = 1
  # Dropout (training forwards given a `dropout_key` only): on the embedded
  # inputs, the FFN hidden units, every sublayer output and the final norm
  # outputs, as HF T5 (its attention-probability dropout is left out).
  dropout_rate: float = 0.0
  # Std of the initial token embeddings (HF T5: 1.0).
  embed_init_std: float = 1.0
  # Parameter / compute dtype.
  dtype: Any = jnp.float32
  # Run the blocks as a lax.scan loop (compile time flat in depth) or
  # unrolled (False: straight-line code; on 2 CPU cores forward + backward
  # of tiger_beauty_cpu: 341 vs 376 ms a batch of 256).
  scan_layers: bool = True

  def __post_init__(self):
    if self.num_decoder_layers is None:
      object.__setattr__(self, "num_decoder_layers", self.num_layers)
    if self.scale_decoder_outputs is None:
      object.__setattr__(self, "scale_decoder_outputs",
                         self.tie_word_embeddings)
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r}")
    layers.activation(self.dense_act_fn)  # validates the name

  @property
  def is_gated_act(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def dense_act_fn(self) -> str:
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"  # as HF
    return self.feed_forward_proj.split("-")[-1]

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> "T5Config":
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw.setdefault("tie_word_embeddings", True)
    # transformers 5 always ties and records the v1.0 scaling separately;
    # 4.x used tie_word_embeddings for both.
    kw.setdefault("scale_decoder_outputs", kw["tie_word_embeddings"])
    if kw.get("decoder_start_token_id") is None:
      kw["decoder_start_token_id"] = d.get("pad_token_id") or 0
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name not in ("dtype", "scan_layers", "embed_init_std")}
    d.update(architectures=["T5ForConditionalGeneration"], model_type="t5",
             is_encoder_decoder=True,
             torch_dtype=jnp.dtype(self.dtype).name)
    return d


def relative_position_bucket(rel: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """HF T5 bucketing of rel = key_pos - query_pos -> int32 buckets."""
  buckets = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  is_small = rel < max_exact
  large = max_exact + (
      jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact) /
      math.log(max_distance / max_exact) *
      (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, rel, large)


class T5Layers(nnx.Module):
  """One stack's blocks, weights stacked on a leading layers axis."""

  def __init__(self, cfg: T5Config, num_layers: int, cross: bool, *,
               rngs: nnx.Rngs):
    L, D, F, N, H = (num_layers, cfg.d_model, cfg.d_ff, cfg.num_heads,
                     cfg.d_kv)
    dt, p, w, o = cfg.dtype, layers.param, layers.normal(0.05), layers.ONES
    qkv_axes = ("layers", "embed", "heads", "kv")
    out_axes = ("layers", "heads", "kv", "embed")
    # HF: layer.0.SelfAttention.{q,k,v,o}, layer.0.layer_norm
    self.self_q = p(rngs, w, (L, D, N, H), qkv_axes, dt)
    self.self_k = p(rngs, w, (L, D, N, H), qkv_axes, dt)
    self.self_v = p(rngs, w, (L, D, N, H), qkv_axes, dt)
    self.self_o = p(rngs, w, (L, N, H, D), out_axes, dt)
    self.self_norm = p(rngs, o, (L, D), ("layers", "norm"), dt)
    if cross:
      # HF: layer.1.EncDecAttention.{q,k,v,o}, layer.1.layer_norm
      self.cross_q = p(rngs, w, (L, D, N, H), qkv_axes, dt)
      self.cross_k = p(rngs, w, (L, D, N, H), qkv_axes, dt)
      self.cross_v = p(rngs, w, (L, D, N, H), qkv_axes, dt)
      self.cross_o = p(rngs, w, (L, N, H, D), out_axes, dt)
      self.cross_norm = p(rngs, o, (L, D), ("layers", "norm"), dt)
    # HF: layer.{1|2}.DenseReluDense.{wi|wi_0,wi_1,wo}, layer.{1|2}.layer_norm
    if cfg.is_gated_act:
      self.wi_0 = p(rngs, w, (L, D, F), ("layers", "embed", "mlp"), dt)
      self.wi_1 = p(rngs, w, (L, D, F), ("layers", "embed", "mlp"), dt)
    else:
      self.wi = p(rngs, w, (L, D, F), ("layers", "embed", "mlp"), dt)
    self.wo = p(rngs, w, (L, F, D), ("layers", "mlp", "embed"), dt)
    self.ffn_norm = p(rngs, o, (L, D), ("layers", "norm"), dt)


def _cross_attention(enc: Array | None,
                     enc_mask: Array) -> Callable[..., Array]:
  """Cross-attention to the encoder output, as cross(q, w, kv).

  Args:
    enc: [B, S, D] encoder output (None when every call gets `kv`).
    enc_mask: bool [B or 1, S] real encoder tokens.

  Returns:
    cross(q [B, T, N, H], w, kv) -> [B, T, N, H]; kv is this layer's
    precomputed (K, V) [B or 1, S, N, H] (`T5Model.cross_kv`) or None to
    project `enc` with w["cross_k"], w["cross_v"]. A batch-1 K/V (and mask)
    is shared by all B rows (beams).
  """

  def cross(q, w, kv):
    if kv is None:
      k = layers.project_heads(enc, w["cross_k"])  # [B, S, N, H]
      v = layers.project_heads(enc, w["cross_v"])
    else:
      k, v = kv
    B, T = q.shape[:2]
    S = k.shape[1]
    if k.shape[0] != B:  # one encoder row shared by B decoder rows (beams)
      k = jnp.broadcast_to(k, (B,) + k.shape[1:])
      v = jnp.broadcast_to(v, (B,) + v.shape[1:])
    mask = jnp.broadcast_to(enc_mask[:, None, :], (B, T, S))  # [B, T, S]
    return layers.attention(q, k, v, mask, 1.0)

  return cross


class T5Model(nnx.Module):
  """T5ForConditionalGeneration."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.config = config
    cfg = config
    D, V, dt = cfg.d_model, cfg.vocab_size, cfg.dtype
    nb = cfg.relative_attention_num_buckets
    p = layers.param
    # HF: shared (= encoder/decoder.embed_tokens)
    self.shared = p(rngs, layers.normal(cfg.embed_init_std), (V, D),
                    ("vocab", "embed"), dt)
    # HF: {encoder,decoder}.block.0.layer.0.SelfAttention.
    #     relative_attention_bias
    self.enc_rel_bias = p(rngs, layers.normal(0.1), (nb, cfg.num_heads),
                          ("buckets", "heads"), dt)
    self.dec_rel_bias = p(rngs, layers.normal(0.1), (nb, cfg.num_heads),
                          ("buckets", "heads"), dt)
    self.enc_layers = T5Layers(cfg, cfg.num_layers, False, rngs=rngs)
    self.dec_layers = T5Layers(cfg, cfg.num_decoder_layers, True, rngs=rngs)
    # HF: {encoder,decoder}.final_layer_norm
    self.enc_final_norm = p(rngs, layers.ONES, (D,), ("norm",), dt)
    self.dec_final_norm = p(rngs, layers.ONES, (D,), ("norm",), dt)
    if not cfg.tie_word_embeddings:
      # HF: lm_head
      self.lm_head = p(rngs, layers.normal(), (D, V), ("embed", "vocab"), dt)

  # -- pieces ---------------------------------------------------------------

  def _dropout(self, x: Array, key: Array | None, site: int) -> Array:
    """Inverted dropout at `dropout_rate` (identity without a key)."""
    return layers.dropout(x, self.config.dropout_rate, key, site)

  def _ffn(self, h: Array, w: dict[str, Array],
           key: Array | None = None) -> Array:
    act = layers.activation(self.config.dense_act_fn)
    if self.config.is_gated_act:
      x = act(layers.dense(h, w["wi_0"])) * layers.dense(h, w["wi_1"])
    else:
      x = act(layers.dense(h, w["wi"]))
    return layers.dense(self._dropout(x, key, 0), w["wo"])

  def _pos_bias(self, table: Array, q_pos: Array, k_pos: Array,
                bidirectional: bool) -> Array:
    """[B or 1, N, T, S] bias from q_pos [B|1, T] and k_pos [S]."""
    cfg = self.config
    rel = k_pos[None, None, :] - q_pos[:, :, None]  # [B, T, S]
    b = relative_position_bucket(rel, bidirectional,
                                 cfg.relative_attention_num_buckets,
                                 cfg.relative_attention_max_distance)
    return jnp.moveaxis(table[b], -1, 1).astype(jnp.float32)  # [B, N, T, S]

  def _head(self, h: Array, dropout_key: Array | None = None) -> Array:
    cfg = self.config
    h = layers.rms_norm(h, self.dec_final_norm[...], cfg.layer_norm_epsilon)
    h = self._dropout(h, dropout_key, 10)
    if cfg.scale_decoder_outputs:
      h = h * (cfg.d_model**-0.5)
    if cfg.tie_word_embeddings:
      return layers.matmul(h, self.shared[...], transpose_kernel=True,
                           preferred_element_type=jnp.float32)  # [V, D]
    return layers.matmul(h, self.lm_head[...],
                         preferred_element_type=jnp.float32)

  # -- the block, written once ------------------------------------------------
  # The encoder, the teacher-forced decoder and `decode_step` all run
  # `_blocks`; the self-attention kind (`layers.full_attention` with the
  # position bias, or `layers.cached_attention` writing one token per row)
  # and the cross-attention (`_cross_attention`, decoder only) plug in.

  def _block(self, h: Array, w: dict[str, Array],
             attend: Callable[..., tuple[Array, Any, Any]],
             cross: Callable[[Array, dict[str, Array]], Array] | None,
             key: Array | None = None) -> tuple[Array, Any]:
    """One pre-norm T5 block: self-attention, cross-attention, FFN.

    Args:
      h: [B, T, D] block input.
      w: this layer's weights (`T5Layers` without the layers axis).
      attend: attend(q, k, v) -> (out [B, T, N, H], cache, ys), a
        `layers.Attend` with the cache and layer bound.
      cross: cross(q, w) -> [B, T, N, H] (decoder), or None (encoder).
      key: this layer's dropout key (None: no dropout).

    Returns:
      (h [B, T, D], cache).
    """
    eps = self.config.layer_norm_epsilon
    drop = self._dropout
    x = layers.rms_norm(h, w["self_norm"], eps)
    q = layers.project_heads(x, w["self_q"])  # [B, T, N, H]
    k = layers.project_heads(x, w["self_k"])
    v = layers.project_heads(x, w["self_v"])
    a, cache, _ = attend(q, k, v)
    h = h + drop(layers.merge_heads(a, w["self_o"]), key, 1)
    if cross is not None:
      x = layers.rms_norm(h, w["cross_norm"], eps)
      q = layers.project_heads(x, w["cross_q"])  # [B, T, N, H]
      h = h + drop(layers.merge_heads(cross(q, w), w["cross_o"]), key, 2)
    ffn_key = None if key is None else jax.random.fold_in(key, 3)
    h = h + drop(self._ffn(layers.rms_norm(h, w["ffn_norm"], eps), w,
                           ffn_key), key, 4)
    return h, cache

  def _blocks(self, x: Array, stack: T5Layers, attend: layers.Attend,
              cache: Any = None, cross: Callable[..., Array] | None = None,
              cross_kv: tuple[Array, Array] | None = None,
              key: Array | None = None) -> tuple[Array, Any]:
    """Scans `_block` over one stack's layers.

    Args:
      x: [B, T, D] embedded tokens.
      stack: `enc_layers` or `dec_layers`.
      attend: the self-attention kind (see `layers.Attend`).
      cache: pytree carried from layer to layer (None for none).
      cross: cross(q, w, kv) -> [B, T, N, H] (decoder stack only).
      cross_kv: per-layer (K, V), each [layers, B or 1, S, N, H], handed to
        `cross` as kv (None: `cross` gets kv=None).
      key: dropout key (None: no dropout), one per layer split from it.

    Returns:
      (x [B, T, D] after the last block, cache).
    """
    params = layers.stacked(stack)

    num = params["self_q"].shape[0]
    keys = None if key is None else jax.random.split(key, num)

    def body(carry, xs):
      h, c = carry
      w, i, kv, k_i = xs
      h, c = self._block(
          h, w, lambda q, k, v: attend(q, k, v, c, i),
          None if cross is None else lambda q, w: cross(q, w, kv), k_i)
      return (h, c), None

    xs = (params, jnp.arange(num), cross_kv, keys)
    (x, cache), _ = jax.lax.scan(body, (x, cache), xs,
                                 unroll=not self.config.scan_layers)
    return x, cache

  def _embed(self, ids: Array) -> Array:
    """int32 [B, T] -> [B, T, D] in the model dtype."""
    return self.shared[...][ids].astype(self.config.dtype)

  # -- public API -----------------------------------------------------------

  def encode(self, encoder_ids: Array, encoder_mask: Array | None = None,
             dropout_key: Array | None = None) -> Array:
    """Encoder stack.

    Args:
      encoder_ids: int32 [B, S].
      encoder_mask: bool [B, S] (None: all tokens real).

    Returns:
      [B, S, D] encoder output (after the final norm), in the model dtype.
    """
    return self.encode_embeddings(self._embed(encoder_ids), encoder_mask,
                                  dropout_key)

  def encode_embeddings(self, x: Array, encoder_mask: Array | None = None,
                        dropout_key: Array | None = None) -> Array:
    """Encoder stack over given input vectors (`encode` without the token
    lookup; e.g. a frozen text encoder's states mapped to d_model).

    Args:
      x: [B, S, D] input vectors.
      encoder_mask: bool [B, S] (None: all positions real).
      dropout_key: training forwards only (None: no dropout).

    Returns:
      [B, S, D] encoder output (after the final norm), in the model dtype.
    """
    B, S = x.shape[:2]
    key = dropout_key
    if key is not None:
      x = self._dropout(x, key, 5)
      key = jax.random.fold_in(key, 6)
    if encoder_mask is None:
      encoder_mask = jnp.ones((B, S), bool)
    mask = encoder_mask.astype(bool)
    attn_mask = jnp.broadcast_to(mask[:, None, :], (B, S, S))  # [B, T, S]
    pos = jnp.arange(S)
    bias = self._pos_bias(self.enc_rel_bias[...], pos[None], pos, True)
    attend = layers.full_attention(attn_mask, 1.0, bias)
    x, _ = self._blocks(x.astype(self.config.dtype), self.enc_layers, attend,
                        key=key)
    return self._dropout(layers.rms_norm(x, self.enc_final_norm[...],
                                         self.config.layer_norm_epsilon),
                         dropout_key, 7)

  def decode(self, decoder_ids: Array, enc: Array,
             encoder_mask: Array | None = None,
             dropout_key: Array | None = None) -> Array:
    """Teacher-forced decoder -> float32 [B, T, V] logits."""
    B, T = decoder_ids.shape
    if encoder_mask is None:
      encoder_mask = jnp.ones(enc.shape[:2], bool)
    pos = jnp.arange(T)
    bias = self._pos_bias(self.dec_rel_bias[...], pos[None], pos, False)
    causal = jnp.broadcast_to(layers.causal_mask(T)[None], (B, T, T))
    attend = layers.full_attention(causal, 1.0, bias)
    cross = _cross_attention(enc, encoder_mask.astype(bool))
    key = dropout_key
    x = self._embed(decoder_ids)
    if key is not None:
      x = self._dropout(x, key, 8)
      key = jax.random.fold_in(key, 9)
    x, _ = self._blocks(x, self.dec_layers, attend, cross=cross, key=key)
    return self._head(x, dropout_key)

  def __call__(self, encoder_ids: Array, decoder_ids: Array,
               encoder_mask: Array | None = None,
               dropout_key: Array | None = None) -> Array:
    """Teacher-forced forward -> float32 [B, T, V] logits (`dropout_key`:
    a training forward with dropout)."""
    keys = (None, None) if dropout_key is None else tuple(
        jax.random.split(dropout_key))
    enc = self.encode(encoder_ids, encoder_mask, keys[0])
    return self.decode(decoder_ids, enc, encoder_mask, keys[1])

  def init_cache(self, batch_size: int, max_decode_len: int,
                 dtype: Any = jnp.float32) -> Cache:
    """Empty decoder self-attention cache (batch-first leaves)."""
    cfg = self.config
    shape = (batch_size, cfg.num_decoder_layers, max_decode_len,
             cfg.num_heads, cfg.d_kv)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "index": jnp.zeros((batch_size,), jnp.int32)}

  def cross_kv(self, enc: Array) -> tuple[Array, Array]:
    """Cross-attention keys and values of every decoder layer, computed once.

    Args:
      enc: [B, S, D] from `encode`.

    Returns:
      (K, V), each [layers, B, S, N, H], for `decode_step(cross=...)`.
    """
    w = layers.stacked(self.dec_layers)
    k = jnp.einsum("BSD,LDNH->LBSNH", enc, w["cross_k"].astype(enc.dtype))
    v = jnp.einsum("BSD,LDNH->LBSNH", enc, w["cross_v"].astype(enc.dtype))
    return k, v

  def decode_step(self, tokens: Array, enc: Array | None,
                  encoder_mask: Array, cache: Cache,
                  cross: tuple[Array, Array] | None = None
                  ) -> tuple[Array, Cache]:
    """Feeds one decoder token per row.

    Args:
      tokens: int32 [B] (the first step feeds decoder_start_token_id).
      enc: [B, S, D] from `encode` (unused when `cross` is given).
      encoder_mask: bool [B, S] (or [1, S] with a shared `cross`).
      cache: from `init_cache` / the previous step.
      cross: `cross_kv(enc)`, so that steps do not re-project the encoder
        output; its batch may be 1, shared by all B rows (beam search).

    Returns:
      (logits float32 [B, V], cache).
    """
    T = cache["k"].shape[2]
    idx = cache["index"]  # [B]
    slots = jnp.arange(T)
    key_mask = (slots[None] <= idx[:, None])[:, None, :]  # [B, 1, T]
    bias = self._pos_bias(self.dec_rel_bias[...], idx[:, None], slots, False)
    attend = layers.cached_attention(idx, key_mask, 1.0, bias)
    cross_attend = _cross_attention(enc, encoder_mask.astype(bool))
    x, (kc, vc) = self._blocks(self._embed(tokens[:, None]), self.dec_layers,
                               attend, (cache["k"], cache["v"]),
                               cross_attend, cross)
    return self._head(x[:, 0]), {"k": kc, "v": vc, "index": idx + 1}
