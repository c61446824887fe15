"""Evaluation of a generative (semantic-ID) model with constrained beams.

python -m binaries.evaluate --config=configs/evaluate.py --workdir=runs/beauty

Reads WORKDIR/dataset, WORKDIR/<sids_dir>/item_sids.json and the model folder
WORKDIR/<model>/ (model.json + params/); writes WORKDIR/<model>/metrics.json
with <split>/hr@K, <split>/ndcg@K and invalid_rate.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "base"
  config = ml_collections.ConfigDict()
  # Model folder under the workdir (holds model.json and params/).
  config.model = "generative"
  # Folder under the workdir holding item_sids.json (and report.json).
  config.sids_dir = "sids"
  # Which split to evaluate: "test" or "valid".
  config.split = "test"
  # Beams per prompt (MiniOneRec evaluates with 50; the paper text says 16).
  config.beam_size = 20
  # Ranked items kept per prompt (<= beam_size); metrics use K <= top_n.
  config.top_n = 20
  # Drop each row's history items (the dataset's `exclude`) from the
  # beam_size results before keeping top_n, as the full-ranking protocol of
  # SASRec / most-popular and train_generative's eval.exclude_history do.
  config.exclude_history = True
  # Prompts per jitted search call.
  config.batch_size = 64
  # History items in the prompt (0: the model folder's prompt.max_history).
  config.max_history = 0
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
