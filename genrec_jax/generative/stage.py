"""The train_generative stage: TIGER or a decoder LM on semantic IDs.

Reads WORKDIR/dataset, WORKDIR/<sids_dir> (+ WORKDIR/hints/hints.json when
config.hints.enabled) and writes WORKDIR/<config.name>/:
  checkpoints/{latest,best}  Orbax (params, optimizer, step, data iterator)
  model.json, params/        the model folder (generative/ranker.py; the
                             evaluate and recommend binaries load it)
  train_log.json, tb/        loss curve + evaluations (TensorBoard events)
  recommendations.json       top-10 item ids of a few test users
  metrics.json               test/*, valid/*, invalid_rate, ... (LAST)

What differs between TIGER, the SID-prompt decoder and the text-prompt
decoder is their prompt format (generative/formats.py: model, batches,
prompts, scorer); this stage trains any of them on training/loop.py and
evaluates with the constrained beam search. Early stopping on NDCG@10 of
`eval.valid_users` sampled valid users (eval.select = "ndcg"), best params
kept; "none" keeps the last params. Every evaluation also reports
`<split>/sid_nll`: the mean teacher-forced negative log-likelihood of the
targets' SIDs (nats per target), the training objective on held-out targets
without the beam search's variance (with "none" and train.eval_every > 0 it
alone is logged on the sampled valid users).

Entry point: `run(config, workdir) -> dict` (the metrics).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, EvalExamples
from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.evaluation.generative import evaluate_generative
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.generative import formats
from genrec_jax.generative import ranker as ranker_lib
from genrec_jax.semantic_ids.table import SemanticIds
from genrec_jax.training import loop
from genrec_jax.training import sharding

# Test users written to recommendations.json.
NUM_RECOMMENDATION_USERS = 10


def evaluate_split(ranker: ranker_lib.GenerativeRanker,
                   examples: EvalExamples, *, prefix: str,
                   eval_cfg) -> dict[str, float]:
  """HR/NDCG/MRR and invalid_rate of the constrained search on a split."""

  def search(batch):
    return ranker.search(batch, beam_size=eval_cfg.beam_size,
                         top_n=eval_cfg.top_n,
                         exclude_history=eval_cfg.exclude_history)

  out = evaluate_generative(search, examples,
                            is_valid_item=ranker.is_valid_item,
                            batch_size=eval_cfg.batch_size, prefix=prefix)
  out[f"{prefix}sid_nll"] = mean_sid_nll(ranker, examples,
                                         eval_cfg.batch_size)
  return out


def mean_sid_nll(ranker: ranker_lib.GenerativeRanker, examples: EvalExamples,
                 batch_size: int) -> float:
  """Mean teacher-forced negative log-likelihood of the rows' first targets'
  SIDs (nats per target, summed over its SID tokens): what the model was
  trained to minimise, on held-out targets, without the beam search's
  variance. Rows whose target has no SID are left out (counted in the log).
  """
  n = len(examples)
  ll = np.empty(n)
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    fill = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    ll[rows] = ranker.target_log_likelihood(
        take_examples(examples, fill))[:len(rows)]
  missing = int(np.isnan(ll).sum())
  if missing:
    logging.info("sid_nll: %d of %d rows left out (target without an SID)",
                 missing, n)
  if missing == n:
    raise ValueError("sid_nll: no evaluation row's target has an SID")
  return float(-np.nanmean(ll))


def sample_rows(n: int, k: int, seed: int) -> np.ndarray:
  if not k or k >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def final_eval(ranker, ds: Dataset, ecfg, out: pathlib.Path):
  """Test (and valid) metrics; writes recommendations.json."""
  test = ds.test
  if ecfg.max_test_users:
    test = take_examples(test, np.arange(min(ecfg.max_test_users, len(test))))
  metrics = evaluate_split(ranker, test, prefix="test/", eval_cfg=ecfg)
  if ecfg.report_valid:
    valid = evaluate_split(ranker, ds.valid, prefix="valid/", eval_cfg=ecfg)
    metrics.update({k: v for k, v in valid.items() if k.startswith("valid/")})
    metrics["valid_invalid_rate"] = valid["invalid_rate"]
  if metrics["invalid_rate"] != 0.0:
    logging.error("invalid_rate %.4f != 0", metrics["invalid_rate"])

  # A few test users' top-10 for the pipeline's examples table.
  n_few = min(NUM_RECOMMENDATION_USERS, len(ds.test))
  fill = np.minimum(np.arange(max(n_few, ecfg.batch_size)), n_few - 1)
  few = take_examples(ds.test, fill)  # padded: no new compile
  top = ranker.search(few, beam_size=ecfg.beam_size, top_n=ecfg.top_n,
                      exclude_history=ecfg.exclude_history)[:n_few, :10]
  atomic_write_json(out / "recommendations.json", [
      {"user": int(few.users[i]), "user_id": ds.user_ids[int(few.users[i])],
       "history": few.history[i][-10:].tolist(),
       "target": few.targets[i].tolist(),
       "top10": [int(x) for x in top[i] if x >= 0],
       "top10_titles": [ds.title(int(x)) for x in top[i] if x >= 0]}
      for i in range(n_few)])
  return metrics, int(len(test))


def final_metrics(ranker, ds: Dataset, ecfg, out: pathlib.Path, mesh,
                  result: loop.TrainResult, *, t_start: float,
                  select: str | None) -> dict[str, Any]:
  """Test (and valid) metrics of a trained generative ranker plus the run
  facts every generative stage reports (train_generative, train_rl)."""
  t_eval = time.time()
  # The same mesh context as the evaluations during training (jit cache).
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    metrics, n_test = final_eval(ranker, ds, ecfg, out)
  metrics.update({
      "format": ranker.fmt.name,
      "num_eval_users": n_test,
      "seconds": time.time() - t_start,
      "train_seconds": result.seconds,
      "test_eval_seconds": time.time() - t_eval,
      "steps": int(result.step),
      "best_step": int(result.best_step),
      "stop_reason": result.stop_reason,
      "beam_size": int(ecfg.beam_size),
      "hints": bool(ranker.fmt.settings.get("hints")),
      "history_masked": bool(ecfg.exclude_history
                             and ds.test.exclude is not None),
      "final_train_loss": (result.curve[-1]["loss"] if result.curve
                           else None),
      # Early-stopping signal on the sampled valid users (train_log.json).
      "select_metric": select,
      "best_select_value": result.best,
  })
  return metrics


def _init_from(model, fmt, init_dir: pathlib.Path, workdir: pathlib.Path,
               ds: Dataset):
  """`model` with the parameters of a model folder of the same format and
  sizes (continued training)."""
  where = init_dir / "model.json"
  if not where.exists():
    raise FileNotFoundError(f"{where}: no model folder to start from "
                            f"(config field 'init')")
  prev = ranker_lib.load(init_dir, workdir, ds=ds)
  if (prev.fmt.name != fmt.name
      or prev.fmt.spec()["model_config"] != fmt.spec()["model_config"]):
    raise ValueError(f"{where}: format {prev.fmt.name!r} / model_config "
                     f"differ from this config's ({fmt.name!r}); 'init' must "
                     "name a model of the same format and sizes")
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  logging.info("starting from the parameters of %s", init_dir)
  return nnx.merge(graphdef, prev.params[0], rest)


def _load_inputs(config, workdir: pathlib.Path):
  ds = Dataset.load(workdir / "dataset")
  if ds.valid is None:
    raise DataError(f"{workdir / 'dataset'}: no validation split (early "
                    "stopping needs one)")
  sids = SemanticIds.load(workdir / config.sids_dir, num_items=ds.num_items)
  return ds, sids


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a generative recommender; returns its metrics."""
  t_start = time.time()
  sharding.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).resolve()
  ds, sids = _load_inputs(config, workdir)
  fmt, model = formats.for_training(config, ds, sids, workdir)
  if config.init:
    model = _init_from(model, fmt, workdir / config.init, workdir, ds)
  out = workdir / config.name
  out.mkdir(parents=True, exist_ok=True)
  tcfg, ecfg = config.train, config.eval
  mesh = sharding.mesh_from_config(config.mesh)
  sharding.check_batch_size(tcfg.batch_size, mesh)
  data = fmt.train_batches(batch_size=tcfg.batch_size, num_epochs=None,
                           seed=config.seed, shard_index=jax.process_index(),
                           shard_count=jax.process_count())
  per_epoch = data.batches_per_epoch
  num_steps = int(tcfg.num_steps or per_epoch * tcfg.num_epochs)
  nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  logging.info("%s (%s format): %.2fM params, vocab %d, %d steps (%d per "
               "epoch), mesh %s; data %s", config.name, fmt.name,
               nparams / 1e6, fmt.model_config.vocab_size, num_steps,
               per_epoch, dict(mesh.shape), data.stats)

  valid_sample = take_examples(ds.valid, sample_rows(
      len(ds.valid), ecfg.valid_users, config.seed))
  k_sel = max(k for k in metrics_lib.KS if k <= min(10, ecfg.top_n))
  select_key = f"valid/ndcg@{k_sel}"

  def evaluate(m):
    res = evaluate_split(
        ranker_lib.GenerativeRanker(fmt, m, beam_size=ecfg.beam_size),
        valid_sample, prefix="valid/", eval_cfg=ecfg)
    return {select_key: res[select_key],
            f"valid/hr@{k_sel}": res[f"valid/hr@{k_sel}"],
            "valid/sid_nll": res["valid/sid_nll"]}

  def monitor(m):
    return {"valid/sid_nll": mean_sid_nll(
        ranker_lib.GenerativeRanker(fmt, m, beam_size=ecfg.beam_size),
        valid_sample, ecfg.batch_size)}

  if ecfg.select == "none":  # cheaper: no beam search while training, the
    # held-out loss every eval_every steps (when set)
    evaluate_fn, select = (monitor if tcfg.eval_every else None), None
  elif ecfg.select == "ndcg":
    evaluate_fn, select = evaluate, select_key
  else:
    raise ValueError(f"config field 'eval.select': {ecfg.select!r} is not "
                     "'ndcg' or 'none'")
  loop.reset_stale_checkpoints(out / "checkpoints", loop.fingerprint(
      config, ("kind", "seed", "model", "data", "prompt", "hints", "mesh",
               "init"), num_steps=num_steps,
      init_params=(loop.params_digest(model) if config.init else None)))
  result = loop.train(
      model, fmt.loss, data.dataset, tcfg, mesh=mesh,
      ckpt_dir=out / "checkpoints", num_steps=num_steps, seed=config.seed,
      evaluate=evaluate_fn, select=select, summary_dir=out / "tb",
      name=config.name)
  loop.write_train_log(out / "train_log.json", result)
  ranker = ranker_lib.GenerativeRanker(fmt, result.model,
                                       beam_size=ecfg.beam_size)
  ranker_lib.save(out, ranker, sids_dir=config.sids_dir)

  metrics = final_metrics(ranker, ds, ecfg, out, mesh, result,
                          t_start=t_start, select=select)
  metrics.update({
      "kind": config.kind,
      "epochs": round(result.step / per_epoch, 3),
      "num_params": nparams,
  })
  atomic_write_json(out / "metrics.json", metrics)
  logging.info("%s test: hr@10 %.4f ndcg@10 %.4f invalid %g, %d steps, %.0fs",
               config.name, metrics.get("test/hr@10", -1),
               metrics.get("test/ndcg@10", -1), metrics["invalid_rate"],
               result.step, metrics["seconds"])
  return metrics
