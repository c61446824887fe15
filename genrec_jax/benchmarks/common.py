"""Shared benchmark plumbing: machine description, timing, results file."""

from __future__ import annotations

import importlib
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Any, Callable

from absl import logging
import jax

from genrec_jax.data.dataset import atomic_write_json

# The repository root (genrec_jax/benchmarks/common.py -> ../..).
REPO = pathlib.Path(__file__).resolve().parents[2]
# The separate torch venv for the reference side of benchmarks
# (`make bench-venv`, tools/torch_venv.py).
TORCH_VENV = REPO / ".venv-torch"
# How to create it, for messages.
TORCH_VENV_HINT = "create it with `make bench-venv`"


def torch_python() -> str:
  """Path of the torch venv's python (it may not exist yet)."""
  return str(TORCH_VENV / "bin" / "python")


def machine() -> dict[str, Any]:
  """What ran the benchmark: CPU model, cores, JAX backend and devices."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
  }


def timeit(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
  """Median wall-clock seconds of fn() (results blocked on)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[len(times) // 2]


def run_benchmark(config, workdir: str) -> dict[str, Any]:
  """Runs genrec_jax.benchmarks.<config.benchmark>.run and records it."""
  name = config.benchmark
  module = importlib.import_module(f"genrec_jax.benchmarks.{name}")
  command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
  info = machine()
  logging.info("benchmark %s\ncommand: %s\nmachine: %s", name, command, info)
  out_dir = pathlib.Path(workdir) / name
  out_dir.mkdir(parents=True, exist_ok=True)
  results = module.run(config, out_dir)
  record = {"benchmark": name, "command": command, "machine": info,
            "config": config.to_dict(), "results": results}
  atomic_write_json(out_dir / "results.json", record)
  logging.info("command: %s", command)
  logging.info("machine: %s x%s (%s)", info["cpu"], info["cores"], info["backend"])
  for k, v in results.items():
    logging.info("  %s: %s", k, v)
  return record
