"""Collaborative hints: each item's nearest neighbours by CF-embedding cosine.

The build_hints stage reads WORKDIR/lightgcn/item_emb.npy ([items, D]),
L2-normalises the rows, searches a faiss IndexFlatIP (inner product = cosine)
for the N + 1 nearest rows, drops the item itself and keeps N
(`config.num_neighbours`), and writes WORKDIR/hints/hints.json:
{"<item id>": [neighbour ids, best first]} plus WORKDIR/hints/report.json.
Items with an all-zero embedding (never seen in training) get no entry.

N is more than the K hints a prompt shows (the generative config's
`hints.k`, the one knob for K): training removes the target from the list
before cutting it to K (clean target, METHODS.md section 4), so train and
test prompts both show K hints (genrec_jax.generative.hints).

Entry point: `run(config, workdir) -> dict` (the report).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from absl import logging
import faiss
import ml_collections
import numpy as np

from genrec_jax.data.dataset import DataError, atomic_write_json

STAGE = "hints"


def top_k_neighbours(emb: np.ndarray, k: int, *, exclude_zero: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Cosine top-k neighbours of every row, the row itself excluded.

  Args:
    emb: float [N, D] item embeddings.
    k: neighbours per item; 1 <= k <= N - 1.
    exclude_zero: rows with zero norm are neither queried nor returned.

  Returns:
    (ids int64 [N, k], sims float32 [N, k]), best first; -1 / -inf where an
    item has fewer than k usable neighbours (zero rows).

  Raises:
    ValueError: bad k, or emb not a finite 2-D matrix.
  """
  emb = np.asarray(emb, dtype=np.float32)
  if emb.ndim != 2 or not len(emb):
    raise ValueError(f"item embeddings must be a non-empty [items, dim] "
                     f"matrix, got shape {emb.shape}")
  if not np.all(np.isfinite(emb)):
    raise ValueError("item embeddings contain NaN or inf")
  n = emb.shape[0]
  if not 1 <= k <= n - 1:
    raise ValueError(f"hint K={k} must be in [1, {n - 1}] (catalogue of {n} "
                     "items minus the item itself)")
  norms = np.linalg.norm(emb, axis=1)
  usable = norms > 0 if exclude_zero else np.ones(n, dtype=bool)
  unit = emb / np.maximum(norms, 1e-12)[:, None]
  index = faiss.IndexFlatIP(emb.shape[1])
  keep = np.flatnonzero(usable)
  index.add(np.ascontiguousarray(unit[keep]))
  kk = min(k + 1, len(keep))
  sims, local = index.search(np.ascontiguousarray(unit), kk)  # [N, k + 1]
  found = np.where(local >= 0, keep[np.maximum(local, 0)], -1)
  ids = np.full((n, k), -1, dtype=np.int64)
  out_sims = np.full((n, k), -np.inf, dtype=np.float32)
  for i in range(n):
    if not usable[i]:
      continue
    # Drop self wherever it appears (ties can put another item first).
    row = [(j, s) for j, s in zip(found[i], sims[i]) if j >= 0 and j != i][:k]
    for c, (j, s) in enumerate(row):
      ids[i, c], out_sims[i, c] = j, s
  return ids, out_sims


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Builds WORKDIR/hints/hints.json from WORKDIR/lightgcn/item_emb.npy."""
  t0 = time.time()
  workdir = pathlib.Path(workdir).resolve()
  path = workdir / config.embeddings
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.train_lightgcn first")
  emb = np.load(path)
  ids, sims = top_k_neighbours(emb, config.num_neighbours)
  hints = {str(i): [int(j) for j in ids[i] if j >= 0]
           for i in range(len(ids)) if ids[i, 0] >= 0}
  out = workdir / STAGE
  atomic_write_json(out / "hints.json", hints)
  valid = ids >= 0
  report = {
      "items": int(len(ids)),
      "items_with_hints": len(hints),
      "num_neighbours": int(config.num_neighbours),
      "embeddings": str(path),
      "mean_cosine": float(sims[valid].mean()) if valid.any() else None,
      "self_in_hints": int(sum(int(k) in v for k, v in hints.items())),
      "seconds": time.time() - t0,
  }
  atomic_write_json(out / "report.json", report)
  logging.info("hints: %d of %d items, %d neighbours each, mean cosine %s "
               "(%.1fs)", report["items_with_hints"], report["items"],
               config.num_neighbours,
               report["mean_cosine"], report["seconds"])
  return report
