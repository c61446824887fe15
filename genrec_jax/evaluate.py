"""The evaluate stage: any model folder of a workdir on a split.

Reads WORKDIR/dataset and the model folder WORKDIR/<config.model>/ (any
kind `recommend.load_model` loads: SASRec, LightGCN, TIGER, decoders) and
writes WORKDIR/<config.model>/metrics.json: <split>/hr@K, ndcg@K, mrr,
invalid_rate (the ids returned that are not items of the catalogue with an
SID; 0 for a constrained search), beam_size (generative models); keys of
the other split are kept.

Entry point: `run(config, workdir) -> dict` (binaries/evaluate.py).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging
import numpy as np

from genrec_jax.data.dataset import Dataset, EvalExamples, atomic_write_json
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.evaluation.generative import evaluate_generative
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.recommend import load_model


def run(config, workdir) -> dict[str, Any]:
  """Evaluates WORKDIR/<config.model> on config.split; returns the metrics."""
  if config.split not in ("test", "valid"):
    raise ValueError(f"config field 'split': {config.split!r} is not 'test' "
                     "or 'valid'")
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  model = load_model(workdir, config.model, ds=ds)
  examples = ds.test if config.split == "test" else ds.valid
  if examples is None:
    raise ValueError(f"{workdir / 'dataset'}: the dataset has no "
                     f"{config.split} split")
  if config.max_rows:
    examples = take_examples(examples, np.arange(min(config.max_rows,
                                                     len(examples))))
  if config.beam_size and model.beam_size is not None:
    model.beam_size = int(config.beam_size)
  exclude = bool(config.exclude_history)

  def rank_fn(batch: EvalExamples) -> np.ndarray:
    return model.rank(batch, top_n=config.top_n, exclude_history=exclude)

  is_valid = getattr(model, "is_valid_item", None) or (
      lambda items: (items >= 0) & (items < ds.num_items))
  prefix = f"{config.split}/"
  out = evaluate_generative(rank_fn, examples, is_valid_item=is_valid,
                            batch_size=config.batch_size, prefix=prefix)
  out["beam_size"] = model.beam_size
  out["history_masked"] = exclude
  if out["invalid_rate"] != 0.0:
    logging.error("invalid_rate %.4f != 0: the model returned ids outside "
                  "the catalogue", out["invalid_rate"])
  path = workdir / config.model / "metrics.json"
  merged = {}
  if path.exists():
    try:
      merged = json.loads(path.read_text())
    except json.JSONDecodeError:
      merged = {}
  merged = {k: v for k, v in merged.items() if not k.startswith(prefix)}
  merged.update(out)
  atomic_write_json(path, merged)
  k = max(k for k in metrics_lib.KS if k <= config.top_n)
  logging.info("evaluate %s: %s hr@%d %.4f ndcg@%d %.4f invalid_rate %g "
               "(%d rows, %.1fs)", config.model, config.split, k,
               out[f"{prefix}hr@{k}"], k, out[f"{prefix}ndcg@{k}"],
               out["invalid_rate"], out["num_eval_users"], out["seconds"])
  return out
