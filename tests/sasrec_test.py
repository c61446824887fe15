"""SASRec: causality, padding invariance, losses, pipeline, stage + resume,
model folder."""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import sasrec as sasrec_config
from genrec_jax import model_folder
from genrec_jax.data.dataset import Dataset, DataError, EvalExamples, Ragged
from genrec_jax.models.sasrec import SASRec, sasrec_loss
from genrec_jax.training import loop, optimizer, sasrec_data, sasrec_train
from tests.conftest import REPO

V = 17  # items; padding id = V


def _model(norm_first=True, seed=0):
  cfg = sasrec_config.get_config("tiny").model
  cfg.norm_first = norm_first
  return SASRec(V, cfg, rngs=nnx.Rngs(seed)), cfg


@pytest.mark.parametrize("norm_first", [True, False])
def test_causal_future_does_not_leak(norm_first):
  model, cfg = _model(norm_first)
  seq = jnp.array([[3, 5, 7, 1, 2, 9, 4]])
  changed = seq.at[0, 4:].set(jnp.array([11, 12, 13]))
  a, b = model(seq), model(changed)  # [1, T, D]
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


def test_padding_invariance():
  model, cfg = _model()
  short = jnp.array([[3, 5, 7]])
  padded = jnp.array([[V] * (cfg.max_len - 3) + [3, 5, 7]])
  np.testing.assert_allclose(model(short)[:, -3:], model(padded)[:, -3:],
                             atol=1e-5)
  np.testing.assert_allclose(model.score_last(short), model.score_last(padded),
                             atol=1e-5)
  # Padding slots are zeroed and never influence real positions.
  assert np.all(np.asarray(model(padded)[:, :-3]) == 0)


def test_padding_row_gets_no_gradient():
  model, cfg = _model()
  inputs = jnp.array([[V, V, V, 3, 5, 7, 1]] * 2)
  targets = jnp.array([[V, V, V, 5, 7, 1, 2]] * 2)
  grads = nnx.grad(lambda m: sasrec_loss(m, inputs, targets, jax.random.key(0))[0])(model)
  g = np.asarray(grads.item_emb.embedding[...])
  assert np.all(g[V] == 0)
  assert np.any(g[3] != 0)


def _synthetic_train(users=23, seed=0):
  """Users follow item cycles i -> i+1 (mod V): easy to learn."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(users):
    start, n = rng.integers(V), rng.integers(3, 10)
    rows.append([(start + k) % V for k in range(n)])
  return Ragged.from_lists(rows)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_losses_decrease(loss):
  model, cfg = _model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tcfg = sasrec_config.get_config("tiny").train
  tcfg.learning_rate = 1e-2
  tx = optimizer.make_optimizer(tcfg, 60)
  opt = tx.init(params)
  traces = []
  step = loop.make_train_step(graphdef, tx, sasrec_train.make_loss(loss),
                              on_trace=lambda: traces.append(1))
  pipe = sasrec_data.train_pipeline(_synthetic_train(), V, max_len=cfg.max_len,
                                    batch_size=8, seed=0)
  it = iter(pipe.dataset)
  losses = []
  for s in range(60):
    b = next(it)
    batch = {"inputs": b["inputs"], "targets": b["targets"]}
    params, opt, aux = step(params, opt, rest, batch, jax.random.key(0),
                            np.int32(s))
    losses.append(float(aux["loss"]))
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
  assert len(traces) == 1  # one shape: compiled once


def test_position_budget_matches_full_loss():
  model, cfg = _model()
  inputs = jnp.array([[V, V, V, 3, 5, 7, 1], [V, V, V, V, V, 2, 4]])
  targets = jnp.array([[V, V, V, 5, 7, 1, 2], [V, V, V, V, V, 4, 6]])
  key = jax.random.key(0)
  full, _ = sasrec_loss(model, inputs, targets, key, train=False)
  capped, aux = sasrec_loss(model, inputs, targets, key, train=False,
                            max_positions=6)
  np.testing.assert_allclose(full, capped, rtol=1e-6)
  assert int(aux["dropped"]) == 0


def test_bucketed_batches_cover_users_each_epoch():
  train = Ragged.from_lists([[1, 2]] * 5 + [list(range(9))] * 4 + [[3]])
  b = sasrec_data.BucketedBatches(train, V, 7, batch_size=3, seed=0,
                                  buckets=(2,), num_epochs=2)
  for epoch in range(2):
    users = []
    for j in range(b.steps_per_epoch):
      batch = b[epoch * b.steps_per_epoch + j]
      width = batch["inputs"].shape[1]
      assert width in (2, 7)
      users += [u for u in batch["user"].tolist() if u >= 0]
      real = batch["user"] >= 0
      assert np.all(batch["targets"][~real] == V)
    assert sorted(users) == list(range(9))  # user 9 (one item) is skipped
  # Rows match the unbucketed source, cut to the batch width.
  src = sasrec_data.UserSequenceSource(train, V, 7)
  batch = b[0]
  for r, u in enumerate(batch["user"]):
    if u >= 0:
      w = batch["inputs"].shape[1]
      np.testing.assert_array_equal(batch["inputs"][r], src[int(u)]["inputs"][-w:])


def test_bad_inputs():
  with pytest.raises(DataError, match="outside"):
    sasrec_data.UserSequenceSource(Ragged.from_lists([[0, V]]), V, 7)
  with pytest.raises(DataError, match="no user"):
    sasrec_data.UserSequenceSource(Ragged.from_lists([[1], [2]]), V, 7)
  with pytest.raises(ValueError, match="loss"):
    model, _ = _model()
    sasrec_loss(model, jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), jnp.int32),
                jax.random.key(0), loss="nope")


def _tiny_workdir(path):
  seqs = _synthetic_train(users=19, seed=1)
  rows = seqs.tolist()
  train = Ragged.from_lists([r[:-2] for r in rows])
  valid = EvalExamples(np.arange(19, dtype=np.int32),
                       Ragged.from_lists([r[:-2] for r in rows]),
                       Ragged.from_lists([[r[-2]] for r in rows]),
                       Ragged.from_lists([r[:-2] for r in rows]))
  test = EvalExamples(np.arange(19, dtype=np.int32),
                      Ragged.from_lists([r[:-1] for r in rows]),
                      Ragged.from_lists([[r[-1]] for r in rows]),
                      Ragged.from_lists([r[:-1] for r in rows]))
  Dataset(name="tiny", num_users=19, num_items=V,
          item_ids=[str(i) for i in range(V)], user_ids=[str(u) for u in range(19)],
          item_fields={"title": ["t"] * V}, sequences=seqs, timestamps=None,
          train=train, valid=valid, test=test, split="leave_one_out",
          ).save(path / "dataset")


def _folder_params(path):
  assert model_folder.read_spec(path)["kind"] == "sasrec"
  cfg = sasrec_config.get_config("tiny").model
  abstract = nnx.state(SASRec(V, cfg, rngs=nnx.Rngs(0)), nnx.Param)
  params = model_folder.restore_params(path, abstract)
  return {"/".join(map(str, k)): np.asarray(v[...])
          for k, v in nnx.to_flat_state(params)}


def test_run_checkpoint_and_resume(tmp_path):
  _tiny_workdir(tmp_path / "a")
  cfg = sasrec_config.get_config("tiny")
  cfg.train.num_epochs = 2
  m = sasrec_train.run(cfg, str(tmp_path / "a"))
  for key in ("test/hr@10", "test/ndcg@10", "valid/ndcg@10", "test/mrr",
              "num_eval_users", "seconds", "epochs", "best_epoch", "curve"):
    assert key in m, key
  assert m["epochs"] == 2 and m["num_eval_users"] == 19
  spe = m["steps_per_epoch"]
  assert m["steps"] == 2 * spe
  out = tmp_path / "a" / "sasrec"
  on_disk = json.loads((out / "metrics.json").read_text())
  assert on_disk["test/hr@10"] == m["test/hr@10"]
  assert (out / "checkpoints" / "latest" / str(2 * spe)).exists()
  assert (out / "model.json").exists() and (out / "tb").is_dir()
  log = json.loads((out / "train_log.json").read_text())
  # Retrace guard: one compilation per bucket width (tiny: 4 and 7).
  assert 1 <= log["traces"] == log["batch_shapes"] <= 2
  # Re-running with more epochs resumes at epoch 2 (params, optimizer, data):
  # the curve continues the first run's.
  cfg.train.num_epochs = 3
  m3 = sasrec_train.run(cfg, str(tmp_path / "a"))
  assert m3["epochs"] == 3 and m3["steps"] == 3 * spe
  assert [p["epoch"] for p in m3["curve"]] == [1, 2, 3]
  assert m3["curve"][:2] == m["curve"]
  log3 = json.loads((out / "train_log.json").read_text())
  assert [p["step"] for p in log3["curve"]] == [spe, 2 * spe, 3 * spe]
  assert log3["curve"][:2] == log["curve"]
  # ... and ends where an uninterrupted 3-epoch run ends.
  _tiny_workdir(tmp_path / "b")
  m_b = sasrec_train.run(cfg, str(tmp_path / "b"))
  log_b = json.loads((tmp_path / "b" / "sasrec" / "train_log.json").read_text())
  assert ([p["loss"] for p in log_b["curve"]]
          == [p["loss"] for p in log3["curve"]])
  assert log_b["evals"] == log3["evals"]
  a, b = _folder_params(out), _folder_params(tmp_path / "b" / "sasrec")
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert m_b["test/ndcg@10"] == m3["test/ndcg@10"]
  # Nothing left to train: restores the best checkpoint, same metrics.
  m_again = sasrec_train.run(cfg, str(tmp_path / "a"))
  assert m_again["valid/ndcg@10"] == pytest.approx(m3["valid/ndcg@10"])
  assert m_again["curve"] == m3["curve"]


def _brute_force_hr(scores, examples, k):
  """HR@k by a full numpy argsort, exclude items removed."""
  scores = np.array(scores, dtype=np.float64)
  ex = examples.exclude
  scores[ex.row_ids(), ex.values] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")
  hits = [int(examples.targets[r][0]) in order[r, :k].tolist()
          for r in range(len(examples))]
  return float(np.mean(hits))


def test_model_folder_ranker(tmp_path):
  _tiny_workdir(tmp_path)
  ds = Dataset.load(tmp_path / "dataset")
  cfg = sasrec_config.get_config("tiny")
  cfg.train.num_epochs = 2
  out = tmp_path / "sasrec"
  result, _ = sasrec_train.train_model(cfg, ds, out)
  model = result.model
  sasrec_train.save_model(out, model, cfg.model)
  ranker = sasrec_train.load_ranker(out, ds)
  assert ranker.kind == "sasrec" and ranker.num_items == V
  # Reloaded scores == the in-memory model's, exactly.
  _, params, rest = nnx.split(model, nnx.Param, ...)
  score = sasrec_train.make_scorer(nnx.graphdef(model))
  hist = ds.test.history.padded(cfg.model.max_len, V, left=True)
  want = np.asarray(score(params, rest, jnp.asarray(hist)))  # [E, V]
  got = ranker.scores(ds.test)
  np.testing.assert_array_equal(got, want)
  # rank() with history masking == brute force == evaluation.metrics.
  metrics = sasrec_train.evaluate(score, model, ds.test, prefix="test/",
                                  batch_size=8)
  for k in (1, 3, 5, 10):
    top = ranker.rank(ds.test, top_n=k, exclude_history=True)
    assert not any(set(top[r].tolist()) & set(ds.test.exclude[r].tolist())
                   for r in range(len(ds.test)))
    hr = float(np.mean([int(ds.test.targets[r][0]) in top[r].tolist()
                        for r in range(len(ds.test))]))
    assert hr == _brute_force_hr(want, ds.test, k), k
    assert hr == pytest.approx(metrics[f"test/hr@{k}"]), k
  with pytest.raises(ValueError, match="items"):
    sasrec_train.load_ranker(out, dataclasses.replace(ds, num_items=V + 1))


def test_binary_smoke_and_bad_workdir(tmp_path):
  _tiny_workdir(tmp_path)
  cmd = [sys.executable, "-m", "binaries.train_sasrec",
         "--config=configs/sasrec.py:tiny", "--config.train.num_epochs=1"]
  ok = subprocess.run(cmd + [f"--workdir={tmp_path}"], cwd=REPO,
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert (tmp_path / "sasrec" / "metrics.json").exists()
  bad = subprocess.run(cmd + [f"--workdir={tmp_path / 'nope'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "dataset" in bad.stderr.splitlines()[-1]


def test_config_ranges_are_checked(tmp_path):
  from configs import sasrec as sasrec_config  # pylint: disable=g-import-not-at-top
  config = sasrec_config.get_config("tiny")
  config.model.dropout = 1.5
  with pytest.raises(ValueError, match="'model.dropout' = 1.5"):
    sasrec_train.run(config, str(tmp_path))
