"""Generate-and-rank: the ranker stage.

python -m binaries.train_ranker --config=configs/gar_ranker.py --workdir=DIR

See genrec_jax/gar/ranker.py for what it reads and writes.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.gar import ranker

_CONFIG = config_flags.DEFINE_config_file("config", "configs/gar_ranker.py", "train_ranker config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(ranker.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
