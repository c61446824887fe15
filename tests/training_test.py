"""Training loop: exact resume after SIGKILL, sharded step, lr schedule."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from flax import nnx
import grain
import jax
import numpy as np
import pytest

from genrec_jax.models import decoder
from genrec_jax.training import generative
from genrec_jax.training import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
# Odd sizes; tensor/fsdp axes that do not divide a dimension are dropped.
CFG = decoder.DecoderConfig(
    vocab_size=37, hidden_size=24, intermediate_size=20, num_layers=1,
    num_heads=4, num_kv_heads=2, model_type="llama")


def _train_cfg(**kw):
  c = loop.default_train_config()
  c.update(learning_rate=3e-3, warmup_steps=3, log_every=5,
           checkpoint_every=5, eval_every=0, weight_decay=0.01,
           grad_clip=1.0)
  c.update(**kw)
  return c


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
                           loop.MESH_AXES)


# ----------------------------------------------------------------------------
# (a) SIGKILL + resume == uninterrupted (subprocesses).


def _child(workdir: str, delay: float) -> None:
  """Trains 24 steps into workdir; writes digest.json at the end."""
  workdir = pathlib.Path(workdir)
  fixed = {k: jax.numpy.asarray(v) for k, v in
           _dataset(4).__getitem__(0).items()}

  def evaluate(model):  # deterministic: minus the loss on a fixed batch
    return {"valid/score": -float(generative.decoder_loss(model, fixed,
                                                          None)[0])}

  res = loop.train(_model(), generative.decoder_loss,
                   _dataset(4, delay), _train_cfg(eval_every=6, patience=0),
                   mesh=loop.mesh_from_config(None),
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
  mesh = loop.mesh_from_config({"shape": (2, 2, 2)})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  cfg = _train_cfg(checkpoint_every=0)
  got = loop.train(_model(), generative.decoder_loss, _dataset(4), cfg,
                   mesh=mesh, ckpt_dir=tmp_path / "a", num_steps=3)
  q = nnx.state(got.model, nnx.Param)["layers"]["q"][...]
  assert len(q.sharding.device_set) == 8  # really placed on the mesh
  want = loop.train(_model(), generative.decoder_loss, _dataset(4), cfg,
                    mesh=_one_device_mesh(), ckpt_dir=tmp_path / "b",
                    num_steps=3)
  a, b = _params(got.model), _params(want.model)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(got.curve[-1]["loss"], want.curve[-1]["loss"],
                             rtol=1e-5)


def test_bfloat16_compute_keeps_f32_params(tmp_path):
  cfg = _train_cfg(compute_dtype="bfloat16", log_every=2, checkpoint_every=0)
  res = loop.train(_model(), generative.decoder_loss, _dataset(3), cfg,
                   mesh=_one_device_mesh(), ckpt_dir=tmp_path, num_steps=2)
  assert np.isfinite(res.curve[-1]["loss"])
  assert all(v.dtype == np.float32 for v in _params(res.model).values())


# ----------------------------------------------------------------------------
# (c) learning-rate schedule.


def test_warmup_cosine_schedule():
  cfg = _train_cfg(learning_rate=1e-2, warmup_steps=10, end_lr_ratio=0.1)
  lr = loop.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 5, 10, 55, 100)],
      [0.0, 5e-3, 1e-2, 1e-2 * (0.9 * 0.5 + 0.1), 1e-3], rtol=1e-5)
  assert float(lr(30)) > float(lr(60)) > float(lr(90))
  cfg.schedule = "linear"
  lr = loop.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose(float(lr(55)), 1e-2 - 0.5 * 9e-3, rtol=1e-5)
  cfg.schedule = "step"
  with pytest.raises(ValueError, match="train.schedule"):
    loop.learning_rate_schedule(cfg, 100)


if __name__ == "__main__":
  if len(sys.argv) == 4 and sys.argv[1] == "child":
    _child(sys.argv[2], float(sys.argv[3]))
