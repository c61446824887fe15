"""A generic, resumable training loop for NNX models (1 or N devices).

  mesh = mesh_from_config(config.mesh)
  result = train(model, loss_fn, dataset, config.train, mesh=mesh,
                 ckpt_dir=workdir / "name/checkpoints", num_steps=1000,
                 evaluate=lambda model: {"valid/ndcg@10": ...})

* Optimizer: optax AdamW (decoupled weight decay on >= 2-d params only) with
  linear warm-up then cosine (or linear) decay, global-norm clipping.
* Optional bfloat16 compute: f32 master params, cast to bf16 inside the loss
  and merged into a model graph whose config has dtype=bfloat16.
* One mesh (data / fsdp / tensor axes) from the config; params placed by the
  logical-axis rules (training/sharding.py), the batch sharded over
  data + fsdp; the same code runs on one device.
* Multi-host ready: `maybe_initialize_distributed`, grain sharded by
  `jax.process_index()` (the caller builds the per-process dataset), the
  global batch assembled with `jax.make_array_from_process_local_data`.
* Orbax `CheckpointManager`: params, optimizer state, step, early-stopping
  state and the grain iterator state. Per-step randomness is
  `fold_in(key(seed), step)`, never a Python-side stateful rng, so a run killed
  at any point and restarted reaches bit-identical parameters (on CPU).
* Logs step, loss, examples/s and ETA; writes `train_log.json` (the loss
  curve) and TensorBoard event files (tensorboardX, when installed).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Callable, Iterable

from absl import logging
from flax import nnx
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.training import sharding

MESH_AXES = ("data", "fsdp", "tensor")
LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array],
                  tuple[jax.Array, dict[str, jax.Array]]]


def default_train_config() -> ml_collections.ConfigDict:
  """The fields `train` reads (a stage config embeds these under .train)."""
  c = ml_collections.ConfigDict()
  # Peak learning rate.
  c.learning_rate = 1e-3
  # Linear warm-up steps from 0 to the peak.
  c.warmup_steps = 100
  # Decay after warm-up: "cosine", "linear" or "constant".
  c.schedule = "cosine"
  # Final learning rate as a fraction of the peak.
  c.end_lr_ratio = 0.0
  # AdamW moments and decoupled weight decay (matrices only).
  c.b1 = 0.9
  c.b2 = 0.999
  c.weight_decay = 0.01
  # Global-norm gradient clipping (0 = off).
  c.grad_clip = 1.0
  # "float32" or "bfloat16" activations (params always float32).
  c.compute_dtype = "float32"
  # Log a progress line every this many steps.
  c.log_every = 50
  # Save the resumable checkpoint every this many steps (and at the end).
  c.checkpoint_every = 200
  # Evaluate (early stopping) every this many steps (0 = only at the end).
  c.eval_every = 0
  # Stop after this many evaluations without improvement (0 = never).
  c.patience = 0
  # Wall-clock budget of the loop in minutes (0 = none).
  c.max_minutes = 0.0
  # Resume from the latest checkpoint when one exists.
  c.resume = True
  return c


# ----------------------------------------------------------------------------
# Optimizer.


def learning_rate_schedule(cfg: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """Linear warm-up to cfg.learning_rate, then cfg.schedule decay.

  Args:
    cfg: learning_rate, warmup_steps, schedule, end_lr_ratio.
    total_steps: steps of the whole run (warm-up included).

  Returns:
    step -> learning rate.
  """
  peak = float(cfg.learning_rate)
  warmup = int(min(cfg.warmup_steps, max(total_steps - 1, 0)))
  end = peak * float(cfg.end_lr_ratio)
  decay = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_lr_ratio)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(peak, end, decay)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config field 'train.schedule': {cfg.schedule!r} is not "
                     "cosine, linear or constant")
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW on the schedule."""
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  tx = optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1,
                   b2=cfg.b2, eps=1e-8, weight_decay=cfg.weight_decay,
                   mask=decay_mask)
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


# ----------------------------------------------------------------------------
# Mesh and devices.


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` when config.distributed is set (once)."""
  if not config.get("distributed", False):
    return
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local / %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def mesh_from_config(mesh_cfg) -> jax.sharding.Mesh:
  """Mesh with axes (data, fsdp, tensor); one -1 takes the other devices.

  Args:
    mesh_cfg: a ConfigDict/dict with `shape` (3 ints) or None (all devices
      on data).
  """
  shape = (-1, 1, 1) if mesh_cfg is None else tuple(mesh_cfg["shape"])
  axes = MESH_AXES if mesh_cfg is None else tuple(
      mesh_cfg.get("axes", MESH_AXES))
  return sharding.make_mesh(shape, axes)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """Devices the batch is split over (data x fsdp)."""
  return math.prod(mesh.shape.get(a, 1) for a in ("data", "fsdp"))


def _global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded over data + fsdp."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, v.ndim), v)
  return out


# ----------------------------------------------------------------------------
# Train step.


def _compute_graphdef(model: nnx.Module, compute_dtype: str):
  """Graph of the model with config.dtype = compute dtype (for bf16)."""
  graphdef = nnx.graphdef(model)
  if compute_dtype == "float32":
    return graphdef
  cfg = getattr(model, "config", None)
  if cfg is None or not dataclasses.is_dataclass(cfg) or not hasattr(
      cfg, "dtype"):
    raise ValueError(f"compute_dtype {compute_dtype!r} needs a model with a "
                     "dataclass .config that has a dtype field")
  new_cfg = dataclasses.replace(cfg, dtype=jnp.dtype(compute_dtype))
  abstract = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0)))
  return nnx.graphdef(abstract)


def make_train_step(graphdef, tx: optax.GradientTransformation,
                    loss_fn: LossFn, compute_dtype: str = "float32"):
  """(params, opt_state, rest, batch, base_key, step) -> (params, opt_state,
  metrics); the loss gets fold_in(base_key, step) (folded inside the jit: an
  eager fold_in would wait for the previous step)."""
  dt = jnp.dtype(compute_dtype)

  def step(params, opt_state, rest, batch, base_key, step):
    key = jax.random.fold_in(base_key, step)

    def objective(p):
      if dt != jnp.float32:
        p = jax.tree.map(lambda x: x.astype(dt), p)
      model = nnx.merge(graphdef, p, rest)
      return loss_fn(model, batch, key)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return params, opt_state, metrics

  return jax.jit(step, donate_argnums=(0, 1))


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    model: the model holding the selected parameters (best evaluation when
      `evaluate` was given, else the last step).
    step: steps done (including those before a resume).
    best: best value of the selection metric (None without evaluation).
    best_step: step of `best`.
    curve: [{"step", "loss", ...}] logged points (the whole run).
    evals: [{"step", metric: value}] evaluations (the whole run).
    stop_reason: "steps", "data", "patience" or "budget".
    seconds: wall time of this call.
    examples: training examples seen in this call.
  """
  model: nnx.Module
  step: int
  best: float | None
  best_step: int
  curve: list[dict[str, float]]
  evals: list[dict[str, float]]
  stop_reason: str
  seconds: float
  examples: int


class _Summary:
  """TensorBoard scalars via tensorboardX (a no-op when it is missing)."""

  def __init__(self, logdir: pathlib.Path | None):
    self.writer = None
    if logdir is None or jax.process_index() != 0:
      return
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.warning("tensorboardX not installed: no TensorBoard summaries")
      return
    self.writer = SummaryWriter(str(logdir))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self.writer is None:
      return
    for k, v in values.items():
      self.writer.add_scalar(k.replace("@", "_at_"), v, step)
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _meta(step, best, best_step, bad_evals, curve, evals, elapsed):
  return {"step": int(step), "best": best, "best_step": int(best_step),
          "bad_evals": int(bad_evals), "curve": curve, "evals": evals,
          "elapsed": float(elapsed)}


def train(model: nnx.Module, loss_fn: LossFn,
          dataset: grain.IterDataset | Iterable[dict[str, np.ndarray]],
          cfg: ml_collections.ConfigDict, *,
          mesh: jax.sharding.Mesh,
          ckpt_dir: str | pathlib.Path,
          num_steps: int,
          seed: int = 0,
          evaluate: Callable[[nnx.Module], dict[str, float]] | None = None,
          select: str | None = None,
          summary_dir: str | pathlib.Path | None = None,
          examples_key: str | None = None,
          name: str = "train") -> TrainResult:
  """Trains `model` on `dataset` for up to `num_steps` steps (resumable).

  Args:
    model: the NNX model (f32 params); it is placed on `mesh` here.
    loss_fn: (model, batch of global arrays, key) -> (scalar loss, aux
      scalars). `key` is fold_in(key(seed), step) (for dropout).
    dataset: a grain IterDataset (or MapDataset) yielding per-process numpy
      batches (dicts of [B_local, ...] arrays); its iterator state is
      checkpointed. It may end before num_steps (stop reason "data").
    cfg: the train config (see `default_train_config`).
    mesh: from `mesh_from_config`.
    ckpt_dir: holds `latest/` (resume) and `best/` (selected params).
    num_steps: total steps (also the schedule length).
    seed: base of the per-step keys.
    evaluate: model -> metrics, run every cfg.eval_every steps and at the
      end; must be deterministic for exact resume.
    select: metric of `evaluate` to maximise (early stopping, best params).
    summary_dir: TensorBoard log folder (None: none).
    examples_key: batch field whose leading size counts examples (default:
      the first field).
    name: prefix of log lines.

  Returns:
    TrainResult.
  """
  t_call = time.time()
  ckpt_dir = pathlib.Path(ckpt_dir).resolve()
  if evaluate is not None and not select:
    raise ValueError("train: `select` names the metric of `evaluate`")
  model = sharding.shard_model(model, mesh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  compute = _compute_graphdef(model, cfg.compute_dtype)
  tx = make_optimizer(cfg, num_steps)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(params)
  train_step = make_train_step(compute, tx, loss_fn, cfg.compute_dtype)

  it = iter(dataset)
  opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  latest = ocp.CheckpointManager(ckpt_dir / "latest", options=opts)
  best_mngr = ocp.CheckpointManager(ckpt_dir / "best", options=opts)
  has_iter_state = hasattr(it, "get_state")

  step, best, best_step, bad_evals = 0, None, 0, 0
  curve, evals, elapsed_before = [], [], 0.0
  if cfg.resume and latest.latest_step() is not None:
    at = latest.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": params, "opt": opt_state})
    items = {"state": ocp.args.StandardRestore(abstract),
             "meta": ocp.args.JsonRestore()}
    if has_iter_state:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(it)
    restored = latest.restore(at, args=ocp.args.Composite(**items))
    params = restored["state"]["params"]
    opt_state = restored["state"]["opt"]
    meta = restored["meta"]
    step, best, best_step = meta["step"], meta["best"], meta["best_step"]
    bad_evals, curve, evals = meta["bad_evals"], meta["curve"], meta["evals"]
    elapsed_before = meta["elapsed"]
    logging.info("%s: resumed from %s at step %d", name, ckpt_dir / "latest",
                 step)

  def save(step):
    meta = _meta(step, best, best_step, bad_evals, curve, evals,
                 elapsed_before + time.time() - t_loop)
    items = {"state": ocp.args.StandardSave({"params": params,
                                             "opt": opt_state}),
             "meta": ocp.args.JsonSave(meta)}
    if has_iter_state:
      items["data_iter"] = grain.checkpoint.CheckpointSave(it)
    latest.save(step, args=ocp.args.Composite(**items), force=True)

  def model_of(p):
    return nnx.merge(graphdef, p, rest)

  def run_eval(step):
    nonlocal best, best_step, bad_evals
    with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
      values = {k: float(v) for k, v in evaluate(model_of(params)).items()}
    evals.append({"step": step, **values})
    value = values[select]
    if best is None or value > best:
      best, best_step, bad_evals = value, step, 0
      if step in best_mngr.all_steps():  # saved before a kill, replayed
        best_mngr.delete(step)
      best_mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave({"params": params})), force=True)
    else:
      bad_evals += 1
    summary.scalars(step, values)
    logging.info("%s: step %d %s %.4f (best %.4f @ %d)", name, step, select,
                 value, best, best_step)

  summary = _Summary(None if summary_dir is None else pathlib.Path(
      summary_dir))
  base_key = jax.random.key(seed)
  t_loop = time.time()
  t_window, seen, window_examples, window_steps = t_loop, 0, 0, 0
  window_losses = []
  stop_reason = "steps"
  start_step = step
  budget = cfg.max_minutes * 60.0 if cfg.max_minutes else 0.0
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    while step < num_steps:
      try:
        local = next(it)
      except StopIteration:
        stop_reason = "data"
        break
      key_field = examples_key or next(iter(local))
      n_local = int(np.shape(local[key_field])[0])
      batch = _global_batch(local, mesh)
      params, opt_state, metrics = train_step(
          params, opt_state, rest, batch, base_key,
          np.asarray(step, np.int32))
      step += 1
      window_losses.append(metrics["loss"])
      window_examples += n_local * jax.process_count()
      window_steps += 1
      seen += n_local * jax.process_count()
      if step % cfg.log_every == 0 or step == num_steps:
        loss = float(jnp.mean(jnp.stack(window_losses)))
        if not math.isfinite(loss):
          raise FloatingPointError(f"{name}: loss is {loss} at step {step}")
        now = time.time()
        rate = window_examples / max(now - t_window, 1e-9)
        per_step = (now - t_loop) / max(step - start_step, 1)
        eta = per_step * (num_steps - step)
        if budget:
          eta = min(eta, max(0.0, budget - (now - t_loop + elapsed_before)))
        point = {"step": step, "loss": loss,
                 "grad_norm": float(metrics["grad_norm"]),
                 "learning_rate": float(learning_rate_schedule(
                     cfg, num_steps)(step - 1)),
                 "examples_per_s": rate}
        curve.append(point)
        summary.scalars(step, {f"train/{k}": v for k, v in point.items()
                               if k != "step"})
        logging.info("%s: step %d/%d loss %.4f lr %.2e %.0f examples/s, "
                     "%.0fs elapsed, ETA %.0fs", name, step, num_steps, loss,
                     point["learning_rate"], rate, now - t_loop, eta)
        t_window, window_examples, window_steps = now, 0, 0
        window_losses = []
      if evaluate is not None and cfg.eval_every and (
          step % cfg.eval_every == 0) and step < num_steps:
        run_eval(step)
        if cfg.patience and bad_evals >= cfg.patience:
          stop_reason = "patience"
          logging.info("%s: early stop at step %d (%d evaluations without a "
                       "better %s)", name, step, bad_evals, select)
          break
      if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        save(step)
      if budget and time.time() - t_loop + elapsed_before > budget:
        stop_reason = "budget"
        logging.info("%s: time budget of %.1f min reached at step %d", name,
                     cfg.max_minutes, step)
        break
    if evaluate is not None and (not evals or evals[-1]["step"] != step):
      run_eval(step)
  if latest.latest_step() != step:
    save(step)
  latest.wait_until_finished()
  best_mngr.wait_until_finished()
  if evaluate is not None and best_mngr.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": params})
    params = best_mngr.restore(best_mngr.latest_step(), args=(
        ocp.args.Composite(state=ocp.args.StandardRestore(abstract))))[
            "state"]["params"]
  latest.close()
  best_mngr.close()
  summary.close()
  seconds = time.time() - t_call
  logging.info("%s: stopped (%s) at step %d after %.0fs", name, stop_reason,
               step, seconds)
  return TrainResult(model=model_of(params), step=step, best=best,
                     best_step=best_step, curve=curve, evals=evals,
                     stop_reason=stop_reason, seconds=seconds, examples=seen)


def write_train_log(path: str | pathlib.Path, result: TrainResult) -> None:
  """train_log.json: the loss curve and the evaluations."""
  atomic_write_json(path, {"curve": result.curve, "evals": result.evals,
                           "step": result.step, "best": result.best,
                           "best_step": result.best_step,
                           "stop_reason": result.stop_reason})


def params_digest(model: nnx.Module) -> dict[str, str]:
  """sha1 of every param's bytes (for exact-resume checks)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  out = {}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    arr = np.asarray(jax.device_get(v[...]))
    out["/".join(str(p) for p in path)] = hashlib.sha1(
        arr.tobytes()).hexdigest()
  return out

