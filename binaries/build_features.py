"""Writes WORKDIR/features/ (item feature matrices for UR4Rec).

python -m binaries.build_features --config=configs/ur4rec_features.py \
    --workdir=runs/ml100k

Reads DIR/dataset (+ DIR/lightgcn/item_emb.npy, DIR/embeddings/items.npy when
present), writes DIR/features/{genre,lightgcn,title_minilm}.npy + meta.json.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.ur4rec import features

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/ur4rec_features.py", "Features config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(features.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
