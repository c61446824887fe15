"""Multi-process training: 2 processes x 4 CPU devices, one global mesh.

JAX's multi-controller runtime on localhost: `binaries/launch_local.py`
starts the processes (GENREC_* environment), every binary joins the run in
`binaries/common.run_stage` (jax.distributed, gloo collectives on CPU), and
each process feeds half of every global batch. For train_sasrec, TIGER and
the SID decoder (tiny configs, the same global batch of 8 everywhere):
  * the reference: 1 process with 8 fake devices;
  * 2 processes: the final parameters (model folder) equal the reference's
    (the gradient all-reduce sums in another order: ~1e-7 relative);
  * SASRec and TIGER: 2 processes in which process 1 SIGKILLs itself after
    its first checkpoint (tests/multiprocess_worker.py), the launcher stops
    process 0 and fails; the same command again resumes both processes from
    that checkpoint and finishes (the parameters compared as above);
  * SASRec also: an uninterrupted 2-process run equals the resumed one bit
    for bit (exact resume across processes).
Run alone with `pytest tests/multiprocess_test.py` (or `-k multiprocess`);
every launch prints its wall time (`-s`).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
# Seconds one launch may take (2 cores shared with the rest of the suite).
LAUNCH_TIMEOUT = 420
# Largest |2-process - 1-process| of a parameter, relative to its largest
# magnitude (measured <= 2e-7: float32 all-reduce order).
PARAM_RTOL = 1e-5
# Parameters whose gradient is zero in exact arithmetic: an attention key
# bias adds the same q.b to every score of a query, which softmax ignores.
# Adam scales their float noise up to full-size steps, so they are only
# checked to lie within the steps' reach (2 x learning rate x steps).
ZERO_GRADIENT = ("['k']['bias']",)
# Output lines shown when a launch fails.
TAIL_LINES = 60

# case -> (binary, flags, output folder, what the 2 processes do): "whole"
# one run; "resume" killed + resumed; "exact" both, and the two compared.
# Global batch 8 = 1 row a device; one batch shape (one compilation).
CASES = {
    "sasrec": ("binaries.train_sasrec", [
        "--config=configs/sasrec.py:tiny", "--config.train.batch_size=8",
        "--config.train.buckets=(7,)", "--config.mesh.num_devices=0"],
               "sasrec", "exact"),
    "tiger": ("binaries.train_generative", [
        "--config=configs/generative.py:tiger,tiny",
        "--config.data.history_buckets=(5,)", "--config.eval.batch_size=16"],
              "tiger", "resume"),
    "sid_decoder": ("binaries.train_generative", [
        "--config=configs/generative.py:decoder_sid,tiny",
        "--config.data.history_buckets=(5,)", "--config.eval.batch_size=16"],
                    "decoder_sid", "whole"),
}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent compilation cache shared by this module's runs."""
  return tmp_path_factory.mktemp("jax_cache")


def _env(cache: pathlib.Path, **extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("GENREC_", "PYTEST_"))}
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONUNBUFFERED="1", **extra)
  return env


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, float]:
  """(exit status, output, seconds); kills the whole group on a timeout."""
  t0 = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT + 60)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail(f"timeout after {LAUNCH_TIMEOUT + 60}s: {' '.join(cmd)}\n"
                + _tail(out))
  return proc.returncode, out, time.time() - t0


def _tail(out: str) -> str:
  lines = [l for l in out.splitlines() if "[Gloo]" not in l]
  return "\n".join(lines[-TAIL_LINES:])


def _launch(case: str, workdir: pathlib.Path, cache: pathlib.Path, *,
            processes: int, kill: str | None = None):
  binary, flags = CASES[case][:2]
  args = flags + [f"--workdir={workdir}"]
  if processes == 1:
    return _run([sys.executable, "-m", binary] + args, _env(cache))
  command = ([sys.executable, str(WORKER), binary] if kill
             else [sys.executable, "-m", binary])
  env = _env(cache, **({"GENREC_TEST_KILL": kill} if kill else {}))
  return _run([sys.executable, "-m", "binaries.launch_local",
               f"--num_processes={processes}", "--cpu_devices=4",
               f"--timeout={LAUNCH_TIMEOUT}", "--"] + command + args, env)


def _ok(result, what: str) -> str:
  code, out, _ = result
  assert code == 0, f"{what}: exit status {code}\n{_tail(out)}"
  return out


def _check_sharded(out: str) -> None:
  """Each process fed half of each global batch (the loop's log line)."""
  for i in (0, 1):
    assert any(l.startswith(f"[{i}]") and f"process {i} of 2 feeds 4 of the "
               "8 rows" in l for l in out.splitlines()), _tail(out)


def _workdir(root: pathlib.Path, name: str) -> pathlib.Path:
  path = root / name
  path.mkdir()
  subprocess.run([sys.executable, str(WORKER), "workdir", str(path)],
                 cwd=REPO, check=True, timeout=120)
  return path


def _params(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """A model folder's parameters as numpy arrays, by path."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(folder / "params")
    meta = getattr(meta, "item_metadata", meta)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        meta)
    tree = ckptr.restore(folder / "params", abstract)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], *,
             reach: float) -> tuple[float, str]:
  """Asserts 2-process params == 1-process params; the largest relative
  difference (ZERO_GRADIENT params aside) and where."""
  assert ref.keys() == got.keys()
  worst = (0.0, "")
  for k, a in ref.items():
    diff = float(np.max(np.abs(a - got[k])))
    if any(z in k for z in ZERO_GRADIENT):
      assert diff <= reach, (k, diff, reach)
      continue
    worst = max(worst, (diff / max(float(np.max(np.abs(a))), 1e-30), k))
  assert worst[0] <= PARAM_RTOL, worst
  return worst


@pytest.mark.parametrize("case", list(CASES))
def test_multiprocess_training(case, tmp_path, compile_cache):
  folder, mode = CASES[case][2:]
  times = {}

  def launch(name, workdir, **kw):
    result = _launch(case, workdir, compile_cache, **kw)
    times[name] = round(result[2])
    print(f"{case}: {name} {result[2]:.0f}s", flush=True)
    return result

  ref = _workdir(tmp_path, "ref")  # the reference: 1 process, 8 devices
  _ok(launch("1 process", ref, processes=1), "1 process")

  two = _workdir(tmp_path, "two")
  if mode == "whole":
    _check_sharded(_ok(launch("2 processes", two, processes=2),
                       "2 processes"))
  else:
    # Process 1 dies (SIGKILL) after its first checkpoint.
    code, out, _ = launch("2 processes, killed", two, processes=2,
                          kill="1:1")
    assert code != 0, "the launcher must fail when a process dies\n" + (
        _tail(out))
    assert "SIGKILLs itself" in out, _tail(out)
    assert "process 1 killed by SIGKILL; stopping the others" in out, (
        _tail(out))
    _check_sharded(out)
    assert not (two / folder / "model.json").exists()
    latest = two / folder / "checkpoints" / "latest"
    steps = [int(p.name) for p in latest.iterdir() if p.name.isdigit()]
    assert steps, f"no checkpoint in {latest}\n{_tail(out)}"
    # The grain iterator state of each process is in the checkpoint.
    assert {p.name for p in (latest / str(max(steps)) / "data_iter").iterdir()
            } >= {"process_0-of-2.json", "process_1-of-2.json"}
    # The same command again: both processes resume and finish.
    out = _ok(launch("2 processes, resumed", two, processes=2),
              "2 processes, resumed")
    for i in (0, 1):
      resumed = [l for l in out.splitlines()
                 if l.startswith(f"[{i}]") and "resumed from" in l]
      assert resumed and f"at step {max(steps)}" in resumed[0], _tail(out)
  assert (two / folder / "metrics.json").exists()
  log = json.loads((two / folder / "train_log.json").read_text())
  ref_log = json.loads((ref / folder / "train_log.json").read_text())
  assert log["step"] == ref_log["step"]
  np.testing.assert_allclose([p["loss"] for p in log["curve"]],
                             [p["loss"] for p in ref_log["curve"]],
                             rtol=PARAM_RTOL)

  lr = json.loads((ref / folder / "checkpoints" / "config.json").read_text(
      ))["train"]["learning_rate"]
  diff, where = _compare(_params(ref / folder), _params(two / folder),
                         reach=2 * lr * log["step"])
  print(f"{case}: largest relative parameter difference, 2 processes vs 1: "
        f"{diff:.3g} ({where}); seconds {times}")

  if mode == "exact":  # the resumed run == an uninterrupted one, bit for bit
    whole = _workdir(tmp_path, "whole")
    _ok(launch("2 processes, uninterrupted", whole, processes=2),
        "2 processes")
    a, b = _params(whole / folder), _params(two / folder)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
