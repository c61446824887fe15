"""UR4Rec multimodal extension: text + a second item modality (e.g. CLIP).

Two views of every user and item, fused:

  * text: a `PreferenceRetriever` (preference text -> user vector; trainable
    item vectors initialised from descriptions);
  * visual: constant item features [I, D_feat] (loaded elsewhere from a .npy;
    held as `ItemFeatures`, not an nnx.Param, so the trainer passes them as a
    per-run constant in `rest`) through a projection D_feat -> hidden -> D,
    LayerNorm, L2-normalise. A user's visual preference is multi-head
    cross-modal attention: the query is the user's text vector, keys and
    values are the visual vectors of the user's history items [B, T] (-1 =
    padding, masked), so it depends on every real history position (the
    reference implementation attends over a length-1 sequence, a linear mix;
    METHODS.md section 8 addendum).
  * fused: a learned per-dimension gate g = sigmoid(W [t; v] + b), vector
    normalise(g * t + (1 - g) * v), for users and items (separate gates);
    score = cosine / temperature over the candidates.

`multimodal_loss` = retrieval (BCE over the candidates, or BPR)
+ 0.1 modality consistency (text vs visual, users and targets)
+ 0.2 symmetric text <-> visual InfoNCE of the targets (temperature 0.07)
+ 0.05 diversity of the batch's fused user vectors (-log det or cosine);
or the same four terms under learned uncertainty weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.models import bert
from genrec_jax.models import layers
from genrec_jax.ur4rec import losses
from genrec_jax.ur4rec import retriever as retriever_lib

Array = jax.Array

NEG_INF = layers.NEG_INF
# The four loss terms, in UncertaintyWeights order.
LOSS_NAMES = ("retrieval", "consistency", "infonce", "diversity")
# METHODS.md section 8 weights of the multimodal loss.
DEFAULT_WEIGHTS = {"retrieval": 1.0, "consistency": 0.1, "infonce": 0.2,
                   "diversity": 0.05}
# Ridge of the diversity Gram matrix.
DIVERSITY_EPS = 1e-3


class ItemFeatures(nnx.Variable):
  """Constant per-item features [I, D_feat] (e.g. CLIP image embeddings).

  Not an nnx.Param: `nnx.split(model, nnx.Param, ...)` puts it in `rest`, so
  the trainer places it on the device once and passes it to every step
  (never trained, never checkpointed; reloaded from its .npy).
  """


@dataclasses.dataclass(frozen=True)
class MultimodalConfig:
  """Multimodal retriever hyper-parameters."""
  # The text view (its out_dim D is the width of every view).
  retriever: retriever_lib.RetrieverConfig = dataclasses.field(
      default_factory=retriever_lib.RetrieverConfig)
  # Width of the item features D_feat (CLIP ViT-B/32: 512).
  feat_dim: int = 512
  # Hidden width of the feature projection.
  hidden: int = 512
  # Heads of the cross-modal attention (D divisible by it).
  num_heads: int = 4
  # Dropout after the feature projection's ReLU (training only).
  dropout: float = 0.1
  # Fused score = cosine / temperature.
  temperature: float = 1.0
  # Parameter dtype.
  dtype: Any = jnp.float32


def _gather(table: Array, ids: Array) -> tuple[Array, Array]:
  """table [I, ...] rows at ids [...] (id < 0 -> row 0) and the valid mask."""
  valid = ids >= 0
  return table[jnp.where(valid, ids, 0)], valid


def _per_row(fn, tables: tuple[Array, ...], ids: Array) -> Array:
  """fn(*rows) of the tables' rows at ids (id < 0 -> row 0).

  `fn` maps rows independently, so it runs on whichever is smaller: every
  row of the tables (then gathered; a training batch's history and
  candidates hold more ids than ML-100K has items) or the gathered rows
  (batch-1 inference). The values are the same either way.
  """
  if ids.size > tables[0].shape[0]:
    return _gather(fn(*tables), ids)[0]
  return fn(*(_gather(t, ids)[0] for t in tables))


class MultimodalRetriever(nnx.Module):
  """Text + visual views of users and items, fused.

  Args:
    cfg: the config (`retriever.num_items` may be 0 when item_init is given).
    item_init: float [I, in_dim] item description encodings (text view).
    item_features: float [I, feat_dim] item features; None: zeros (a
      skeleton to restore parameters into; set `features` before use).
    pretrained: the text encoder whose top blocks initialise the text view
      (retriever.trainable_layers > 0).
    rngs: init randomness.
  """

  def __init__(self, cfg: MultimodalConfig, *,
               item_init: np.ndarray | None = None,
               item_features: np.ndarray | None = None,
               pretrained: bert.BertModel | None = None, rngs: nnx.Rngs):
    self.text = retriever_lib.PreferenceRetriever(
        cfg.retriever, item_init=item_init, pretrained=pretrained, rngs=rngs)
    cfg = dataclasses.replace(cfg, retriever=self.text.config)
    self.config = cfg
    I = cfg.retriever.num_items
    if item_features is None:
      item_features = np.zeros((I, cfg.feat_dim), np.float32)
    item_features = np.asarray(item_features, np.float32)
    if item_features.shape != (I, cfg.feat_dim):
      raise ValueError(f"item_features shape {item_features.shape} is not "
                       f"[{I}, {cfg.feat_dim}]")
    self.features = ItemFeatures(jnp.asarray(item_features))
    Fd, F, D, N = cfg.feat_dim, cfg.hidden, cfg.retriever.out_dim, cfg.num_heads
    H = layers.default_head_dim(D, N)
    dt, p = cfg.dtype, layers.param
    w = jax.nn.initializers.lecun_normal()
    z, o = layers.ZEROS, layers.ONES
    # Feature projection D_feat -> F -> D, LayerNorm.
    self.v_w1 = p(rngs, w, (Fd, F), ("embed", "mlp"), dt)
    self.v_b1 = p(rngs, z, (F,), ("mlp",), dt)
    self.v_w2 = p(rngs, w, (F, D), ("mlp", None), dt)
    self.v_b2 = p(rngs, z, (D,), (None,), dt)
    self.v_ln_scale = p(rngs, o, (D,), ("norm",), dt)
    self.v_ln_bias = p(rngs, z, (D,), ("norm",), dt)
    # Cross-modal attention: text query, visual history keys / values.
    hw = jax.nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    self.q = p(rngs, hw, (D, N, H), ("embed", "heads", "kv"), dt)
    self.k = p(rngs, hw, (D, N, H), ("embed", "heads", "kv"), dt)
    self.v = p(rngs, hw, (D, N, H), ("embed", "heads", "kv"), dt)
    ow = jax.nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.o = p(rngs, ow, (N, H, D), ("heads", "kv", "embed"), dt)
    self.o_bias = p(rngs, z, (D,), ("norm",), dt)
    self.a_ln_scale = p(rngs, o, (D,), ("norm",), dt)
    self.a_ln_bias = p(rngs, z, (D,), ("norm",), dt)
    # Fusion gates over [text; visual].
    self.user_gate = p(rngs, w, (2 * D, D), ("mlp", "embed"), dt)
    self.user_gate_bias = p(rngs, z, (D,), ("norm",), dt)
    self.item_gate = p(rngs, w, (2 * D, D), ("mlp", "embed"), dt)
    self.item_gate_bias = p(rngs, z, (D,), ("norm",), dt)
    self.uncertainty = losses.UncertaintyWeights(LOSS_NAMES)

  # -- views ------------------------------------------------------------------

  def project_features(self, feats: Array, *, deterministic: bool = True,
                       key: Array | None = None) -> Array:
    """float [..., D_feat] -> unit float32 [..., D] visual vectors."""
    cfg = self.config
    x = feats.astype(cfg.dtype)
    h = jax.nn.relu(layers.dense(x, self.v_w1[...], self.v_b1[...]))
    h = retriever_lib.dropout(h, cfg.dropout, key, deterministic)
    y = layers.dense(h, self.v_w2[...], self.v_b2[...])  # [..., D]
    y = layers.layer_norm(y, self.v_ln_scale[...], self.v_ln_bias[...],
                          retriever_lib.LN_EPS)
    return retriever_lib.l2_normalize(y)

  def visual_items(self, ids: Array | None = None, *,
                   deterministic: bool = True,
                   key: Array | None = None) -> Array:
    """Visual item vectors: float32 [..., D] at ids [...] (padding -> item
    0's vector; mask it), or [I, D] for every item when ids is None.

    Every item is projected once and the rows gathered (as the text view's
    item table): a training batch's history and candidates hold more item
    occurrences than a catalogue such as ML-100K has items (128 x (30 + 32)
    = 7,936 vs 1,682 at configs/ur4rec.py's defaults). In training the
    dropout mask is therefore per item, shared by its occurrences.
    """
    table = self.project_features(self.features[...],
                                  deterministic=deterministic,
                                  key=key)  # [I, D]
    return table if ids is None else _gather(table, ids)[0]

  def text_items(self, ids: Array | None = None) -> Array:
    """Text item vectors: float32 [..., D] at ids (padding -> item 0), or
    [I, D]."""
    vecs = self.text.items()  # [I, D]
    return vecs if ids is None else _gather(vecs, ids)[0]

  def visual_user(self, user_text: Array, history: Array, *,
                  deterministic: bool = True, key: Array | None = None,
                  table: Array | None = None) -> Array:
    """Cross-modal attention of the text preference over the history.

    Args:
      user_text: float [B, D] the users' text vectors (queries).
      history: int [B, T] history item ids, -1 = padding.
      deterministic: no dropout.
      key: dropout key of the feature projection.
      table: float [I, D] the visual item vectors when already projected
        (`visual_items()`; then `deterministic` and `key` are unused).

    Returns:
      unit float32 [B, D]; zero for an empty history (no visual evidence:
      the fused vector is then the text view's direction).
    """
    cfg = self.config
    D = cfg.retriever.out_dim
    H = D // cfg.num_heads
    if table is None:
      table = self.visual_items(deterministic=deterministic, key=key)
    valid = history >= 0  # [B, T]
    u = user_text.astype(cfg.dtype)
    q = jnp.einsum("BD,DNH->BNH", u, self.q[...])  # [B, N, H]

    def keys_values(rows):  # [..., D] -> [..., 2, N, H]
      kv = jnp.stack([self.k[...], self.v[...]])  # [2, D, N, H]
      return jnp.einsum("...D,CDNH->...CNH", rows.astype(cfg.dtype), kv)

    kv = _per_row(keys_values, (table,), history)  # [B, T, 2, N, H]
    k, v = kv[:, :, 0], kv[:, :, 1]  # [B, T, N, H] each
    logits = jnp.einsum("BNH,BTNH->BNT", q, k,
                        preferred_element_type=jnp.float32)
    logits = logits * layers.inv_sqrt(H)  # [B, N, T]
    logits = jnp.where(valid[:, None, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)  # [B, N, T]
    probs = probs * valid[:, None, :]  # empty history: all zero
    a = jnp.einsum("BNT,BTNH->BNH", probs.astype(v.dtype), v)  # [B, N, H]
    y = jnp.einsum("BNH,NHD->BD", a, self.o[...]) + self.o_bias[...]
    y = layers.layer_norm(y, self.a_ln_scale[...], self.a_ln_bias[...],
                          retriever_lib.LN_EPS)  # [B, D]
    any_valid = jnp.any(valid, axis=-1, keepdims=True)  # [B, 1]
    return jnp.where(any_valid, retriever_lib.l2_normalize(y), 0.0)

  def _fuse(self, t: Array, v: Array, gate: Array, bias: Array) -> Array:
    """Gated sum of unit views t, v [..., D] -> unit float32 [..., D]."""
    tv = jnp.concatenate([t, v], axis=-1).astype(self.config.dtype)
    g = jax.nn.sigmoid(layers.dense(tv, gate, bias)).astype(jnp.float32)
    return retriever_lib.l2_normalize(g * t + (1.0 - g) * v)

  def fuse_users(self, text: Array, visual: Array) -> Array:
    """User views [B, D] x 2 -> fused unit float32 [B, D] (the text view
    where the visual one is zero: an empty history)."""
    fused = self._fuse(text, visual, self.user_gate[...],
                       self.user_gate_bias[...])
    seen = jnp.any(visual != 0, axis=-1, keepdims=True)  # [B, 1]
    return jnp.where(seen, fused, text.astype(jnp.float32))

  def fuse_items(self, text: Array, visual: Array) -> Array:
    """Item views [..., D] x 2 -> fused unit float32 [..., D]."""
    return self._fuse(text, visual, self.item_gate[...],
                      self.item_gate_bias[...])

  # -- users, items, scores ---------------------------------------------------

  def users(self, batch: Mapping[str, Array], *, deterministic: bool = True,
            key: Array | None = None) -> Array:
    """Fused unit user vectors float32 [B, D] of a batch ("user_text"
    [+ "user_mask"], "history")."""
    return self.user_views(batch, deterministic=deterministic,
                           key=key)["user"]

  def user_views(self, batch: Mapping[str, Array], *,
                 deterministic: bool = True, key: Array | None = None,
                 table: Array | None = None) -> dict[str, Array]:
    """{"user_text", "user_visual", "user"}: unit float32 [B, D] each
    (user_visual is zero for an empty history); `table`: the visual item
    vectors when already projected."""
    kt, kv = (None, None) if key is None else jax.random.split(key)
    ut = retriever_lib.user_vectors(self.text, batch,
                                    deterministic=deterministic, key=kt)
    uv = self.visual_user(ut, batch["history"], deterministic=deterministic,
                          key=kv, table=table)
    return {"user_text": ut, "user_visual": uv,
            "user": self.fuse_users(ut, uv)}

  def items(self, ids: Array | None = None, *,
            table: Array | None = None) -> Array:
    """Fused unit item vectors float32 [..., D] at ids [...] (padding ->
    item 0), or [I, D] for every item when ids is None; `table`: the
    visual item vectors when already projected."""
    if table is None:
      table = self.visual_items()
    if ids is None:
      return self.fuse_items(self.text_items(), table)
    return _per_row(self.fuse_items, (self.text_items(), table), ids)

  def scores(self, user_vecs: Array, item_ids: Array | None = None) -> Array:
    """Fused cosine / temperature: [B, C] over item_ids [B, C] (padding
    NEG_INF), or [B, I] over every item when item_ids is None."""
    t = self.config.temperature
    if item_ids is None:
      return jnp.einsum("BD,ID->BI", user_vecs, self.items()) / t
    s = jnp.einsum("BD,BCD->BC", user_vecs, self.items(item_ids)) / t
    return jnp.where(item_ids >= 0, s, NEG_INF)

  def forward(self, batch: Mapping[str, Array], *, deterministic: bool = True,
              key: Array | None = None) -> dict[str, Array]:
    """Every view a loss needs.

    Args:
      batch: "user_text" (+ "user_mask"), "history" int [B, T] (-1 pad),
        "candidates" int [B, C] (column 0 = the target, -1 = padding).
      deterministic: no dropout.
      key: dropout key.

    Returns:
      {"user_text", "user_visual", "user": [B, D];
       "cand_text", "cand_visual", "cand": [B, C, D];
       "target_text", "target_visual": [B, D] (column 0);
       "logits": [B, C] fused cosine / temperature, padding NEG_INF}.
    """
    ku, kv = (None, None) if key is None else jax.random.split(key)
    # One projection of every item serves the history and the candidates.
    table = self.visual_items(deterministic=deterministic, key=kv)  # [I, D]
    out = self.user_views(batch, deterministic=deterministic, key=ku,
                          table=table)
    cands = batch["candidates"]  # [B, C]
    ct = self.text_items(cands)  # [B, C, D]
    cv = _gather(table, cands)[0]  # [B, C, D]
    cf = self.items(cands, table=table)  # [B, C, D]
    logits = jnp.einsum("BD,BCD->BC", out["user"], cf)
    logits = jnp.where(cands >= 0, logits / self.config.temperature, NEG_INF)
    out.update(cand_text=ct, cand_visual=cv, cand=cf, target_text=ct[:, 0],
               target_visual=cv[:, 0], logits=logits)
    return out


def multimodal_loss(model: MultimodalRetriever, batch: Mapping[str, Array],
                    key: Array,
                    weights: Mapping[str, float] | str = "default",
                    retrieval: str = "bce", diversity: str = "logdet",
                    infonce_temperature: float = 0.07
                    ) -> tuple[Array, dict[str, Array]]:
  """The multimodal training loss, `loss_fn(model, batch, key)`-shaped.

  Terms: "retrieval" (BCE with logits over the candidates, target = column
  0; or "bpr": target vs the other real candidates), "consistency"
  (modality_consistency of the users' and the targets' text vs visual
  views), "infonce" (symmetric text <-> visual InfoNCE over the batch's
  targets; rows with the same target are not each other's negatives),
  "diversity" (of the batch's fused user vectors: "logdet", per row, or
  "cosine", each shifted to a minimum of 0).

  Args:
    model: the multimodal retriever.
    batch: see `MultimodalRetriever.forward`.
    key: dropout randomness.
    weights: {name: weight} for LOSS_NAMES, "default" (DEFAULT_WEIGHTS) or
      "uncertainty" (the model's learned UncertaintyWeights).
    retrieval: "bce" or "bpr".
    diversity: "logdet" or "cosine".
    infonce_temperature: the text <-> visual InfoNCE temperature.

  Returns:
    (float32 [] total, {term: float32 []} plus "weight/<term>" under
    uncertainty weighting).
  """
  out = model.forward(batch, deterministic=False, key=key)
  cands = batch["candidates"]  # [B, C]
  real = cands >= 0  # [B, C]
  logits = out["logits"]
  if retrieval == "bce":
    labels = jnp.zeros(cands.shape, jnp.float32).at[:, 0].set(1.0)
    ret = losses.bce_candidates(logits, labels, real)
  elif retrieval == "bpr":
    ret = losses.bpr(logits[:, 0], logits[:, 1:], real[:, 1:])
  else:
    raise ValueError(f"unknown retrieval loss {retrieval!r}: bce or bpr")
  cons = 0.5 * (
      losses.modality_consistency(out["user_text"], out["user_visual"]) +
      losses.modality_consistency(out["target_text"], out["target_visual"]))
  target = cands[:, 0]  # [B]
  valid = target[:, None] != target[None, :]  # [B, S=B]
  nce = losses.symmetric_info_nce(out["target_text"], out["target_visual"],
                                  infonce_temperature, valid)
  # Both diversity terms are shifted to a minimum of 0 (the uncertainty
  # weighting needs terms >= 0: exp(-s) L + s is unbounded below for L < 0)
  # and the log-det is taken per row (batch-size free, in [0, log(1/eps)]).
  n = out["user"].shape[0]
  if diversity == "logdet":
    eps = DIVERSITY_EPS
    div = (losses.diversity_logdet(out["user"], eps) +
           n * np.log1p(eps)) / n
  elif diversity == "cosine":
    div = losses.diversity_cosine(out["user"]) + 1.0 / (n - 1)
  else:
    raise ValueError(f"unknown diversity {diversity!r}: logdet or cosine")
  terms = {"retrieval": ret, "consistency": cons, "infonce": nce,
           "diversity": div}
  aux = dict(terms)
  if isinstance(weights, str) and weights == "uncertainty":
    total = model.uncertainty(terms)
    w = model.uncertainty.weights()  # [K]
    for i, name in enumerate(model.uncertainty.names):
      aux[f"weight/{name}"] = w[i]
  else:
    if isinstance(weights, str):
      if weights != "default":
        raise ValueError(f"unknown weights {weights!r}: a dict, 'default' "
                         "or 'uncertainty'")
      weights = DEFAULT_WEIGHTS
    total = losses.fixed_weights(terms, weights)
  return total, aux
