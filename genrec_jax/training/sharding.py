"""Mesh, logical-axis rules and sharded model placement.

Every parameter of the models in `genrec_jax.models` carries logical axis
names (`out_sharding` metadata, see `models/layers.py`). A rules table maps
them to mesh axes:

  mesh = make_mesh((2, 4), ("fsdp", "tensor"))
  model = shard_model(load_pretrained(path), mesh)            # place weights
  model = create_sharded_model(lambda: Decoder(cfg, rngs=...), mesh)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(DEFAULT_RULES): ...

Mesh axes named in a rule but absent from the mesh, and mesh axes that do not
divide a dimension (e.g. 9 heads on 4 devices), are dropped from that
parameter's spec (it is replicated on them).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

from absl import logging
from flax import nnx
import ml_collections
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from genrec_jax.models import layers

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Logical name -> mesh axis/axes. data: batch parallel; fsdp: batch and
# parameter (embed dim) sharding; tensor: heads / mlp / vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("layers", None),
    ("norm", None),
    ("pos", None),
    ("buckets", None),
)


def make_mesh(shape: Sequence[int], axes: Sequence[str]) -> jax.sharding.Mesh:
  """A mesh with Auto axis types; one -1 in shape takes the remaining devices.

  Args:
    shape: devices per axis, e.g. (2, 4) or (-1, 1).
    axes: axis names, e.g. ("fsdp", "tensor").

  Returns:
    jax.sharding.Mesh with AxisType.Auto on every axis.
  """
  shape = list(shape)
  if len(shape) != len(axes):
    raise ValueError(f"mesh shape {shape} vs axes {axes}")
  n = jax.device_count()
  if shape.count(-1) > 1:
    raise ValueError(f"at most one -1 in mesh shape {shape}")
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    shape[shape.index(-1)] = n // rest
  if math.prod(shape) != n:
    raise ValueError(f"mesh {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"have {n}")
  return jax.make_mesh(tuple(shape), tuple(axes),
                       axis_types=(AxisType.Auto,) * len(axes))


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int],
                    mesh: jax.sharding.Mesh,
                    rules: LogicalRules = DEFAULT_RULES) -> P:
  """PartitionSpec for one array from its logical axis names."""
  return layers.resolve_spec(names, shape, dict(mesh.shape), rules)


def param_shardings(model: nnx.Module, mesh: jax.sharding.Mesh,
                    rules: LogicalRules = DEFAULT_RULES):
  """nnx.State of NamedShardings for every Variable of the model."""
  state = nnx.state(model)

  def one(v):
    names = v.get_metadata().get("out_sharding") if hasattr(
        v, "get_metadata") else None
    raw = v.get_raw_value() if hasattr(v, "get_raw_value") else v
    shape = raw.shape
    if not names:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))

  return jax.tree.map(one, state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: jax.sharding.Mesh,
                rules: LogicalRules = DEFAULT_RULES) -> nnx.Module:
  """Places the model's Variables on the mesh per their logical names.

  The model is updated in place and also returned.
  """
  shardings = param_shardings(model, mesh, rules)
  state = nnx.state(model)
  placed = jax.tree.map(
      lambda v, s: jax.device_put(v[...], s), state, shardings,
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  nnx.update(model, placed)
  logging.info("sharded %s on mesh %s", type(model).__name__,
               dict(mesh.shape))
  return model


def create_sharded_model(factory: Callable[[], nnx.Module],
                         mesh: jax.sharding.Mesh,
                         rules: LogicalRules = DEFAULT_RULES,
                         jit_init: bool = False) -> nnx.Module:
  """Builds `factory()` with its parameters sharded on the mesh.

  Args:
    factory: builds the model (e.g. `lambda: Decoder(cfg, rngs=nnx.Rngs(0))`).
    mesh: from `make_mesh`.
    rules: logical -> mesh axis rules.
    jit_init: run the random init under jit with `out_shardings` from the
      abstract model, so no full replica is materialised on one device (for
      models that do not fit one host; the threefry compile costs ~20 s on a
      loaded 2-core CPU). False: init eagerly on the host (numpy draws, see
      layers.normal), then place with `shard_model`. The two give different
      random draws.

  Returns:
    The sharded model.
  """
  if not jit_init:
    return shard_model(factory(), mesh, rules)
  abstract = nnx.eval_shape(factory)
  graphdef, _ = nnx.split(abstract)
  shardings = param_shardings(abstract, mesh, rules)
  init = jax.jit(lambda: nnx.state(factory()), out_shardings=shardings)
  return nnx.merge(graphdef, init())


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int,
                   rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a [batch, ...] input: batch on the 'batch' rule's axes."""
  axes = dict(rules).get("batch")
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  keep = tuple(a for a in axes if a in mesh.shape)
  first = None if not keep else keep[0] if len(keep) == 1 else keep
  return NamedSharding(mesh, P(first, *([None] * (ndim - 1))))


# ----------------------------------------------------------------------------
# Meshes from configs, processes.

MESH_AXES = ("data", "fsdp", "tensor")


# Environment of a multi-process run (binaries/launch_local.py sets the
# first three; on a TPU pod slice or a SLURM / Open MPI cluster set only
# GENREC_DISTRIBUTED=1 and JAX detects the rest).
ENV_COORDINATOR = "GENREC_COORDINATOR_ADDRESS"  # host:port of process 0
ENV_NUM_PROCESSES = "GENREC_NUM_PROCESSES"
ENV_PROCESS_ID = "GENREC_PROCESS_ID"
ENV_DISTRIBUTED = "GENREC_DISTRIBUTED"  # "1": auto-detected initialize()


def maybe_initialize_distributed(
    config: ml_collections.ConfigDict | None = None) -> bool:
  """`jax.distributed.initialize` once, when the environment asks for it.

  Explicit: GENREC_NUM_PROCESSES, GENREC_PROCESS_ID and
  GENREC_COORDINATOR_ADDRESS (every process the same address, process 0's
  host). Auto-detected (TPU pod slices, SLURM, Open MPI): GENREC_DISTRIBUTED=1
  or `config.distributed`. Must run before any JAX computation;
  `binaries/common.run_stage` calls it for every binary.

  Returns:
    True when this process is part of a multi-process run.
  """
  if jax.distributed.is_initialized():
    return True
  num = os.environ.get(ENV_NUM_PROCESSES)
  auto = os.environ.get(ENV_DISTRIBUTED, "").lower() in ("1", "true") or (
      config is not None and config.get("distributed", False))
  if num is not None:
    address = os.environ.get(ENV_COORDINATOR)
    pid = os.environ.get(ENV_PROCESS_ID)
    if not address or pid is None:
      raise ValueError(f"{ENV_NUM_PROCESSES}={num} needs {ENV_COORDINATOR} "
                       f"(host:port of process 0) and {ENV_PROCESS_ID}")
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=int(num), process_id=int(pid))
  elif auto:
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local / %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def sync(name: str) -> None:
  """A barrier of all processes (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def mesh_from_config(mesh_cfg) -> jax.sharding.Mesh:
  """Mesh with axes (data, fsdp, tensor); one -1 takes the other devices.

  Args:
    mesh_cfg: a ConfigDict/dict with `shape` (3 ints), optional `axes` and
      optional `num_devices` (use only the first n devices, single process;
      0 or absent = all), or None (all devices on data).
  """
  mesh_cfg = mesh_cfg or {"shape": (-1, 1, 1)}
  shape = list(mesh_cfg["shape"])
  axes = tuple(mesh_cfg.get("axes", MESH_AXES))
  n = int(mesh_cfg.get("num_devices", 0) or 0)
  if not n or n == jax.device_count():
    return make_mesh(shape, axes)
  if jax.process_count() > 1:
    raise ValueError(f"config field 'mesh.num_devices' = {n}: a run of "
                     f"{jax.process_count()} processes uses all "
                     f"{jax.device_count()} devices (set it to 0)")
  if -1 in shape:
    shape[shape.index(-1)] = n // math.prod(s for s in shape if s != -1)
  if math.prod(shape) != n:
    raise ValueError(f"config field 'mesh': shape {tuple(shape)} does not "
                     f"use num_devices={n} ({jax.device_count()} present)")
  return jax.sharding.Mesh(np.array(jax.devices()[:n]).reshape(shape), axes,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """Devices the batch is split over (data x fsdp)."""
  return math.prod(mesh.shape.get(a, 1) for a in ("data", "fsdp"))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh,
                     field: str = "train.batch_size") -> None:
  """ValueError naming the config field unless the batch splits evenly
  over the data-parallel devices."""
  dp = data_parallel_size(mesh)
  if batch_size % dp:
    raise ValueError(f"config field '{field}' = {batch_size} is not "
                     f"divisible by the data-parallel size {dp}")


def global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded over data + fsdp."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        batch_sharding(mesh, v.ndim), v)
  return out
