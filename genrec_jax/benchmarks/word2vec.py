"""JAX word2vec (semantic_ids/word2vec.py) against gensim, in one run.

python -m binaries.benchmark --config=configs/benchmarks.py:word2vec --workdir=runs/bench

Both train on the same item2vec corpus (Last.fm 2K as prepare_lastfm builds
it, in memory: users' artist lists by listen count + train-split tag lists,
with the held-out next items removed) with the same settings (the item2vec
stage's: skip-gram, negative sampling, count^0.75 noise, subsampling,
dynamic window, linear learning-rate decay; `config.word2vec`). gensim runs
in this process with `workers` threads for each entry of `gensim_workers`;
the JAX side runs on this process's CPU devices. For each seed the runs are
interleaved (gensim, ..., JAX) so that machine load hits all alike, after
one warm-up of each (the JAX compile is reported apart). Times are medians
over seeds, quality (held-out next-item HR@10 etc., cosine neighbours, the
query excluded) means over seeds.

gensim is an optional extra (`pip install -e .[gensim]`), never a runtime
dependency of genrec_jax.
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import numpy as np

from genrec_jax.gar import item2vec
from genrec_jax.gar import lastfm
from genrec_jax.semantic_ids import word2vec


def _gensim():
  try:
    import gensim  # pylint: disable=g-import-not-at-top
    from gensim.models import word2vec as gensim_w2v  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise RuntimeError("the word2vec benchmark needs gensim (an optional "
                       "extra): `.venv/bin/pip install -e .[gensim]`") from None
  return gensim, gensim_w2v


def gensim_vectors(sentences: list[list[str]], num_items: int, w2v,
                   workers: int, seed: int) -> tuple[np.ndarray, float]:
  """(float32 [V, D] vectors in item order (zeros for items gensim dropped),
  training seconds) of gensim's Word2Vec on the same settings."""
  _, gw = _gensim()
  t0 = time.perf_counter()
  model = gw.Word2Vec(
      sentences, vector_size=w2v.dim, window=w2v.window,
      min_count=w2v.min_count, sg=int(w2v.model == "skipgram"), hs=0,
      negative=w2v.negative, ns_exponent=w2v.ns_exponent, sample=w2v.sample,
      epochs=w2v.epochs, alpha=w2v.alpha, min_alpha=w2v.min_alpha,
      cbow_mean=int(w2v.cbow_mean), workers=workers, seed=seed)
  seconds = time.perf_counter() - t0
  out = np.zeros((num_items, w2v.dim), np.float32)
  for i in range(num_items):
    if str(i) in model.wv.key_to_index:
      out[i] = model.wv[str(i)]
  return out, seconds


def run(config, out_dir) -> dict[str, Any]:
  gensim, _ = _gensim()
  prep = lastfm.build(config.lastfm.data)
  corpus, heldout = prep.sentences, prep.heldout
  tokens = [[str(i) for i in corpus[j]] for j in range(len(corpus))]
  w2v = config.word2vec
  logging.info("word2vec benchmark: %d sentences, %d tokens, %d items; %s "
               "dim %d window %d negative %d sample %g epochs %d; gensim %s "
               "workers %s", len(corpus), len(corpus.values), prep.num_items,
               w2v.model, w2v.dim, w2v.window, w2v.negative, w2v.sample,
               w2v.epochs, gensim.__version__, list(config.gensim_workers))

  def jax_run(seed: int, epochs: int | None = None):
    c = w2v.copy_and_resolve_references()
    c.seed = seed
    if epochs is not None:
      c.epochs = epochs
    t0 = time.perf_counter()
    vectors, _, info = word2vec.train(corpus, prep.num_items, c,
                                      log_every=config.log_every)
    return vectors, time.perf_counter() - t0, info

  # Warm-ups: the JAX compile and gensim's first call.
  _, first_call, _ = jax_run(config.seed, epochs=1)
  gensim_vectors(tokens[:50], prep.num_items, w2v, 1, config.seed)
  runs: dict[str, list[tuple[float, dict]]] = {}
  infos = []
  for s in range(config.seeds):
    seed = config.seed + s
    for workers in config.gensim_workers:
      vec, sec = gensim_vectors(tokens, prep.num_items, w2v, workers, seed)
      runs.setdefault(f"gensim_w{workers}", []).append(
          (sec, item2vec.quality(vec, heldout, config.ks)))
    vec, sec, info = jax_run(seed)
    runs.setdefault("jax", []).append((sec, item2vec.quality(vec, heldout,
                                                             config.ks)))
    infos.append(info)
    logging.info("seed %d: %s", seed, {k: (round(v[-1][0], 2),
                                           v[-1][1].get("heldout/hr@10"))
                                       for k, v in runs.items()})

  def summary(name):
    times = [t for t, _ in runs[name]]
    keys = [k for k in runs[name][0][1] if k.startswith("heldout/")]
    out = {"seconds": round(float(np.median(times)), 3),
           "seconds_per_seed": [round(t, 3) for t in times]}
    for k in keys:
      vals = [m[k] for _, m in runs[name]]
      out[k.split("/", 1)[1]] = round(float(np.mean(vals)), 5)
      if k == "heldout/hr@10":
        out["hr@10_per_seed"] = vals
    return out

  sides = {name: summary(name) for name in runs}
  jx = sides["jax"]
  results: dict[str, Any] = {
      "items": prep.num_items, "sentences": len(corpus),
      "tokens": int(len(corpus.values)),
      "num_heldout": int(len(heldout["query"])),
      "settings": w2v.to_dict(), "seeds": config.seeds,
      "gensim_version": gensim.__version__,
      "jax_first_call_seconds_incl_compile_1_epoch": round(first_call, 3),
      "jax_pairs_per_epoch": int(np.mean([i["pairs"] for i in infos])
                                 / w2v.epochs),
      **{name: side for name, side in sides.items()},
  }
  for workers in config.gensim_workers:
    g = sides[f"gensim_w{workers}"]
    results[f"time_ratio_jax_over_gensim_w{workers}"] = round(
        jx["seconds"] / g["seconds"], 3)
    results[f"hr@10_jax_minus_gensim_w{workers}"] = round(
        jx["hr@10"] - g["hr@10"], 5)
  results["machine_note"] = ("2 CPU cores shared with other work; medians "
                             "of interleaved runs")
  for workers in config.gensim_workers:
    logging.info("JAX %.2fs vs gensim(workers=%d) %.2fs: ratio %.3f; "
                 "HR@10 %.4f vs %.4f", jx["seconds"], workers,
                 sides[f"gensim_w{workers}"]["seconds"],
                 results[f"time_ratio_jax_over_gensim_w{workers}"],
                 jx["hr@10"], sides[f"gensim_w{workers}"]["hr@10"])
  return results
