"""LightGCN: graph normalisation, propagation, sampling, BPR, eval, stage,
resume, model folder."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import lightgcn as lightgcn_config
from genrec_jax.data.dataset import Dataset, DataError, EvalExamples, Ragged
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.graph import lightgcn as lgcn
from genrec_jax.graph import lightgcn_train
from genrec_jax.training import loop
from genrec_jax.training import optimizer
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
  model = lgcn.LightGCN(U, I, 7, 2, propagation=propagation, graph=g,
                        rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  assert {path for path, _ in nnx.to_flat_state(rest)} == {
      (f"graph_{k}",) for k in lgcn.GRAPH_FIELDS}  # constants, not params
  tcfg = lightgcn_config.get_config("tiny").train
  tcfg.learning_rate = 0.05
  tx = optimizer.make_optimizer(tcfg, 30)
  opt = tx.init(params)
  traces = []
  step = loop.make_train_step(
      graphdef, tx, lightgcn_train.make_loss(
          num_users=U, num_items=I, batch_size=64, search_steps=4,
          decay=1e-4), on_trace=lambda: traces.append(1))
  losses = []
  for s in range(30):
    params, opt, aux = step(params, opt, rest, {}, jax.random.key(0),
                            np.int32(s))
    losses.append(float(aux["loss"]))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
  assert len(traces) == 1


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


def _log(path):
  return json.loads((path / "lightgcn" / "train_log.json").read_text())


def test_run_and_resume(tmp_path):
  _tiny_dataset(tmp_path / "a")
  cfg = lightgcn_config.get_config("tiny")
  m = lightgcn_train.run(cfg, str(tmp_path / "a"))
  emb = np.load(tmp_path / "a" / "lightgcn" / "item_emb.npy")
  assert emb.shape == (I, 7)
  assert 0.0 <= m["test/recall@20"] <= 1.0 and m["epochs"] == 2
  spe = m["steps_per_epoch"]
  assert m["steps"] == 2 * spe and m["selection"] == "last epoch"
  on_disk = json.loads(
      (tmp_path / "a" / "lightgcn" / "metrics.json").read_text())
  assert on_disk["test/ndcg@20"] == pytest.approx(m["test/ndcg@20"])
  log2 = _log(tmp_path / "a")
  assert log2["traces"] == log2["batch_shapes"] == 1  # compiled once
  assert [p["step"] for p in log2["curve"]] == [spe, 2 * spe]
  assert [e["step"] for e in log2["evals"]] == [spe, 2 * spe]  # monitor only
  # Resumes from step 2 * spe: the curve continues the first run's ...
  cfg.train.num_epochs = 3
  m3 = lightgcn_train.run(cfg, str(tmp_path / "a"))
  assert m3["epochs"] == 3 and m3["steps"] == 3 * spe
  log3 = _log(tmp_path / "a")
  assert [p["step"] for p in log3["curve"]] == [spe, 2 * spe, 3 * spe]
  assert log3["curve"][:2] == log2["curve"]
  assert m3["curve"][:2] == m["curve"]
  # ... and the final params equal an uninterrupted 3-epoch run's.
  _tiny_dataset(tmp_path / "b")
  m_b = lightgcn_train.run(cfg, str(tmp_path / "b"))
  assert ([p["loss"] for p in _log(tmp_path / "b")["curve"]]
          == [p["loss"] for p in log3["curve"]])
  for name in ("user_emb.npy", "item_emb.npy"):
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "lightgcn" / name),
        np.load(tmp_path / "b" / "lightgcn" / name))
  assert m_b["test/ndcg@20"] == m3["test/ndcg@20"]


def _brute_force_hr(scores, examples, k):
  """HR@k (any target in the top k) by a full numpy argsort, exclude
  items removed."""
  scores = np.array(scores, dtype=np.float64)
  ex = examples.exclude
  scores[ex.row_ids(), ex.values] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return float(np.mean([bool(set(order[r].tolist())
                             & set(examples.targets[r].tolist()))
                        for r in range(len(examples))]))


def test_model_folder_ranker(tmp_path):
  _tiny_dataset(tmp_path)
  ds = Dataset.load(tmp_path / "dataset")
  cfg = lightgcn_config.get_config("tiny")
  out = tmp_path / "lightgcn"
  result, _ = lightgcn_train.train_model(cfg, ds, out)
  embed = lightgcn_train.make_embed(nnx.graphdef(result.model))
  users_e, items_e = lightgcn_train.embeddings(embed, result.model)
  lightgcn_train.save_model(out, users_e, items_e, cfg.model)
  ranker = lightgcn_train.load_ranker(out, ds)
  assert ranker.kind == "lightgcn" and ranker.num_items == I
  # Reloaded scores == the in-memory model's, exactly.
  want = users_e[ds.test.users] @ items_e.T  # [E, I]
  np.testing.assert_array_equal(ranker.scores(ds.test), want)
  # rank() with history masking == brute force == evaluation.metrics.
  metrics = metrics_lib.evaluate_scorer(
      lambda users, hist: jnp.asarray(users_e[users] @ items_e.T), ds.test,
      I, prefix="test/", batch_size=4)
  for k in (1, 3, 5, 10):
    top = ranker.rank(ds.test, top_n=k, exclude_history=True)
    assert not any(set(top[r].tolist()) & set(ds.test.exclude[r].tolist())
                   for r in range(len(ds.test)))
    hr = float(np.mean([bool(set(top[r].tolist())
                             & set(ds.test.targets[r].tolist()))
                        for r in range(len(ds.test))]))
    assert hr == _brute_force_hr(want, ds.test, k), k
    assert hr == pytest.approx(metrics[f"test/hr@{k}"]), k
  # A free history (user id out of range): the mean of its items.
  free = EvalExamples(np.array([-1, U + 4], np.int32),
                      Ragged.from_lists([[1, 2], [5]]),
                      Ragged.from_lists([[0], [0]]))
  np.testing.assert_allclose(
      ranker.scores(free),
      np.stack([items_e[[1, 2]].mean(0), items_e[5]]) @ items_e.T,
      rtol=1e-6)


def test_binary_bad_workdir(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.train_lightgcn",
       "--config=configs/lightgcn.py:tiny", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "dataset" in proc.stderr.splitlines()[-1]
