"""Writes the top-N of every user of a workdir to jsonl (batch inference).

python -m binaries.batch_recommend --config=configs/serve.py --workdir=runs/ml100k --config.model=sasrec
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.serving import batch

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve.py", "Serving config (model, top_n, buckets, batch.output).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (dataset/ and the model folder).", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(batch.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
