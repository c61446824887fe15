"""Loads a dataset source, splits it and writes WORKDIR/dataset/.

python -m binaries.prepare_data --config=configs/data.py:beauty --workdir=runs/beauty
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.data import prepare

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data.py", "Data config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(prepare.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
