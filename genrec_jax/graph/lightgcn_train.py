"""The train_lightgcn stage: BPR training, evaluation and embedding export.

Reads WORKDIR/dataset, writes WORKDIR/lightgcn/:
  item_emb.npy   float32 [num_items, dim]: final layer-averaged item embeddings
  user_emb.npy   float32 [num_users, dim]: the same for users
  metrics.json   test/recall@K, test/ndcg@K, test/hr@K (K <= 20),
                 test/precision@20, test/mrr (truncated at 20), valid/* when the
                 dataset has a validation split, num_eval_users, seconds,
                 epochs, best_epoch, curve
  checkpoints/   Orbax: params + optimizer + epoch (latest; resume)

Model selection: with a validation split, the epoch with the best
valid/recall@20 is kept (early stopping); without one (Gowalla's given split),
training runs for num_epochs / max_minutes and the LAST epoch is reported (the
test curve is logged for monitoring only, never used to pick an epoch).

Entry point: `run(config, workdir) -> dict` (the metrics).
"""

from __future__ import annotations

import functools
import math
import pathlib
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from genrec_jax.data.dataset import (Dataset, DataError, atomic_save_npy,
                                     atomic_write_json)
from genrec_jax.graph import lightgcn as lgcn

STAGE = "lightgcn"
SELECT = "valid/recall@20"


def make_train_step(graphdef, tx, *, num_users: int, num_items: int,
                    batch_size: int, search_steps: int, decay: float):
  """Jitted (params, opt_state, graph, key) -> (params, opt_state, aux)."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, graph, key):
    users, pos, neg = lgcn.sample_bpr(key, graph, num_users, num_items,
                                      batch_size, search_steps)

    def loss_fn(p):
      return lgcn.bpr_loss(nnx.merge(graphdef, p), graph, users, pos, neg,
                           decay)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}

  return train_step


def make_embed(graphdef):
  @jax.jit
  def embed(params, graph):
    return nnx.merge(graphdef, params)(graph)

  return embed


def _check(examples, num_users, num_items, name):
  if examples is None:
    return
  if len(examples.users) and (examples.users.min() < 0
                              or examples.users.max() >= num_users):
    raise DataError(f"dataset/{name}.users: user id outside [0, {num_users})")
  vals = examples.targets.values
  if len(vals) and (vals.min() < 0 or vals.max() >= num_items):
    raise DataError(f"dataset/{name}.targets: item id outside [0, {num_items})")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains LightGCN on WORKDIR/dataset; returns the metrics it writes."""
  t_start = time.time()
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  _check(ds.test, ds.num_users, ds.num_items, "test")
  _check(ds.valid, ds.num_users, ds.num_items, "valid")
  graph = lgcn.build_graph(ds.train, ds.num_users, ds.num_items)
  mcfg, tcfg = config.model, config.train
  out = workdir / STAGE
  out.mkdir(parents=True, exist_ok=True)
  steps = max(1, math.ceil(graph.num_edges / tcfg.batch_size))
  logging.info("LightGCN: %d users, %d items, %d train pairs, %d steps of %d "
               "per epoch", ds.num_users, ds.num_items, graph.num_edges, steps,
               tcfg.batch_size)

  model = lgcn.LightGCN(ds.num_users, ds.num_items, mcfg.dim, mcfg.num_layers,
                        mcfg.init_std, mcfg.propagation,
                        rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  if tcfg.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(tcfg.learning_rate,
                                     tcfg.num_epochs * steps,
                                     alpha=tcfg.final_lr_ratio)
  elif tcfg.lr_schedule == "constant":
    lr = tcfg.learning_rate
  else:
    raise ValueError(f"train.lr_schedule {tcfg.lr_schedule!r}: use constant "
                     "or cosine")
  tx = optax.adam(lr)
  opt_state = tx.init(params)
  garrays = graph.arrays()
  train_step = make_train_step(
      graphdef, tx, num_users=ds.num_users, num_items=ds.num_items,
      batch_size=tcfg.batch_size, search_steps=lgcn.search_steps_for(graph),
      decay=tcfg.decay)
  embed = make_embed(graphdef)

  def evaluate(params, examples, prefix):
    users_e, items_e = embed(params, garrays)
    return lgcn.evaluate_topk(np.asarray(users_e), np.asarray(items_e),
                              examples, prefix=prefix, k=config.eval.k,
                              batch_size=config.eval.batch_size)

  mngr = ocp.CheckpointManager(
      out / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  start_epoch = 0
  if tcfg.resume and mngr.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": params, "opt": opt_state})
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    params, opt_state = restored["params"], restored["opt"]
    start_epoch = int(mngr.latest_step())
    logging.info("LightGCN: resumed at epoch %d", start_epoch)

  base_key = jax.random.key(config.seed)
  best, best_epoch, bad, best_params = -1.0, start_epoch, 0, None
  curve = []
  t_train = time.time()
  epoch = start_epoch
  for epoch in range(start_epoch + 1, tcfg.num_epochs + 1):
    t0 = time.time()
    losses = []
    for s in range(steps):
      key = jax.random.fold_in(base_key, (epoch - 1) * steps + s)
      params, opt_state, aux = train_step(params, opt_state, garrays, key)
      losses.append(aux["loss"])
    loss = float(jnp.mean(jnp.stack(losses)))
    if not math.isfinite(loss):
      raise FloatingPointError(f"LightGCN loss is {loss} at epoch {epoch}")
    secs = time.time() - t0
    elapsed = time.time() - t_train
    msg = (f"epoch {epoch}/{tcfg.num_epochs} loss {loss:.4f} {secs:.1f}s "
           f"({steps * tcfg.batch_size / secs:.0f} samples/s)")
    last = (epoch == tcfg.num_epochs
            or (tcfg.max_minutes and elapsed > tcfg.max_minutes * 60))
    if epoch % tcfg.eval_every == 0 or last:
      point = {"epoch": epoch, "loss": loss, "seconds": elapsed}
      if ds.valid is not None:
        v = evaluate(params, ds.valid, "valid/")
        point[SELECT] = v[SELECT]
        if v[SELECT] > best:
          best, best_epoch, bad = v[SELECT], epoch, 0
          best_params = jax.tree.map(jnp.copy, params)
        else:
          bad += 1
        msg += f" | valid recall@20 {v[SELECT]:.4f} (best {best:.4f} @ {best_epoch})"
      if config.eval.monitor_test:
        t = evaluate(params, ds.test, "test/")
        point["test/recall@20"] = t["test/recall@20"]
        point["test/ndcg@20"] = t["test/ndcg@20"]
        msg += (f" | test recall@20 {t['test/recall@20']:.4f} "
                f"ndcg@20 {t['test/ndcg@20']:.4f} (monitor only)")
      curve.append(point)
      mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(
          {"params": params, "opt": opt_state})), force=True)
    eta = elapsed / (epoch - start_epoch) * (tcfg.num_epochs - epoch)
    if tcfg.max_minutes:  # the time budget ends training first
      eta = min(eta, max(0.0, tcfg.max_minutes * 60 - elapsed))
    logging.info("%s | %.0fs elapsed, ETA <= %.0fs", msg, elapsed, eta)
    if ds.valid is not None and bad >= tcfg.patience:
      logging.info("early stop at epoch %d", epoch)
      break
    if last:
      break
  train_seconds = time.time() - t_train
  mngr.wait_until_finished()
  mngr.close()

  if best_params is not None:
    params = best_params
  else:
    best_epoch = epoch
  users_e, items_e = embed(params, garrays)
  users_e, items_e = np.asarray(users_e), np.asarray(items_e)
  result = lgcn.evaluate_topk(users_e, items_e, ds.test, prefix="test/",
                              k=config.eval.k, batch_size=config.eval.batch_size)
  if ds.valid is not None:
    result.update(lgcn.evaluate_topk(users_e, items_e, ds.valid,
                                     prefix="valid/", k=config.eval.k,
                                     batch_size=config.eval.batch_size))
  atomic_save_npy(out / "item_emb.npy", items_e.astype(np.float32))
  atomic_save_npy(out / "user_emb.npy", users_e.astype(np.float32))
  result.update({
      "num_eval_users": int(len(ds.test)),
      "seconds": time.time() - t_start,
      "train_seconds": train_seconds,
      "seconds_per_epoch": train_seconds / max(1, epoch - start_epoch),
      "epochs": int(epoch),
      "best_epoch": int(best_epoch),
      "selection": "valid/recall@20" if ds.valid is not None else "last epoch",
      "curve": curve,
  })
  atomic_write_json(out / "metrics.json", result)
  logging.info("LightGCN test: recall@20 %.4f ndcg@20 %.4f (epoch %d, %.0fs)",
               result["test/recall@20"], result["test/ndcg@20"], best_epoch,
               result["seconds"])
  return result
