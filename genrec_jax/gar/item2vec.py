"""The item2vec stage: item sentences -> WORKDIR/embeddings/.

python -m binaries.item2vec --config=configs/item2vec.py --workdir=DIR
python -m binaries.item2vec --config=configs/item2vec.py:dataset --workdir=DIR

Trains word2vec (`semantic_ids/word2vec.py`) on item "sentences" and checks
the vectors on held-out next items (cosine nearest neighbours of the item
before each one, that item excluded). The sentences (`config.source`):

  lastfm   WORKDIR/lastfm/corpus.npz (prepare_lastfm): the item2vec sentences;
           held out: the last item of some users' listen-count-ordered lists.
  dataset  WORKDIR/dataset (prepare_data): every user's train sequence (what a
           model may train on); held out: each validation row's target,
           queried with the row's last history item (rows without history
           are counted in `heldout_rows_without_history`). Item vectors for
           datasets without item text (semantic IDs from co-occurrence).

Writes, atomically (a temp folder renamed onto `embeddings/`), in the format
of embed_items so build_sids reads it:

  embeddings/items.npy     float32 [items, dim], row i = item i (input vectors)
  embeddings/metrics.json  heldout/hr@K, heldout/ndcg@10, heldout/mrr,
                           num_heldout, training figures, seconds
  embeddings/meta.json     encoder "item2vec", model, dim, word2vec config,
                           seconds (written last)
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from absl import logging
import numpy as np

from genrec_jax.data.dataset import Dataset
from genrec_jax.data.dataset import Ragged
from genrec_jax.gar import lastfm
from genrec_jax.semantic_ids import embed
from genrec_jax.semantic_ids import word2vec

DONE_FILE = "embeddings/meta.json"


def quality(vectors: np.ndarray, heldout: dict[str, np.ndarray],
            ks=(1, 5, 10, 20)) -> dict[str, Any]:
  """heldout/<metric> of word2vec.neighbour_hits, plus num_heldout."""
  hits = word2vec.neighbour_hits(vectors, heldout["query"], heldout["target"],
                                 ks=tuple(ks))
  return {**{f"heldout/{k}": round(v, 5) for k, v in hits.items()},
          "num_heldout": int(len(heldout["query"]))}


def dataset_sentences(workdir) -> tuple[Ragged, dict[str, np.ndarray], int,
                                        dict[str, int]]:
  """(train sequences, held-out {query, target}, items, counts) of
  WORKDIR/dataset: the validation rows' targets after their last history
  item (the test split is never read)."""
  ds = Dataset.load(pathlib.Path(workdir) / "dataset")
  query, target, no_history = [], [], 0
  if ds.valid is not None:
    for j in range(len(ds.valid)):
      h = ds.valid.history[j]
      if len(h) == 0:
        no_history += 1
        continue
      for t in ds.valid.targets[j]:
        query.append(int(h[-1]))
        target.append(int(t))
  heldout = {"query": np.array(query, np.int32),
             "target": np.array(target, np.int32)}
  return ds.train, heldout, ds.num_items, {
      "heldout_rows_without_history": no_history}


def run(config, workdir) -> dict[str, Any]:
  """Trains the vectors, writes WORKDIR/embeddings/; returns the metrics."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  if config.source == "lastfm":
    corpus = lastfm.load_corpus(workdir)
    sentences, heldout, num_items = (corpus.sentences, corpus.heldout,
                                     corpus.num_items)
    counts = {}
  elif config.source == "dataset":
    sentences, heldout, num_items, counts = dataset_sentences(workdir)
  else:
    raise ValueError(f"config field 'source': 'lastfm' or 'dataset', got "
                     f"{config.source!r}")
  w2v = config.word2vec
  logging.info("item2vec: %s, dim %d, window %d, %d epochs on %d %s "
               "sentences (%d tokens, %d items)", w2v.model, w2v.dim,
               w2v.window, w2v.epochs, len(sentences), config.source,
               len(sentences.values), num_items)
  vectors, _, info = word2vec.train(sentences, num_items, w2v,
                                    log_every=config.log_every)
  metrics = quality(vectors, heldout, config.ks)
  metrics.update(counts)
  # Items no sentence trains keep their random initial vectors.
  metrics["items_untrained"] = int(num_items - info["items_trained"])
  metrics.update({k: info[k] for k in ("pairs", "pairs_per_second",
                                       "train_seconds", "items_trained",
                                       "mean_loss_per_epoch")})
  meta = {
      "encoder": "item2vec",
      "model": f"word2vec-{w2v.model}",
      "dim": int(w2v.dim),
      "pooling": None,
      "normalize": False,
      "num_items": int(num_items),
      "source": config.source,
      "word2vec": w2v.to_dict(),
      "train": info,
      "warnings": {},
  }
  metrics["seconds"] = round(time.perf_counter() - t0, 3)
  meta["seconds"] = metrics["seconds"]
  out = embed.write_embeddings(workdir, vectors, meta,
                               extra={"metrics.json": metrics})
  logging.info("item2vec: %d x %d vectors -> %s; held-out next item HR@10 "
               "%.4f (%d queries), %.0f pairs/s, %.1fs", vectors.shape[0],
               vectors.shape[1], out / "items.npy",
               metrics.get("heldout/hr@10", float("nan")),
               metrics["num_heldout"], info["pairs_per_second"],
               metrics["seconds"])
  return metrics
