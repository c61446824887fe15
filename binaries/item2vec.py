"""Item vectors by word2vec (skip-gram or CBOW) on item2vec sentences.

python -m binaries.item2vec --config=configs/item2vec.py --workdir=DIR

Reads DIR/lastfm/corpus.npz, writes DIR/embeddings/ (items.npy,
metrics.json, meta.json).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.gar import item2vec

_CONFIG = config_flags.DEFINE_config_file("config", "configs/item2vec.py", "item2vec config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(item2vec.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
