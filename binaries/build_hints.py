"""Writes WORKDIR/hints/hints.json from WORKDIR/lightgcn/item_emb.npy.

python -m binaries.build_hints --config=configs/hints.py --workdir=runs/beauty
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.graph import hints

_CONFIG = config_flags.DEFINE_config_file("config", "configs/hints.py", "Hints config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(hints.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
