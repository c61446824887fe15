"""The one resumable training loop for NNX models (1 or N devices).

  result = train(model, loss_fn, dataset, config.train,
                 mesh=mesh_from_config(config.mesh), num_steps=1000,
                 ckpt_dir=workdir / "name/checkpoints",
                 evaluate=lambda model: {"valid/ndcg@10": ...},
                 select="valid/ndcg@10")

The generative models, SASRec (training/sasrec_train.py) and LightGCN
(graph/lightgcn_train.py) all train through `train`; its config fields are
`configs/common.py: train()`.

A step's batch (`dataset`) comes from one of
  * a grain dataset (or any iterable) of per-process numpy batches (dicts of
    [B_local, ...] arrays); a grain iterator's state is checkpointed; it may
    end before num_steps (stop reason "data");
  * a `BatchSource`: `source.next_batch(model, step)` -> the local numpy
    batch of global step `step` given the CURRENT model (e.g. rollouts of
    the current policy). It must be a deterministic function of (params,
    step) - randomness from `fold_in(key, step)`, no stateful rng - and must
    not keep the model (its arrays are donated to the step). Nothing of it
    is checkpointed, and resume stays exact;
  * None: the loss draws its data from the step key (LightGCN samples BPR
    triples from the graph in the jitted step); the batch is `{}` and
    `examples_per_step` counts a step's examples.
Per-run constants (LightGCN's graph) live in the model as non-`nnx.Param`
Variables: `nnx.split(model, nnx.Param, ...)` puts them in `rest`, placed on
the mesh once and passed to every step as device arrays (no per-step
transfer, nothing large closed over by jit, not checkpointed).

* Optimizer: AdamW (decoupled weight decay on >= 2-d params; 0 = Adam),
  linear warm-up then cosine / linear / constant decay, global-norm clipping.
* Optional bfloat16 compute: f32 master params cast to bf16 in the loss.
* One mesh (data / fsdp / tensor); params placed by the logical-axis rules
  (training/sharding.py), the batch sharded over data + fsdp.
* Orbax CheckpointManagers `latest/` (params, optimizer, step, early-stopping
  state, curves, grain iterator) and `best/` (selected params). Per-step keys
  are `fold_in(key(seed), step)`: a run killed anywhere and restarted
  reaches bit-identical parameters (on CPU).
* Retrace guard: the jitted step counts its traces; `TrainResult.traces`
  should equal `TrainResult.batch_shapes` (one compilation per batch shape,
  e.g. per SASRec length bucket); a warning is logged when it exceeds it.
* Logs loss, examples/s and ETA; every aux scalar of the loss is summed over
  the log window into the curve and TensorBoard (tensorboardX), and a
  non-zero "dropped" (e.g. answer tokens cut by a loss budget) is logged as
  a warning. `write_train_log` writes train_log.json.
* Multi-process (one per host, or binaries/launch_local.py; joined by
  `sharding.maybe_initialize_distributed`): every process runs `train` with
  its own rows of each global batch, assembled into global arrays with
  `jax.make_array_from_process_local_data`; the mesh spans every process's
  devices; every process saves and restores its shards of the Orbax
  checkpoints (and its grain state); stop decisions agree (time budget:
  process 0's clock); process 0 alone writes TensorBoard and train_log.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from absl import logging
from flax import nnx
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.training import optimizer as optimizer_lib
from genrec_jax.training import sharding

LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array],
                  tuple[jax.Array, dict[str, jax.Array]]]
# Step metrics that are not aux scalars of the loss.
_STEP_METRICS = ("loss", "grad_norm")


@runtime_checkable
class BatchSource(Protocol):
  """Batches that depend on the current parameters (see the module doc)."""

  def next_batch(self, model: nnx.Module, step: int) -> dict[str, np.ndarray]:
    """The local numpy batch of global step `step` (0-based) given `model`."""


# Train config fields that do not change a run's trajectory: a checkpoint
# written under other values of them is resumed.
FREE_TRAIN_FIELDS = ("num_epochs", "max_minutes", "log_every",
                     "checkpoint_every", "eval_every", "patience", "resume")


def fingerprint(config: ml_collections.ConfigDict, keys: tuple[str, ...],
                **extra) -> dict[str, Any]:
  """What a resumed run must share with its checkpoint.

  Args:
    config: the stage config.
    keys: its fields that shape the model and the data (e.g. "seed",
      "model"); `train` is always included without FREE_TRAIN_FIELDS.
    **extra: more JSON-able facts (catalogue size, number of steps, ...).
  """
  out = {k: config[k].to_dict() if hasattr(config[k], "to_dict")
         else config[k] for k in keys}
  train = config.train.to_dict()
  for k in FREE_TRAIN_FIELDS:
    train.pop(k, None)
  return {**out, "train": train, **extra}


def reset_stale_checkpoints(ckpt_dir: str | pathlib.Path,
                            fingerprint: dict[str, Any]) -> None:
  """Deletes `ckpt_dir` when it was written under another fingerprint.

  Resuming needs the same model, data order and optimizer; the caller
  passes what determines them (JSON-able). A folder without the
  fingerprint file (an older format) is deleted too. With several
  processes, process 0 does it and the others wait.
  """
  ckpt_dir = pathlib.Path(ckpt_dir)
  text = json.dumps(fingerprint, sort_keys=True, default=str)
  path = ckpt_dir / "config.json"
  if jax.process_index() == 0:
    if ckpt_dir.exists() and (not path.exists() or path.read_text() != text):
      logging.warning("%s: written by another configuration; starting "
                      "afresh", ckpt_dir)
      shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  sharding.sync("reset_stale_checkpoints")


# ----------------------------------------------------------------------------
# Train step.


def compute_graphdef(model: nnx.Module, compute_dtype: str):
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


def make_objective(graphdef, loss_fn: LossFn, compute_dtype: str = "float32"):
  """(params, rest, batch, key) -> (loss, aux): the float32 params cast to
  `compute_dtype`, merged with `graphdef` (from `compute_graphdef`) and the
  rest of the state, and passed to `loss_fn`; differentiate in params."""
  dt = jnp.dtype(compute_dtype)

  def objective(params, rest, batch, key):
    if dt != jnp.float32:
      params = jax.tree.map(lambda x: x.astype(dt), params)
    return loss_fn(nnx.merge(graphdef, params, rest), batch, key)

  return objective


def make_train_step(graphdef, tx: optax.GradientTransformation,
                    loss_fn: LossFn, compute_dtype: str = "float32",
                    on_trace: Callable[[], None] | None = None):
  """The jitted step (params, opt_state, rest, batch, base_key, step) ->
  (params, opt_state, metrics).

  The loss gets fold_in(base_key, step) (folded inside the jit: an eager
  fold_in would wait for the previous step). `on_trace` is called each time
  the step is traced (the retrace guard).
  """
  objective = make_objective(graphdef, loss_fn, compute_dtype)

  def step(params, opt_state, rest, batch, base_key, step):
    if on_trace is not None:
      on_trace()
    key = jax.random.fold_in(base_key, step)
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
        params, rest, batch, key)
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
      `select` was given, else the last step).
    step: steps done (including those before a resume).
    best: best value of the selection metric (None without selection).
    best_step: step of `best`.
    curve: [{"step", "loss", "grad_norm", "learning_rate", "examples_per_s",
      aux...}] logged points (the whole run; aux scalars summed over the
      window).
    evals: [{"step", metric: value}] evaluations (the whole run).
    stop_reason: "steps", "data", "patience" or "budget".
    seconds: wall time of this call.
    examples: training examples seen in this call.
    traces: times the train step was traced (compiled) in this call.
    batch_shapes: distinct batch shapes it saw in this call.
    aux_totals: every aux scalar summed over the whole run.
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
  traces: int = 0
  batch_shapes: int = 0
  aux_totals: dict[str, float] = dataclasses.field(default_factory=dict)


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


class _Batches:
  """The next local batch, from a dataset, a BatchSource or the loss."""

  def __init__(self, dataset, examples_per_step: int | None,
               examples_key: str | None):
    self.source = dataset if isinstance(dataset, BatchSource) else None
    self.it = None
    if dataset is not None and self.source is None:
      self.it = iter(dataset)
    if dataset is None and not examples_per_step:
      raise ValueError("train: dataset=None (the loss draws its data) needs "
                       "examples_per_step")
    self.examples_per_step = examples_per_step
    self.examples_key = examples_key
    self.shapes = set()

  @property
  def checkpointable(self) -> bool:
    return self.it is not None and hasattr(self.it, "get_state")

  def next(self, model_fn: Callable[[], nnx.Module], step: int):
    """(local numpy batch, examples it counts globally); StopIteration."""
    if self.source is not None:
      local = self.source.next_batch(model_fn(), step)
    elif self.it is not None:
      local = next(self.it)
    else:
      local = {}
    self.shapes.add(tuple(sorted(
        (k, np.shape(v), np.asarray(v).dtype.str) for k, v in local.items())))
    if self.examples_per_step:
      return local, int(self.examples_per_step)
    key = self.examples_key or next(iter(local))
    return local, int(np.shape(local[key])[0]) * jax.process_count()


@dataclasses.dataclass
class _Progress:
  """The checkpointed loop state besides params and optimizer state."""
  step: int = 0
  best: float | None = None
  best_step: int = 0
  bad_evals: int = 0
  curve: list = dataclasses.field(default_factory=list)
  evals: list = dataclasses.field(default_factory=list)
  totals: dict = dataclasses.field(default_factory=dict)  # aux sums
  elapsed: float = 0.0  # loop seconds before this call


class _Trainer:
  """One `train` call: state, checkpoints, logging (see `train`)."""

  def __init__(self, model, loss_fn, dataset, cfg, *, mesh, ckpt_dir,
               num_steps, seed, evaluate, select, summary_dir, examples_key,
               examples_per_step, name, derived=None, optimizer=None):
    self.cfg, self.mesh, self.num_steps, self.name = cfg, mesh, num_steps, name
    self.derived = derived
    self.evaluate, self.select = evaluate, select
    model = sharding.shard_model(model, mesh)
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    tx = (optimizer_lib.make_optimizer(cfg, num_steps) if optimizer is None
          else optimizer)
    with jax.set_mesh(mesh):
      self.opt_state = jax.jit(tx.init)(self.params)
    self.traces = 0
    self.step_fn = make_train_step(
        compute_graphdef(model, cfg.compute_dtype), tx, loss_fn,
        cfg.compute_dtype, on_trace=self._count_trace)
    self.batches = _Batches(dataset, examples_per_step, examples_key)
    ckpt_dir = pathlib.Path(ckpt_dir).resolve()
    self.ckpt_dir = ckpt_dir
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(ckpt_dir / "latest", options=opts)
    self.best_mngr = ocp.CheckpointManager(ckpt_dir / "best", options=opts)
    self.summary = _Summary(None if summary_dir is None else pathlib.Path(
        summary_dir))
    self.base_key = jax.random.key(seed)
    self.p = _Progress()
    self.window: list[dict[str, jax.Array]] = []
    self.window_examples = 0
    self.seen = 0
    self.t_loop = self.t_window = time.time()
    self.warned_retrace = False

  def _count_trace(self):
    self.traces += 1

  def model_of(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params, self.rest)

  def elapsed(self) -> float:
    return self.p.elapsed + time.time() - self.t_loop

  def _over_budget(self) -> bool:
    """Past max_minutes (process 0's clock: every process stops alike)."""
    over = self.elapsed() > self.cfg.max_minutes * 60.0
    if jax.process_count() > 1:
      over = bool(multihost_utils.broadcast_one_to_all(np.int32(over)))
    return over

  # -- checkpoints -----------------------------------------------------------

  def restore(self) -> None:
    at = self.latest.latest_step()
    if not self.cfg.resume or at is None:
      return
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": self.params, "opt": self.opt_state})
    items = {"state": ocp.args.StandardRestore(abstract),
             "meta": ocp.args.JsonRestore()}
    if self.batches.checkpointable:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(self.batches.it)
    restored = self.latest.restore(at, args=ocp.args.Composite(**items))
    self.params = restored["state"]["params"]
    self.opt_state = restored["state"]["opt"]
    self.p = _Progress(**restored["meta"])
    logging.info("%s: resumed from %s at step %d", self.name,
                 self.ckpt_dir / "latest", self.p.step)

  def save(self) -> None:
    # The best checkpoint this one's meta refers to is on disk first (a
    # kill between the two must not leave best_step without its params).
    self.best_mngr.wait_until_finished()
    meta = dataclasses.asdict(self.p)
    meta["elapsed"] = self.elapsed()
    for k, v in self._window_sums().items():  # not yet logged
      meta["totals"][k] = meta["totals"].get(k, 0.0) + v
    items = {"state": ocp.args.StandardSave({"params": self.params,
                                             "opt": self.opt_state}),
             "meta": ocp.args.JsonSave(meta)}
    if self.batches.checkpointable:
      items["data_iter"] = grain.checkpoint.CheckpointSave(self.batches.it)
    self.latest.save(self.p.step, args=ocp.args.Composite(**items),
                     force=True)

  def selected_params(self):
    """The best evaluation's params (with selection), else the last."""
    self.latest.wait_until_finished()
    self.best_mngr.wait_until_finished()
    if self.select is None or self.best_mngr.latest_step() is None:
      return self.params
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": self.params})
    return self.best_mngr.restore(self.best_mngr.latest_step(), args=(
        ocp.args.Composite(state=ocp.args.StandardRestore(abstract))))[
            "state"]["params"]

  def close(self) -> None:
    self.latest.close()
    self.best_mngr.close()
    self.summary.close()

  # -- evaluation ------------------------------------------------------------

  def run_eval(self) -> None:
    p, step = self.p, self.p.step
    values = {k: float(v) for k, v in self.evaluate(
        self.model_of(self.params)).items()}
    p.evals.append({"step": step, **values})
    self.summary.scalars(step, values)
    text = " ".join(f"{k} {v:.4f}" for k, v in values.items()
                    if k != self.select)
    if self.select is None:
      logging.info("%s: step %d %s", self.name, step, text)
      return
    value = values[self.select]
    if p.best is None or value > p.best:
      p.best, p.best_step, p.bad_evals = value, step, 0
      if step in self.best_mngr.all_steps():  # saved before a kill, replayed
        self.best_mngr.delete(step)
      self.best_mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave({"params": self.params})), force=True)
    else:
      p.bad_evals += 1
    logging.info("%s: step %d %s %.4f (best %.4f @ %d) %s", self.name, step,
                 self.select, value, p.best, p.best_step, text)

  # -- logging ---------------------------------------------------------------

  def _window_sums(self, host=None) -> dict[str, float]:
    """Aux scalars summed over the steps since the last log point."""
    if host is None:
      host = jax.device_get(self.window)
    keys = [k for k in (host[0] if host else {}) if k not in _STEP_METRICS]
    return {k: float(np.sum([np.asarray(m[k], np.float64) for m in host]))
            for k in keys}

  def log_point(self) -> None:
    """Appends a curve point for the window, logs it, clears the window."""
    p, cfg, step = self.p, self.cfg, self.p.step
    host = jax.device_get(self.window)
    loss = float(np.mean([np.asarray(m["loss"], np.float64) for m in host]))
    if not math.isfinite(loss):
      raise FloatingPointError(f"{self.name}: loss is {loss} at step {step}")
    sums = self._window_sums(host)
    extra = self.derived(sums) if self.derived is not None else {}
    now = time.time()
    rate = self.window_examples / max(now - self.t_window, 1e-9)
    per_step = (now - self.t_loop) / max(step - self.start_step, 1)
    eta = per_step * (self.num_steps - step)
    if cfg.max_minutes:
      eta = min(eta, max(0.0, cfg.max_minutes * 60.0 - self.elapsed()))
    point = {"step": step, "loss": loss,
             "grad_norm": float(host[-1]["grad_norm"]),
             "learning_rate": float(optimizer_lib.learning_rate_schedule(
                 cfg, self.num_steps)(step - 1)),
             "examples_per_s": rate, **sums, **extra}
    p.curve.append(point)
    for k, v in sums.items():
      p.totals[k] = p.totals.get(k, 0.0) + v
    self.summary.scalars(step, {f"train/{k}": v for k, v in point.items()
                                if k != "step"})
    logging.info("%s: step %d/%d loss %.4f lr %.2e %.1f examples/s, "
                 "%.0fs elapsed, ETA %.0fs%s", self.name, step, self.num_steps,
                 loss, point["learning_rate"], rate, now - self.t_loop, eta,
                 "".join(f", {k} {v:.4g}" for k, v in extra.items()))
    if sums.get("dropped", 0.0) > 0:
      logging.warning("%s: aux 'dropped' = %g in the %d steps to step %d "
                      "(the loss's budget cut them; %g in the whole run)",
                      self.name, sums["dropped"], len(host), step,
                      p.totals["dropped"])
    self.t_window, self.window_examples, self.window = now, 0, []

  # -- the loop --------------------------------------------------------------

  def one_step(self) -> bool:
    """Runs one step; False when the data ran out."""
    try:
      local, n = self.batches.next(lambda: self.model_of(self.params),
                                   self.p.step)
    except StopIteration:
      return False
    batch = sharding.global_batch(local, self.mesh)
    if jax.process_count() > 1 and self.p.step == self.start_step and batch:
      key = next(iter(batch))
      logging.info("%s: process %d of %d feeds %d of the %d rows of each "
                   "global batch", self.name, jax.process_index(),
                   jax.process_count(), np.shape(local[key])[0],
                   batch[key].shape[0])
    self.params, self.opt_state, metrics = self.step_fn(
        self.params, self.opt_state, self.rest, batch, self.base_key,
        np.asarray(self.p.step, np.int32))
    self.p.step += 1
    shapes = len(self.batches.shapes)
    if self.traces > shapes and not self.warned_retrace:  # retrace guard
      self.warned_retrace = True
      logging.warning("%s: the train step was traced %d times for %d batch "
                      "shape(s) by step %d: an input's dtype, weak type or "
                      "sharding changes between steps", self.name,
                      self.traces, shapes, self.p.step)
    self.window.append(metrics)
    self.window_examples += n
    self.seen += n
    return True

  def stop_after_step(self) -> str | None:
    """Logs / evaluates / saves after a step; a stop reason or None."""
    cfg, step = self.cfg, self.p.step
    if step % cfg.log_every == 0 or step == self.num_steps:
      self.log_point()
    if self.evaluate is not None and cfg.eval_every and (
        step % cfg.eval_every == 0) and step < self.num_steps:
      self.run_eval()
      if self.select and cfg.patience and self.p.bad_evals >= cfg.patience:
        logging.info("%s: early stop at step %d (%d evaluations without a "
                     "better %s)", self.name, step, self.p.bad_evals,
                     self.select)
        return "patience"
    if cfg.max_minutes and self._over_budget():
      logging.info("%s: time budget of %.1f min reached at step %d",
                   self.name, cfg.max_minutes, step)
      return "budget"
    # The last step is saved by `run`, after the final evaluation.
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
        and step < self.num_steps):
      self.save()
    return None

  def run(self) -> str:
    """Trains to num_steps (or a stop); returns the stop reason."""
    self.restore()
    self.t_loop = self.t_window = time.time()
    self.start_step = self.p.step
    stop_reason = "steps"
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(
        sharding.DEFAULT_RULES):
      while self.p.step < self.num_steps:
        if not self.one_step():
          stop_reason = "data"
          break
        reason = self.stop_after_step()
        if reason:
          stop_reason = reason
          break
      if self.window:
        self.log_point()
      if self.evaluate is not None and (
          not self.p.evals or self.p.evals[-1]["step"] != self.p.step):
        self.run_eval()
    if self.latest.latest_step() != self.p.step:
      self.save()
    return stop_reason


def train(model: nnx.Module, loss_fn: LossFn,
          dataset: (grain.IterDataset | Iterable[dict[str, np.ndarray]]
                    | BatchSource | None),
          cfg: ml_collections.ConfigDict, *,
          mesh: jax.sharding.Mesh,
          ckpt_dir: str | pathlib.Path,
          num_steps: int,
          seed: int = 0,
          evaluate: Callable[[nnx.Module], dict[str, float]] | None = None,
          select: str | None = None,
          summary_dir: str | pathlib.Path | None = None,
          examples_key: str | None = None,
          examples_per_step: int | None = None,
          derived: Callable[[dict[str, float]], dict[str, float]]
          | None = None,
          name: str = "train",
          optimizer: optax.GradientTransformation | None = None
          ) -> TrainResult:
  """Trains `model` for up to `num_steps` steps (resumable).

  Args:
    model: the NNX model (f32 params; non-Param Variables are per-run
      constants); it is placed on `mesh` here.
    loss_fn: (model, batch of global arrays, key) -> (scalar loss, aux
      scalars). `key` is fold_in(key(seed), step) (dropout, sampling).
    dataset: a grain dataset / iterable of local numpy batches, a
      `BatchSource`, or None (the loss draws its data; see the module doc).
    cfg: the train config (configs/common.py: train()).
    mesh: from `mesh_from_config`.
    ckpt_dir: holds `latest/` (resume) and `best/` (selected params).
    num_steps: total steps (also the schedule length).
    seed: base of the per-step keys.
    evaluate: model -> metrics, run every cfg.eval_every steps and at the
      end; must be deterministic for exact resume.
    select: metric of `evaluate` to maximise (early stopping, best params);
      None with `evaluate`: evaluations only monitor, the last params win.
    summary_dir: TensorBoard log folder (None: none).
    examples_key: batch field whose leading size counts examples (default:
      the first field).
    examples_per_step: global examples one step counts (overrides
      examples_key; required with dataset=None).
    derived: window aux sums -> more curve values (e.g. rates such as
      hits / groups); added to each log point, TensorBoard and the log line.
    name: prefix of log lines.
    optimizer: replaces the config's AdamW (e.g. per-part learning rates,
      frozen parts: ur4rec/training.py); None = `make_optimizer(cfg,
      num_steps)`. The log's learning_rate is still the config's schedule.

  Returns:
    TrainResult.
  """
  t_call = time.time()
  optimizer_lib.check_train_config(cfg)
  if select is not None and evaluate is None:
    raise ValueError("train: `select` names a metric of `evaluate`, which is "
                     "missing")
  trainer = _Trainer(model, loss_fn, dataset, cfg, mesh=mesh,
                     ckpt_dir=ckpt_dir, num_steps=num_steps, seed=seed,
                     evaluate=evaluate, select=select,
                     summary_dir=summary_dir, examples_key=examples_key,
                     examples_per_step=examples_per_step,
                     derived=derived, name=name, optimizer=optimizer)
  try:
    stop_reason = trainer.run()
    params = trainer.selected_params()
  finally:
    trainer.close()
  p = trainer.p
  seconds = time.time() - t_call
  logging.info("%s: stopped (%s) at step %d after %.0fs; train step traced "
               "%d time(s) for %d batch shape(s)", name, stop_reason, p.step,
               seconds, trainer.traces, len(trainer.batches.shapes))
  return TrainResult(model=trainer.model_of(params), step=p.step,
                     best=p.best, best_step=p.best_step, curve=p.curve,
                     evals=p.evals, stop_reason=stop_reason, seconds=seconds,
                     examples=trainer.seen, traces=trainer.traces,
                     batch_shapes=len(trainer.batches.shapes),
                     aux_totals=dict(p.totals))


def write_train_log(path: str | pathlib.Path, result: TrainResult) -> None:
  """train_log.json: the loss curve and the evaluations (process 0)."""
  if jax.process_index() != 0:
    return
  atomic_write_json(path, {"curve": result.curve, "evals": result.evals,
                           "step": result.step, "best": result.best,
                           "best_step": result.best_step,
                           "stop_reason": result.stop_reason,
                           "aux_totals": result.aux_totals,
                           "traces": result.traces,
                           "batch_shapes": result.batch_shapes})


def params_digest(model: nnx.Module) -> dict[str, str]:
  """sha1 of every param's bytes (for exact-resume checks)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  out = {}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    arr = np.asarray(jax.device_get(v[...]))
    out["/".join(str(p) for p in path)] = hashlib.sha1(
        arr.tobytes()).hexdigest()
  return out
