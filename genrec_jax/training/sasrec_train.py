"""The train_sasrec stage: train SASRec with the one trainer, evaluate, save.

Reads WORKDIR/dataset, writes WORKDIR/sasrec/:
  model.json, params/  the model folder (`load_ranker` reads it back)
  metrics.json         test/* and valid/* full-ranking metrics of the best
                       evaluation (history items masked), num_eval_users,
                       seconds, epochs, best_epoch, steps, curve
  train_log.json       the loss curve and evaluations (training/loop.py)
  checkpoints/latest   params + optimizer + step + data-iterator state
  checkpoints/best     params of the best valid NDCG@10
  tb/                  TensorBoard summaries

Training runs through `training/loop.train`: num_steps = num_epochs *
steps_per_epoch, the config's eval_every / log_every / checkpoint_every
counted in epochs, early stopping on valid/ndcg@10 over the full
validation split, per-step keys fold_in(key(seed), step).

Entry points: `run(config, workdir) -> dict` (the metrics), `train_model`
(the training part) and `load_ranker(model_dir, ds)` (a model folder ->
model_folder.ScoreRanker).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from genrec_jax import model_folder
from genrec_jax.checks import check_ranges
from genrec_jax.data.dataset import (Dataset, DataError, EvalExamples,
                                     atomic_write_json)
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.models.sasrec import SASRec, sasrec_loss
from genrec_jax.training import batching
from genrec_jax.training import loop
from genrec_jax.training import optimizer
from genrec_jax.training import sharding
from genrec_jax.training.sasrec_data import bucketed_pipeline, train_pipeline

# model.json kind.
KIND = "sasrec"
# Validation metric that selects the best evaluation.
SELECT = "valid/ndcg@10"


def make_loss(loss: str = "ce", max_positions: int = 0) -> loop.LossFn:
  """The loop's loss: (model, {"inputs", "targets"}, key) -> (loss, aux)."""

  def loss_fn(model, batch, key):
    return sasrec_loss(model, batch["inputs"], batch["targets"], key,
                       loss=loss, max_positions=max_positions)

  return loss_fn


def make_scorer(graphdef):
  """A jitted (params, rest, history [B, T]) -> scores [B, num_items]."""

  @jax.jit
  def score(params, rest, history):
    return nnx.merge(graphdef, params, rest).score_last(history)

  return score


def evaluate(score, model: SASRec, examples: EvalExamples, *, prefix: str,
             batch_size: int) -> dict[str, float]:
  """Full-ranking (and sampled, when candidates exist) metrics of `model`."""
  _, params, rest = nnx.split(model, nnx.Param, ...)

  def score_fn(users, history):
    del users
    return score(params, rest, jnp.asarray(history))

  return metrics_lib.evaluate_scorer(score_fn, examples, model.num_items,
                                     prefix=prefix, max_history=model.max_len,
                                     batch_size=batch_size)


def _check_examples(examples, num_items: int, name: str) -> None:
  for field in ("history", "targets"):
    values = getattr(examples, field).values
    if len(values) and (values.min() < 0 or values.max() >= num_items):
      raise DataError(f"dataset/{name}.{field}: item id outside "
                      f"[0, {num_items})")


def _fingerprint(config: ml_collections.ConfigDict, ds: Dataset) -> dict:
  """What a resumed run must share with the checkpoint (see loop)."""
  return loop.fingerprint(config, ("seed", "model"), kind=KIND,
                          num_users=ds.num_users, num_items=ds.num_items,
                          train_values=len(ds.train.values))


def train_model(config: ml_collections.ConfigDict, ds: Dataset,
                out: pathlib.Path) -> tuple[loop.TrainResult, int]:
  """Trains SASRec on ds.train into `out` (resumable).

  Returns:
    (the loop's TrainResult, whose model holds the best valid NDCG@10
    params; steps per epoch).
  """
  mcfg, tcfg = config.model, config.train
  if tcfg.buckets:
    pipe = bucketed_pipeline(ds.train, ds.num_items, max_len=mcfg.max_len,
                             batch_size=tcfg.batch_size, seed=config.seed,
                             buckets=tuple(tcfg.buckets),
                             num_epochs=tcfg.num_epochs + 1)
  else:
    pipe = train_pipeline(ds.train, ds.num_items, max_len=mcfg.max_len,
                          batch_size=tcfg.batch_size, seed=config.seed)
  spe = pipe.steps_per_epoch
  dataset = batching.shard_batches(pipe.dataset, jax.process_index(),
                                   jax.process_count())
  logging.info("SASRec: %d train users, %d target positions per epoch, "
               "%d steps per epoch", len(pipe.source),
               pipe.source.num_positions, spe)
  slots = tcfg.batch_size * mcfg.max_len
  max_positions = (0 if tcfg.position_budget >= 1.0 or tcfg.buckets
                   else max(1, int(tcfg.position_budget * slots)))
  model = SASRec(ds.num_items, mcfg, rngs=nnx.Rngs(config.seed))
  score = make_scorer(nnx.graphdef(model))

  def valid_metrics(model):
    v = evaluate(score, model, ds.valid, prefix="valid/",
                 batch_size=config.eval.batch_size)
    return {SELECT: v[SELECT], "valid/hr@10": v["valid/hr@10"]}

  ckpt_dir = out / "checkpoints"
  loop.reset_stale_checkpoints(ckpt_dir, _fingerprint(config, ds))
  result = loop.train(
      model, make_loss(tcfg.loss, max_positions), dataset,
      optimizer.epochs_to_steps(tcfg, spe), mesh=sharding.mesh_from_config(
          config.get("mesh")), ckpt_dir=ckpt_dir,
      num_steps=tcfg.num_epochs * spe, seed=config.seed,
      evaluate=valid_metrics, select=SELECT, summary_dir=out / "tb",
      examples_key="inputs", name=config.name)
  loop.write_train_log(out / "train_log.json", result)
  return result, spe


def _epoch_curve(result: loop.TrainResult, spe: int) -> list[dict]:
  """metrics.json's curve: one point per evaluation (the whole run)."""
  loss_at = {p["step"]: p["loss"] for p in result.curve}
  return [{"epoch": round(e["step"] / spe, 3), "step": e["step"],
           "loss": loss_at.get(e["step"]),
           **{k: v for k, v in e.items() if k != "step"}}
          for e in result.evals]


def save_model(out: str | pathlib.Path, model: SASRec,
               mcfg: ml_collections.ConfigDict, **extra) -> None:
  """Writes the model folder `out` (model.json + params/)."""
  spec = {"kind": KIND, "num_items": int(model.num_items),
          "model_config": model_folder.config_dict(mcfg), **extra}
  model_folder.save(out, spec, nnx.state(model, nnx.Param))


def load_ranker(model_dir: str | pathlib.Path,
                ds: Dataset | None = None) -> model_folder.ScoreRanker:
  """A SASRec model folder as a ScoreRanker.

  Scores are `score_last` over the last max_len items of each row's
  history, left-padded (jitted; one compilation per batch shape).

  Args:
    model_dir: the folder `save_model` wrote (e.g. WORKDIR/sasrec).
    ds: the dataset, to check the catalogue size (optional).
  """
  spec = model_folder.read_spec(
      model_dir, kind=KIND, num_items=None if ds is None else ds.num_items)
  num_items = int(spec["num_items"])
  mcfg = ml_collections.ConfigDict(spec["model_config"])
  abstract = nnx.eval_shape(lambda: SASRec(num_items, mcfg,
                                           rngs=nnx.Rngs(0)))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  params = model_folder.restore_params(model_dir, abstract_params)
  score = make_scorer(graphdef)

  def score_fn(batch: EvalExamples) -> np.ndarray:
    history = batch.history.padded(mcfg.max_len, num_items, left=True)
    return np.asarray(score(params, rest, jnp.asarray(history)))

  return model_folder.ScoreRanker(KIND, score_fn, num_items)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains SASRec on WORKDIR/dataset; returns the metrics it writes."""
  t_start = time.time()
  check_ranges([("model.dropout", config.model.dropout, 0.0, 1.0),
                ("model.max_len", config.model.max_len, 1, None),
                ("train.batch_size", config.train.batch_size, 1, None),
                ("train.position_budget", config.train.position_budget,
                 0.0, 1.0)])
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  if ds.valid is None:
    raise DataError(f"{workdir / 'dataset'}: no validation split; SASRec "
                    "early stopping needs one (use a leave_one_out split)")
  _check_examples(ds.valid, ds.num_items, "valid")
  _check_examples(ds.test, ds.num_items, "test")
  out = workdir / config.name
  out.mkdir(parents=True, exist_ok=True)
  result, spe = train_model(config, ds, out)
  model = result.model
  save_model(out, model, config.model, select=SELECT,
             best_step=int(result.best_step))

  t_eval = time.time()
  score = make_scorer(nnx.graphdef(model))
  bs = config.eval.batch_size
  metrics = evaluate(score, model, ds.test, prefix="test/", batch_size=bs)
  if config.eval.report_valid:
    metrics.update(evaluate(score, model, ds.valid, prefix="valid/",
                            batch_size=bs))
  metrics.update({
      "num_eval_users": int(len(ds.test)),
      "seconds": time.time() - t_start,
      "train_seconds": result.seconds,
      "test_eval_seconds": time.time() - t_eval,
      "epochs": round(result.step / spe, 3),
      "best_epoch": round(result.best_step / spe, 3),
      "steps": int(result.step),
      "steps_per_epoch": int(spe),
      "stop_reason": result.stop_reason,
      "loss": config.train.loss,
      "dropped_positions": int(result.aux_totals.get("dropped", 0)),
      "history_masked": ds.test.exclude is not None,
      "curve": _epoch_curve(result, spe),
  })
  atomic_write_json(out / "metrics.json", metrics)
  logging.info("SASRec test: hr@10 %.4f ndcg@10 %.4f (best epoch %g of %g, "
               "%s, %.0fs)", metrics["test/hr@10"], metrics["test/ndcg@10"],
               metrics["best_epoch"], metrics["epochs"], result.stop_reason,
               metrics["seconds"])
  return metrics
