"""A minimal Qwen2-style decoder with the KV-cache API the search expects.

A stand-in used by the decoding tests, the beam-search benchmark and the
`evaluate` stage until a generative model from genrec_jax.models is wired in
(same math as HF Qwen2: RMSNorm in fp32, rotate-half RoPE, GQA, q/k/v bias,
SwiGLU, tied lm_head; `hf_state_dict()` / `hf_config()` export the weights so
`transformers` loads the very same model).

API (every cache leaf has the batch axis first):
  cache = model.init_cache(batch_size, max_len, dtype)
  logits [B, T, V], cache = model.prefill(input_ids [B, T], mask [B, T], cache)
      (left-padded prompts; positions count real tokens only)
  logits [B, V], cache = model.decode_step(tokens [B], cache)

The config must be hashable (an ml_collections.FrozenConfigDict): the model's
GraphDef is a static argument of the jitted search.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Masked attention logits (finite).
_MASKED = -1e9


def decoder_config(**kwargs) -> ml_collections.FrozenConfigDict:
  """hidden, layers, heads, kv_heads, intermediate, vocab[, eps, rope_theta]."""
  cfg = dict(eps=1e-6, rope_theta=1e6)
  cfg.update(kwargs)
  missing = {"hidden", "layers", "heads", "kv_heads", "intermediate",
             "vocab"} - set(cfg)
  if missing:
    raise ValueError(f"decoder config lacks {sorted(missing)}")
  return ml_collections.FrozenConfigDict(cfg)



def _rms(x, w, eps):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
  return (w * x32).astype(x.dtype)


def _rope(x, pos, theta):
  """x [B, T, N, H], pos int [B, T] -> rotate-half RoPE."""
  h = x.shape[-1]
  inv = 1.0 / theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h)  # [H/2]
  ang = pos[..., None].astype(jnp.float32) * inv  # [B, T, H/2]
  cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None]  # [B, T, 1, H]
  sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None]
  x1, x2 = x[..., : h // 2], x[..., h // 2:]
  rot = jnp.concatenate([-x2, x1], -1)
  return (x * cos + rot * sin).astype(x.dtype)


class ReferenceDecoder(nnx.Module):
  """Qwen2-like decoder: init_cache / prefill / decode_step (batch first)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, f, v = cfg.hidden, cfg.intermediate, cfg.vocab
    n, k = cfg.heads, cfg.kv_heads
    hd = d // n
    init = lambda *shape: nnx.Param(
        0.02 * jax.random.normal(rngs.params(), shape, jnp.float32))
    self.embed = init(v, d)  # HF: model.embed_tokens (tied lm_head)
    self.layers = nnx.List()
    for _ in range(cfg.layers):
      self.layers.append(nnx.Dict(
          ln1=nnx.Param(jnp.ones(d)), ln2=nnx.Param(jnp.ones(d)),
          wq=init(d, n, hd), bq=init(n, hd), wk=init(d, k, hd), bk=init(k, hd),
          wv=init(d, k, hd), bv=init(k, hd), wo=init(n, hd, d),
          wg=init(d, f), wu=init(d, f), wd=init(f, d)))
    self.norm = nnx.Param(jnp.ones(d))

  def init_cache(self, batch_size, max_len, dtype=jnp.float32):
    cfg = self.cfg
    shape = (batch_size, max_len, cfg.kv_heads, cfg.hidden // cfg.heads)
    return {
        "k": [jnp.zeros(shape, dtype) for _ in range(cfg.layers)],
        "v": [jnp.zeros(shape, dtype) for _ in range(cfg.layers)],
        "valid": jnp.zeros((batch_size, max_len), bool),  # key slot is real
        "index": jnp.zeros((batch_size,), jnp.int32),  # next slot
        "pos": jnp.zeros((batch_size,), jnp.int32),  # next RoPE position
    }

  def _block(self, p, x, pos, ks, vs, kv_mask, write):
    """x [B, T, D]; write(cache_leaf, new [B, T, K, H]) -> updated leaf."""
    cfg = self.cfg
    b, t, _ = x.shape
    n, kh = cfg.heads, cfg.kv_heads
    hd = cfg.hidden // n
    h = _rms(x, p["ln1"][...], cfg.eps)
    q = jnp.einsum("BTD,DNH->BTNH", h, p["wq"][...]) + p["bq"][...]
    k = jnp.einsum("BTD,DKH->BTKH", h, p["wk"][...]) + p["bk"][...]
    v = jnp.einsum("BTD,DKH->BTKH", h, p["wv"][...]) + p["bv"][...]
    q, k = _rope(q, pos, cfg.rope_theta), _rope(k, pos, cfg.rope_theta)
    ks, vs = write(ks, k), write(vs, v)  # [B, S, K, H]
    q = q.reshape(b, t, kh, n // kh, hd)  # [B, T, K, G, H]
    if t == 1:
      # One query per row (decode): multiply-and-reduce fuses into one loop
      # on CPU, where a batched dot_general runs B*K tiny matmuls.
      s = (q[:, 0, None] * ks[:, :, :, None]).sum(-1)  # [B, S, K, G]
      s = jnp.moveaxis(s, 1, -1)[:, :, :, None] / np.sqrt(hd)  # [B,K,G,1,S]
    else:
      s = jnp.einsum("BTKGH,BSKH->BKGTS", q, ks) / np.sqrt(hd)
    s = jnp.where(kv_mask[:, None, None], s, _MASKED)  # kv_mask [B, T, S]
    a = jax.nn.softmax(s, -1)  # [B, K, G, T, S]
    if t == 1:
      o = (jnp.moveaxis(a[:, :, :, 0], -1, 1)[..., None]
           * vs[:, :, :, None]).sum(1)[:, None]  # [B, 1, K, G, H]
    else:
      o = jnp.einsum("BKGTS,BSKH->BTKGH", a, vs)
    x = x + jnp.einsum("BTNH,NHD->BTD", o.reshape(b, t, n, hd), p["wo"][...])
    h = _rms(x, p["ln2"][...], cfg.eps)
    g = jax.nn.silu(h @ p["wg"][...]) * (h @ p["wu"][...])
    return x + g @ p["wd"][...], ks, vs

  def _forward(self, ids, pos, cache, kv_mask, write):
    x = self.embed[...][ids]  # [B, T, D]
    ks, vs = [], []
    for i, p in enumerate(self.layers):
      x, k, v = self._block(p, x, pos, cache["k"][i], cache["v"][i], kv_mask,
                            write)
      ks.append(k)
      vs.append(v)
    x = _rms(x, self.norm[...], self.cfg.eps)
    return x, dict(cache, k=ks, v=vs)

  def prefill(self, input_ids, attention_mask, cache):
    """Left-padded prompts [B, T] -> logits [B, T, V], cache."""
    b, t = input_ids.shape
    s = cache["valid"].shape[1]
    m = attention_mask.astype(bool)
    pos = jnp.maximum(jnp.cumsum(m, -1) - 1, 0)  # [B, T]
    valid = cache["valid"].at[:, :t].set(m)  # [B, S]
    causal = jnp.arange(s)[None, :] <= jnp.arange(t)[:, None]  # [T, S]
    kv_mask = causal[None] & valid[:, None, :]  # [B, T, S]
    write = lambda leaf, new: leaf.at[:, :t].set(new.astype(leaf.dtype))
    x, cache = self._forward(input_ids, pos, cache, kv_mask, write)
    logits = x @ self.embed[...].T  # [B, T, V]
    cache = dict(cache, valid=valid, index=jnp.full((b,), t, jnp.int32),
                 pos=m.sum(-1).astype(jnp.int32))
    return logits, cache

  def decode_step(self, tokens, cache):
    """tokens [B] -> logits [B, V], cache."""
    b = tokens.shape[0]
    s = cache["valid"].shape[1]
    idx = cache["index"]  # [B]
    rows = jnp.arange(b)
    valid = cache["valid"].at[rows, idx].set(True)  # [B, S]
    write = lambda leaf, new: leaf.at[rows, idx].set(new[:, 0].astype(
        leaf.dtype))
    x, cache = self._forward(tokens[:, None], cache["pos"][:, None], cache,
                             valid[:, None, :], write)
    logits = x[:, 0] @ self.embed[...].T  # [B, V]
    del s
    return logits, dict(cache, valid=valid, index=idx + 1, pos=cache["pos"] + 1)

  # ---- shared-prefix decoding ---------------------------------------------
  # The prompt's keys/values are identical for every beam of one prompt.
  # `decode_step_shared` keeps them once ([1, T, K, H], from `prefill` with
  # batch 1 and max_len = T) and only the generated tokens per beam
  # ([W, n, K, H]): gathering beams then moves a few KB instead of the whole
  # prompt cache, and prompt attention is one [W*G, H] x [H, T] matmul.

  def init_suffix(self, beams: int, max_new: int, dtype=jnp.float32):
    """Per-beam cache of the generated tokens (batch = beams first)."""
    cfg = self.cfg
    shape = (beams, max_new, cfg.kv_heads, cfg.hidden // cfg.heads)
    return {"k": [jnp.zeros(shape, dtype) for _ in range(cfg.layers)],
            "v": [jnp.zeros(shape, dtype) for _ in range(cfg.layers)],
            "index": jnp.zeros((beams,), jnp.int32)}

  def decode_step_shared(self, tokens, prefix, suffix):
    """tokens [W] after one prompt -> logits [W, V], new suffix cache.

    Args:
      tokens: int32 [W], one per beam.
      prefix: the prompt's cache from `prefill` (batch 1).
      suffix: from `init_suffix` / the previous step, rows = beams.
    """
    cfg = self.cfg
    w = tokens.shape[0]
    n, kh = cfg.heads, cfg.kv_heads
    hd = cfg.hidden // n
    idx = suffix["index"]  # [W]
    rows = jnp.arange(w)
    m = suffix["k"][0].shape[1]
    pos = (prefix["pos"][0] + idx)[:, None]  # [W, 1]
    p_valid = prefix["valid"][0]  # [T]
    s_valid = jnp.arange(m)[None, :] <= idx[:, None]  # [W, M]
    x = self.embed[...][tokens][:, None]  # [W, 1, D]
    ks_out, vs_out = [], []
    for i, p in enumerate(self.layers):
      h = _rms(x, p["ln1"][...], cfg.eps)
      q = jnp.einsum("BTD,DNH->BTNH", h, p["wq"][...]) + p["bq"][...]
      k = jnp.einsum("BTD,DKH->BTKH", h, p["wk"][...]) + p["bk"][...]
      v = jnp.einsum("BTD,DKH->BTKH", h, p["wv"][...]) + p["bv"][...]
      q, k = _rope(q, pos, cfg.rope_theta), _rope(k, pos, cfg.rope_theta)
      sk = suffix["k"][i].at[rows, idx].set(k[:, 0])  # [W, M, K, H]
      sv = suffix["v"][i].at[rows, idx].set(v[:, 0])
      ks_out.append(sk)
      vs_out.append(sv)
      q = q[:, 0].reshape(w, kh, n // kh, hd) / np.sqrt(hd)  # [W, K, G, H]
      pk, pv = prefix["k"][i][0], prefix["v"][i][0]  # [T, K, H]
      sp = jnp.einsum("WKGH,TKH->WKGT", q, pk)  # [W, K, G, T]
      sp = jnp.where(p_valid, sp, _MASKED)
      ss = jnp.moveaxis((q[:, None] * sk[:, :, :, None]).sum(-1), 1, -1)
      ss = jnp.where(s_valid[:, None, None], ss, _MASKED)  # [W, K, G, M]
      a = jax.nn.softmax(jnp.concatenate([sp, ss], -1), -1)
      ap, as_ = a[..., : sp.shape[-1]], a[..., sp.shape[-1]:]
      o = jnp.einsum("WKGT,TKH->WKGH", ap, pv) + (
          jnp.moveaxis(as_, -1, 1)[..., None] * sv[:, :, :, None]).sum(1)
      x = x + jnp.einsum("BNH,NHD->BD", o.reshape(w, n, hd),
                         p["wo"][...])[:, None]
      h = _rms(x, p["ln2"][...], cfg.eps)
      g = jax.nn.silu(h @ p["wg"][...]) * (h @ p["wu"][...])
      x = x + g @ p["wd"][...]
    x = _rms(x, self.norm[...], cfg.eps)
    logits = x[:, 0] @ self.embed[...].T  # [W, V]
    return logits, {"k": ks_out, "v": vs_out, "index": idx + 1}

  def hf_state_dict(self) -> dict[str, np.ndarray]:
    """The weights under HF Qwen2 names (torch [out, in] layout)."""
    cfg = self.cfg
    d = cfg.hidden
    out = {"model.embed_tokens.weight": self.embed[...],
           "model.norm.weight": self.norm[...]}
    for i, p in enumerate(self.layers):
      pre = f"model.layers.{i}."
      out[pre + "input_layernorm.weight"] = p["ln1"][...]
      out[pre + "post_attention_layernorm.weight"] = p["ln2"][...]
      for name, w, bias in (("q", "wq", "bq"), ("k", "wk", "bk"),
                            ("v", "wv", "bv")):
        out[pre + f"self_attn.{name}_proj.weight"] = p[w][...].reshape(d, -1).T
        out[pre + f"self_attn.{name}_proj.bias"] = p[bias][...].reshape(-1)
      out[pre + "self_attn.o_proj.weight"] = p["wo"][...].reshape(-1, d).T
      out[pre + "mlp.gate_proj.weight"] = p["wg"][...].T
      out[pre + "mlp.up_proj.weight"] = p["wu"][...].T
      out[pre + "mlp.down_proj.weight"] = p["wd"][...].T
    return {k: np.ascontiguousarray(np.asarray(v, np.float32))
            for k, v in out.items()}

  def hf_config(self) -> dict[str, Any]:
    cfg = self.cfg
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": cfg.hidden, "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "vocab_size": cfg.vocab,
        "rms_norm_eps": cfg.eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": 512, "tie_word_embeddings": True,
        "hidden_act": "silu", "torch_dtype": "float32",
        "use_sliding_window": False, "attention_dropout": 0.0,
    }


