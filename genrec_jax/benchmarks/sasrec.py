"""SASRec training throughput (users/s): jitted vs eager, bucketed vs padded.

python -m binaries.benchmark --config=configs/benchmarks.py:sasrec --workdir=runs/bench

All three run the same model (configs/sasrec.py variant `model_config`), the
same loss and the same Adam update on Beauty train sequences, in one process:
  * jit_bucketed: what train_sasrec runs - the trainer's jitted step
    (`loop.make_train_step` on `sasrec_train.make_loss`, the optimizer of
    `optimizer.make_optimizer`) over length-bucketed grain batches
    (widths 4/8/16/50, fewer padding slots);
  * jit_padded: the same jitted step with every batch padded to max_len
    (the plain grain pipeline: shuffle, batch);
  * eager (the straightforward reference): the identical step function run
    op by op under `jax.disable_jit()` on the padded batches - JAX without
    compilation, as a framework-less port would dispatch it.
Examples/s counts real users (rows with at least one target) per second of
the median step time; positions/s counts non-padding target positions.
"""

from __future__ import annotations

import time

from absl import logging
import jax
import numpy as np
from flax import nnx

from genrec_jax.data import prepare
from genrec_jax.models.sasrec import SASRec
from genrec_jax.training import loop, optimizer, sasrec_data, sasrec_train


def _call(step, params, opt, rest, b, i):
  batch = {"inputs": b["inputs"], "targets": b["targets"]}
  return step(params, opt, rest, batch, jax.random.key(0), np.int32(i))


def _measure(step, params, opt, rest, batches, pad_id, eager=False):
  times, users, positions = [], 0, 0
  for i, b in enumerate(batches):
    t0 = time.perf_counter()
    if eager:
      with jax.disable_jit():
        params, opt, aux = _call(step, params, opt, rest, b, i)
    else:
      params, opt, aux = _call(step, params, opt, rest, b, i)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - t0)
    users += int(((b["targets"] != pad_id).any(1)).sum())
    positions += int((b["targets"] != pad_id).sum())
  total = float(np.sum(times))
  return params, opt, {"examples_per_s": users / total,
                       "positions_per_s": positions / total,
                       "seconds_per_step": float(np.median(times))}


def run(config, out_dir) -> dict:
  del out_dir
  ds = prepare.build(config.data_config)
  cfg = config.sasrec
  mcfg, tcfg = cfg.model, cfg.train
  pad = ds.num_items
  model = SASRec(ds.num_items, mcfg, rngs=nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optimizer.make_optimizer(tcfg, config.steps)
  step = loop.make_train_step(graphdef, tx,
                              sasrec_train.make_loss(tcfg.loss))
  opt = tx.init(params)
  results = {"loss": tcfg.loss, "batch_size": tcfg.batch_size,
             "max_len": mcfg.max_len, "hidden_dim": mcfg.hidden_dim}

  bucketed = sasrec_data.bucketed_pipeline(
      ds.train, ds.num_items, max_len=mcfg.max_len, batch_size=tcfg.batch_size,
      seed=config.seed, buckets=tuple(tcfg.buckets)).dataset
  padded = sasrec_data.train_pipeline(
      ds.train, ds.num_items, max_len=mcfg.max_len, batch_size=tcfg.batch_size,
      seed=config.seed).dataset
  b_batches = [bucketed[i] for i in range(config.steps)]
  p_batches = [padded[i] for i in range(config.steps)]
  # Compile every shape first (timed separately).
  t0 = time.perf_counter()
  shapes = {}
  for b in b_batches + p_batches[:1]:
    shapes.setdefault(b["inputs"].shape, b)
  for b in shapes.values():
    params, opt, _ = _call(step, params, opt, rest, b, 0)
  jax.block_until_ready(params)
  results["compile_seconds"] = time.perf_counter() - t0
  params, opt, r = _measure(step, params, opt, rest, b_batches, pad)
  results.update({f"jit_bucketed_{k}": v for k, v in r.items()})
  params, opt, r = _measure(step, params, opt, rest, p_batches, pad)
  results.update({f"jit_padded_{k}": v for k, v in r.items()})
  logging.info("jitted: %s", results)
  params, opt, r = _measure(step, params, opt, rest,
                            p_batches[: config.eager_steps], pad, eager=True)
  results.update({f"eager_{k}": v for k, v in r.items()})
  results["speedup_jit_vs_eager"] = (results["jit_padded_examples_per_s"]
                                     / results["eager_examples_per_s"])
  results["speedup_bucketed_vs_eager"] = (results["jit_bucketed_examples_per_s"]
                                          / results["eager_examples_per_s"])
  results["speedup_bucketed_vs_padded"] = (
      results["jit_bucketed_examples_per_s"]
      / results["jit_padded_examples_per_s"])
  results["reference"] = ("the same step run op by op under jax.disable_jit() "
                          "on max_len-padded batches")
  return results
