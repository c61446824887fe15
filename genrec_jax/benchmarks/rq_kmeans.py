"""JAX RQ-KMeans against faiss.Kmeans per level, in one run.

python -m binaries.benchmark --config=configs/benchmarks.py:rq_kmeans --workdir=runs/bench

Both fit L residual levels of K codes on the same embeddings (Beauty MiniLM,
12,101 x 384, 3 x 256 by default) with the same iteration cap and one
restart; both stop early at a fixed point (faiss: objective unchanged, JAX:
no assignment changed). Times are medians of `repeats` runs after a warm-up
(the JAX compile is reported separately). The quantization error is the mean
over items of ||x - sum of the item's centres||^2.
"""

from __future__ import annotations

import pathlib
import time

from absl import logging
import ml_collections
import numpy as np

from genrec_jax.data.dataset import DataError
from genrec_jax.semantic_ids import collisions
from genrec_jax.semantic_ids import faiss_backend
from genrec_jax.semantic_ids import rq_kmeans


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # float32 [items, dim] .npy file (embed_items output).
  config.embeddings = "runs/beauty/embeddings/items.npy"
  # Codes per level.
  config.codebook_sizes = (256, 256, 256)
  # Lloyd iteration cap per level, for both.
  config.iters = 20
  # Seed of both (faiss uses seed + level).
  config.seed = 1234
  # JAX init: "kmeans++" (on init_sample random points) or "random" (faiss's).
  config.init = "kmeans++"
  # Points the JAX k-means++ init runs on (0 = all).
  config.init_sample = 4096
  # Timed runs of each (after one warm-up run).
  config.repeats = 3
  return config


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

  def fit_jax():
    return rq_kmeans.fit_residual(x, sizes, seed=config.seed, iters=config.iters,
                                  restarts=1, init=config.init,
                                  init_sample=config.init_sample, tol=0.0)

  def fit_faiss():
    return faiss_backend.faiss_kmeans_levels(x, sizes, seed=config.seed,
                                             iters=config.iters, restarts=1)

  t0 = time.perf_counter()
  jq = fit_jax()
  first_call = time.perf_counter() - t0
  fq = fit_faiss()

  # Interleave the two so that machine load hits both alike.
  jax_times, faiss_times = [], []
  for _ in range(config.repeats):
    t = time.perf_counter()
    jq = fit_jax()
    jax_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    fq = fit_faiss()
    faiss_times.append(time.perf_counter() - t)
  tj, tf = float(np.median(jax_times)), float(np.median(faiss_times))
  js, fs = _summary(jq.codes, x, jq.recon), _summary(fq.codes, x, fq.recon)
  out = {
      "items": int(x.shape[0]), "dim": int(x.shape[1]), "codebook_sizes": sizes,
      "iters": int(config.iters),
      "jax_seconds": round(tj, 4), "faiss_seconds": round(tf, 4),
      "time_ratio_jax_over_faiss": round(tj / tf, 4),
      "jax_first_call_seconds_incl_compile": round(first_call, 3),
      "jax_error": js["error"], "faiss_error": fs["error"],
      "error_ratio_jax_over_faiss": js["error"] / fs["error"],
      "jax_iterations": [int(max(lv["iterations"])) for lv in jq.info["levels"]],
      "faiss_iterations": [int(lv["iterations"]) for lv in fq.info["levels"]],
      "jax_times": [round(t, 4) for t in jax_times],
      "faiss_times": [round(t, 4) for t in faiss_times],
      **{f"jax_{k}": v for k, v in js.items() if k != "error"},
      **{f"faiss_{k}": v for k, v in fs.items() if k != "error"},
      "machine_note": "2 shared CPU cores; medians of interleaved runs",
  }
  logging.info("JAX %.3fs vs faiss %.3fs (ratio %.3f); error %.4f vs %.4f "
               "(ratio %.4f)", tj, tf, tj / tf, js["error"], fs["error"],
               js["error"] / fs["error"])
  return out
