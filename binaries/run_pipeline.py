"""Runs a named pipeline (configs/pipeline.py) and prints the results table.

python -m binaries.run_pipeline --config=configs/pipeline.py:ml100k --workdir=runs/ml100k
python -m binaries.run_pipeline --config=configs/pipeline.py:ml100k --workdir=runs/ml100k --force=train_sasrec
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pipeline.py", "Pipeline config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_FORCE = flags.DEFINE_list("force", [], "Stages to re-run even when complete ('all' = every stage).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(lambda c, w: pipeline.run(c, w, force=_FORCE.value), _CONFIG.value,
                   _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
