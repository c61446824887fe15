"""The trainer's optimizer: AdamW (or T5X's Adafactor) on a schedule.

`configs/common.py: train()` holds the fields (learning_rate, warmup_steps,
schedule, end_lr_ratio, optimizer, b1, b2, weight_decay, grad_clip); SASRec and
LightGCN count some periods in epochs (`epochs_to_steps`).
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from genrec_jax.checks import check_ranges


def learning_rate_schedule(cfg: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """Linear warm-up to cfg.learning_rate, then cfg.schedule decay ("rsqrt":
  T5's peak plateau for warmup_steps, then peak * sqrt(warmup / step)).

  Args:
    cfg: learning_rate, warmup_steps, schedule, end_lr_ratio.
    total_steps: steps of the whole run (warm-up included).

  Returns:
    step -> learning rate.
  """
  peak = float(cfg.learning_rate)
  if cfg.schedule == "rsqrt":
    plateau = max(int(cfg.warmup_steps), 1)
    return lambda step: peak * jax.lax.rsqrt(
        jax.numpy.maximum(step, plateau) / plateau)
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
                     "cosine, linear, constant or rsqrt")
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW (or Adafactor) on the schedule."""
  schedule = learning_rate_schedule(cfg, total_steps)
  name = cfg.get("optimizer", "adamw")
  if name == "adafactor":  # T5X's defaults (optax's are the same)
    tx = optax.adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0,
                         multiply_by_parameter_scale=True, momentum=None)
  elif name == "adamw":
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=1e-8,
                     weight_decay=cfg.weight_decay, mask=decay_mask)
  else:
    raise ValueError(f"config field 'train.optimizer': {name!r} is not "
                     "adamw or adafactor")
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def epochs_to_steps(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                    fields=("eval_every", "checkpoint_every", "log_every")
                    ) -> ml_collections.ConfigDict:
  """A copy of a train config whose `fields`, counted in epochs, are steps.

  For stages whose configs count periods in epochs (SASRec, LightGCN);
  0 stays 0 (off).
  """
  out = ml_collections.ConfigDict(cfg.to_dict())
  for f in fields:
    out[f] = int(cfg[f]) * int(steps_per_epoch)
  return out


def check_train_config(cfg: ml_collections.ConfigDict) -> None:
  """Range checks of the fields the trainer reads (ValueError naming one)."""
  check_ranges([
      ("train.learning_rate", cfg.learning_rate, 0.0, None),
      ("train.warmup_steps", cfg.warmup_steps, 0, None),
      ("train.end_lr_ratio", cfg.end_lr_ratio, 0.0, 1.0),
      ("train.b1", cfg.b1, 0.0, 1.0),
      ("train.b2", cfg.b2, 0.0, 1.0),
      ("train.weight_decay", cfg.weight_decay, 0.0, None),
      ("train.grad_clip", cfg.grad_clip, 0.0, None),
      ("train.log_every", cfg.log_every, 1, None),
      ("train.checkpoint_every", cfg.checkpoint_every, 0, None),
      ("train.eval_every", cfg.eval_every, 0, None),
      ("train.patience", cfg.patience, 0, None),
      ("train.max_minutes", cfg.max_minutes, 0.0, None),
  ])
  if cfg.compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config field 'train.compute_dtype' = "
                     f"{cfg.compute_dtype!r}: float32 or bfloat16")
