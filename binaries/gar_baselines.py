"""Generate-and-rank baselines (popularity, MiniLM text similarity, item2vec centroid).

python -m binaries.gar_baselines --config=configs/gar_baselines.py --workdir=DIR

Reads DIR/lastfm/ and DIR/embeddings/, writes DIR/<model>/metrics.json.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.gar import baselines

_CONFIG = config_flags.DEFINE_config_file("config", "configs/gar_baselines.py", "gar_baselines config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(baselines.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
