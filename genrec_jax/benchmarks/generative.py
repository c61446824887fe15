"""TIGER on Beauty: training and beam-search throughput, each vs a reference.

python -m binaries.benchmark --config=configs/benchmarks.py:generative --workdir=runs/bench

Needs a workdir with dataset/ and sids/ (`config.workdir`, e.g. runs/beauty
after prepare_data, embed_items and build_sids). One process, same model
(configs/generative.py variant `config.model`), same params:

  * training: one jitted AdamW step of the TIGER loss over the batches
    `train_generative` uses (history-length buckets, `sid_train_data`) vs
    the reference, every batch padded to max_history (history_buckets=());
    examples/s from the summed step times after every shape has compiled;
  * beam search: `T5Scorer` (cross-attention K/V projected once per prompt,
    shared by the beams) vs the reference scorer that re-projects the
    encoder output for every beam at every step (the plain T5 decode step);
    rows/s and the largest score difference between the two.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genrec_jax.data.dataset import Dataset
from genrec_jax.decoding import beam_search as bs
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.generative import formats
from genrec_jax.generative import ranker  # noqa: F401  (registers formats)
from genrec_jax.semantic_ids.table import SemanticIds


@dataclasses.dataclass(frozen=True)
class ReprojectT5Scorer(bs.T5Scorer):
  """The reference: every step re-projects the encoder output per beam."""

  def init(self, params, prompt):
    model = bs._merge(self.graphdef, params)  # pylint: disable=protected-access
    ids = prompt["input_ids"][None]  # [1, S]
    mask = prompt["attention_mask"][None].astype(bool)  # [1, S]
    enc = model.encode(ids, mask)  # [1, S, D]
    cache = model.init_cache(1, self.max_decode_len or self._num_new + 1)
    start = jnp.full((1,), self.start_token, jnp.int32)
    logits, cache = model.decode_step(start, enc, mask, cache)  # [1, V]
    return (cache, enc, mask), logits[0]

  def step(self, params, state, tokens):
    model = bs._merge(self.graphdef, params)  # pylint: disable=protected-access
    cache, enc, mask = state
    w = tokens.shape[0]
    enc_w = jnp.broadcast_to(enc, (w,) + enc.shape[1:])  # [W, S, D]
    mask_w = jnp.broadcast_to(mask, (w,) + mask.shape[1:])  # [W, S]
    logits, cache = model.decode_step(tokens, enc_w, mask_w, cache)
    return (cache, enc, mask), logits


def _train_rate(fmt, model, batches, steps: int) -> dict[str, float]:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    def loss(p):
      return fmt.loss(nnx.merge(graphdef, p, rest), batch, None)[0]
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  batches = [next(batches) for _ in range(steps)]
  t0 = time.perf_counter()
  for b in {b["encoder_ids"].shape: b for b in batches}.values():
    jax.block_until_ready(step(params, opt, b))  # compile every shape
  compile_s = time.perf_counter() - t0
  total, rows, tokens = 0.0, 0, 0
  for b in batches:
    t0 = time.perf_counter()
    params, opt, _ = jax.block_until_ready(step(params, opt, b))
    total += time.perf_counter() - t0
    rows += int((b["labels"] >= 0).any(1).sum())
    tokens += int(b["encoder_mask"].sum())
  width = float(np.mean([b["encoder_ids"].shape[1] for b in batches]))
  return {"examples_per_s": rows / total, "compile_s": compile_s,
          "mean_encoder_width": width,
          "real_token_fraction": tokens / (width * rows)}


def _search_rate(scorer, params, prompts, trie, sid, beam, batch):
  def run_all():
    out = []
    for lo in range(0, len(prompts["input_ids"]), batch):
      p = {k: v[lo:lo + batch] for k, v in prompts.items()}
      out.append(np.asarray(bs.beam_search(
          scorer, params, p, trie, beam_size=beam, top_n=beam,
          sid_tokens=sid).scores))
    return np.concatenate(out)

  first = {k: v[:batch] for k, v in prompts.items()}
  jax.block_until_ready(bs.beam_search(scorer, params, first, trie,
                                       beam_size=beam, top_n=beam,
                                       sid_tokens=sid).scores)  # compile
  t0 = time.perf_counter()
  scores = run_all()
  return len(scores) / (time.perf_counter() - t0), scores


def run(config, out_dir) -> dict:
  del out_dir
  workdir = pathlib.Path(config.workdir).resolve()
  if not (workdir / "dataset").is_dir():
    raise FileNotFoundError(f"{workdir}: needs dataset/ and sids/ "
                            "(run prepare_data, embed_items, build_sids)")
  ds = Dataset.load(workdir / "dataset")
  sids = SemanticIds.load(workdir / "sids", num_items=ds.num_items)
  gcfg = ml_collections.ConfigDict(config.generative.to_dict())
  if gcfg.kind != "tiger":
    raise ValueError(f"config field 'model' = {config.model!r} is not TIGER")
  batch_size = gcfg.train.batch_size
  results = {"model": config.model, "batch_size": batch_size,
             "max_history": gcfg.data.max_history,
             "history_buckets": list(gcfg.data.history_buckets)}

  fmt = model = None
  for name, buckets in (("bucketed", tuple(gcfg.data.history_buckets)),
                        ("padded", ())):
    gcfg.data.history_buckets = buckets
    fmt, model = formats.for_training(gcfg, ds, sids, workdir)
    data = fmt.train_batches(batch_size=batch_size, num_epochs=None,
                             seed=gcfg.seed)
    r = _train_rate(fmt, model, iter(data.dataset), config.train_steps)
    results.update({f"train_{name}_{k}": v for k, v in r.items()})
    logging.info("train %s: %s", name, r)
  results["train_speedup_bucketed_vs_padded"] = (
      results["train_bucketed_examples_per_s"]
      / results["train_padded_examples_per_s"])

  rows = np.arange(min(config.eval_rows, len(ds.test)))
  prompts = fmt.eval_prompts(take_examples(ds.test, rows))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  fast = fmt.scorer(graphdef)
  ref = ReprojectT5Scorer(graphdef, start_token=fast.start_token,
                          max_decode_len=fast.max_decode_len,
                          vocab_size=fast.vocab_size)
  args = ((params, rest), prompts, sids.trie, fmt.layout, config.beam_size,
          config.eval_batch)
  rate, scores = _search_rate(fast, *args)
  ref_rate, ref_scores = _search_rate(ref, *args)
  results.update({
      "search_rows": int(len(rows)), "beam_size": config.beam_size,
      "search_rows_per_s": rate, "search_reference_rows_per_s": ref_rate,
      "search_speedup": rate / ref_rate,
      "search_max_abs_score_diff": float(np.abs(scores - ref_scores).max()),
      "reference": ("training: the same jitted step on max_history-padded "
                    "batches; search: T5 decode steps re-projecting the "
                    "encoder output per beam"),
  })
  return results
