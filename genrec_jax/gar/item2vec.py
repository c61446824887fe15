"""The item2vec stage: WORKDIR/lastfm/corpus.npz -> WORKDIR/embeddings/.

python -m binaries.item2vec --config=configs/item2vec.py --workdir=DIR

Trains word2vec (`semantic_ids/word2vec.py`) on the item2vec sentences and
checks the vectors on the held-out next items (the last item of some users'
listen-count-ordered lists, queried with the item before it: cosine nearest
neighbours, the query excluded). Writes, atomically (a temp folder renamed
onto `embeddings/`), in the format of embed_items so build_sids reads it:

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


def run(config, workdir) -> dict[str, Any]:
  """Trains the vectors, writes WORKDIR/embeddings/; returns the metrics."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  corpus = lastfm.load_corpus(workdir)
  w2v = config.word2vec
  logging.info("item2vec: %s, dim %d, window %d, %d epochs on %d sentences "
               "(%d tokens, %d items)", w2v.model, w2v.dim, w2v.window,
               w2v.epochs, len(corpus.sentences), len(corpus.sentences.values),
               corpus.num_items)
  vectors, _, info = word2vec.train(corpus.sentences, corpus.num_items, w2v,
                                    log_every=config.log_every)
  metrics = quality(vectors, corpus.heldout, config.ks)
  metrics.update({k: info[k] for k in ("pairs", "pairs_per_second",
                                       "train_seconds", "items_trained",
                                       "mean_loss_per_epoch")})
  meta = {
      "encoder": "item2vec",
      "model": f"word2vec-{w2v.model}",
      "dim": int(w2v.dim),
      "pooling": None,
      "normalize": False,
      "num_items": int(corpus.num_items),
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
