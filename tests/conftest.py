"""Test setup: 8 fake CPU devices, no network, data paths."""
import os

# Must run before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
