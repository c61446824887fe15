"""Training loop: exact resume after SIGKILL, sharded step, lr schedule,
retrace guard, aux metrics, parameter-dependent and in-loss data."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

from flax import nnx
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from genrec_jax.models import decoder
from genrec_jax.training import loop
from genrec_jax.training import optimizer
from genrec_jax.training import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
# Odd sizes; tensor/fsdp axes that do not divide a dimension are dropped.
CFG = decoder.DecoderConfig(
    vocab_size=37, hidden_size=24, intermediate_size=20, num_layers=1,
    num_heads=4, num_kv_heads=2, model_type="llama")


def _train_cfg(**kw):
  c = common.train()
  c.update(learning_rate=3e-3, warmup_steps=3, log_every=5,
           checkpoint_every=5, eval_every=0, weight_decay=0.01,
           grad_clip=1.0)
  c.update(**kw)
  return c


def _lm_loss(model, batch, key, budget=0):
  """Next-token CE where loss_mask = 1; `budget` > 0 keeps only the first
  `budget` loss tokens of each row and counts the rest in aux "dropped"."""
  del key
  ids = batch["input_ids"]  # [B, T]
  logits = model(ids, batch["attention_mask"])[:, :-1]  # [B, T-1, V]
  w = batch["loss_mask"][:, 1:].astype(jax.numpy.float32)  # [B, T-1]
  kept = w * (jax.numpy.cumsum(w, axis=1) <= budget) if budget else w
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jax.numpy.float32), ids[:, 1:])  # [B, T-1]
  loss = jax.numpy.sum(ce * kept) / jax.numpy.maximum(kept.sum(), 1.0)
  return loss, {"tokens": kept.sum(), "dropped": w.sum() - kept.sum()}


def _example(i):
  rng = np.random.default_rng(int(i))
  t = 9
  ids = rng.integers(3, CFG.vocab_size, t).astype(np.int32)
  n = int(rng.integers(5, t + 1))  # right padding
  mask = np.arange(t) < n
  loss_mask = (np.arange(t) >= n - 3) & mask
  return {"input_ids": np.where(mask, ids, 0).astype(np.int32),
          "attention_mask": mask, "loss_mask": loss_mask.astype(np.float32)}


def _dataset(batch_size, delay=0.0):
  ds = (grain.MapDataset.range(61).shuffle(seed=3).repeat(None)
        .map(_example).batch(batch_size))
  if delay:
    ds = ds.map(lambda b: (time.sleep(delay), b)[1])
  return ds


def _model():
  return decoder.Decoder(CFG, rngs=nnx.Rngs(0))


def _one_device_mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           sharding.MESH_AXES)


# ----------------------------------------------------------------------------
# (a) SIGKILL + resume == uninterrupted (subprocesses).


def _child(workdir: str, delay: float) -> None:
  """Trains 24 steps into workdir; writes digest.json at the end."""
  workdir = pathlib.Path(workdir)
  fixed = {k: jax.numpy.asarray(v) for k, v in
           _dataset(4).__getitem__(0).items()}

  def evaluate(model):  # deterministic: minus the loss on a fixed batch
    return {"valid/score": -float(_lm_loss(model, fixed, None)[0])}

  res = loop.train(_model(), _lm_loss,
                   _dataset(4, delay), _train_cfg(eval_every=6, patience=0),
                   mesh=sharding.mesh_from_config(None),
                   ckpt_dir=workdir / "ckpt", num_steps=24, seed=5,
                   evaluate=evaluate, select="valid/score",
                   summary_dir=workdir / "tb")
  loop.write_train_log(workdir / "train_log.json", res)
  (workdir / "digest.json").write_text(json.dumps(
      {"digest": loop.params_digest(res.model), "step": res.step,
       "best_step": res.best_step}))


def _spawn(workdir, delay):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.Popen(
      [sys.executable, "-m", "tests.training_test", "child", str(workdir),
       str(delay)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE)


def _saved_steps(ckpt):
  d = ckpt / "latest"
  if not d.exists():
    return []
  return [int(p.name) for p in d.iterdir() if p.name.isdigit()]


def test_sigkill_resume_is_bit_identical(tmp_path):
  ref = _spawn(tmp_path / "ref", 0.0)
  killed = _spawn(tmp_path / "run", 0.15)
  deadline = time.time() + 120
  while not [s for s in _saved_steps(tmp_path / "run" / "ckpt") if s >= 10]:
    assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
    assert time.time() < deadline, "no checkpoint written in time"
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert not (tmp_path / "run" / "digest.json").exists()  # really mid-run
  assert max(_saved_steps(tmp_path / "run" / "ckpt")) < 24
  resumed = _spawn(tmp_path / "run", 0.0)
  for p in (ref, resumed):
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err.decode()[-3000:]
  a = json.loads((tmp_path / "ref" / "digest.json").read_text())
  b = json.loads((tmp_path / "run" / "digest.json").read_text())
  assert a["step"] == b["step"] == 24
  assert a["best_step"] == b["best_step"]
  assert a["digest"] == b["digest"]
  log = json.loads((tmp_path / "run" / "train_log.json").read_text())
  assert [p["step"] for p in log["curve"]] == [5, 10, 15, 20, 24]
  assert [e["step"] for e in log["evals"]] == [6, 12, 18, 24]
  assert any(p.name.startswith("events") for p in
             (tmp_path / "ref" / "tb").iterdir())


# ----------------------------------------------------------------------------
# (b) (2, 2, 2) data/fsdp/tensor mesh on 8 fake devices == one device.


def _params(model):
  return {"/".join(map(str, p)): np.asarray(jax.device_get(v[...]))
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_sharded_train_matches_one_device(tmp_path):
  assert jax.device_count() == 8
  mesh = sharding.mesh_from_config({"shape": (2, 2, 2)})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  cfg = _train_cfg(checkpoint_every=0)
  got = loop.train(_model(), _lm_loss, _dataset(4), cfg,
                   mesh=mesh, ckpt_dir=tmp_path / "a", num_steps=3)
  q = nnx.state(got.model, nnx.Param)["layers"]["q"][...]
  assert len(q.sharding.device_set) == 8  # really placed on the mesh
  want = loop.train(_model(), _lm_loss, _dataset(4), cfg,
                    mesh=_one_device_mesh(), ckpt_dir=tmp_path / "b",
                    num_steps=3)
  a, b = _params(got.model), _params(want.model)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(got.curve[-1]["loss"], want.curve[-1]["loss"],
                             rtol=1e-5)


def test_bfloat16_compute_keeps_f32_params_and_learns_as_float32(tmp_path):
  """bf16 compute (bf16 products accumulated in f32, f32 parameters) follows
  the float32 run's loss curve on the same data within bf16 rounding."""
  runs = {}
  for dt in ("float32", "bfloat16"):
    cfg = _train_cfg(compute_dtype=dt, log_every=5, checkpoint_every=0,
                     learning_rate=1e-2)
    runs[dt] = loop.train(_model(), _lm_loss, _dataset(8), cfg,
                          mesh=_one_device_mesh(), ckpt_dir=tmp_path / dt,
                          num_steps=40)
  assert all(v.dtype == np.float32
             for v in _params(runs["bfloat16"].model).values())
  f32 = [p["loss"] for p in runs["float32"].curve]
  bf16 = [p["loss"] for p in runs["bfloat16"].curve]
  assert f32[-1] < 0.85 * f32[0]  # the float32 run learns (3.60 -> 2.85)
  np.testing.assert_allclose(bf16, f32, rtol=0.02)


# ----------------------------------------------------------------------------
# (c) learning-rate schedule.


def test_warmup_cosine_schedule():
  cfg = _train_cfg(learning_rate=1e-2, warmup_steps=10, end_lr_ratio=0.1)
  lr = optimizer.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 5, 10, 55, 100)],
      [0.0, 5e-3, 1e-2, 1e-2 * (0.9 * 0.5 + 0.1), 1e-3], rtol=1e-5)
  assert float(lr(30)) > float(lr(60)) > float(lr(90))
  cfg.schedule = "linear"
  lr = optimizer.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose(float(lr(55)), 1e-2 - 0.5 * 9e-3, rtol=1e-5)
  cfg.schedule = "step"
  with pytest.raises(ValueError, match="train.schedule"):
    optimizer.learning_rate_schedule(cfg, 100)


def test_rsqrt_schedule_and_adafactor():
  """T5's schedule: the peak for warmup_steps, then peak * sqrt(w / step);
  Adafactor (T5X defaults) trains a least-squares problem."""
  cfg = _train_cfg(learning_rate=1e-2, warmup_steps=10_000, schedule="rsqrt")
  lr = optimizer.learning_rate_schedule(cfg, 200_000)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 9_999, 10_000, 40_000, 160_000)],
      [1e-2, 1e-2, 1e-2, 5e-3, 2.5e-3], rtol=1e-6)
  cfg.update(optimizer="adafactor", warmup_steps=1, learning_rate=0.1)
  tx = optimizer.make_optimizer(cfg, 100)
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  y = a @ jnp.asarray([1.0, -2.0, 0.5, 3.0])
  w = {"w": jnp.full((4,), 0.5)}
  state = tx.init(w)
  loss = lambda w: jnp.mean((a @ w["w"] - y) ** 2)
  first = float(loss(w))
  for _ in range(200):
    g = jax.grad(loss)(w)
    upd, state = tx.update(g, state, w)
    w = optax.apply_updates(w, upd)
  assert float(loss(w)) < 0.05 * first
  cfg.optimizer = "sgd"
  with pytest.raises(ValueError, match="train.optimizer"):
    optimizer.make_optimizer(cfg, 100)


# ----------------------------------------------------------------------------
# (d) Retrace guard and aux scalars ("dropped").


def test_one_trace_and_dropped_aux_is_summed_and_warned(tmp_path, caplog):
  cfg = _train_cfg(log_every=2, checkpoint_every=0)
  loss = lambda m, b, k: _lm_loss(m, b, k, budget=1)  # drops answer tokens
  with caplog.at_level(logging.WARNING):
    res = loop.train(_model(), loss, _dataset(3), cfg,
                     mesh=_one_device_mesh(), ckpt_dir=tmp_path / "ckpt",
                     num_steps=5, summary_dir=tmp_path / "tb")
  assert res.traces == res.batch_shapes == 1  # compiled once
  assert [p["step"] for p in res.curve] == [2, 4, 5]
  dropped = [p["dropped"] for p in res.curve]
  assert all(d > 0 for d in dropped)
  assert res.aux_totals["dropped"] == pytest.approx(sum(dropped))
  assert res.aux_totals["tokens"] == pytest.approx(
      sum(p["tokens"] for p in res.curve))
  assert any("'dropped'" in r.getMessage() for r in caplog.records)
  assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())


# ----------------------------------------------------------------------------
# (e) BatchSource (batches from the current params) and data drawn in the
# loss, with a per-run constant in `rest`: resume == uninterrupted.


class _Const(nnx.Variable):
  """A per-run constant array (not trained)."""


class _Toy(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 2)))
    self.table = _Const(jax.numpy.arange(15.0).reshape(5, 3) / 15.0)


def _toy_loss(model, batch, key):
  if "x" in batch:
    x = batch["x"]  # [B, 3]
  else:  # drawn from the step key and the constant table
    x = model.table[...][jax.random.randint(key, (7,), 0, 5)]
  err = x @ model.w[...] - 1.0  # [B, 2]
  return jax.numpy.mean(err ** 2), {"rows": jax.numpy.float32(x.shape[0])}


class _PolicySource:
  """Batch of step s: seeded by s, scaled by the current params."""

  def __init__(self):
    self.calls = []

  def next_batch(self, model, step):
    self.calls.append(step)
    scale = 1.0 + np.tanh(float(np.sum(np.asarray(model.w[...]))))
    rng = np.random.default_rng(step)
    return {"x": (rng.normal(size=(4, 3)) * scale).astype(np.float32)}


def _toy_params(res):
  return np.asarray(res.model.w[...])


@pytest.mark.parametrize("source", ["batch_source", "in_loss"])
def test_batch_source_and_in_loss_data_resume_exactly(tmp_path, source):
  assert isinstance(_PolicySource(), loop.BatchSource)
  cfg = _train_cfg(schedule="constant", warmup_steps=0, log_every=2,
                   checkpoint_every=3, learning_rate=0.05)
  mesh = sharding.mesh_from_config({"shape": (-1, 1, 1), "num_devices": 1})
  assert mesh.devices.size == 1

  def run(ckpt, steps):
    src = _PolicySource() if source == "batch_source" else None
    res = loop.train(_Toy(nnx.Rngs(0)), _toy_loss, src, cfg, mesh=mesh,
                     ckpt_dir=tmp_path / ckpt, num_steps=steps, seed=3,
                     examples_per_step=None if src else 7)
    return res, src

  full, src = run("full", 6)
  assert full.traces == full.batch_shapes == 1
  assert full.curve[-1]["loss"] < full.curve[0]["loss"]
  first, _ = run("split", 3)
  resumed, src2 = run("split", 6)
  if src is not None:
    assert src.calls == list(range(6)) and src2.calls == [3, 4, 5]
  else:
    assert full.examples == 6 * 7 and resumed.examples == 3 * 7
  assert resumed.step == 6
  assert [p["step"] for p in resumed.curve] == [2, 3, 4, 6]
  assert resumed.curve[:2] == first.curve
  np.testing.assert_array_equal(_toy_params(resumed), _toy_params(full))
  rows = 4 if src is not None else 7
  assert resumed.aux_totals["rows"] == 6 * rows


def test_dataset_none_needs_examples_per_step(tmp_path):
  with pytest.raises(ValueError, match="examples_per_step"):
    loop.train(_Toy(nnx.Rngs(0)), _toy_loss, None, _train_cfg(),
               mesh=_one_device_mesh(), ckpt_dir=tmp_path, num_steps=1)


if __name__ == "__main__":
  if len(sys.argv) == 4 and sys.argv[1] == "child":
    _child(sys.argv[2], float(sys.argv[3]))


def test_train_config_ranges_are_checked():
  from configs import common  # pylint: disable=g-import-not-at-top
  cfg = common.train()
  optimizer.check_train_config(cfg)  # the defaults are valid
  cfg.b2 = 1.5
  with pytest.raises(ValueError, match="'train.b2' = 1.5"):
    optimizer.check_train_config(cfg)
  cfg = common.train()
  cfg.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype"):
    optimizer.check_train_config(cfg)
