"""faiss reference quantizers behind the same interface (CPU only).

* `faiss_kmeans`: `faiss.Kmeans` per level on the residual (what the JAX
  `rq_kmeans` is benchmarked against).
* `faiss_rq`: `faiss.ResidualQuantizer(d, L, nbits)` as in MiniOneRec's
  `rqkmeans_faiss.py`; all levels need the same power-of-two size. Codes are
  unpacked from faiss's bit-packed layout (LSB first), which also covers
  codebooks of 512 and more (MiniOneRec issue #25).

faiss is imported lazily so the rest of the package works without it.
"""

from __future__ import annotations

import time

from absl import logging
import numpy as np

from genrec_jax.semantic_ids import kmeans as km
from genrec_jax.semantic_ids.quantizers import Quantized, register
from genrec_jax.semantic_ids.rq_kmeans import check_sizes


def _faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("the faiss SID methods need faiss-cpu installed") from e
  return faiss


def faiss_kmeans_levels(x: np.ndarray, sizes, *, seed: int, iters: int,
                        restarts: int = 1) -> Quantized:
  """Residual faiss.Kmeans, one per level (seed + level)."""
  faiss = _faiss()
  x = np.ascontiguousarray(x, np.float32)
  n, d = x.shape
  sizes = check_sizes(n, sizes)
  r = x.copy()
  recon = np.zeros_like(x)
  codes, level_info, last_cost = [], [], None
  for level, k in enumerate(sizes):
    t0 = time.perf_counter()
    kmeans = faiss.Kmeans(d, k, niter=iters, seed=seed + level, nredo=restarts)
    kmeans.train(r)
    _, assign = kmeans.index.search(r, 1)
    assign = assign[:, 0].astype(np.int32)
    c = kmeans.centroids
    if level == len(sizes) - 1:
      last_cost = km.sq_dists(r, c)
    q = c[assign]
    recon += q
    r = np.ascontiguousarray(r - q)
    err = float(np.mean(np.sum(r * r, axis=1)))
    level_info.append({"k": k, "error_after": err,
                       "iterations": len(kmeans.iteration_stats),
                       "seconds": time.perf_counter() - t0})
    codes.append(assign)
  return Quantized(codes=np.stack(codes, 1), codebook_sizes=sizes, recon=recon,
                   last_cost=last_cost, info={"levels": level_info})


@register("faiss_kmeans")
def fit_faiss_kmeans(x: np.ndarray, config) -> Quantized:
  return faiss_kmeans_levels(x, config.codebook_sizes, seed=config.seed,
                             iters=config.kmeans.iters,
                             restarts=config.kmeans.restarts)


def unpack_codes(packed: np.ndarray, nbits: int, levels: int) -> np.ndarray:
  """int32 [N, L] from faiss's LSB-first bit-packed uint8 [N, bytes]."""
  bits = np.unpackbits(packed, axis=1, bitorder="little")  # [N, 8 * bytes]
  bits = bits[:, : nbits * levels].reshape(len(packed), levels, nbits)
  weights = (1 << np.arange(nbits)).astype(np.int64)
  return (bits.astype(np.int64) * weights).sum(-1).astype(np.int32)


@register("faiss_rq")
def fit_faiss_rq(x: np.ndarray, config) -> Quantized:
  """faiss.ResidualQuantizer (beam size config.faiss.max_beam_size)."""
  faiss = _faiss()
  x = np.ascontiguousarray(x, np.float32)
  n, d = x.shape
  sizes = check_sizes(n, config.codebook_sizes)
  k = sizes[0]
  nbits = k.bit_length() - 1
  if any(s != k for s in sizes) or (1 << nbits) != k:
    raise ValueError(f"faiss_rq needs equal power-of-two codebook sizes, got {sizes}")
  levels = len(sizes)
  rq = faiss.ResidualQuantizer(d, levels, nbits)
  rq.max_beam_size = int(config.faiss.max_beam_size)
  rq.train(x)
  codes = unpack_codes(rq.compute_codes(x), nbits, levels)
  recon = rq.decode(rq.compute_codes(x))
  books = faiss.vector_to_array(rq.codebooks).reshape(levels * k, d)
  books = [books[l * k:(l + 1) * k] for l in range(levels)]
  prev = np.zeros_like(x)
  for l in range(levels - 1):
    prev += books[l][codes[:, l]]
  last_cost = km.sq_dists(x - prev, books[-1])
  logging.info("faiss_rq: error %.4f", float(np.mean(np.sum((x - recon) ** 2, 1))))
  return Quantized(codes=codes, codebook_sizes=sizes, recon=recon,
                   last_cost=last_cost, info={"codebooks": books})
