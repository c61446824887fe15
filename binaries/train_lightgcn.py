"""Trains LightGCN on WORKDIR/dataset and writes WORKDIR/lightgcn/.

python -m binaries.train_lightgcn --config=configs/lightgcn.py:gowalla --workdir=runs/gowalla
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.graph import lightgcn_train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lightgcn.py", "LightGCN config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(lightgcn_train.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
