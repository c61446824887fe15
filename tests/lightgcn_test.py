"""LightGCN: graph normalisation, propagation, sampling, BPR, eval, stage."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import lightgcn as lightgcn_config
from genrec_jax.data.dataset import Dataset, DataError, EvalExamples, Ragged
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.graph import lightgcn as lgcn
from genrec_jax.graph import lightgcn_train
from tests.conftest import REPO

U, I = 11, 13


def _train(seed=0, min_len=2, max_len=6):
  rng = np.random.default_rng(seed)
  rows = [rng.choice(I, size=rng.integers(min_len, max_len + 1), replace=False)
          for _ in range(U)]
  return Ragged.from_lists(rows)


def _dense_reference(train, emb0, layers):
  a = np.zeros((U + I, U + I))
  for u in range(U):
    for i in train[u]:
      a[u, U + i] = a[U + i, u] = 1.0
  deg = a.sum(1)
  dinv = np.where(deg > 0, deg ** -0.5, 0.0)
  a_hat = dinv[:, None] * a * dinv[None, :]
  out, layer = emb0.copy(), emb0.copy()
  for _ in range(layers):
    layer = a_hat @ layer
    out += layer
  return out / (layers + 1)


def test_propagation_matches_dense_numpy():
  train = _train()
  g = lgcn.build_graph(train, U, I)
  emb0 = np.random.default_rng(1).normal(size=(U + I, 5)).astype(np.float32)
  got = lgcn.propagate(jnp.asarray(emb0), g.receivers, g.senders, g.weights, 3)
  np.testing.assert_allclose(np.asarray(got), _dense_reference(train, emb0, 3),
                             rtol=1e-5, atol=1e-6)
  csr = lgcn.propagate_csr(jnp.asarray(emb0), g.indptr, g.senders, g.weights, 3)
  np.testing.assert_allclose(np.asarray(csr), _dense_reference(train, emb0, 3),
                             rtol=1e-5, atol=1e-6)


def test_symmetric_vjp_matches_autodiff():
  g = lgcn.build_graph(_train(), U, I)
  emb0 = jnp.asarray(np.random.default_rng(2).normal(size=(U + I, 3)),
                     jnp.float32)
  w = jnp.asarray(np.random.default_rng(3).normal(size=(U + I, 3)), jnp.float32)
  args = (g.receivers, g.senders, g.weights, 3)
  plain = jax.grad(lambda e: jnp.sum(jnp.sin(lgcn.propagate(e, *args)) * w))(emb0)
  csr_args = (g.indptr, g.senders, g.weights, 3)
  fast = jax.grad(
      lambda e: jnp.sum(jnp.sin(lgcn.propagate_symmetric(e, *csr_args)) * w))(emb0)
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)


def test_duplicates_collapsed_and_csr_sorted():
  train = Ragged.from_lists([[3, 1, 3]] + [[0]] * (U - 1))
  g = lgcn.build_graph(train, U, I)
  assert g.num_edges == U + 1
  np.testing.assert_array_equal(g.user_items(0), [1, 3])


def test_negatives_avoid_user_items():
  train = _train(min_len=8, max_len=12)
  g = lgcn.build_graph(train, U, I)
  users, pos, neg = lgcn.sample_bpr(jax.random.key(0), g.arrays(), U, I, 4001,
                                    lgcn.search_steps_for(g))
  users, pos, neg = map(np.asarray, (users, pos, neg))
  for u, p, n in zip(users, pos, neg):
    items = set(g.user_items(u).tolist())
    assert p in items
    assert n not in items


@pytest.mark.parametrize("propagation", ["csr", "segment_sum"])
def test_bpr_step_decreases_loss(propagation):
  train = _train()
  g = lgcn.build_graph(train, U, I)
  model = lgcn.LightGCN(U, I, 7, 2, propagation=propagation, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(0.05)
  opt = tx.init(params)
  step = lightgcn_train.make_train_step(graphdef, tx, num_users=U, num_items=I,
                                        batch_size=64, search_steps=4,
                                        decay=1e-4)
  losses = []
  for s in range(30):
    params, opt, aux = step(params, opt, g.arrays(), jax.random.key(s))
    losses.append(float(aux["loss"]))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_topk_eval_matches_evaluate_scorer():
  rng = np.random.default_rng(3)
  ue = rng.normal(size=(U, 5)).astype(np.float32)
  ie = rng.normal(size=(I, 5)).astype(np.float32)
  train = _train()
  targets = Ragged.from_lists(
      [[i for i in rng.permutation(I)[:3] if i not in set(train[u])] or
       [next(i for i in range(I) if i not in set(train[u]))]
       for u in range(U)])
  ex = EvalExamples(users=np.arange(U, dtype=np.int32), history=train,
                    targets=targets, exclude=train)
  got = lgcn.evaluate_topk(ue, ie, ex, prefix="test/", k=5, batch_size=4)
  want = metrics_lib.evaluate_scorer(
      lambda users, hist: jnp.asarray(ue[users] @ ie.T), ex, I, prefix="test/",
      ks=(1, 3, 5), batch_size=4)
  for key in ("test/recall@5", "test/ndcg@5", "test/hr@3", "test/ndcg@1"):
    assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_bad_inputs():
  with pytest.raises(DataError, match="outside"):
    lgcn.build_graph(Ragged.from_lists([[0, I]] + [[1]] * (U - 1)), U, I)
  with pytest.raises(DataError, match="empty"):
    lgcn.build_graph(Ragged.from_lists([[]] * U), U, I)


def _tiny_dataset(path):
  train = _train()
  test_t = Ragged.from_lists(
      [[i for i in range(I) if i not in set(train[u])][:2] for u in range(U)])
  ds = Dataset(
      name="tiny", num_users=U, num_items=I, item_ids=[str(i) for i in range(I)],
      user_ids=[str(u) for u in range(U)], item_fields={"title": ["t"] * I},
      sequences=train, timestamps=None, train=train, valid=None,
      test=EvalExamples(np.arange(U, dtype=np.int32), train, test_t, train),
      split="given")
  ds.save(path / "dataset")


def test_run_and_resume(tmp_path):
  _tiny_dataset(tmp_path)
  cfg = lightgcn_config.get_config("tiny")
  m = lightgcn_train.run(cfg, str(tmp_path))
  emb = np.load(tmp_path / "lightgcn" / "item_emb.npy")
  assert emb.shape == (I, 7)
  assert 0.0 <= m["test/recall@20"] <= 1.0 and m["epochs"] == 2
  on_disk = json.loads((tmp_path / "lightgcn" / "metrics.json").read_text())
  assert on_disk["test/ndcg@20"] == pytest.approx(m["test/ndcg@20"])
  cfg.train.num_epochs = 3  # resumes from epoch 2's checkpoint
  assert lightgcn_train.run(cfg, str(tmp_path))["epochs"] == 3


def test_binary_bad_workdir(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.train_lightgcn",
       "--config=configs/lightgcn.py:tiny", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "dataset" in proc.stderr.splitlines()[-1]
