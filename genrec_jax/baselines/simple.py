"""Non-neural baselines: most-popular, item-item cosine kNN and its tuned
sequential variant.

All score the whole catalogue for a batch of histories and are evaluated
with the shared metrics, so every model in the results table sees the same
rows, masks and tie rule.

  most_popular  training interactions per item.
  item_knn      sum of the cosine similarities to the last `max_history`
                history items (unweighted, top-`knn_neighbors` pruned).
  seq_item_knn  sum over the last n history items of decay**age * cosine,
                age 0 for the most recent item; (n, decay) chosen on the
                validation split from a small grid, then evaluated once on
                test. Its metrics.json also holds the chosen pair and every
                grid point's valid ndcg@10.
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

from genrec_jax.data.dataset import Dataset, EvalExamples, atomic_write_json
from genrec_jax.evaluation import metrics

# The validation metric seq_item_knn maximises over its grid.
TUNE_METRIC = "ndcg@10"


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


def item_similarity(ds: Dataset, neighbors: int) -> jax.Array:
  """float32 [N + 1, N] cosine similarity of the binary train user-item matrix.

  Args:
    ds: the dataset (only `train` is read).
    neighbors: kept neighbours per item (0 = all).

  Returns:
    `cosine_knn` of the train co-occurrences; row N (padding) is zero.
  """
  rows = ds.train.row_ids()
  x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, ds.train.values)),
                    shape=(ds.num_users, ds.num_items))
  x.sum_duplicates()
  x.data[:] = 1.0  # binary even with repeats
  cooc = (x.T @ x).toarray().astype(np.float32)  # [N, N]
  counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
  return cosine_knn(jnp.asarray(cooc), jnp.asarray(counts), neighbors)


@jax.jit
def _knn_scores(sim, history):
  # history: int32 [B, L] (pad = N) -> [B, N]
  return sim[history].sum(axis=1)


def knn_scorer(ds: Dataset, neighbors: int = 100):
  sim = item_similarity(ds, neighbors)

  def score(users, history):
    del users
    return _knn_scores(sim, jnp.asarray(history))

  return score


# ---- sequential item-kNN ---------------------------------------------------


def _accumulate(sim, history, decays, start: int, stop: int, acc):
  """Adds ages start..stop-1 of every row's history to `acc`.

  Args:
    sim: float32 [N + 1, N] similarity; row N (padding) is zero.
    history: int32 [B, L] left-padded with N; column L - 1 has age 0.
    decays: float32 [D] recency decays.
    start, stop: ages to add (static, stop <= L).
    acc: float32 [D, B, N] running scores.

  Returns:
    acc + sum_{a in [start, stop)} decays**a * sim[history[:, L - 1 - a]].
  """
  length = history.shape[1]
  if stop > length:
    raise ValueError(f"seq_item_knn: n={stop} > history length {length}")

  def body(age, acc):
    item = jax.lax.dynamic_index_in_dim(history, length - 1 - age, axis=1,
                                        keepdims=False)  # [B]
    weight = decays ** age.astype(decays.dtype)  # [D]
    return acc + weight[:, None, None] * sim[item][None]  # [D, B, N]

  return jax.lax.fori_loop(start, stop, body, acc)


@functools.partial(jax.jit, static_argnames=("n",))
def seq_knn_scores(sim, history, decay, n: int):
  """float32 [B, N]: sum_{a < n} decay**a * sim[h_a], h_0 the last item.

  Args:
    sim: float32 [N + 1, N] similarity; row N (padding) is zero.
    history: int32 [B, L] left-padded with N (L >= n).
    decay: float32 scalar recency decay.
    n: history items used (the most recent ones).
  """
  b, num_items = history.shape[0], sim.shape[1]
  decays = jnp.reshape(decay, (1,)).astype(jnp.float32)  # [D=1]
  acc = jnp.zeros((1, b, num_items), jnp.float32)
  return _accumulate(sim, history, decays, 0, n, acc)[0]


@functools.partial(jax.jit, static_argnames=("lengths",))
def _grid_ranks(sim, history, targets, exclude_mask, decays, lengths):
  """Ranks of the targets under every (n, decay) of the grid, in one pass.

  The scores of n' > n extend those of n, so one sweep over the ages serves
  every n; each target is ranked with the shared (pessimistic) rule.

  Args:
    sim: float32 [N + 1, N] similarity; row N (padding) is zero.
    history: int32 [B, L] left-padded with N, L >= max(lengths).
    targets: int32 [B, T] targets, -1 for padding.
    exclude_mask: bool [B, N], True for items removed from the ranking.
    decays: float32 [D] recency decays.
    lengths: ascending history lengths n (static).

  Returns:
    int32 [len(lengths), D, B, T] ranks.
  """
  b, num_items = history.shape[0], sim.shape[1]
  acc = jnp.zeros((decays.shape[0], b, num_items), jnp.float32)  # [D, B, N]
  out, start = [], 0
  for n in lengths:
    acc = _accumulate(sim, history, decays, start, n, acc)
    start = n
    # The shared ranking (pessimistic ties, masks) of metrics.evaluate_scorer.
    out.append(jnp.stack([metrics._ranks_full(acc[d], targets, exclude_mask)
                          for d in range(decays.shape[0])]))  # [D, B, T]
  return jnp.stack(out)


def tune_seq_knn(sim, examples: EvalExamples, num_items: int,
                 lengths, decays, batch_size: int = 256) -> list[dict]:
  """Validation `TUNE_METRIC` of every (n, decay) of the grid.

  Args:
    sim: float32 [N + 1, N] similarity (`item_similarity`).
    examples: the rows to tune on (the validation split).
    num_items: catalogue size N.
    lengths: history lengths n to try.
    decays: recency decays to try.
    batch_size: rows per call.

  Returns:
    One {"n", "decay", "valid/<TUNE_METRIC>"} record per grid point, n
    ascending, then decays in the given order.
  """
  lengths = tuple(sorted(set(int(n) for n in lengths)))
  decay_values = [float(d) for d in decays]  # as configured, for the record
  decays = np.asarray(decay_values, np.float32)
  rows = len(examples)
  t_max = int(examples.targets.lengths().max()) if rows else 1
  targets = examples.targets.padded(t_max, -1, left=False)  # [E, T]
  history = examples.history.padded(lengths[-1], num_items, left=True)
  ranks = np.empty((len(lengths), len(decays), rows, t_max), np.int32)
  for start in range(0, rows, batch_size):
    stop = min(start + batch_size, rows)
    fill = np.concatenate([np.arange(start, stop),
                           np.full(batch_size - (stop - start), stop - 1)])
    mask = np.zeros((batch_size, num_items), dtype=bool)  # [B, N]
    if examples.exclude is not None:
      ex = examples.exclude.take(fill)
      mask[ex.row_ids(), ex.values] = True
    r = _grid_ranks(sim, jnp.asarray(history[fill]), jnp.asarray(targets[fill]),
                    jnp.asarray(mask), jnp.asarray(decays), lengths)
    ranks[:, :, start:stop] = np.asarray(r)[:, :, : stop - start]
  key = f"valid/{TUNE_METRIC}"
  grid = []
  for i, n in enumerate(lengths):
    for j, d in enumerate(decay_values):
      m = metrics.metrics_from_ranks(ranks[i, j], examples.targets.lengths(),
                                     prefix="valid/")
      grid.append({"n": n, "decay": d, key: m[key]})
  return grid


def seq_knn_scorer(sim, n: int, decay: float):
  """score_fn (metrics.ranks_from_scores) of seq_item_knn at (n, decay)."""
  decay = jnp.float32(decay)

  def score(users, history):
    del users
    return seq_knn_scores(sim, jnp.asarray(history), decay, n)

  return score


def seq_knn(ds: Dataset, cfg) -> dict:
  """Tunes (n, decay) on valid, then evaluates that pair; the metrics dict.

  Args:
    ds: the dataset.
    cfg: config.baselines.seq_knn (lengths, decays, neighbors, fallback).

  Returns:
    `evaluate`'s metrics of the chosen pair plus "seq_knn": {"n", "decay",
    "tuned_on", "grid"}.
  """
  sim = item_similarity(ds, cfg.neighbors)
  key = f"valid/{TUNE_METRIC}"
  if ds.valid is not None and len(ds.valid):
    grid = tune_seq_knn(sim, ds.valid, ds.num_items, cfg.lengths, cfg.decays)
    best = max(grid, key=lambda g: g[key])  # ties: the first (smallest n)
    n, decay, tuned_on = best["n"], best["decay"], "valid"
  else:
    logging.warning("seq_item_knn: no validation split; using fallback %s",
                    tuple(cfg.fallback))
    grid, tuned_on = [], None
    n, decay = int(cfg.fallback[0]), float(cfg.fallback[1])
  out = evaluate(seq_knn_scorer(sim, n, decay), ds, n)
  out["seq_knn"] = {"n": n, "decay": decay, "tuned_on": tuned_on,
                    "neighbors": cfg.neighbors, "grid": grid}
  return out


def evaluate(score_fn, ds: Dataset, max_history: int) -> dict[str, float]:
  out = {}
  for prefix, examples in (("valid/", ds.valid), ("test/", ds.test)):
    if examples is None:
      continue
    out.update(metrics.evaluate_scorer(score_fn, examples, ds.num_items,
                                       prefix=prefix, max_history=max_history))
  out["num_eval_users"] = int(len(np.unique(ds.test.users)))
  out["num_eval_rows"] = len(ds.test)
  return out


def run(config, workdir) -> dict:
  """Evaluates config.baselines.models; writes <model>/metrics.json."""
  workdir = pathlib.Path(workdir)
  ds = Dataset.load(workdir / "dataset")
  results = {}
  for name in config.baselines.models:
    t0 = time.perf_counter()
    if name == "most_popular":
      m = evaluate(popularity_scorer(ds), ds, config.baselines.max_history)
    elif name == "item_knn":
      m = evaluate(knn_scorer(ds, config.baselines.knn_neighbors), ds,
                   config.baselines.max_history)
    elif name == "seq_item_knn":
      m = seq_knn(ds, config.baselines.seq_knn)
      logging.info("seq_item_knn: chose n=%d decay=%g (%s)", m["seq_knn"]["n"],
                   m["seq_knn"]["decay"], m["seq_knn"]["tuned_on"])
    else:
      raise ValueError(
          f"config field 'baselines.models': unknown model {name!r}")
    m["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(workdir / name / "metrics.json", m)
    logging.info("%s: test hr@10 %.4f ndcg@10 %.4f (%.1fs)", name,
                 m["test/hr@10"], m["test/ndcg@10"], m["seconds"])
    results[name] = m
  return results
