"""Runs one benchmark and writes WORKDIR/<name>/results.json.

python -m binaries.benchmark --config=configs/benchmarks.py:<name> --workdir=runs/bench
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common as binary_common
from genrec_jax.benchmarks import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Output directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  binary_common.setup_logging()
  common.run_benchmark(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
