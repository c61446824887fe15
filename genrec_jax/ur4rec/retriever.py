"""UR4Rec preference retriever: a user's preference text -> a 256-d vector.

Text path (METHODS.md section 8): encoded text -> Linear in_dim -> hidden,
ReLU, dropout, Linear hidden -> out_dim, LayerNorm, L2-normalise. Items are
trainable out_dim vectors initialised from their description encodings
through the same (freshly initialised) path; a score is cosine / temperature
over a candidate list (padding id < 0 -> NEG_INF).

Inputs are CACHED encodings, so training never re-runs the sentence encoder:

  * `trainable_layers=0` (MiniLM frozen): the pooled MiniLM vector
    float32 [B, in_dim] per text.
  * `trainable_layers=n > 0`: the top n BERT blocks belong to the retriever
    (initialised from the pretrained encoder's top n blocks, `pretrained=`);
    the input is the cached token states below them [B, S, in_dim] with the
    token mask [B, S] (`split_bert(model, n)` gives the bottom model that
    caches them), mean-pooled and L2-normalised after the top blocks as
    sentence-transformers does.

  cfg = RetrieverConfig(num_items=len(item_vecs))
  model = PreferenceRetriever(cfg, item_init=item_vecs, rngs=nnx.Rngs(0))
  u = model.users(user_vecs)                        # [B, 256] unit vectors
  logits = model.scores(u, candidates)              # [B, C], pads -> -1e9
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.models import bert
from genrec_jax.models import layers
from genrec_jax.ur4rec import losses

Array = jax.Array

NEG_INF = layers.NEG_INF
# Floor of a vector norm before dividing by it.
NORM_EPS = 1e-12
# LayerNorm epsilon of the projection head (torch nn.LayerNorm default).
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class RetrieverConfig:
  """Preference-retriever hyper-parameters."""
  # Width of the cached text encoding (MiniLM: 384).
  in_dim: int = 384
  # Hidden width of the projection MLP.
  hidden: int = 512
  # Width of user and item vectors.
  out_dim: int = 256
  # Dropout after the ReLU (training only).
  dropout: float = 0.1
  # Score = cosine / temperature (1.0: raw cosine, as UR4Rec trains).
  temperature: float = 1.0
  # Top BERT blocks trained with the retriever (0: encoder frozen, input is
  # the pooled vector; n: input is the token states below the top n).
  trainable_layers: int = 0
  # Item table size I (set from item_init when 0).
  num_items: int = 0
  # Shapes of the text encoder's blocks (trainable_layers > 0); None: the
  # BertConfig defaults (all-MiniLM-L6-v2).
  bert: bert.BertConfig | None = None
  # Parameter dtype.
  dtype: Any = jnp.float32

  def bert_config(self) -> bert.BertConfig:
    """The encoder's config (the defaults are MiniLM's)."""
    return self.bert if self.bert is not None else bert.BertConfig()


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / max(|x|, NORM_EPS) along `axis`, in float32 (finite gradient at
  x = 0, unlike jnp.linalg.norm)."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS * NORM_EPS))


def dropout(x: Array, rate: float, key: Array | None,
            deterministic: bool) -> Array:
  """Inverted dropout from an explicit key (identity when deterministic)."""
  if deterministic or rate <= 0.0:
    return x
  if key is None:
    raise ValueError("dropout needs a key when deterministic=False")
  return layers.dropout(x, rate, key)


def cosine_scores(user_vecs: Array, item_vecs: Array, item_ids: Array | None,
                  temperature: float) -> Array:
  """Cosine / temperature of unit user vectors against unit item vectors.

  Args:
    user_vecs: float [B, D] unit vectors.
    item_vecs: float [I, D] unit vectors (every item).
    item_ids: int [B, C] candidate ids (id < 0 = padding) or None (all).
    temperature: divisor of the cosine.

  Returns:
    float32 [B, C] (padding -> NEG_INF), or [B, I] when item_ids is None.
  """
  if item_ids is None:
    return jnp.einsum("BD,ID->BI", user_vecs, item_vecs) / temperature
  valid = item_ids >= 0  # [B, C]
  cand = item_vecs[jnp.where(valid, item_ids, 0)]  # [B, C, D]
  s = jnp.einsum("BD,BCD->BC", user_vecs, cand) / temperature  # [B, C]
  return jnp.where(valid, s, NEG_INF)


def _copy_layers(dst: bert.BertLayers, src: bert.BertLayers, start: int,
                 stop: int) -> None:
  """dst's stacked params <- src's blocks [start, stop)."""
  for name, v in vars(dst).items():
    if isinstance(v, nnx.Param):
      v.set_value(getattr(src, name)[...][start:stop])


def split_bert(model: bert.BertModel,
               n: int) -> tuple[bert.BertModel, bert.BertLayers]:
  """Splits an encoder into its bottom L - n blocks and its top n blocks.

  The bottom model (embeddings + first L - n blocks) caches the token states
  a retriever with `trainable_layers=n` takes as input (once, offline);
  `bert.bert_layers` of the top blocks on them equals the full model.

  Args:
    model: a loaded `BertModel` (e.g. all-MiniLM-L6-v2).
    n: number of top blocks, 1 <= n <= L.

  Returns:
    (bottom BertModel, top BertLayers), both holding copies of the weights.
  """
  cfg = model.config
  L = cfg.num_hidden_layers
  if not 1 <= n <= L:
    raise ValueError(f"trainable_layers {n} not in [1, {L}]")
  bottom = nnx.eval_shape(lambda: bert.BertModel(
      dataclasses.replace(cfg, num_hidden_layers=L - n), rngs=nnx.Rngs(0)))
  for name, v in vars(bottom).items():
    if isinstance(v, nnx.Param):
      v.set_value(getattr(model, name)[...])
  _copy_layers(bottom.layers, model.layers, 0, L - n)
  top = nnx.eval_shape(lambda: bert.BertLayers(
      dataclasses.replace(cfg, num_hidden_layers=n), rngs=nnx.Rngs(0)))
  _copy_layers(top, model.layers, L - n, L)
  return bottom, top


# ----------------------------------------------------------------------------
# The retriever.


class PreferenceRetriever(nnx.Module):
  """Preference text -> unit user vector; trainable unit item vectors.

  Args:
    cfg: the config (`num_items` may be 0 when item_init is given).
    item_init: float [I, in_dim] pooled description encodings; item i starts
      at the projection head (deterministic) applied to item_init[i]. With
      trainable_layers > 0 pass the full encoder's pooled, normalised
      vectors: what the pretrained top blocks give at init. None: random
      unit vectors (e.g. a skeleton to restore parameters into).
    pretrained: with `trainable_layers=n`, the encoder whose top n blocks
      initialise ours (e.g. `weights.load_pretrained(minilm_dir)`); None:
      random blocks of shape `cfg.bert`.
    rngs: init randomness.
  """

  def __init__(self, cfg: RetrieverConfig, *,
               item_init: np.ndarray | None = None,
               pretrained: bert.BertModel | None = None, rngs: nnx.Rngs):
    if item_init is not None:
      item_init = np.asarray(item_init, np.float32)
      if item_init.ndim != 2 or item_init.shape[1] != cfg.in_dim:
        raise ValueError(f"item_init shape {item_init.shape} is not "
                         f"[num_items, {cfg.in_dim}]")
      if cfg.num_items not in (0, len(item_init)):
        raise ValueError(f"item_init has {len(item_init)} rows, config "
                         f"num_items={cfg.num_items}")
      cfg = dataclasses.replace(cfg, num_items=len(item_init))
    if cfg.num_items <= 0:
      raise ValueError("num_items must be > 0 (or pass item_init)")
    self.config = cfg
    E, F, D, dt = cfg.in_dim, cfg.hidden, cfg.out_dim, cfg.dtype
    p, w = layers.param, jax.nn.initializers.lecun_normal()
    self.w1 = p(rngs, w, (E, F), ("embed", "mlp"), dt)
    self.b1 = p(rngs, layers.ZEROS, (F,), ("mlp",), dt)
    self.w2 = p(rngs, w, (F, D), ("mlp", None), dt)
    self.b2 = p(rngs, layers.ZEROS, (D,), (None,), dt)
    self.ln_scale = p(rngs, layers.ONES, (D,), ("norm",), dt)
    self.ln_bias = p(rngs, layers.ZEROS, (D,), ("norm",), dt)
    n = cfg.trainable_layers
    if n > 0:
      bcfg = cfg.bert_config()
      if bcfg.hidden_size != E:
        raise ValueError(f"bert hidden_size {bcfg.hidden_size} != in_dim {E}")
      self.top = bert.BertLayers(
          dataclasses.replace(bcfg, num_hidden_layers=n, dtype=dt), rngs=rngs)
      if pretrained is not None:
        L = pretrained.config.num_hidden_layers
        if n > L:
          raise ValueError(f"trainable_layers {n} > encoder blocks {L}")
        _copy_layers(self.top, pretrained.layers, L - n, L)
    elif pretrained is not None:
      raise ValueError("pretrained= needs trainable_layers > 0")
    if item_init is not None:
      init = self.project(jnp.asarray(item_init))  # [I, D] unit
    else:
      init = l2_normalize(jax.random.normal(rngs.params(),
                                            (cfg.num_items, D)))
    # Item vectors (normalised again in items()).
    self.item_emb = p(rngs, lambda *_: init.astype(dt), (cfg.num_items, D),
                      ("vocab", None), dt)

  def project(self, pooled: Array, *, deterministic: bool = True,
              key: Array | None = None) -> Array:
    """The projection head: float [..., in_dim] -> unit float32 [..., D]."""
    cfg = self.config
    x = pooled.astype(cfg.dtype)
    h = jax.nn.relu(layers.dense(x, self.w1[...], self.b1[...]))  # [..., F]
    h = dropout(h, cfg.dropout, key, deterministic)
    y = layers.dense(h, self.w2[...], self.b2[...])  # [..., D]
    y = layers.layer_norm(y, self.ln_scale[...], self.ln_bias[...], LN_EPS)
    return l2_normalize(y)

  def pool(self, text: Array, mask: Array | None = None) -> Array:
    """Cached encodings -> pooled float32 [B, in_dim].

    Args:
      text: [B, in_dim] pooled vectors (trainable_layers=0), or [B, S, in_dim]
        token states below the top blocks (trainable_layers > 0).
      mask: int [B, S] token mask (trainable_layers > 0 only).
    """
    cfg = self.config
    if cfg.trainable_layers == 0:
      if text.ndim != 2 or mask is not None:
        raise ValueError("trainable_layers=0 takes pooled vectors [B, "
                         f"{cfg.in_dim}] and no mask, got {text.shape}")
      return text.astype(jnp.float32)
    if text.ndim != 3 or mask is None:
      raise ValueError("trainable_layers > 0 takes token states [B, S, "
                       f"{cfg.in_dim}] and their mask, got {text.shape}")
    bcfg = dataclasses.replace(cfg.bert_config(), dtype=cfg.dtype)
    h = bert.bert_layers(text, mask, layers.stacked(self.top), bcfg)
    return bert.mean_pool(h, mask, normalize=True)  # [B, in_dim]

  def users(self, text: Array, mask: Array | None = None, *,
            deterministic: bool = True, key: Array | None = None) -> Array:
    """Cached preference-text encodings -> unit float32 [B, D].

    Args:
      text: see `pool`.
      mask: see `pool`.
      deterministic: no dropout (evaluation).
      key: dropout key (training).
    """
    return self.project(self.pool(text, mask), deterministic=deterministic,
                        key=key)

  def items(self) -> Array:
    """Every item's unit vector, float32 [I, D]."""
    return l2_normalize(self.item_emb[...])

  def scores(self, user_vecs: Array, item_ids: Array | None = None) -> Array:
    """cosine / temperature: [B, C] over item_ids [B, C] (pads NEG_INF), or
    [B, I] over every item when item_ids is None."""
    return cosine_scores(user_vecs, self.items(), item_ids,
                         self.config.temperature)


# ----------------------------------------------------------------------------
# Training loss.


def user_vectors(model: PreferenceRetriever, batch: dict[str, Array], *,
                 deterministic: bool = True,
                 key: Array | None = None) -> Array:
  """A batch's users -> unit float32 [B, D].

  Args:
    model: the retriever.
    batch: "user_text" (float [B, in_dim], or [B, S, in_dim] token states
      with "user_mask" int [B, S] when trainable_layers > 0).
    deterministic: no dropout.
    key: dropout key.
  """
  return model.users(batch["user_text"], batch.get("user_mask"),
                     deterministic=deterministic, key=key)


def retrieval_loss(model: PreferenceRetriever, batch: dict[str, Array],
                   key: Array, kind: str = "bce",
                   temperature: float | None = None
                   ) -> tuple[Array, dict[str, Array]]:
  """The retriever's training loss, `loss_fn(model, batch, key)`-shaped.

  Args:
    model: the retriever.
    batch: "user_text" (+ "user_mask", see `user_vectors`), "candidates"
      int32 [B, C] (column 0 = the target, -1 = padding).
    key: dropout randomness.
    kind: "bce" (BCE with logits over the candidates, target 1, others 0;
      UR4Rec's loss) or "infonce" (in-batch softmax: the other rows' targets
      are the negatives, rows with the same target never negatives of each
      other; the other candidate columns are unused).
    temperature: InfoNCE logit divisor (None: the model's temperature).

  Returns:
    (float32 [] loss, {"retrieval": loss}).
  """
  u = user_vectors(model, batch, deterministic=False, key=key)  # [B, D]
  cands = batch["candidates"]  # [B, C]
  if kind == "bce":
    logits = model.scores(u, cands)  # [B, C]
    labels = jnp.zeros(cands.shape, jnp.float32).at[:, 0].set(1.0)
    loss = losses.bce_candidates(logits, labels, cands >= 0)
  elif kind == "infonce":
    t = model.config.temperature if temperature is None else temperature
    target = cands[:, 0]  # [B]
    pos = model.items()[target]  # [B, D]
    valid = target[:, None] != target[None, :]  # [B, S=B]
    loss = losses.info_nce(u, pos, t, valid)
  else:
    raise ValueError(f"unknown retrieval loss {kind!r}: bce or infonce")
  return loss, {"retrieval": loss}
