"""The embed_items stage: WORKDIR/dataset item text -> WORKDIR/embeddings/.

python -m binaries.embed_items --config=configs/embed.py --workdir=DIR

Writes, atomically (temp folder renamed onto `embeddings/`):

  embeddings/items.npy   float32 [items, dim], row i = internal item i
  embeddings/meta.json   encoder, model, pooling, normalize, dim, empty_texts,
                         warnings, seconds (written last)
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time
from typing import Any

from absl import logging
import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, replace_dir
from genrec_jax.semantic_ids import encoders

DONE_FILE = "embeddings/meta.json"


def item_texts(dataset: Dataset, config) -> tuple[list[str], int]:
  """The texts to encode and how many items had an empty text.

  Raises:
    DataError: more than config.max_empty_fraction of the texts are empty.
  """
  texts = dataset.item_texts()
  empty = [i for i, t in enumerate(texts) if not t.strip()]
  n = max(len(texts), 1)
  if len(empty) / n > config.max_empty_fraction:
    raise DataError(
        f"dataset/items.json: {len(empty)} of {len(texts)} items have an empty "
        f"text (template {dataset.text_template!r}; first items "
        f"{empty[:5]}); more than max_empty_fraction="
        f"{config.max_empty_fraction}")
  if empty:
    logging.warning("%d of %d items have an empty text; encoding %r instead",
                    len(empty), len(texts), config.empty_text)
    for i in empty:
      texts[i] = config.empty_text
  return texts, len(empty)


def write_embeddings(workdir: pathlib.Path, vectors: np.ndarray,
                     meta: dict[str, Any],
                     extra: dict[str, dict[str, Any]] | None = None
                     ) -> pathlib.Path:
  """Writes WORKDIR/embeddings/ (items.npy float32, meta.json, and
  `extra` {file name: JSON object}) atomically; returns the folder."""
  out = workdir / "embeddings"
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="embeddings.tmp", dir=workdir))
  try:
    np.save(tmp / "items.npy", np.asarray(vectors, np.float32))
    for name, obj in {**(extra or {}), "meta.json": meta}.items():
      with open(tmp / name, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def run(config, workdir: str | pathlib.Path) -> dict:
  """Encodes every item's text; returns the meta written to meta.json."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  dataset = Dataset.load(workdir / "dataset")
  texts, n_empty = item_texts(dataset, config)
  encoder = encoders.make(config.encoder)
  t1 = time.perf_counter()
  x = encoder.encode(texts)  # [N, D]
  t_encode = time.perf_counter() - t1
  if x.shape != (len(texts), encoder.dim):
    raise AssertionError(f"encoder returned {x.shape}, expected {(len(texts), encoder.dim)}")
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if len(bad):
    raise DataError(f"encoder produced NaN/inf for {len(bad)} items "
                    f"(first {bad[:5].tolist()})")
  meta = {
      **encoder.describe(),
      "num_items": int(x.shape[0]),
      "text_template": dataset.text_template,
      "empty_texts": n_empty,
      "warnings": {"empty_texts": n_empty} if n_empty else {},
      "encode_seconds": round(t_encode, 3),
      "items_per_second": round(len(texts) / max(t_encode, 1e-9), 2),
  }
  meta["seconds"] = round(time.perf_counter() - t0, 3)
  out = write_embeddings(workdir, x, meta)
  logging.info("embed_items: %d items -> %s (%.1f items/s, %d empty texts)",
               x.shape[0], out / "items.npy", meta["items_per_second"], n_empty)
  return meta
