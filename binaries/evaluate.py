"""Evaluates any model folder of a workdir (SASRec, LightGCN, TIGER, decoders).

python -m binaries.evaluate --config=configs/evaluate.py --workdir=runs/beauty
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax import evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "Config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(evaluate.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
