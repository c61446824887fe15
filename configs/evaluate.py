"""Evaluation of any model folder: SASRec, LightGCN, TIGER, decoders.

python -m binaries.evaluate --config=configs/evaluate.py --workdir=runs/beauty

Reads WORKDIR/dataset and the model folder WORKDIR/<model>/ (model.json +
params/; a generative folder names its SID folder); writes
WORKDIR/<model>/metrics.json with <split>/hr@K, <split>/ndcg@K and
invalid_rate.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "base"
  config = ml_collections.ConfigDict()
  # Model folder under the workdir (holds model.json and params/).
  config.model = "generative"
  # Which split to evaluate: "test" or "valid".
  config.split = "test"
  # Beams per prompt of a generative model (0: the width it was evaluated
  # with at training, recorded in its model.json).
  config.beam_size = 0
  # Ranked items kept per prompt (<= beam_size); metrics use K <= top_n.
  config.top_n = 20
  # Drop each row's history items (the dataset's `exclude`) from the
  # beam_size results before keeping top_n, as the full-ranking protocol of
  # SASRec / most-popular and train_generative's eval.exclude_history do.
  config.exclude_history = True
  # Prompts per jitted search call.
  config.batch_size = 64
  # Evaluate only the first rows (0: all), for smoke runs.
  config.max_rows = 0
  if variant == "tiny":
    config.beam_size = 5
    config.top_n = 5
    config.batch_size = 4
    config.max_rows = 8
  elif variant != "base":
    raise ValueError(f"unknown evaluate variant {variant!r}")
  return config
