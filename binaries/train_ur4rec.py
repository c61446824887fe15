"""UR4Rec: train a preference retriever, fuse it with SASRec, evaluate.

python -m binaries.train_ur4rec --config=configs/ur4rec.py --workdir=DIR

Reads DIR/dataset, DIR/sasrec, DIR/<texts> (and DIR/<features.path>),
writes DIR/<name>/ (model folder, metrics.json under both protocols).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.ur4rec import stage

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ur4rec.py", "UR4Rec config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(stage.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
