"""The train_sasrec stage: train, early-stop, checkpoint and evaluate SASRec.

Reads WORKDIR/dataset, writes WORKDIR/sasrec/{metrics.json, checkpoints/}:
  checkpoints/latest  params + optimizer + epoch + data-iterator state (resume)
  checkpoints/best    params of the epoch with the best valid NDCG@10
metrics.json: test/* and valid/* full-ranking metrics of the best epoch
(history items masked), `num_eval_users`, `seconds`, `epochs`, `best_epoch`.

Entry point: `run(config, workdir) -> dict` (the metrics).
"""

from __future__ import annotations

import functools
import math
import pathlib
import time
from typing import Any

from absl import logging
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from genrec_jax.data.dataset import Dataset, DataError, atomic_write_json
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.models.sasrec import SASRec, sasrec_loss
from genrec_jax.training.sasrec_data import bucketed_pipeline, train_pipeline

STAGE = "sasrec"
# Validation metric that selects the best epoch.
SELECT = "valid/ndcg@10"


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (Adam when weight_decay == 0), optional global-norm clipping."""
  tx = optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=1e-8,
                   weight_decay=cfg.weight_decay)
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def make_train_step(graphdef, tx, *, loss: str, max_positions: int):
  """A jitted (params, opt_state, rest, batch, key) -> (params, opt_state, aux)."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, rest, inputs, targets, key):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, rest)
      return sasrec_loss(model, inputs, targets, key, loss=loss,
                         max_positions=max_positions)

    (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": value, **aux}

  return train_step


def make_scorer(graphdef):
  """A jitted (params, rest, history [B, T]) -> scores [B, num_items]."""

  @jax.jit
  def score(params, rest, history):
    return nnx.merge(graphdef, params, rest).score_last(history)

  return score


def evaluate(score, params, rest, examples, num_items: int, *, prefix: str,
             max_len: int, batch_size: int) -> dict[str, float]:
  """Full-ranking (and sampled, when candidates exist) metrics."""

  def score_fn(users, history):
    del users
    return score(params, rest, jnp.asarray(history))

  return metrics_lib.evaluate_scorer(score_fn, examples, num_items,
                                     prefix=prefix, max_history=max_len,
                                     batch_size=batch_size)


def _check_examples(examples, num_items: int, name: str) -> None:
  for field in ("history", "targets"):
    values = getattr(examples, field).values
    if len(values) and (values.min() < 0 or values.max() >= num_items):
      raise DataError(f"dataset/{name}.{field}: item id outside [0, {num_items})")


def _state(params, opt_state, epoch, best_epoch, best, bad_evals):
  """The checkpointed training state (scalars as arrays for Orbax)."""
  return {"params": params, "opt": opt_state, "epoch": jnp.asarray(epoch, jnp.int32),
          "best_epoch": jnp.asarray(best_epoch, jnp.int32),
          "best": jnp.asarray(best, jnp.float32),
          "bad_evals": jnp.asarray(bad_evals, jnp.int32)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains SASRec on WORKDIR/dataset; returns the metrics it writes."""
  t_start = time.time()
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  mcfg, tcfg = config.model, config.train
  if ds.valid is None:
    raise DataError(f"{workdir / 'dataset'}: no validation split; SASRec early "
                    "stopping needs one (use a leave_one_out split)")
  _check_examples(ds.valid, ds.num_items, "valid")
  _check_examples(ds.test, ds.num_items, "test")
  out = workdir / STAGE
  out.mkdir(parents=True, exist_ok=True)

  if tcfg.buckets:
    pipe = bucketed_pipeline(ds.train, ds.num_items, max_len=mcfg.max_len,
                             batch_size=tcfg.batch_size, seed=config.seed,
                             buckets=tuple(tcfg.buckets),
                             num_epochs=tcfg.num_epochs + 1)
  else:
    pipe = train_pipeline(ds.train, ds.num_items, max_len=mcfg.max_len,
                          batch_size=tcfg.batch_size, seed=config.seed)
  logging.info("SASRec: %d train users, %d target positions per epoch, "
               "%d steps per epoch", len(pipe.source),
               pipe.source.num_positions, pipe.steps_per_epoch)

  model = SASRec(ds.num_items, mcfg, rngs=nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_optimizer(tcfg)
  opt_state = tx.init(params)
  slots = tcfg.batch_size * mcfg.max_len
  max_positions = (0 if tcfg.position_budget >= 1.0 or tcfg.buckets
                   else max(1, int(tcfg.position_budget * slots)))
  train_step = make_train_step(graphdef, tx, loss=tcfg.loss,
                               max_positions=max_positions)
  score = make_scorer(graphdef)
  eval_kw = dict(max_len=mcfg.max_len, batch_size=config.eval.batch_size)

  it = iter(pipe.dataset)
  ckpt_dir = out / "checkpoints"
  opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  latest = ocp.CheckpointManager(ckpt_dir / "latest", options=opts)
  best_mngr = ocp.CheckpointManager(ckpt_dir / "best", options=opts)

  state = _state(params, opt_state, 0, 0, -1.0, 0)
  start_epoch = 0
  if tcfg.resume and latest.latest_step() is not None:
    step = latest.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data_iter=grain.checkpoint.CheckpointRestore(it)))
    state = dict(restored["state"])
    start_epoch = int(state["epoch"])
    logging.info("SASRec: resumed from %s at epoch %d",
                 ckpt_dir / "latest", start_epoch)
  params, opt_state = state["params"], state["opt"]
  best, best_epoch = float(state["best"]), int(state["best_epoch"])
  bad_evals = int(state["bad_evals"])

  base_key = jax.random.key(config.seed)
  steps = pipe.steps_per_epoch
  t_train = time.time()
  dropped = 0
  epoch = start_epoch
  history = []
  for epoch in range(start_epoch + 1, tcfg.num_epochs + 1):
    t_epoch = time.time()
    losses, positions = [], 0
    for s in range(steps):
      batch = next(it)
      key = jax.random.fold_in(base_key, (epoch - 1) * steps + s)
      params, opt_state, aux = train_step(params, opt_state, rest,
                                          batch["inputs"], batch["targets"], key)
      losses.append(aux["loss"])
      if (s + 1) % tcfg.log_every == 0:
        logging.info("epoch %d step %d/%d loss %.4f", epoch, s + 1, steps,
                     float(aux["loss"]))
      positions += aux["positions"]
      dropped += aux["dropped"]
    loss = float(jnp.mean(jnp.stack(losses)))
    positions = int(positions)
    secs = time.time() - t_epoch
    rate = len(pipe.source) / secs
    if not math.isfinite(loss):
      raise FloatingPointError(f"SASRec loss is {loss} at epoch {epoch}")
    msg = (f"epoch {epoch}/{tcfg.num_epochs} loss {loss:.4f} "
           f"{rate:.0f} examples/s ({positions / secs:.0f} positions/s)")
    elapsed = time.time() - t_train
    if epoch % tcfg.eval_every == 0 or epoch == tcfg.num_epochs:
      valid = evaluate(score, params, rest, ds.valid, ds.num_items,
                       prefix="valid/", **eval_kw)
      value = valid[SELECT]
      history.append({"epoch": epoch, "loss": loss, SELECT: value,
                      "valid/hr@10": valid["valid/hr@10"]})
      if value > best:
        best, best_epoch, bad_evals = value, epoch, 0
        best_mngr.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params})), force=True)
      else:
        bad_evals += 1
      msg += (f" | valid ndcg@10 {value:.4f} hr@10 {valid['valid/hr@10']:.4f}"
              f" (best {best:.4f} @ {best_epoch})")
    eta = elapsed / (epoch - start_epoch) * (tcfg.num_epochs - epoch)
    if tcfg.max_minutes:  # the time budget ends training first
      eta = min(eta, max(0.0, tcfg.max_minutes * 60 - elapsed))
    logging.info("%s | %.0fs elapsed, ETA <= %.0fs", msg, elapsed, eta)
    state = _state(params, opt_state, epoch, best_epoch, best, bad_evals)
    latest.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(it)), force=True)
    if bad_evals >= tcfg.patience:
      logging.info("early stop at epoch %d: no better %s in %d evaluations",
                   epoch, SELECT, bad_evals)
      break
    if tcfg.max_minutes and elapsed > tcfg.max_minutes * 60:
      logging.info("stopping at epoch %d: time budget %.1f min reached",
                   epoch, tcfg.max_minutes)
      break
  train_seconds = time.time() - t_train
  latest.wait_until_finished()
  best_mngr.wait_until_finished()

  # Evaluate the best epoch's parameters.
  if best_mngr.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params})
    params = best_mngr.restore(best_mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]["params"]
  t_eval = time.time()
  result = evaluate(score, params, rest, ds.test, ds.num_items, prefix="test/",
                    **eval_kw)
  if config.eval.report_valid:
    result.update(evaluate(score, params, rest, ds.valid, ds.num_items,
                           prefix="valid/", **eval_kw))
  latest.close()
  best_mngr.close()
  result.update({
      "num_eval_users": int(len(ds.test)),
      "seconds": time.time() - t_start,
      "train_seconds": train_seconds,
      "test_eval_seconds": time.time() - t_eval,
      "epochs": int(epoch),
      "best_epoch": int(best_epoch),
      "loss": config.train.loss,
      "dropped_positions": int(dropped),
      "history_masked": ds.test.exclude is not None,
      "curve": history,
  })
  atomic_write_json(out / "metrics.json", result)
  logging.info("SASRec test: hr@10 %.4f ndcg@10 %.4f (best epoch %d of %d, "
               "%.0fs)", result["test/hr@10"], result["test/ndcg@10"],
               best_epoch, epoch, result["seconds"])
  return result
