"""Non-neural baselines: most-popular and item-item cosine kNN.

Both score the whole catalogue for a batch of histories and are evaluated
with the shared metrics, so every model in the results table sees the same
rows, masks and tie rule.
"""

from __future__ import annotations

import functools
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from genrec_jax.data.dataset import Dataset, atomic_write_json
from genrec_jax.evaluation import metrics


def item_counts(ds: Dataset) -> np.ndarray:
  """float32 [N]: training interactions per item."""
  return np.bincount(ds.train.values, minlength=ds.num_items).astype(np.float32)


def popularity_scorer(ds: Dataset):
  counts = jnp.asarray(item_counts(ds))

  def score(users, history):
    del users
    return jnp.broadcast_to(counts, (history.shape[0], counts.shape[0]))

  return score


@functools.partial(jax.jit, static_argnames=("neighbors",))
def cosine_knn(cooc, counts, neighbors: int):
  """Item-item cosine similarity, pruned to the top `neighbors` per row.

  Args:
    cooc: float32 [N, N] co-occurrence counts (users who had both items).
    counts: float32 [N] users per item.
    neighbors: kept neighbours per item (0 = all).

  Returns:
    float32 [N + 1, N]; the last row (padding id N) is zero.
  """
  n = counts.shape[0]
  norm = jnp.sqrt(jnp.maximum(counts, 1.0))
  sim = cooc / norm[:, None] / norm[None, :]  # [N, N]
  sim = sim * (1.0 - jnp.eye(n, dtype=sim.dtype))
  if neighbors and neighbors < n:
    kth = jax.lax.top_k(sim, neighbors)[0][:, -1:]  # [N, 1]
    sim = jnp.where(sim >= kth, sim, 0.0)
  return jnp.concatenate([sim, jnp.zeros((1, n), sim.dtype)], axis=0)


@jax.jit
def _knn_scores(sim, history):
  # history: int32 [B, L] (pad = N) -> [B, N]
  return sim[history].sum(axis=1)


def knn_scorer(ds: Dataset, neighbors: int = 100):
  rows = ds.train.row_ids()
  x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, ds.train.values)),
                    shape=(ds.num_users, ds.num_items))
  x.data[:] = 1.0  # binary even with repeats
  x.sum_duplicates()
  x.data[:] = 1.0
  cooc = (x.T @ x).toarray().astype(np.float32)  # [N, N]
  counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
  sim = cosine_knn(jnp.asarray(cooc), jnp.asarray(counts), neighbors)

  def score(users, history):
    del users
    return _knn_scores(sim, jnp.asarray(history))

  return score


def evaluate(score_fn, ds: Dataset, max_history: int) -> dict[str, float]:
  out = {}
  for prefix, examples in (("valid/", ds.valid), ("test/", ds.test)):
    if examples is None:
      continue
    out.update(metrics.evaluate_scorer(score_fn, examples, ds.num_items, prefix=prefix,
                                       max_history=max_history))
  out["num_eval_users"] = int(len(np.unique(ds.test.users)))
  out["num_eval_rows"] = len(ds.test)
  return out


def run(config, workdir) -> dict:
  """Evaluates most_popular and item_knn; writes <model>/metrics.json."""
  workdir = pathlib.Path(workdir)
  ds = Dataset.load(workdir / "dataset")
  results = {}
  for name in config.baselines.models:
    t0 = time.perf_counter()
    if name == "most_popular":
      fn = popularity_scorer(ds)
    elif name == "item_knn":
      fn = knn_scorer(ds, config.baselines.knn_neighbors)
    else:
      raise ValueError(f"config field 'baselines.models': unknown model {name!r}")
    m = evaluate(fn, ds, config.baselines.max_history)
    m["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(workdir / name / "metrics.json", m)
    logging.info("%s: test hr@10 %.4f ndcg@10 %.4f (%.1fs)", name, m["test/hr@10"],
                 m["test/ndcg@10"], m["seconds"])
    results[name] = m
  return results
