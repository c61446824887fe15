"""UR4Rec model pieces: losses against numpy, retriever, multimodal views."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genrec_jax.models import bert
from genrec_jax.models import layers
from genrec_jax.ur4rec import losses
from genrec_jax.ur4rec import multimodal
from genrec_jax.ur4rec import retriever as retriever_lib

# Tiny odd dimensions.
I, E, D, B = 7, 10, 6, 5
TINY_BERT = bert.BertConfig(vocab_size=23, hidden_size=E, num_hidden_layers=3,
                            num_attention_heads=2, intermediate_size=13,
                            max_position_embeddings=11)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _rand(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _grads(model, f):
  """Jitted gradient of f(model) wrt the model's nnx.Params (a State)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return jax.jit(jax.grad(lambda p: f(nnx.merge(graphdef, p, rest))))(params)


# ----------------------------------------------------------------------------
# Losses against numpy.


def _np_info_nce(a, b, t, valid=None):
  a, b = _unit(a.astype(np.float64)), _unit(b.astype(np.float64))
  n = len(a)
  total = 0.0
  for i in range(n):
    terms = []
    for j in range(n):
      if valid is None or valid[i, j] or i == j:
        terms.append(np.exp(a[i] @ b[j] / t))
    total += -np.log(np.exp(a[i] @ b[i] / t) / np.sum(terms))
  return total / n


def test_info_nce_matches_numpy():
  a, b = _rand(B, D, seed=1), _rand(B, D, seed=2)
  np.testing.assert_allclose(losses.info_nce(a, b, 0.3),
                             _np_info_nce(a, b, 0.3), rtol=1e-5)
  valid = np.random.default_rng(3).random((B, B)) > 0.4
  np.testing.assert_allclose(losses.info_nce(a, b, 0.3, valid),
                             _np_info_nce(a, b, 0.3, valid), rtol=1e-5)
  # The positive is the diagonal: swapping rows of b changes the loss.
  assert abs(float(losses.info_nce(a, b[::-1], 0.3)) -
             _np_info_nce(a, b, 0.3)) > 1e-3


def test_symmetric_info_nce_matches_numpy():
  a, b = _rand(B, D, seed=4), _rand(B, D, seed=5)
  want = 0.5 * (_np_info_nce(a, b, 0.07) + _np_info_nce(b, a, 0.07))
  np.testing.assert_allclose(losses.symmetric_info_nce(a, b), want,
                             rtol=1e-5)
  assert abs(_np_info_nce(a, b, 0.07) - _np_info_nce(b, a, 0.07)) > 1e-3


def test_diversity_logdet_matches_slogdet():
  x = _rand(B, D, seed=6)
  z = _unit(x.astype(np.float64))
  sign, logdet = np.linalg.slogdet(z @ z.T + 1e-2 * np.eye(B))
  assert sign > 0
  np.testing.assert_allclose(losses.diversity_logdet(x, 1e-2), -logdet,
                             rtol=1e-4)
  # Duplicated rows: finite, and worse than distinct rows.
  dup = np.concatenate([x[:2], x[:2], x[:1]])
  v = float(losses.diversity_logdet(dup, 1e-2))
  assert np.isfinite(v) and v > -logdet
  # Finite gradient.
  g = jax.grad(lambda y: losses.diversity_logdet(y, 1e-3))(jnp.asarray(dup))
  assert np.all(np.isfinite(g))


def test_diversity_cosine_matches_loops():
  x = _rand(B, D, seed=7)
  z = _unit(x.astype(np.float64))
  pairs = [z[i] @ z[j] for i in range(B) for j in range(B) if i != j]
  np.testing.assert_allclose(losses.diversity_cosine(x), np.mean(pairs),
                             rtol=1e-5)


def test_modality_consistency_matches_numpy():
  t, v = _rand(B, D, seed=8), _rand(B, D, seed=9) * 3.0
  want = np.mean((_unit(t) - _unit(v)) ** 2)
  np.testing.assert_allclose(losses.modality_consistency(t, v), want,
                             rtol=1e-5)
  # Scale-free: only directions count.
  np.testing.assert_allclose(losses.modality_consistency(t, 5.0 * t), 0.0,
                             atol=1e-7)


def test_bpr_matches_numpy():
  pos, neg = _rand(B, seed=10), _rand(B, 3, seed=11)
  want = np.mean(-np.log(_sigmoid(pos[:, None] - neg)))
  np.testing.assert_allclose(losses.bpr(pos, neg), want, rtol=1e-5)
  mask = np.array([[1, 0, 1]] * B, bool)
  want = np.mean(-np.log(_sigmoid(pos[:, None] - neg[:, [0, 2]])))
  np.testing.assert_allclose(losses.bpr(pos, neg, mask), want, rtol=1e-5)


def test_bce_candidates_matches_numpy():
  logits = _rand(B, 4, seed=12) * 4.0
  labels = np.zeros((B, 4), np.float32)
  labels[:, 0] = 1.0
  mask = np.ones((B, 4), bool)
  mask[1, 3] = mask[2, 2] = False
  total, count = 0.0, 0
  for b in range(B):
    for c in range(4):
      if mask[b, c]:
        p = _sigmoid(float(logits[b, c]))
        y = labels[b, c]
        total += -(y * np.log(p) + (1 - y) * np.log(1 - p))
        count += 1
  np.testing.assert_allclose(losses.bce_candidates(logits, labels, mask),
                             total / count, rtol=1e-5)
  # Stable at large logits.
  big = losses.bce_candidates(jnp.array([[80.0, -80.0]]),
                              jnp.array([[0.0, 1.0]]))
  np.testing.assert_allclose(big, 80.0, rtol=1e-5)


def test_uncertainty_and_fixed_weights():
  vals = {"a": 0.7, "b": 2.5, "c": 0.1}
  uw = losses.UncertaintyWeights(("a", "b", "c"))
  # s = 0 at init: the plain sum.
  np.testing.assert_allclose(uw(vals), sum(vals.values()), rtol=1e-6)
  s = np.array([0.3, -1.2, 2.0], np.float32)
  uw.log_var.set_value(jnp.asarray(s))
  want = sum(np.exp(-s[i]) * vals[k] + s[i]
             for i, k in enumerate(("a", "b", "c")))
  np.testing.assert_allclose(uw(vals), want, rtol=1e-5)
  # Dict order does not matter; arrays go by position.
  np.testing.assert_allclose(uw({"c": 0.1, "a": 0.7, "b": 2.5}), want,
                             rtol=1e-5)
  ua = losses.UncertaintyWeights(3)
  ua.log_var.set_value(jnp.asarray(s))
  np.testing.assert_allclose(ua(jnp.array([0.7, 2.5, 0.1])), want, rtol=1e-5)
  # The gradient wrt s_i is 1 - exp(-s_i) L_i.
  g = nnx.grad(lambda m: m(vals))(uw)
  np.testing.assert_allclose(
      g.log_var[...], 1 - np.exp(-s) * np.array([0.7, 2.5, 0.1]), rtol=1e-5)
  with pytest.raises(ValueError):
    uw({"a": 1.0})
  np.testing.assert_allclose(
      losses.fixed_weights(vals, {"a": 1.0, "b": 0.1, "c": 0.2}),
      0.7 + 0.25 + 0.02, rtol=1e-6)
  np.testing.assert_allclose(
      losses.fixed_weights(jnp.array([0.7, 2.5]), [2.0, 1.0]), 3.9, rtol=1e-6)


# ----------------------------------------------------------------------------
# The retriever.


def _retriever(temperature=0.5, **kw):
  cfg = retriever_lib.RetrieverConfig(in_dim=E, hidden=11, out_dim=D,
                                      temperature=temperature, **kw)
  return retriever_lib.PreferenceRetriever(cfg, item_init=_rand(I, E, seed=20),
                                           rngs=nnx.Rngs(0))


def test_retriever_unit_vectors_and_scores():
  model = _retriever(temperature=0.5)
  u = np.asarray(model.users(jnp.asarray(_rand(B, E, seed=21))))
  items = np.asarray(model.items())
  assert u.shape == (B, D) and items.shape == (I, D)
  np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(items, axis=-1), 1.0, rtol=1e-5)
  cands = np.array([[0, 3, 6, -1], [5, 1, -1, -1], [2, 2, 4, 1],
                    [6, 0, 1, 2], [4, -1, 3, 5]], np.int32)
  s = np.asarray(model.scores(jnp.asarray(u), jnp.asarray(cands)))
  for b in range(B):
    for c in range(cands.shape[1]):
      i = cands[b, c]
      want = -1e9 if i < 0 else (u[b] @ items[i]) / (
          np.linalg.norm(u[b]) * np.linalg.norm(items[i])) / 0.5
      np.testing.assert_allclose(s[b, c], want, rtol=1e-5, atol=1e-6)
  full = np.asarray(model.scores(jnp.asarray(u)))
  np.testing.assert_allclose(full, u @ items.T / 0.5, rtol=1e-5, atol=1e-6)
  # Dropout only in training, from the key.
  x = jnp.asarray(_rand(B, E, seed=22))
  u1 = model.users(x, deterministic=False, key=jax.random.key(1))
  u2 = model.users(x, deterministic=False, key=jax.random.key(2))
  assert not np.allclose(u1, u2)
  np.testing.assert_allclose(model.users(x), model.users(x))


def test_items_initialised_from_descriptions():
  item_init = _rand(I, E, seed=20)
  model = _retriever()
  items = np.asarray(model.items())
  for i in range(I):
    np.testing.assert_allclose(
        items[i], np.asarray(model.users(jnp.asarray(item_init[i:i + 1])))[0],
        rtol=1e-5, atol=1e-6)
  # Not trivially equal: items differ from each other.
  assert np.max(np.abs(items[0] - items[1])) > 1e-2


def test_split_bert_top_layers_equal_full_model():
  full = bert.BertModel(TINY_BERT, rngs=nnx.Rngs(3))
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 23, (3, 8)),
                    jnp.int32)
  mask = jnp.asarray(np.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6],
                              np.int32))
  want = np.asarray(full(ids, mask))
  bottom, top = retriever_lib.split_bert(full, 2)
  assert bottom.config.num_hidden_layers == 1
  below = bottom(ids, mask)  # [B, S, E]
  got = bert.bert_layers(below, mask, layers.stacked(top),
                                      TINY_BERT)
  m = np.asarray(mask)[..., None]
  np.testing.assert_allclose(np.asarray(got) * m, want * m, rtol=1e-4,
                             atol=1e-5)


def test_trainable_layers_get_gradient():
  pre = bert.BertModel(TINY_BERT, rngs=nnx.Rngs(4))
  cfg = retriever_lib.RetrieverConfig(
      in_dim=E, hidden=11, out_dim=D, trainable_layers=1, bert=TINY_BERT)
  model = retriever_lib.PreferenceRetriever(
      cfg, item_init=_rand(I, E, seed=20), pretrained=pre, rngs=nnx.Rngs(0))
  # The top block starts as the encoder's last block.
  np.testing.assert_array_equal(model.top.wi[...][0], pre.layers.wi[...][2])
  states = jnp.asarray(_rand(B, 4, E, seed=23))
  mask = jnp.asarray(np.array([[1, 1, 1, 0]] * B, np.int32))
  batch = {"user_text": states, "user_mask": mask,
           "candidates": jnp.asarray(np.array([[1, 2, 3]] * B, np.int32))}
  assert model.users(states, mask).shape == (B, D)
  grads = _grads(model, lambda m: retriever_lib.retrieval_loss(
      m, batch, jax.random.key(0))[0])
  for name in ("q", "k", "wi", "wo", "out_ln_scale"):
    g = np.asarray(grads["top"][name][...])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name
  # Pooled vectors are refused on the token-state path.
  with pytest.raises(ValueError):
    model.users(jnp.zeros((B, E)))
  # Frozen path: no BERT parameters at all.
  frozen = _retriever()
  assert not hasattr(frozen, "top")
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(frozen,
                                                           nnx.Param)))
  assert n_params == E * 11 + 11 + 11 * D + D + 2 * D + I * D


def _hit_rate(model, x, target):
  s = np.asarray(model.scores(model.users(jnp.asarray(x))))  # [N, I]
  return float(np.mean(np.argmax(s, -1) == target))


@pytest.mark.parametrize("kind", ["bce", "infonce"])
def test_retrieval_loss_learns(kind):
  """Users whose text encodings determine their target: held-out HR@1."""
  n_items, dim = 13, 16
  rng = np.random.default_rng(0)
  desc = rng.normal(size=(n_items, dim)).astype(np.float32)
  # Users' texts are a fixed random map of the target's description (so the
  # description init alone does not solve it) plus noise.
  mix = rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)

  def users(n):
    t = rng.integers(0, n_items, n)
    x = desc[t] @ mix + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return x.astype(np.float32), t.astype(np.int32)

  train_x, train_t = users(512)
  test_x, test_t = users(200)
  cfg = retriever_lib.RetrieverConfig(in_dim=dim, hidden=32, out_dim=16,
                                      temperature=0.1, dropout=0.1)
  model = retriever_lib.PreferenceRetriever(cfg, item_init=desc,
                                            rngs=nnx.Rngs(0))
  before = _hit_rate(model, test_x, test_t)
  # Candidates: the target, then every other item.
  others = np.array([[j for j in range(n_items) if j != t] for t in
                     range(n_items)], np.int32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(3e-3, weight_decay=1e-5)
  opt = tx.init(params)
  loss_fn = functools.partial(retriever_lib.retrieval_loss, kind=kind)

  @jax.jit
  def step(params, opt, batch, key):
    def f(p):
      return loss_fn(nnx.merge(graphdef, p, rest), batch, key)[0]
    loss, g = jax.value_and_grad(f)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses_seen = []
  for s in range(300):
    rows = np.random.default_rng(s).integers(0, len(train_x), 32)
    t = train_t[rows]
    batch = {"user_text": jnp.asarray(train_x[rows]),
             "candidates": jnp.asarray(
                 np.concatenate([t[:, None], others[t]], 1))}
    params, opt, loss = step(params, opt, batch, jax.random.key(s))
    losses_seen.append(float(loss))
  model = nnx.merge(graphdef, params, rest)
  after = _hit_rate(model, test_x, test_t)
  assert np.mean(losses_seen[-20:]) < np.mean(losses_seen[:20])
  assert after >= 0.6 and after > before + 0.2, (before, after)


# ----------------------------------------------------------------------------
# Multimodal.


F_DIM, T = 9, 5


def _multimodal(features=None, **kw):
  cfg = multimodal.MultimodalConfig(
      retriever=retriever_lib.RetrieverConfig(in_dim=E, hidden=11, out_dim=D),
      feat_dim=F_DIM, hidden=8, num_heads=3, **kw)
  if features is None:
    features = _rand(I, F_DIM, seed=30)
  return multimodal.MultimodalRetriever(
      cfg, item_init=_rand(I, E, seed=20), item_features=features,
      rngs=nnx.Rngs(0))


def _mm_batch():
  return {
      "user_text": jnp.asarray(_rand(B, E, seed=31)),
      # Right-padded histories; item 0 never appears in a real position.
      "history": jnp.asarray(np.array(
          [[1, 2, 3, -1, -1], [4, 5, 6, 1, -1], [2, -1, -1, -1, -1],
           [6, 5, 4, 3, 2], [-1, -1, -1, -1, -1]], np.int32)),
      "candidates": jnp.asarray(np.array(
          [[3, 0, 4], [2, 6, -1], [5, 1, 0], [1, 3, 6], [4, 2, -1]],
          np.int32)),
  }


def test_cross_modal_attention_uses_every_history_position():
  feats = _rand(I, F_DIM, seed=30)
  batch = _mm_batch()
  model = _multimodal(feats)
  graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  views = jax.jit(lambda r, b: nnx.merge(graphdef, params, r).user_views(b))

  def user_vecs(item=None, b=batch):
    """(fused, visual) user vectors with item's features perturbed."""
    f = feats.copy()
    if item is not None:
      f[item] += 2.0 * _rand(F_DIM, seed=40 + item)
    model.features.set_value(jnp.asarray(f))
    out = views(nnx.split(model, nnx.Param, ...)[2], b)
    return np.asarray(out["user"]), np.asarray(out["user_visual"])

  base, base_vis = user_vecs()
  np.testing.assert_allclose(np.linalg.norm(base, axis=-1), 1.0, rtol=1e-5)
  # Item 1 is the FIRST of row 0's three items and item 3 the last: each
  # changes row 0; rows without the item (2: [2], 4: empty) do not change.
  for item, row in ((1, 0), (3, 0), (6, 1), (2, 2)):
    fused, visual = user_vecs(item)
    assert np.abs(visual[row] - base_vis[row]).max() > 1e-4, (item, row)
    assert np.abs(fused[row] - base[row]).max() > 1e-4, (item, row)
  fused, _ = user_vecs(1)
  np.testing.assert_allclose(fused[2], base[2], rtol=1e-6)
  np.testing.assert_allclose(fused[4], base[4], rtol=1e-6)
  # Item 0 is only ever gathered at padded positions: nothing changes.
  fused, _ = user_vecs(0)
  np.testing.assert_allclose(fused, base, rtol=1e-6, atol=1e-7)
  # Nor does another padding id.
  other = dict(batch, history=jnp.where(batch["history"] < 0, -7,
                                        batch["history"]))
  np.testing.assert_allclose(user_vecs(None, other)[0], base, rtol=1e-6,
                             atol=1e-7)
  # Same query and same first item, different later items: the visual views
  # differ (not a function of one position); the same history: equal.
  b2 = dict(batch, history=jnp.asarray(np.array(
      [[1, 2, 3, -1, -1], [1, 6, 5, -1, -1], [1, -1, -1, -1, -1],
       [1, 2, 3, -1, -1], [1, 2, 3, -1, -1]], np.int32)),
            user_text=jnp.tile(batch["user_text"][:1], (B, 1)))
  _, vis = user_vecs(None, b2)
  assert np.abs(vis[0] - vis[1]).max() > 1e-4
  assert np.abs(vis[0] - vis[2]).max() > 1e-4
  np.testing.assert_allclose(vis[0], vis[3], rtol=1e-6)


def test_multimodal_forward_scores_and_constant_features():
  model = _multimodal()
  batch = _mm_batch()
  out = model.forward(batch)
  for k in ("user_text", "user_visual", "user", "target_text",
            "target_visual"):
    assert out[k].shape == (B, D), k
    rows = slice(0, 4) if k == "user_visual" else slice(None)
    np.testing.assert_allclose(np.linalg.norm(out[k][rows], axis=-1), 1.0,
                               rtol=1e-5)
  # Row 4 has an empty history: no visual view, fused = the text view.
  np.testing.assert_array_equal(out["user_visual"][4], 0.0)
  np.testing.assert_allclose(out["user"][4], out["user_text"][4], rtol=1e-5,
                             atol=1e-6)
  assert out["cand"].shape == (B, 3, D)
  logits = np.asarray(out["logits"])
  np.testing.assert_allclose(logits, model.scores(out["user"],
                                                  batch["candidates"]),
                             rtol=1e-5, atol=1e-6)
  assert logits[1, 2] == -1e9 and logits[4, 2] == -1e9
  full = np.asarray(model.scores(out["user"]))  # [B, I]
  np.testing.assert_allclose(full[0, 3], logits[0, 0], rtol=1e-5)
  # Features are a constant (rest), not a parameter.
  _, params, rest = nnx.split(model, nnx.Param, ...)
  assert isinstance(model.features, multimodal.ItemFeatures)
  assert not isinstance(model.features, nnx.Param)
  assert any(x.shape == (I, F_DIM) for x in jax.tree.leaves(rest))
  assert all(x.shape != (I, F_DIM) for x in jax.tree.leaves(params))
  # Rebuilt from its config alone (a skeleton to restore into, as the
  # trainer does for bf16 compute): the same structure.
  skeleton = nnx.eval_shape(
      lambda: type(model)(model.config, rngs=nnx.Rngs(1)))
  assert jax.tree.structure(nnx.state(skeleton)) == jax.tree.structure(
      nnx.state(model))


def test_multimodal_batch_equals_rows_alone():
  """A batch of 5 holds more history / candidate ids than the 7 items (per
  item projections run on the item table, then gathered); one row alone
  holds fewer (they run on the gathered rows): the same vectors."""
  model = _multimodal()
  batch = _mm_batch()
  assert batch["history"].size > I > batch["history"].shape[1]
  out = model.forward(batch)
  for r in range(B):
    one = model.forward({k: v[r:r + 1] for k, v in batch.items()})
    for k in ("user_visual", "user", "cand", "logits"):
      np.testing.assert_allclose(one[k][0], out[k][r], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{k} row {r}")


def test_multimodal_loss_fixed_and_uncertainty():
  model = _multimodal()
  batch = _mm_batch()
  key = jax.random.key(0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def both(p, r):
    m = nnx.merge(graphdef, p, r)
    return (multimodal.multimodal_loss(m, batch, key),
            multimodal.multimodal_loss(m, batch, key, weights="uncertainty"))

  (total, aux), (total_u, aux_u) = both(params, rest)
  want = sum(multimodal.DEFAULT_WEIGHTS[k] * float(aux[k])
             for k in multimodal.LOSS_NAMES)
  np.testing.assert_allclose(total, want, rtol=1e-5)
  for k in multimodal.LOSS_NAMES:
    assert np.isfinite(float(aux[k])) and float(aux[k]) >= -1e-6, k
  # Uncertainty weighting at s = 0 is the plain sum; s gets gradient.
  np.testing.assert_allclose(
      total_u, sum(float(aux_u[k]) for k in multimodal.LOSS_NAMES),
      rtol=1e-5)
  np.testing.assert_allclose(aux_u["weight/retrieval"], 1.0)
  # Jitted through the trainer's split (features in rest).
  grads = _grads(model, lambda m: multimodal.multimodal_loss(
      m, batch, key, weights="uncertainty", retrieval="bpr",
      diversity="cosine")[0])
  g = np.asarray(grads["uncertainty"]["log_var"][...])
  assert np.all(np.abs(g) > 0)
  for name in ("q", "k", "v", "o", "v_w1", "user_gate", "item_gate"):
    assert np.abs(np.asarray(grads[name][...])).max() > 0, name
  assert np.abs(np.asarray(grads["text"]["item_emb"][...])).max() > 0
  for x in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(x)))
