"""The train_rl stage: GRPO on an SFT decoder's model folder.

Reads WORKDIR/dataset, WORKDIR/<init>/ (a decoder model folder written by
train_generative: "sid" or "text" format), its SIDs (and hints), and for
the `semantic` / `sasrec` rewards WORKDIR/embeddings/items.npy or a SASRec
model folder; writes WORKDIR/<config.name>/:
  checkpoints/{latest,best}, ref/   Orbax; synced references (if any)
  model.json, params/               the model folder (same format as <init>)
  train_log.json, tb/               loss, GRPO diagnostics, evaluations
  recommendations.json              top-10 of a few test users
  metrics.json                      the keys of every generative model,
                                    plus rl/* diagnostics (LAST)

The policy starts from the SFT parameters, the reference is a frozen copy
of them (rl/grpo.py). Valid HR/NDCG@{1,3,5,10} of `eval.valid_users`
sampled users every `train.eval_every` steps (monitoring; the last params
are kept unless eval.select = "ndcg").

Entry point: `run(config, workdir) -> dict` (the metrics).
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from genrec_jax import model_folder
from genrec_jax.checks import check_ranges
from genrec_jax.data.dataset import Dataset, atomic_write_json
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.generative import ranker as ranker_lib
from genrec_jax.generative import stage as generative_stage
from genrec_jax.rl import grpo
from genrec_jax.rl import rewards as rewards_lib
from genrec_jax.training import loop
from genrec_jax.training import sharding

EVAL_KS = (1, 3, 5, 10)


def check_config(config: ml_collections.ConfigDict) -> None:
  check_ranges([
      ("rollout.num_generations", config.rollout.num_generations, 2, None),
      ("rollout.prompts_per_step", config.rollout.prompts_per_step, 1, None),
      ("rollout.title_fraction", config.rollout.title_fraction, 0.0, 1.0),
      ("grpo.beta", config.grpo.beta, 0.0, None),
      ("grpo.epsilon", config.grpo.epsilon, 0.0, 1.0),
      ("grpo.mu", config.grpo.mu, 1, None),
      ("grpo.ref_sync_every", config.grpo.ref_sync_every, 0, None),
      ("grpo.ref_sync_alpha", config.grpo.ref_sync_alpha, 0.0, 1.0),
      ("train.num_steps", config.train.num_steps, 1, None),
      ("train.warmup_ratio", config.train.warmup_ratio, 0.0, 1.0),
      ("eval.beam_size", config.eval.beam_size, 0, None),
  ])
  mu, every = config.grpo.mu, config.train.checkpoint_every
  if mu > 1 and every % mu:
    raise ValueError(f"config field 'train.checkpoint_every' = {every} must "
                     f"be a multiple of grpo.mu = {mu} (a resumed run "
                     "recomputes the rollout of the restored params)")
  if config.init == config.name:
    raise ValueError(f"config field 'name' = {config.name!r} equals 'init': "
                     "the SFT folder would be overwritten")


def _load_policy(config, workdir: pathlib.Path, ds: Dataset):
  init_dir = workdir / config.init
  if not (init_dir / model_folder.MODEL_JSON).exists():
    raise FileNotFoundError(f"{init_dir / model_folder.MODEL_JSON}: no SFT "
                            f"model folder (config field 'init' = "
                            f"{config.init!r}; run train_generative first)")
  spec = model_folder.read_spec(init_dir, num_items=ds.num_items)
  if spec.get("kind") != "decoder":
    raise ValueError(f"{init_dir / model_folder.MODEL_JSON}: kind "
                     f"{spec.get('kind')!r}; GRPO needs a decoder model folder")
  ranker = ranker_lib.load(init_dir, workdir, spec=spec, ds=ds)
  return ranker, spec


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """GRPO-tunes a decoder model folder; returns its metrics."""
  t_start = time.time()
  check_config(config)
  sharding.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).resolve()
  ds = Dataset.load(workdir / "dataset")
  sft, spec = _load_policy(config, workdir, ds)
  fmt = sft.fmt
  out = workdir / config.name
  out.mkdir(parents=True, exist_ok=True)
  tcfg = ml_collections.ConfigDict(config.train.to_dict())
  num_steps = int(tcfg.num_steps)
  if tcfg.warmup_ratio:
    tcfg.warmup_steps = int(math.ceil(tcfg.warmup_ratio * num_steps))
  ecfg = ml_collections.ConfigDict(config.eval.to_dict())
  if not ecfg.beam_size:
    ecfg.beam_size = int(spec.get("beam_size", 20))
  ecfg.top_n = min(ecfg.top_n, ecfg.beam_size)
  mesh = sharding.mesh_from_config(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  if config.rollout.prompts_per_step % dp:
    raise ValueError(f"config field 'rollout.prompts_per_step' = "
                     f"{config.rollout.prompts_per_step} is not divisible "
                     f"by the data-parallel size {dp}")

  graphdef, params, rest = nnx.split(sft.model, nnx.Param, ...)
  policy = nnx.merge(graphdef, params, rest)
  # The frozen reference: a copy (the policy's arrays are donated).
  ref_model = sharding.shard_model(
      nnx.merge(graphdef, jax.tree.map(jnp.copy, params), rest), mesh)
  context = rewards_lib.make_context(config.reward.type, config.reward,
                                     workdir, ds)
  source = grpo.RolloutSource(
      fmt, ds, ref_model, config, seed=config.seed, reward_context=context,
      ref_dir=out / "checkpoints" / "ref",
      shard_index=jax.process_index(), shard_count=jax.process_count())
  loss = grpo.make_grpo_loss(beta=float(config.grpo.beta),
                             epsilon=float(config.grpo.epsilon),
                             mu=int(config.grpo.mu))

  valid_sample = take_examples(ds.valid, generative_stage.sample_rows(
      len(ds.valid), ecfg.valid_users, config.seed))

  def evaluate(m):
    res = generative_stage.evaluate_split(
        ranker_lib.GenerativeRanker(fmt, m, beam_size=ecfg.beam_size),
        valid_sample, prefix="valid/", eval_cfg=ecfg)
    return {**{f"valid/{name}@{k}": res[f"valid/{name}@{k}"]
               for name in ("hr", "ndcg") for k in EVAL_KS
               if k <= ecfg.top_n},
            "valid/sid_nll": res["valid/sid_nll"]}

  select = {"none": None, "ndcg": "valid/ndcg@10"}.get(ecfg.select, "?")
  if select == "?":
    raise ValueError(f"config field 'eval.select': {ecfg.select!r} is not "
                     "'ndcg' or 'none'")
  logging.info("%s: GRPO from %s (%s format), %d steps, %d prompts x %d "
               "beams per step, reward %s, beta %g, lr %g, mesh %s",
               config.name, config.init, fmt.name, num_steps,
               config.rollout.prompts_per_step,
               config.rollout.num_generations, config.reward.type,
               config.grpo.beta, tcfg.learning_rate, dict(mesh.shape))
  loop.reset_stale_checkpoints(out / "checkpoints", loop.fingerprint(
      config, ("init", "seed", "rollout", "reward", "grpo", "mesh"),
      num_steps=num_steps, init_params=loop.params_digest(policy)))
  result = loop.train(
      policy, loss, source, tcfg, mesh=mesh, ckpt_dir=out / "checkpoints",
      num_steps=num_steps, seed=config.seed, evaluate=evaluate,
      select=select, summary_dir=out / "tb",
      examples_per_step=config.rollout.prompts_per_step,
      derived=grpo.ratios, name=config.name)
  loop.write_train_log(out / "train_log.json", result)
  ranker = ranker_lib.GenerativeRanker(fmt, result.model,
                                       beam_size=ecfg.beam_size)
  ranker_lib.save(out, ranker, sids_dir=spec.get("sids_dir", "sids"))

  metrics = generative_stage.final_metrics(ranker, ds, ecfg, out, mesh,
                                           result, t_start=t_start,
                                           select=select)
  totals = grpo.ratios(result.aux_totals)
  metrics.update({
      "kind": "decoder",
      "init": config.init,
      "prompts_per_s": (result.examples / result.seconds
                        if result.seconds else None),
      "reward_type": config.reward.type,
      **{f"rl/{k}": v for k, v in totals.items()},
      "rl/train_prompts": source.num_prompts,
      "rl/epochs": (result.step // config.grpo.mu
                    * config.rollout.prompts_per_step / source.num_prompts),
  })
  atomic_write_json(out / "metrics.json", metrics)
  logging.info("%s test: hr@10 %.4f ndcg@10 %.4f, group-hit rate %.3f, "
               "%d steps, %.0fs", config.name, metrics.get("test/hr@10", -1),
               metrics.get("test/ndcg@10", -1),
               totals.get("group_hit_rate", float("nan")), result.step,
               metrics["seconds"])
  return metrics
