"""Last.fm 2K -> items, query splits and item2vec sentences.

python -m binaries.prepare_lastfm --config=configs/lastfm.py --workdir=DIR

Writes DIR/lastfm/ (items.json, queries.json, corpus.npz, stats.json).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.gar import lastfm

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lastfm.py", "Last.fm config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(lastfm.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
