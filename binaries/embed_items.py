"""Encodes item texts into vectors.

python -m binaries.embed_items --config=configs/embed.py --workdir=DIR

Reads DIR/dataset, writes DIR/embeddings/items.npy + meta.json.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.semantic_ids import embed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/embed.py", "Embedding config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(embed.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
