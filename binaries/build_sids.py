"""Builds collision-free semantic IDs from item embeddings.

python -m binaries.build_sids --config=configs/sids.py[:variant] --workdir=DIR

Reads DIR/embeddings/items.npy (+ DIR/dataset), writes DIR/sids/.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.semantic_ids import build

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sids.py", "SID config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(build.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
