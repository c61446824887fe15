"""Test setup: 8 fake CPU devices, no network, data paths."""
import os
import tempfile

# Must run before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# XLA executables cached on disk (JAX's persistent compilation cache), shared
# by the xdist workers and the subprocesses (binaries, notebook kernel,
# multi-process runs) that inherit this environment. It pays on a re-run
# (the pipeline, notebook, last.fm and multi-process tests, -n 2, one AMD
# EPYC: 7:13 without, 7:01 with an empty cache, 3:57 with a warm one), not
# on CI's first run. Keys hash the program, JAX version and XLA flags, so a
# stale entry is never used; a size cap turns on JAX's LRU eviction and its
# file lock, which makes concurrent writers safe.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(),
                 f"genrec_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("GENREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> pathlib.Path:
  """Path under ../shared/data; skips the test when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"shared data not found: {path}")
  return path


# tools/torch_venv.py's exit status when the torch wheel cannot be installed.
INSTALL_FAILED = 3
# Seconds allowed to create .venv-torch (about 30 s from the local CPU wheel).
TORCH_VENV_TIMEOUT = 600


@pytest.fixture(scope="session")
def torch_python():
  """.venv-torch's python, created once and cached under the repo
  (tools/torch_venv.py, as `make bench-venv`); skips only when the torch
  wheel cannot be installed, and says why."""
  t0 = time.time()
  proc = subprocess.run(
      [sys.executable, str(REPO / "tools" / "torch_venv.py"),
       f"--timeout={TORCH_VENV_TIMEOUT}"],
      capture_output=True, text=True, timeout=TORCH_VENV_TIMEOUT + 120)
  if proc.returncode == INSTALL_FAILED:
    pytest.skip("cannot create .venv-torch (torch wheel not installable): "
                + (proc.stderr.strip() or proc.stdout.strip())[-1500:])
  assert proc.returncode == 0, proc.stderr[-3000:]
  print(f"{proc.stdout.strip()} ({time.time() - t0:.0f}s)")
  return REPO / ".venv-torch" / "bin" / "python"
