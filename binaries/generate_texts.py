"""UR4Rec offline texts: a preference text per user, a description per item.

python -m binaries.generate_texts --config=configs/ur4rec_texts.py:smollm2 \
    --workdir=DIR

Reads DIR/dataset, writes DIR/<name>/ (users.jsonl, items.jsonl,
report.json) and DIR/<name>.cache.jsonl (resume after a kill).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.ur4rec import texts

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/ur4rec_texts.py", "generate_texts config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(texts.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
