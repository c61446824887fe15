"""The train_lightgcn stage: BPR training, evaluation and embedding export.

Reads WORKDIR/dataset, writes WORKDIR/lightgcn/:
  model.json, params/  the model folder: the final (layer-averaged) user and
                       item embeddings (`load_ranker` reads it back)
  item_emb.npy   float32 [num_items, dim]: final layer-averaged item embeddings
  user_emb.npy   float32 [num_users, dim]: the same for users
  metrics.json   test/recall@K, test/ndcg@K, test/hr@K (K <= 20),
                 test/precision@20, test/mrr (truncated at 20), valid/* when the
                 dataset has a validation split, num_eval_users, seconds,
                 epochs, best_epoch, steps, curve
  train_log.json the loss curve and evaluations (training/loop.py)
  checkpoints/   Orbax: latest (params + optimizer + step; resume) and best
  tb/            TensorBoard summaries

Training runs through `training/loop.train` with no dataset: the loss samples
its BPR triples on device from the step key fold_in(key(seed), step) and the
graph, which the model holds as non-Param variables (placed once, passed to
every step, never checkpointed). num_steps = num_epochs * steps_per_epoch
with steps_per_epoch = ceil(train pairs / batch_size); eval_every,
log_every and checkpoint_every are counted in epochs. Optimizer: Adam
(optimizer.make_optimizer with weight_decay 0, no clipping, no warm-up), the
learning rate constant or cosine over all steps down to end_lr_ratio.

Model selection: with a validation split, the evaluation with the best
valid/recall@20 is kept (early stopping); without one (Gowalla's given split),
training runs for num_epochs / max_minutes and the LAST step is reported (the
test curve is logged for monitoring only, never used to pick an epoch).

Entry points: `run(config, workdir) -> dict` (the metrics), `train_model`
and `load_ranker(model_dir, ds)` (a model folder -> ScoreRanker).
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from flax import nnx

from genrec_jax import model_folder
from genrec_jax.checks import check_ranges
from genrec_jax.data.dataset import (Dataset, DataError, EvalExamples,
                                     atomic_save_npy, atomic_write_json)
from genrec_jax.graph import lightgcn as lgcn
from genrec_jax.training import loop
from genrec_jax.training import optimizer
from genrec_jax.training import sharding

STAGE = "lightgcn"
# model.json kind.
KIND = "lightgcn"
SELECT = "valid/recall@20"


def make_loss(*, num_users: int, num_items: int, batch_size: int,
              search_steps: int, decay: float) -> loop.LossFn:
  """The loop's loss: samples BPR triples from the key and the model's graph.

  The batch argument is ignored (`{}`); aux: "bpr" and "reg".
  """

  def loss_fn(model, batch, key):
    del batch
    graph = model.graph_arrays()
    users, pos, neg = lgcn.sample_bpr(key, graph, num_users, num_items,
                                      batch_size, search_steps)
    return lgcn.bpr_loss(model, graph, users, pos, neg, decay)

  return loss_fn


def make_embed(graphdef):
  """A jitted (params, rest) -> (user [U, D], item [I, D]) final embeddings."""

  @jax.jit
  def embed(params, rest):
    return nnx.merge(graphdef, params, rest)()

  return embed


def embeddings(embed, model: lgcn.LightGCN) -> tuple[np.ndarray, np.ndarray]:
  """float32 numpy (user [U, D], item [I, D]) final embeddings of `model`."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  users_e, items_e = embed(params, rest)
  return (np.asarray(users_e, np.float32), np.asarray(items_e, np.float32))


def _check(examples, num_users, num_items, name):
  if examples is None:
    return
  if len(examples.users) and (examples.users.min() < 0
                              or examples.users.max() >= num_users):
    raise DataError(f"dataset/{name}.users: user id outside [0, {num_users})")
  vals = examples.targets.values
  if len(vals) and (vals.min() < 0 or vals.max() >= num_items):
    raise DataError(f"dataset/{name}.targets: item id outside [0, {num_items})")


def _fingerprint(config: ml_collections.ConfigDict, ds: Dataset,
                 graph: lgcn.Graph) -> dict:
  """What a resumed run must share with the checkpoint (see loop)."""
  return loop.fingerprint(config, ("seed", "model"), kind=KIND,
                          num_users=ds.num_users, num_items=ds.num_items,
                          num_edges=graph.num_edges)


def train_model(config: ml_collections.ConfigDict, ds: Dataset,
                out: pathlib.Path) -> tuple[loop.TrainResult, int]:
  """Trains LightGCN on ds.train's graph into `out` (resumable).

  Returns:
    (the loop's TrainResult - its model holds the best valid recall@20
    params, or the last ones without a validation split - and steps per
    epoch).
  """
  mcfg, tcfg = config.model, config.train
  graph = lgcn.build_graph(ds.train, ds.num_users, ds.num_items)
  spe = max(1, math.ceil(graph.num_edges / tcfg.batch_size))
  logging.info("LightGCN: %d users, %d items, %d train pairs, %d steps of %d "
               "per epoch", ds.num_users, ds.num_items, graph.num_edges, spe,
               tcfg.batch_size)
  model = lgcn.LightGCN(ds.num_users, ds.num_items, mcfg.dim, mcfg.num_layers,
                        mcfg.init_std, mcfg.propagation, graph=graph,
                        rngs=nnx.Rngs(config.seed))
  loss_fn = make_loss(num_users=ds.num_users, num_items=ds.num_items,
                      batch_size=tcfg.batch_size,
                      search_steps=lgcn.search_steps_for(graph),
                      decay=tcfg.decay)
  embed = make_embed(nnx.graphdef(model))
  ecfg = config.eval
  splits = ([("valid/", ds.valid)] if ds.valid is not None else []) + (
      [("test/", ds.test)] if ecfg.monitor_test else [])

  def evaluate(model):
    users_e, items_e = embeddings(embed, model)
    values = {}
    for prefix, examples in splits:
      m = lgcn.evaluate_topk(users_e, items_e, examples, prefix=prefix,
                             k=ecfg.k, batch_size=ecfg.batch_size)
      # test/* only monitors (never selects).
      keys = ([SELECT] if prefix == "valid/" else
              ["test/recall@20", "test/ndcg@20"])
      values.update({k: m[k] for k in keys})
    return values

  ckpt_dir = out / "checkpoints"
  loop.reset_stale_checkpoints(ckpt_dir, _fingerprint(config, ds, graph))
  result = loop.train(
      model, loss_fn, None, optimizer.epochs_to_steps(tcfg, spe),
      mesh=sharding.mesh_from_config(config.get("mesh")), ckpt_dir=ckpt_dir,
      num_steps=tcfg.num_epochs * spe, seed=config.seed,
      evaluate=evaluate if splits else None,
      select=SELECT if ds.valid is not None else None,
      summary_dir=out / "tb", examples_per_step=tcfg.batch_size,
      name="lightgcn")
  loop.write_train_log(out / "train_log.json", result)
  return result, spe


def save_model(out: str | pathlib.Path, users_e: np.ndarray,
               items_e: np.ndarray, mcfg: ml_collections.ConfigDict,
               **extra) -> None:
  """Writes the model folder `out`: the FINAL embeddings as its params.

  The layer-averaged embeddings are all a ranker needs (a score is a dot
  product), so the folder is self-contained: no graph to rebuild from the
  dataset (the layer-0 params stay in checkpoints/ for further training).
  """
  spec = {"kind": KIND, "num_users": int(users_e.shape[0]),
          "num_items": int(items_e.shape[0]), "dim": int(items_e.shape[1]),
          "model_config": model_folder.config_dict(mcfg),
          "params": "final layer-averaged embeddings", **extra}
  model_folder.save(out, spec, {"user_emb": users_e, "item_emb": items_e})


def user_vectors(user_emb: np.ndarray, item_emb: np.ndarray,
                 batch: EvalExamples) -> np.ndarray:
  """float32 [B, D]: the user's embedding for a known user id, else (a free
  history, e.g. typed into `recommend`) the mean of its items' embeddings."""
  users = np.asarray(batch.users)
  known = (users >= 0) & (users < user_emb.shape[0])
  vecs = np.zeros((len(batch), item_emb.shape[1]), np.float32)
  vecs[known] = user_emb[users[known]]
  for r in np.flatnonzero(~known):
    if len(batch.history[r]):
      vecs[r] = item_emb[batch.history[r]].mean(0)
  return vecs


def load_ranker(model_dir: str | pathlib.Path,
                ds: Dataset | None = None) -> model_folder.ScoreRanker:
  """A LightGCN model folder as a ScoreRanker (scores = u . item_emb).

  Args:
    model_dir: the folder `save_model` wrote (e.g. WORKDIR/lightgcn).
    ds: the dataset, to check the catalogue size (optional).
  """
  spec = model_folder.read_spec(
      model_dir, kind=KIND, num_items=None if ds is None else ds.num_items)
  num_users, num_items = int(spec["num_users"]), int(spec["num_items"])
  dim = int(spec["dim"])
  abstract = {"user_emb": jax.ShapeDtypeStruct((num_users, dim), np.float32),
              "item_emb": jax.ShapeDtypeStruct((num_items, dim), np.float32)}
  params = model_folder.restore_params(model_dir, abstract)
  user_emb = np.asarray(params["user_emb"])
  item_emb = np.asarray(params["item_emb"])

  def score_fn(batch: EvalExamples) -> np.ndarray:
    return user_vectors(user_emb, item_emb, batch) @ item_emb.T  # [B, I]

  return model_folder.ScoreRanker(KIND, score_fn, num_items)


def _curve(result: loop.TrainResult, spe: int) -> list[dict]:
  """metrics.json's curve: one point per evaluation (the whole run)."""
  loss_at = {p["step"]: p["loss"] for p in result.curve}
  return [{"epoch": round(e["step"] / spe, 3), "step": e["step"],
           "loss": loss_at.get(e["step"]),
           **{k: v for k, v in e.items() if k != "step"}}
          for e in result.evals]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains LightGCN on WORKDIR/dataset; returns the metrics it writes."""
  t_start = time.time()
  check_ranges([("model.dim", config.model.dim, 1, None),
                ("model.num_layers", config.model.num_layers, 0, None),
                ("model.init_std", config.model.init_std, 0.0, None),
                ("train.batch_size", config.train.batch_size, 1, None),
                ("train.decay", config.train.decay, 0.0, None)])
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  _check(ds.test, ds.num_users, ds.num_items, "test")
  _check(ds.valid, ds.num_users, ds.num_items, "valid")
  out = workdir / STAGE
  out.mkdir(parents=True, exist_ok=True)
  result, spe = train_model(config, ds, out)
  users_e, items_e = embeddings(make_embed(nnx.graphdef(result.model)),
                                result.model)
  best_step = result.best_step if ds.valid is not None else result.step
  ecfg = config.eval
  metrics = lgcn.evaluate_topk(users_e, items_e, ds.test, prefix="test/",
                               k=ecfg.k, batch_size=ecfg.batch_size)
  if ds.valid is not None:
    metrics.update(lgcn.evaluate_topk(users_e, items_e, ds.valid,
                                      prefix="valid/", k=ecfg.k,
                                      batch_size=ecfg.batch_size))
  atomic_save_npy(out / "item_emb.npy", items_e)
  atomic_save_npy(out / "user_emb.npy", users_e)
  save_model(out, users_e, items_e, config.model, best_step=int(best_step))
  # Epochs trained in this call (a resumed run counts only its own).
  epochs_here = result.examples / config.train.batch_size / spe
  metrics.update({
      "num_eval_users": int(len(ds.test)),
      "seconds": time.time() - t_start,
      "train_seconds": result.seconds,
      "seconds_per_epoch": result.seconds / max(epochs_here, 1e-9),
      "epochs": round(result.step / spe, 3),
      "best_epoch": round(best_step / spe, 3),
      "steps": int(result.step),
      "steps_per_epoch": int(spe),
      "stop_reason": result.stop_reason,
      "selection": SELECT if ds.valid is not None else "last epoch",
      "curve": _curve(result, spe),
  })
  atomic_write_json(out / "metrics.json", metrics)
  logging.info("LightGCN test: recall@20 %.4f ndcg@20 %.4f hr@10 %.4f "
               "(epoch %g of %g, %s, %.0fs)", metrics["test/recall@20"],
               metrics["test/ndcg@20"], metrics["test/hr@10"],
               metrics["best_epoch"], metrics["epochs"], result.stop_reason,
               metrics["seconds"])
  return metrics
