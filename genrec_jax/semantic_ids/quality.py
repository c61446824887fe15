"""Quality figures of a set of semantic IDs, and the code-usage plot."""

from __future__ import annotations

import pathlib

from absl import logging
import numpy as np

from genrec_jax.semantic_ids import collisions


def level_usage(codes: np.ndarray, sizes: list[int]) -> dict:
  """Per level: utilization, entropy (bits), perplexity, largest code share."""
  util, ent, ppl, top = [], [], [], []
  for level, k in enumerate(sizes):
    counts = np.bincount(codes[:, level], minlength=k)
    p = counts[counts > 0] / counts.sum()
    h = float(-(p * np.log2(p)).sum())
    util.append(float((counts > 0).sum() / k))
    ent.append(h)
    ppl.append(float(2.0 ** h))
    top.append(int(counts.max()))
  return {"utilization": util, "entropy_bits": ent, "perplexity": ppl,
          "max_items_per_code": top}


def max_items_per_prefix(codes: np.ndarray) -> list[int]:
  """Largest number of items sharing the first l codes, for l = 1..L."""
  out = []
  for l in range(1, codes.shape[1] + 1):
    _, counts = np.unique(codes[:, :l], axis=0, return_counts=True)
    out.append(int(counts.max()))
  return out


def cluster_scores(x: np.ndarray, labels: np.ndarray, sample: int,
                   seed: int) -> dict:
  """Silhouette / Calinski-Harabasz / Davies-Bouldin of level-1 clusters."""
  try:
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  n = len(x)
  idx = np.arange(n)
  if sample and n > sample:
    idx = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
  xs, ls = x[idx], labels[idx]
  if len(np.unique(ls)) < 2 or len(np.unique(ls)) >= len(ls):
    return {}
  return {
      "cluster_sample": int(len(idx)),
      "silhouette": float(metrics.silhouette_score(xs, ls)),
      "calinski_harabasz": float(metrics.calinski_harabasz_score(xs, ls)),
      "davies_bouldin": float(metrics.davies_bouldin_score(xs, ls)),
  }


def quantization_error(x: np.ndarray, recon: np.ndarray) -> dict:
  err = np.sum((x - recon) ** 2, axis=1)
  energy = float(np.mean(np.sum(x * x, axis=1)))
  return {"quantization_error": float(err.mean()),
          "relative_quantization_error": float(err.mean() / max(energy, 1e-30))}


def plot_usage(codes: np.ndarray, sizes: list[int], path: pathlib.Path,
               title: str = "") -> bool:
  """Writes a PNG of code counts per level (sorted); False without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("matplotlib is not installed: no code-usage plot")
    return False
  levels = len(sizes)
  fig, axes = plt.subplots(1, levels, figsize=(4 * levels, 3), squeeze=False)
  for level, k in enumerate(sizes):
    counts = np.sort(np.bincount(codes[:, level], minlength=k))[::-1]
    ax = axes[0, level]
    ax.bar(np.arange(k), counts, width=1.0)
    ax.axhline(len(codes) / k, color="r", lw=0.8, ls="--")
    ax.set_title(f"level {level + 1}: {int((counts > 0).sum())}/{k} used")
    ax.set_xlabel("code (sorted by count)")
    ax.set_ylabel("items")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return True


def report(x: np.ndarray, codes_before: np.ndarray, codes: np.ndarray,
           sizes: list[int], recon: np.ndarray, *, sample: int = 5000,
           seed: int = 0) -> dict:
  """The report.json quality fields.

  Args:
    x: float32 [N, D] quantized vectors.
    codes_before: int [N, L0] the quantizer's codes.
    codes: int [N, L] the final, collision-free codes (maybe L0 + 1).
    sizes: final codebook sizes (len L).
    recon: float32 [N, D] reconstruction from codes_before.
    sample: items for the cluster scores (0 = all).
    seed: sampling seed.
  """
  before = collisions.path_stats(codes_before)
  after = collisions.path_stats(codes)
  out = {
      "num_items": int(len(codes)),
      "levels": int(codes.shape[1]),
      "codebook_sizes": [int(k) for k in sizes],
      "collisions_before": before["collisions"],
      "collisions_after": after["collisions"],
      "collision_rate_before": before["collision_rate"],
      "colliding_items_before": before["colliding_items"],
      "colliding_paths_before": before["colliding_paths"],
      "max_items_per_path_before": before["max_items_per_path"],
      **level_usage(codes, sizes),
      "max_items_per_prefix": max_items_per_prefix(codes_before),
      **quantization_error(x, recon),
  }
  out.update(cluster_scores(x, codes_before[:, 0], sample, seed))
  return out
