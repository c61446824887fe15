"""Decoder-only LM for the Qwen2 and Llama families (SmolLM2 is a Llama).

Grouped-query attention, rotate-half RoPE (theta from config), RMSNorm,
SwiGLU, optional q/k/v bias (Qwen2), tied or untied embeddings. Layers are
stacked and scanned. One block function (`Decoder._block`) serves every path;
what differs is the `layers.Attend` plugged into it (full causal attention,
a per-row KV cache, or a prompt cache shared by the beams).

Full forward:   logits = model(input_ids)                    # f32 [B, T, V]
Cached decode:  cache = model.init_cache(B, max_len)
                logits, cache = model.prefill(ids, mask, cache)  # left-padded
                logits, cache = model.decode_step(tokens, cache)  # f32 [B, V]

The KV cache is a dict of batch-first arrays (gather beams with
`jax.tree.map(lambda x: x[idx], cache)`):
  k, v   [B, L, S, K, H]  keys/values per layer and slot
  mask   bool [B, S]       slots holding a real token
  index  int32 [B]         next slot to write
  pos    int32 [B]         next position id (counts real tokens only)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from genrec_jax.models import layers

Array = jax.Array
Cache = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Hyper-parameters of a Qwen2/Llama decoder."""
  # Vocabulary size V.
  vocab_size: int = 151936
  # Model width D.
  hidden_size: int = 896
  # SwiGLU width F.
  intermediate_size: int = 4864
  # Number of blocks L.
  num_layers: int = 24
  # Query heads N.
  num_heads: int = 14
  # Key/value heads K (N % K == 0).
  num_kv_heads: int = 2
  # Head dim H (None: hidden_size // num_heads).
  head_dim: int | None = None
  # RoPE base.
  rope_theta: float = 10000.0
  # RMSNorm epsilon.
  rms_norm_eps: float = 1e-6
  # Output head shares the input embedding.
  tie_word_embeddings: bool = True
  # Bias on the q/k/v projections (Qwen2: always).
  attention_bias: bool = False
  # Bias on the output projection (Llama attention_bias=True).
  o_bias: bool = False
  # Bias on the MLP projections (Llama mlp_bias).
  mlp_bias: bool = False
  # Context length recorded in config.json.
  max_position_embeddings: int = 2048
  # "qwen2" or "llama" (what save_pretrained writes).
  model_type: str = "qwen2"
  # Special token ids (metadata only).
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  pad_token_id: int | None = None
  # Parameter / compute dtype.
  dtype: Any = jnp.float32
  # Run the blocks as a lax.scan loop (compile time flat in depth) or
  # unrolled (False: straight-line code; a few % faster forward + backward
  # of small from-scratch decoders on CPU).
  scan_layers: bool = True
  # Dropout of training forwards given a `dropout_key` (`hidden`): on the
  # embedded tokens and on each block's attention and MLP outputs before
  # their residual adds (from-scratch SID decoders; HF checkpoints: 0).
  dropout_rate: float = 0.0

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, "head_dim",
                         layers.default_head_dim(self.hidden_size,
                                                 self.num_heads))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} not divisible by "
                       f"num_kv_heads {self.num_kv_heads}")
    if self.model_type not in ("qwen2", "llama"):
      raise ValueError(f"model_type must be qwen2 or llama, got "
                       f"{self.model_type!r}")

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> "DecoderConfig":
    """From an HF Qwen2/Llama config.json dict."""
    mtype = d.get("model_type", "llama")
    rope = d.get("rope_scaling") or {}
    params = d.get("rope_parameters") or {}
    rtype = rope.get("rope_type", rope.get("type")) or params.get(
        "rope_type", "default")
    if rtype not in (None, "default"):
      raise ValueError(f"config.json: rope type {rtype!r} is not supported")
    if d.get("use_sliding_window"):
      raise ValueError("config.json: use_sliding_window is not supported")
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"config.json: hidden_act {d['hidden_act']!r} "
                       "is not supported")
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    n = d["num_attention_heads"]
    llama_bias = bool(d.get("attention_bias", False))
    kw = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=n,
        num_kv_heads=d.get("num_key_value_heads") or n,
        head_dim=d.get("head_dim"), rope_theta=float(theta),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=True if mtype == "qwen2" else llama_bias,
        o_bias=False if mtype == "qwen2" else llama_bias,
        mlp_bias=bool(d.get("mlp_bias", False)) if mtype == "llama" else False,
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        model_type=mtype, bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"), pad_token_id=d.get("pad_token_id"))
    if isinstance(kw["eos_token_id"], list):
      kw["eos_token_id"] = kw["eos_token_id"][0]
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """config.json for transformers."""
    arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
    if self.model_type == "qwen2" and not (self.attention_bias and
                                           not self.o_bias and
                                           not self.mlp_bias):
      raise ValueError("qwen2 needs attention_bias=True, o_bias=False, "
                       "mlp_bias=False; use model_type='llama'")
    if self.model_type == "llama" and self.attention_bias != self.o_bias:
      raise ValueError("llama has one attention_bias flag for q/k/v and o")
    d = dict(
        architectures=[arch[self.model_type]], model_type=self.model_type,
        vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
        rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps,
        tie_word_embeddings=self.tie_word_embeddings, hidden_act="silu",
        max_position_embeddings=self.max_position_embeddings,
        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        pad_token_id=self.pad_token_id,
        torch_dtype=jnp.dtype(self.dtype).name)
    if self.model_type == "llama":
      d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
    return d


class DecoderLayers(nnx.Module):
  """All blocks' weights stacked on a leading layers axis."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dt, p, w = cfg.dtype, layers.param, layers.normal()
    z, o = layers.ZEROS, layers.ONES
    # HF: self_attn.{q,k,v,o}_proj
    self.q = p(rngs, w, (L, D, N, H), ("layers", "embed", "heads", "kv"), dt)
    self.k = p(rngs, w, (L, D, K, H), ("layers", "embed", "kv_heads", "kv"),
               dt)
    self.v = p(rngs, w, (L, D, K, H), ("layers", "embed", "kv_heads", "kv"),
               dt)
    self.o = p(rngs, w, (L, N, H, D), ("layers", "heads", "kv", "embed"), dt)
    if cfg.attention_bias:
      self.q_bias = p(rngs, z, (L, N, H), ("layers", "heads", "kv"), dt)
      self.k_bias = p(rngs, z, (L, K, H), ("layers", "kv_heads", "kv"), dt)
      self.v_bias = p(rngs, z, (L, K, H), ("layers", "kv_heads", "kv"), dt)
    if cfg.o_bias:
      self.o_bias = p(rngs, z, (L, D), ("layers", "norm"), dt)
    # HF: mlp.{gate,up,down}_proj
    self.gate = p(rngs, w, (L, D, F), ("layers", "embed", "mlp"), dt)
    self.up = p(rngs, w, (L, D, F), ("layers", "embed", "mlp"), dt)
    self.down = p(rngs, w, (L, F, D), ("layers", "mlp", "embed"), dt)
    if cfg.mlp_bias:
      self.gate_bias = p(rngs, z, (L, F), ("layers", "mlp"), dt)
      self.up_bias = p(rngs, z, (L, F), ("layers", "mlp"), dt)
      self.down_bias = p(rngs, z, (L, D), ("layers", "norm"), dt)
    # HF: input_layernorm, post_attention_layernorm
    self.attn_norm = p(rngs, o, (L, D), ("layers", "norm"), dt)
    self.mlp_norm = p(rngs, o, (L, D), ("layers", "norm"), dt)


def _mlp(h: Array, w: dict[str, Array]) -> Array:
  g = layers.dense(h, w["gate"], w.get("gate_bias"))
  u = layers.dense(h, w["up"], w.get("up_bias"))
  return layers.dense(jax.nn.silu(g) * u, w["down"], w.get("down_bias"))


class Decoder(nnx.Module):
  """Qwen2/Llama causal LM."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    D, V, dt = config.hidden_size, config.vocab_size, config.dtype
    # HF: model.embed_tokens
    self.embed = layers.param(rngs, layers.normal(), (V, D),
                              ("vocab", "embed"), dt)
    self.layers = DecoderLayers(config, rngs=rngs)
    # HF: model.norm
    self.final_norm = layers.param(rngs, layers.ONES, (D,), ("norm",), dt)
    if not config.tie_word_embeddings:
      # HF: lm_head
      self.lm_head = layers.param(rngs, layers.normal(), (D, V),
                                  ("embed", "vocab"), dt)

  # -- the block, written once ------------------------------------------------
  # Every path (training / prefill, `decode_step`, `decode_step_shared`) runs
  # `_blocks` with one `layers.Attend` that decides where keys and values come
  # from and go to: `layers.full_attention` (causal over the new tokens),
  # `layers.cached_attention` (write one token per row, read the row's
  # cache), `layers.shared_prefix_attention` (one prompt cache for all beams
  # plus a per-beam suffix cache).

  def _embed(self, ids: Array) -> Array:
    """int32 [B, T] -> [B, T, D] in the model dtype."""
    return self.embed[...][ids].astype(self.config.dtype)

  @property
  def _scale(self) -> float:
    """Attention logit scale 1/sqrt(H)."""
    return layers.inv_sqrt(self.config.head_dim)

  def _block(self, h: Array, w: dict[str, Array], positions: Array,
             attend: Callable[..., tuple[Array, Any, Any]],
             key: Array | None = None) -> tuple[Array, Any, Any]:
    """One pre-norm block: attention then SwiGLU, each with a residual.

    Args:
      h: [B, T, D] block input.
      w: this layer's weights (`DecoderLayers` without the layers axis).
      positions: int32 [B, T] RoPE position ids of the T tokens.
      attend: attend(q, k, v) -> (out [B, T, N, H], cache, ys), a
        `layers.Attend` with the cache and layer bound.
      key: this layer's dropout key (None: no dropout).

    Returns:
      (h [B, T, D], cache, ys).
    """
    cfg = self.config
    rate = cfg.dropout_rate
    eps = cfg.rms_norm_eps
    a_in = layers.rms_norm(h, w["attn_norm"], eps)  # HF: input_layernorm
    q = layers.project_heads(a_in, w["q"], w.get("q_bias"))  # [B, T, N, H]
    k = layers.project_heads(a_in, w["k"], w.get("k_bias"))  # [B, T, K, H]
    v = layers.project_heads(a_in, w["v"], w.get("v_bias"))  # [B, T, K, H]
    cos, sin = layers.rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    a, cache, ys = attend(q, k, v)  # [B, T, N, H]
    h = h + layers.dropout(layers.merge_heads(a, w["o"], w.get("o_bias")),
                           rate, key, 1)
    h = h + layers.dropout(_mlp(layers.rms_norm(h, w["mlp_norm"], eps), w),
                           rate, key, 2)
    return h, cache, ys

  def _blocks(self, x: Array, positions: Array, attend: layers.Attend,
              cache: Any = None, constrain: bool = False,
              key: Array | None = None) -> tuple[Array, Any, Any]:
    """Scans `_block` over the stacked layers.

    Args:
      x: [B, T, D] embedded tokens.
      positions: int32 [B, T].
      attend: the attention kind (see `layers.Attend`).
      cache: pytree carried from layer to layer (None for none).
      constrain: shard the activations at block boundaries (full forward).
      key: dropout key (None: no dropout), folded with each layer's index.

    Returns:
      (x [B, T, D] after the last block, cache, ys stacked on a leading
      layers axis).
    """

    def body(carry, xs):
      h, c = carry
      w, i = xs
      h, c, ys = self._block(
          h, w, positions, lambda q, k, v: attend(q, k, v, c, i),
          None if key is None else jax.random.fold_in(key, i))
      if constrain:
        h = layers.constrain(h, ("batch", "length", "embed"))
      return (h, c), ys

    xs = (layers.stacked(self.layers), jnp.arange(self.config.num_layers))
    (x, cache), ys = jax.lax.scan(body, (x, cache), xs,
                                  unroll=not self.config.scan_layers)
    return x, cache, ys

  def _head(self, h: Array) -> Array:
    """Final norm and output projection -> float32 [..., V] logits."""
    return self.project(
        layers.rms_norm(h, self.final_norm[...], self.config.rms_norm_eps))

  def project(self, h: Array) -> Array:
    """Output projection of final-normed hidden states -> float32 logits.

    With `hidden`, a loss that needs logits at a few positions projects only
    those (the projection over a large vocabulary dominates otherwise).
    """
    if self.config.tie_word_embeddings:
      return layers.matmul(h, self.embed[...], transpose_kernel=True,
                           preferred_element_type=jnp.float32)  # [V, D]
    return layers.matmul(h, self.lm_head[...],
                         preferred_element_type=jnp.float32)

  def hidden(self, input_ids: Array, attention_mask: Array | None = None, *,
             positions: Array | None = None,
             attn_mask: Array | None = None,
             dropout_key: Array | None = None) -> Array:
    """Final-normed hidden states [B, T, D]: `project` of them = logits.

    Args:
      input_ids: int32 [B, T].
      attention_mask: bool [B, T] (left padding); default all True.
      positions: int32 [B, T] RoPE positions (default: from the mask).
      attn_mask: bool [B, T, T] who attends to whom (default: causal and
        the padding mask); a packed layout (e.g. one prompt followed by
        several completions that each see the prompt and themselves) sets
        its own with `positions`.
      dropout_key: training forwards only (None: no dropout; a no-op at
        `dropout_rate` 0).
    """
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, bool)
    mask = attention_mask.astype(bool)
    if positions is None:
      positions = layers.positions_from_mask(mask)
    if attn_mask is None:
      attn_mask = layers.causal_mask(input_ids.shape[1])[None] & mask[:, None]
    x = layers.constrain(self._embed(input_ids), ("batch", "length", "embed"))
    x = layers.dropout(x, self.config.dropout_rate, dropout_key, 0)
    attend = layers.full_attention(attn_mask, self._scale)
    layer_key = (None if dropout_key is None
                 else jax.random.fold_in(dropout_key, 1))
    x, _, _ = self._blocks(x, positions, attend, constrain=True,
                           key=layer_key)
    return layers.rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)

  def _forward(self, input_ids: Array, attention_mask: Array,
               last_only: bool = False):
    """Returns (logits [B,T,V] ([B,V] if last_only), k [L,B,T,K,H],
    v [L,B,T,K,H])."""
    T = input_ids.shape[1]
    mask = attention_mask.astype(bool)  # [B, T]
    positions = layers.positions_from_mask(mask)  # [B, T]
    attn_mask = layers.causal_mask(T)[None] & mask[:, None, :]  # [B, T, S]
    x = layers.constrain(self._embed(input_ids), ("batch", "length", "embed"))
    attend = layers.full_attention(attn_mask, self._scale, keep_kv=True)
    x, _, (ks, vs) = self._blocks(x, positions, attend, constrain=True)
    if last_only:
      x = x[:, -1]  # [B, D]
    return self._head(x), ks, vs  # [B, T, V] or [B, V]

  # -- public API -----------------------------------------------------------

  def __call__(self, input_ids: Array,
               attention_mask: Array | None = None) -> Array:
    """Full causal forward.

    Args:
      input_ids: int32 [B, T].
      attention_mask: optional bool [B, T] (left padding; positions count
        real tokens only).

    Returns:
      float32 [B, T, V] logits.
    """
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, bool)
    return self._forward(input_ids, attention_mask)[0]

  def init_cache(self, batch_size: int, max_len: int,
                 dtype: Any = jnp.float32) -> Cache:
    """An empty KV cache (every leaf batch-first)."""
    cfg = self.config
    shape = (batch_size, cfg.num_layers, max_len, cfg.num_kv_heads,
             cfg.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),  # [B, L, S, K, H]
        "v": jnp.zeros(shape, dtype),  # [B, L, S, K, H]
        "mask": jnp.zeros((batch_size, max_len), bool),  # [B, S]
        "index": jnp.zeros((batch_size,), jnp.int32),  # [B]
        "pos": jnp.zeros((batch_size,), jnp.int32),  # [B]
    }

  def prefill(self, input_ids: Array, attention_mask: Array, cache: Cache,
              last_only: bool = False) -> tuple[Array, Cache]:
    """Runs the (left-padded) prompt and fills slots [0, T) of a fresh cache.

    Args:
      input_ids: int32 [B, T].
      attention_mask: bool [B, T], False on left padding.
      cache: from `init_cache` (S >= T).
      last_only: project only the last position (the next-token logits;
        saves the [B, T, V] head with a large vocabulary, e.g. sampling).

    Returns:
      (logits float32 [B, T, V], cache); logits[:, -1] is the next-token
      distribution. With last_only: (logits float32 [B, V] of the last
      position, cache).
    """
    B, T = input_ids.shape
    S = cache["mask"].shape[1]
    if T > S:
      raise ValueError(f"prompt length {T} > cache length {S}")
    mask = attention_mask.astype(bool)
    logits, ks, vs = self._forward(input_ids, mask, last_only)
    dt = cache["k"].dtype
    ks = jnp.moveaxis(ks, 0, 1).astype(dt)  # [B, L, T, K, H]
    vs = jnp.moveaxis(vs, 0, 1).astype(dt)
    new = {
        "k": jax.lax.dynamic_update_slice_in_dim(cache["k"], ks, 0, axis=2),
        "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], vs, 0, axis=2),
        "mask": jax.lax.dynamic_update_slice_in_dim(
            jnp.zeros_like(cache["mask"]), mask, 0, axis=1),
        "index": jnp.full((B,), T, jnp.int32),
        "pos": jnp.sum(mask, axis=1, dtype=jnp.int32),
    }
    return logits, new

  def decode_step(self, tokens: Array, cache: Cache) -> tuple[Array, Cache]:
    """One token per row at the cache's write index.

    Args:
      tokens: int32 [B].
      cache: the cache after `prefill` / previous steps.

    Returns:
      (logits float32 [B, V], cache).
    """
    S = cache["mask"].shape[1]
    idx = cache["index"]  # [B]
    key_mask = cache["mask"] | (jnp.arange(S)[None] == idx[:, None])  # [B, S]
    positions = cache["pos"][:, None]  # [B, 1]
    attend = layers.cached_attention(idx, key_mask[:, None, :], self._scale)
    x, (kc, vc), _ = self._blocks(self._embed(tokens[:, None]), positions,
                                  attend, (cache["k"], cache["v"]))
    logits = self._head(x[:, 0])  # [B, V]
    new = {"k": kc, "v": vc, "mask": key_mask, "index": idx + 1,
           "pos": cache["pos"] + 1}
    return logits, new

  # -- shared-prefix decoding (beam search) ---------------------------------
  # The W beams of one prompt share its keys/values: `decode_step_shared`
  # reads them once from the batch-1 `prefill` cache and keeps per beam only
  # the generated tokens, so gathering beams moves a few KB instead of W
  # copies of the prompt cache.

  def init_suffix(self, beams: int, max_new: int,
                  dtype: Any = jnp.float32) -> Cache:
    """Per-beam cache of generated tokens (batch-first leaves)."""
    cfg = self.config
    shape = (beams, cfg.num_layers, max_new, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype),  # [W, L, M, K, H]
            "v": jnp.zeros(shape, dtype),  # [W, L, M, K, H]
            "index": jnp.zeros((beams,), jnp.int32)}  # [W]

  def decode_step_shared(self, tokens: Array, prefix: Cache,
                         suffix: Cache) -> tuple[Array, Cache]:
    """One token per beam after ONE prompt; = decode_step on W cache copies.

    Args:
      tokens: int32 [W].
      prefix: the prompt's cache after `prefill` (batch 1; every slot the
        prompt wrote, i.e. a cache of exactly the prompt length).
      suffix: from `init_suffix(W, ...)` / the previous step.

    Returns:
      (logits float32 [W, V], suffix).
    """
    M = suffix["k"].shape[2]
    idx = suffix["index"]  # [W]
    positions = (prefix["pos"][0] + idx)[:, None]  # [W, 1]
    s_mask = jnp.arange(M)[None] <= idx[:, None]  # [W, M]
    attend = layers.shared_prefix_attention(
        prefix["k"][0], prefix["v"][0], prefix["mask"][0], idx, s_mask,
        self._scale)  # prefix [L, S, K, H]
    x, (kc, vc), _ = self._blocks(self._embed(tokens[:, None]), positions,
                                  attend, (suffix["k"], suffix["v"]))
    return self._head(x[:, 0]), {"k": kc, "v": vc, "index": idx + 1}


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, input_ids, attention_mask, max_new_tokens):
  model = nnx.merge(graphdef, state)
  B, T = input_ids.shape
  cache = model.init_cache(B, T + max_new_tokens, dtype=model.config.dtype)
  logits, cache = model.prefill(input_ids, attention_mask, cache)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)  # [B]

  def step(carry, _):
    tok, cache = carry
    logits, cache = model.decode_step(tok, cache)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (nxt, cache), tok

  (_, _), toks = jax.lax.scan(step, (first, cache), None,
                              length=max_new_tokens)
  return toks.T  # [B, max_new_tokens]


def greedy_generate(model: Decoder, input_ids: Array, attention_mask: Array,
                    max_new_tokens: int) -> Array:
  """Greedy continuation of left-padded prompts -> int32 [B, new]."""
  graphdef, state = nnx.split(model)
  return _greedy(graphdef, state, jnp.asarray(input_ids, jnp.int32),
                 jnp.asarray(attention_mask, bool), max_new_tokens)
