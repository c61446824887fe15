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


# sklearn's three cluster scores, under the report's key suffixes.
SCORES = ("silhouette", "calinski_harabasz", "davies_bouldin")


def cluster_scores(x: np.ndarray, labels: np.ndarray) -> dict:
  """Silhouette / Calinski-Harabasz / Davies-Bouldin of x under labels.

  Args:
    x: float [n, D] points.
    labels: int [n] cluster of each point.

  Returns:
    dict with the three SCORES, `num_labels`, and `skipped` (a reason, the
    scores None) when sklearn is missing or the labels are not
    2 <= distinct labels <= n - 1 (e.g. a full SID tuple per point).
  """
  num = int(len(np.unique(labels)))
  out = {"num_labels": num}
  reason = None
  try:
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
  except ImportError:
    reason = "scikit-learn is not installed"
  if reason is None and not 2 <= num <= len(labels) - 1:
    reason = (f"{num} distinct labels on {len(labels)} points (sklearn needs "
              "2 <= labels <= points - 1)")
  if reason is not None:
    return {**out, **dict.fromkeys(SCORES), "skipped": reason}
  return {
      **out,
      "silhouette": float(metrics.silhouette_score(x, labels)),
      "calinski_harabasz": float(metrics.calinski_harabasz_score(x, labels)),
      "davies_bouldin": float(metrics.davies_bouldin_score(x, labels)),
  }


def sid_cluster_scores(x: np.ndarray, codes: np.ndarray, sample: int,
                       seed: int) -> dict:
  """Cluster scores of level-1 codes and of the full code tuple as labels.

  Both use the same `sample` random items (0 or >= N: all), as the music
  original does with full SID tuples (METHODS.md 7 addendum).

  Returns:
    `cluster_sample` and, per labelling `level1` / `full`, the keys of
    `cluster_scores` as `<labelling>/<key>` (e.g. `full/silhouette`).
  """
  n = len(x)
  idx = np.arange(n)
  if sample and n > sample:
    idx = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
  _, full = np.unique(codes, axis=0, return_inverse=True)
  out = {"cluster_sample": int(len(idx))}
  for name, labels in (("level1", codes[:, 0]), ("full", full.reshape(-1))):
    scores = cluster_scores(x[idx], labels[idx])
    out.update({f"{name}/{k}": v for k, v in scores.items()})
  return out


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


def _coverage(stats: dict, n: int) -> float:
  """Distinct paths / items from `collisions.path_stats`."""
  return float((n - stats["collisions"]) / n) if n else 0.0


def report(x: np.ndarray, codes_before: np.ndarray, codes: np.ndarray,
           sizes: list[int], recon: np.ndarray, *, sample: int = 5000,
           seed: int = 0) -> dict:
  """The report.json quality fields.

  `coverage_*` is distinct SIDs / items (1 - collision rate), the music
  original's "SID coverage"; `max_items_per_path_*` the largest number of
  items sharing one SID. The cluster scores label items by their quantizer
  codes (before collision handling): `level1/*` by the first code, `full/*`
  by the whole tuple (the original's figures, RESULTS.md 6).

  Args:
    x: float32 [N, D] quantized vectors.
    codes_before: int [N, L0] the quantizer's codes.
    codes: int [N, L] the final codes (maybe L0 + 1; collisions remain
      only under the `keep` strategy).
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
      "max_items_per_path_after": after["max_items_per_path"],
      "coverage_before": _coverage(before, len(codes)),
      "coverage_after": _coverage(after, len(codes)),
      **level_usage(codes, sizes),
      "max_items_per_prefix": max_items_per_prefix(codes_before),
      **quantization_error(x, recon),
  }
  out.update(sid_cluster_scores(x, codes_before, sample, seed))
  return out
