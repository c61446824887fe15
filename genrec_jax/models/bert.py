"""BERT encoder (the text encoder of the semantic-ID stage, e.g. MiniLM).

Post-LN blocks, learned absolute positions, token types, exact GELU. Weights
load from a Hugging Face folder with `genrec_jax.weights.load_pretrained`.

  model = load_pretrained(minilm_dir)
  hidden = model(input_ids, attention_mask)  # float32 [B, T, D]
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from genrec_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters (names follow HF `BertConfig`)."""
  # Vocabulary size V.
  vocab_size: int = 30522
  # Model width D.
  hidden_size: int = 384
  # Number of blocks L.
  num_hidden_layers: int = 6
  # Attention heads N (head dim = D / N).
  num_attention_heads: int = 12
  # FFN width F.
  intermediate_size: int = 1536
  # Learned absolute positions.
  max_position_embeddings: int = 512
  # Token-type vocabulary.
  type_vocab_size: int = 2
  # LayerNorm epsilon.
  layer_norm_eps: float = 1e-12
  # FFN activation (HF name).
  hidden_act: str = "gelu"
  # Padding id.
  pad_token_id: int = 0
  # Whether the checkpoint has the pooler (tanh dense on [CLS]).
  add_pooling_layer: bool = True
  # Parameter dtype.
  dtype: Any = jnp.float32

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> "BertConfig":
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("config.json: only position_embedding_type=absolute "
                       f"is supported, got {d['position_embedding_type']!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name not in ("dtype", "add_pooling_layer")}
    d.update(architectures=["BertModel"], model_type="bert",
             position_embedding_type="absolute",
             torch_dtype=jnp.dtype(self.dtype).name)
    return d


def block(h: Array, w: dict[str, Array], attn_mask: Array,
          cfg: BertConfig) -> Array:
  """One post-LN BERT block.

  Args:
    h: [B, T, D] hidden states (cfg.dtype).
    w: one block's weights (`BertLayers` names, no leading layers axis).
    attn_mask: bool [B, T, S], True where query t may attend key s.
    cfg: heads, activation, LayerNorm epsilon.

  Returns:
    [B, T, D] hidden states.
  """
  H = cfg.hidden_size // cfg.num_attention_heads
  act = layers.activation(cfg.hidden_act)
  eps = cfg.layer_norm_eps
  q = layers.project_heads(h, w["q"], w["q_bias"])  # [B, T, N, H]
  k = layers.project_heads(h, w["k"], w["k_bias"])  # [B, S, N, H]
  v = layers.project_heads(h, w["v"], w["v_bias"])  # [B, S, N, H]
  a = layers.attention(q, k, v, attn_mask, layers.inv_sqrt(H))  # [B, T, N, H]
  a = layers.merge_heads(a, w["o"], w["o_bias"])  # [B, T, D]
  h = layers.layer_norm(h + a, w["attn_ln_scale"], w["attn_ln_bias"], eps)
  f = layers.dense(act(layers.dense(h, w["wi"], w["wi_bias"])), w["wo"],
                   w["wo_bias"])  # [B, T, D]
  return layers.layer_norm(h + f, w["out_ln_scale"], w["out_ln_bias"], eps)


def bert_layers(x: Array, mask: Array, stacked: dict[str, Array],
                cfg: BertConfig) -> Array:
  """Stacked BERT blocks (a scan over the layers axis) on hidden states.

  Used by `BertModel.__call__` and by a retriever training the top blocks on
  cached states below them.

  Args:
    x: float [B, T, D] hidden states entering the first of these blocks.
    mask: int/bool [B, T], 1 for real tokens (keys attended to).
    stacked: `layers.stacked(BertLayers)`, arrays with a leading [L] axis.
    cfg: the encoder config (heads, activation, epsilon, dtype).

  Returns:
    float32 [B, T, D] states after the L blocks.
  """
  B, T = mask.shape
  m = mask.astype(bool)  # [B, S=T]
  attn_mask = jnp.broadcast_to(m[:, None, :], (B, T, T))  # [B, T, S]

  def step(h, w):
    return block(h, w, attn_mask, cfg), None

  x, _ = jax.lax.scan(step, x.astype(cfg.dtype), stacked)  # [B, T, D]
  return x.astype(jnp.float32)


class BertLayers(nnx.Module):
  """All blocks' weights stacked on a leading layers axis."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    L, D, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    N = cfg.num_attention_heads
    H = layers.default_head_dim(D, N)
    dt, p, w = cfg.dtype, layers.param, layers.normal()
    z, o = layers.ZEROS, layers.ONES
    # HF: attention.self.{query,key,value}
    self.q = p(rngs, w, (L, D, N, H), ("layers", "embed", "heads", "kv"), dt)
    self.q_bias = p(rngs, z, (L, N, H), ("layers", "heads", "kv"), dt)
    self.k = p(rngs, w, (L, D, N, H), ("layers", "embed", "heads", "kv"), dt)
    self.k_bias = p(rngs, z, (L, N, H), ("layers", "heads", "kv"), dt)
    self.v = p(rngs, w, (L, D, N, H), ("layers", "embed", "heads", "kv"), dt)
    self.v_bias = p(rngs, z, (L, N, H), ("layers", "heads", "kv"), dt)
    # HF: attention.output.dense / .LayerNorm
    self.o = p(rngs, w, (L, N, H, D), ("layers", "heads", "kv", "embed"), dt)
    self.o_bias = p(rngs, z, (L, D), ("layers", "norm"), dt)
    self.attn_ln_scale = p(rngs, o, (L, D), ("layers", "norm"), dt)
    self.attn_ln_bias = p(rngs, z, (L, D), ("layers", "norm"), dt)
    # HF: intermediate.dense, output.dense / .LayerNorm
    self.wi = p(rngs, w, (L, D, F), ("layers", "embed", "mlp"), dt)
    self.wi_bias = p(rngs, z, (L, F), ("layers", "mlp"), dt)
    self.wo = p(rngs, w, (L, F, D), ("layers", "mlp", "embed"), dt)
    self.wo_bias = p(rngs, z, (L, D), ("layers", "norm"), dt)
    self.out_ln_scale = p(rngs, o, (L, D), ("layers", "norm"), dt)
    self.out_ln_bias = p(rngs, z, (L, D), ("layers", "norm"), dt)


class BertModel(nnx.Module):
  """BERT encoder returning the last hidden states."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    D, dt = config.hidden_size, config.dtype
    p, w = layers.param, layers.normal()
    # HF: embeddings.word_embeddings / position_embeddings /
    # token_type_embeddings / LayerNorm
    self.word_emb = p(rngs, w, (config.vocab_size, D), ("vocab", "embed"), dt)
    self.pos_emb = p(rngs, w, (config.max_position_embeddings, D),
                     ("pos", "embed"), dt)
    self.type_emb = p(rngs, w, (config.type_vocab_size, D), ("pos", "embed"),
                      dt)
    self.emb_ln_scale = p(rngs, layers.ONES, (D,), ("norm",), dt)
    self.emb_ln_bias = p(rngs, layers.ZEROS, (D,), ("norm",), dt)
    self.layers = BertLayers(config, rngs=rngs)
    if config.add_pooling_layer:
      # HF: pooler.dense
      self.pooler = p(rngs, w, (D, D), ("embed", "mlp"), dt)
      self.pooler_bias = p(rngs, layers.ZEROS, (D,), ("mlp",), dt)

  def __call__(self, input_ids: Array, attention_mask: Array,
               token_type_ids: Array | None = None,
               embeds: Array | None = None) -> Array:
    """Encodes a batch.

    Args:
      input_ids: int32 [B, T].
      attention_mask: int32/bool [B, T], 1 for real tokens.
      token_type_ids: optional int32 [B, T] (zeros by default).
      embeds: optional [B, T, D] word embeddings used instead of the lookup
        of `input_ids` (HF `inputs_embeds`; e.g. with an extra vector
        spliced in); position and type embeddings are added as usual.

    Returns:
      float32 [B, T, D] last hidden states.
    """
    cfg = self.config
    T = input_ids.shape[1]
    if T > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {T} > max_position_embeddings "
                       f"{cfg.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    dt = cfg.dtype
    if embeds is None:
      embeds = self.word_emb[...][input_ids]
    x = (embeds + self.pos_emb[...][None, :T] +
         self.type_emb[...][token_type_ids]).astype(dt)  # [B, T, D]
    x = layers.layer_norm(x, self.emb_ln_scale[...], self.emb_ln_bias[...],
                          cfg.layer_norm_eps)
    return bert_layers(x, attention_mask, layers.stacked(self.layers), cfg)

  def pooled(self, last_hidden: Array) -> Array:
    """HF pooler output: tanh(dense(h[:, 0])) -> float32 [B, D]."""
    if not self.config.add_pooling_layer:
      raise ValueError("this BertModel has no pooler")
    return jnp.tanh(
        layers.dense(last_hidden[:, 0], self.pooler[...].astype(jnp.float32),
                     self.pooler_bias[...].astype(jnp.float32)))


def mean_pool(last_hidden: Array, attention_mask: Array,
              normalize: bool = True) -> Array:
  """sentence-transformers mean pooling (+ L2 normalisation).

  Args:
    last_hidden: float [B, T, D].
    attention_mask: [B, T], 1 for real tokens.
    normalize: L2-normalise the result.

  Returns:
    float32 [B, D].
  """
  m = attention_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
  s = jnp.sum(last_hidden.astype(jnp.float32) * m, axis=1)
  e = s / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  if normalize:
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  return e
