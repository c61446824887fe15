"""Generate-and-rank baselines on held-out queries (gar_baselines stage).

python -m binaries.gar_baselines --config=configs/gar_baselines.py --workdir=runs/lastfm

Each ranks the whole catalogue for a query and writes `<name>/metrics.json`
(valid/ and test/ Recall@K, NDCG@K, MRR over queries; queries.KS):

  popularity         items by the number of training queries that hold them
                     (ties: listeners).
  text_similarity    cosine of the MiniLM vectors of the query text and of
                     the item name (what a text-only retriever without
                     training finds).
  text_knn           the items of the `knn_texts` training texts nearest
                     to the query (MiniLM cosine): an item scores the sum
                     over those texts of cosine / log2(2 + its rank in the
                     text's list) -- what the generator must learn to beat,
                     without generating.
  item2vec_centroid  cosine to the centroid of the item2vec vectors of the
                     query's seed items: the user's `seed_items` most played
                     artists (a (user, tag) query); a tag query has no seed
                     items and falls back to popularity. It uses
                     information the text models do not have (the user's
                     listening history); `*/seeded_queries` counts where it
                     applies.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from absl import logging
import numpy as np

from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.gar import lastfm
from genrec_jax.gar import queries as queries_lib
from genrec_jax.semantic_ids import build as sid_build
from genrec_jax.semantic_ids import encoders

MODELS = ("popularity", "text_similarity", "text_knn", "item2vec_centroid")
EVAL_SPLITS = ("valid", "test")


def top_by_cosine(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
  """int [Q, k]: items by cosine to each query vector (ties: lower id)."""
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True),
                                  1e-12)
  sims = norm(queries) @ norm(items).T  # [Q, N]
  return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def text_knn(query_vecs: np.ndarray, train_vecs: np.ndarray,
             train_items: list[list[int]], num_items: int, k: int,
             depth: int) -> np.ndarray:
  """int [Q, depth]: items by rank-discounted votes of the k nearest
  training texts (cosine of unit vectors; ties: lower id)."""
  sims = query_vecs @ train_vecs.T  # [Q, T]
  top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  out = np.zeros((len(query_vecs), min(depth, num_items)), np.int64)
  for q in range(len(query_vecs)):
    score = np.zeros(num_items)
    for t in top[q]:
      its = np.asarray(train_items[t], np.int64)
      np.add.at(score, its, sims[q, t] / np.log2(np.arange(len(its)) + 2.0))
    out[q] = np.argsort(-score, kind="stable")[:out.shape[1]]
  return out


def centroid_seeds(split: queries_lib.QuerySplit,
                   user_lists: dict[str, np.ndarray], n: int
                   ) -> list[np.ndarray | None]:
  """Per query, the user's n most played items (None for a tag query)."""
  out = []
  for u in split.users:
    items = user_lists.get(str(u)) if u >= 0 else None
    out.append(None if items is None or not len(items) else items[:n])
  return out


def run(config, workdir) -> dict[str, Any]:
  """Evaluates the baselines; writes <name>/metrics.json for each."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  unknown = set(config.models) - set(MODELS)
  if unknown:
    raise ValueError(f"config field 'models': unknown {sorted(unknown)} "
                     f"(known: {list(MODELS)})")
  items = lastfm.load_items(workdir)
  splits = queries_lib.load_splits(workdir)
  listeners = np.asarray(items["listeners"])
  depth = max(queries_lib.KS)
  pop = queries_lib.popularity_order(splits, listeners)[:depth]
  out = {}
  enc = None  # the sentence encoder, loaded once when a model needs it
  for name in config.models:
    t1 = time.perf_counter()
    metrics: dict[str, Any] = {}
    if name == "popularity":
      for s in EVAL_SPLITS:
        sp = splits[s]
        metrics.update(queries_lib.evaluate(
            np.tile(pop, (len(sp.texts), 1)), sp, prefix=f"{s}/"))
    elif name == "text_similarity":
      enc = enc or encoders.make(config.encoder)
      item_vecs = enc.encode(items["names"])
      for s in EVAL_SPLITS:
        sp = splits[s]
        ranked = top_by_cosine(enc.encode(sp.texts), item_vecs, depth)
        metrics.update(queries_lib.evaluate(ranked, sp, prefix=f"{s}/"))
      metrics["encoder"] = enc.describe()
    elif name == "text_knn":
      enc = enc or encoders.make(config.encoder)
      train_vecs = enc.encode(splits["train"].texts)
      train_items = splits["train"].text_items()
      for s in EVAL_SPLITS:
        sp = splits[s]
        ranked = text_knn(enc.encode(sp.texts), train_vecs, train_items,
                          len(listeners), config.knn_texts, depth)
        metrics.update(queries_lib.evaluate(ranked, sp, prefix=f"{s}/"))
      metrics["knn_texts"] = int(config.knn_texts)
    elif name == "item2vec_centroid":
      vectors, _ = sid_build.load_embeddings(workdir, len(listeners))
      user_lists = lastfm.load_corpus(workdir).user_lists()
      for s in EVAL_SPLITS:
        sp = splits[s]
        seeds = centroid_seeds(sp, user_lists, config.seed_items)
        ranked = np.tile(pop, (len(sp), 1))
        rows = [q for q, x in enumerate(seeds) if x is not None]
        if rows:
          cent = np.stack([vectors[seeds[q]].mean(0) for q in rows])
          ranked[rows] = top_by_cosine(cent, vectors, depth)
        metrics.update(queries_lib.evaluate(ranked, sp, prefix=f"{s}/",
                                            per_text=False))
        metrics[f"{s}/seeded_queries"] = len(rows)
      metrics["seed_items"] = int(config.seed_items)
    metrics["num_test_queries"] = len(splits["test"])
    metrics["seconds"] = round(time.perf_counter() - t1, 3)
    atomic_write_json(workdir / name / "metrics.json", metrics)
    logging.info("gar_baselines: %s test recall@20 %.4f ndcg@20 %.4f (%.1fs)",
                 name, metrics["test/recall@20"], metrics["test/ndcg@20"],
                 metrics["seconds"])
    out[name] = metrics
  logging.info("gar_baselines: %.1fs", time.perf_counter() - t0)
  return out
