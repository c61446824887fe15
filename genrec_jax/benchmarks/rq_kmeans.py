"""JAX RQ-KMeans against faiss.Kmeans per level, in one run.

python -m binaries.benchmark --config=configs/benchmarks.py:rq_kmeans --workdir=runs/bench

Both fit L residual levels of K codes on the same embeddings (Beauty MiniLM,
12,101 x 384, 3 x 256 by default) with the same iteration cap and one
restart; both stop early at a fixed point (faiss: objective unchanged, JAX:
no assignment changed). Each of `seeds` seeds runs both, interleaved, after
one warm-up each (the JAX compile is reported separately); times are medians
over all runs and errors means over seeds (one seed's error varies by ~2%). The quantization error is the mean
over items of ||x - sum of the item's centres||^2.
"""

from __future__ import annotations

import pathlib
import time

from absl import logging
import numpy as np

from genrec_jax.data.dataset import DataError
from genrec_jax.semantic_ids import collisions
from genrec_jax.semantic_ids import faiss_backend
from genrec_jax.semantic_ids import rq_kmeans


def _summary(codes, x, recon) -> dict:
  stats = collisions.path_stats(codes)
  return {"error": float(np.mean(np.sum((x - recon) ** 2, axis=1))),
          "colliding_items": stats["colliding_items"],
          "colliding_paths": stats["colliding_paths"],
          "max_items_per_path": stats["max_items_per_path"],
          "used_codes": [int(len(np.unique(codes[:, l]))) for l in range(codes.shape[1])]}


def run(config, out_dir) -> dict:
  path = pathlib.Path(config.embeddings)
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.embed_items first "
                    "(or set --config.embeddings)")
  x = np.ascontiguousarray(np.load(path), np.float32)
  sizes = list(config.codebook_sizes)
  logging.info("rq_kmeans benchmark on %s: %s, levels %s, iters %d", path,
               x.shape, sizes, config.iters)

  def fit_jax(seed):
    return rq_kmeans.fit_residual(x, sizes, seed=seed, iters=config.iters,
                                  restarts=config.jax_restarts,
                                  init=config.init,
                                  init_sample=config.init_sample, tol=0.0)

  def fit_faiss(seed):
    return faiss_backend.faiss_kmeans_levels(x, sizes, seed=seed,
                                             iters=config.iters, restarts=1)

  seeds = [config.seed + i for i in range(config.seeds)]
  t0 = time.perf_counter()
  fit_jax(seeds[0])  # warm-up: compiles once for all levels and seeds
  first_call = time.perf_counter() - t0
  fit_faiss(seeds[0])

  # Interleave the two so that machine load hits both alike.
  jax_times, faiss_times, runs = [], [], []
  for seed in seeds:
    for _ in range(config.repeats):
      t = time.perf_counter()
      jq = fit_jax(seed)
      jax_times.append(time.perf_counter() - t)
      t = time.perf_counter()
      fq = fit_faiss(seed)
      faiss_times.append(time.perf_counter() - t)
    runs.append((_summary(jq.codes, x, jq.recon), _summary(fq.codes, x, fq.recon),
                 jq, fq))
  tj, tf = float(np.median(jax_times)), float(np.median(faiss_times))
  je = float(np.mean([r[0]["error"] for r in runs]))
  fe = float(np.mean([r[1]["error"] for r in runs]))
  js, fs, jq, fq = runs[0]
  out = {
      "items": int(x.shape[0]), "dim": int(x.shape[1]), "codebook_sizes": sizes,
      "iters": int(config.iters), "seeds": seeds,
      "jax_restarts": int(config.jax_restarts),
      "jax_seconds": round(tj, 4), "faiss_seconds": round(tf, 4),
      "time_ratio_jax_over_faiss": round(tj / tf, 4),
      "jax_first_call_seconds_incl_compile": round(first_call, 3),
      "jax_error": je, "faiss_error": fe,
      "error_ratio_jax_over_faiss": je / fe,
      "jax_error_per_seed": [r[0]["error"] for r in runs],
      "faiss_error_per_seed": [r[1]["error"] for r in runs],
      "jax_iterations": [int(max(lv["iterations"])) for lv in jq.info["levels"]],
      "faiss_iterations": [int(lv["iterations"]) for lv in fq.info["levels"]],
      "jax_times": [round(t, 4) for t in jax_times],
      "faiss_times": [round(t, 4) for t in faiss_times],
      **{f"jax_{k}": v for k, v in js.items() if k != "error"},
      **{f"faiss_{k}": v for k, v in fs.items() if k != "error"},
      "machine_note": "2 shared CPU cores; medians of interleaved runs",
  }
  logging.info("JAX %.3fs vs faiss %.3fs (ratio %.3f); mean error over %d "
               "seeds %.4f vs %.4f (ratio %.4f)", tj, tf, tj / tf, len(seeds),
               je, fe, je / fe)
  return out
