"""Serves a model folder over HTTP: POST /recommend, GET /health.

python -m binaries.serve --config=configs/serve.py --workdir=runs/ml100k --config.model=sasrec
curl -s localhost:8000/recommend -d '{"user": "196", "top_n": 5}'
curl -s localhost:8000/recommend -d '{"history": ["50", "181", "100"]}'
curl -s localhost:8000/health
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from binaries import common
from genrec_jax.serving import server

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve.py", "Serving config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (dataset/ and the model folder).", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(server.serve, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
