"""Evaluates the non-neural baselines on WORKDIR/dataset.

python -m binaries.train_baselines --config=configs/baselines.py --workdir=runs/ml100k
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.baselines import simple

_CONFIG = config_flags.DEFINE_config_file("config", "configs/baselines.py", "Config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(simple.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
