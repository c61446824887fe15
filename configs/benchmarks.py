"""Benchmarks: each variant is a module in genrec_jax/benchmarks/.

python -m binaries.benchmark --config=configs/benchmarks.py:<name> --workdir=runs/bench

`<name>` is a module `genrec_jax.benchmarks.<name>` that defines
`get_config() -> ConfigDict` (its defaults) and `run(config, workdir) -> dict`.
"""
import importlib

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "metrics"
  module = importlib.import_module(f"genrec_jax.benchmarks.{name}")
  config = module.get_config()
  with config.unlocked():
    # Which genrec_jax.benchmarks module runs.
    config.benchmark = name
  return config
