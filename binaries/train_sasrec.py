"""Trains SASRec on WORKDIR/dataset and writes WORKDIR/sasrec/.

python -m binaries.train_sasrec --config=configs/sasrec.py:beauty --workdir=runs/beauty
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.training import sasrec_train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sasrec.py", "SASRec config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(sasrec_train.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
