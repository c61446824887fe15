"""Test setup: 8 fake CPU devices, no network, data paths."""
import os

# Must run before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib

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
