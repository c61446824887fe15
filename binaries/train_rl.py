"""GRPO-tunes an SFT decoder model folder; writes WORKDIR/<name>/.

python -m binaries.train_rl --config=configs/rl.py:demo --workdir=runs/ml100k
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.rl import stage as rl_stage

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/rl.py", "GRPO config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(rl_stage.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
