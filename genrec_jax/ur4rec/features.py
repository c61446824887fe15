"""The features stage: per-item feature matrices for UR4Rec's modalities.

python -m binaries.build_features --config=configs/ur4rec_features.py \
    --workdir=DIR

UR4Rec's multimodal extension (METHODS §8) reads item features from one
float32 [num_items, D] `.npy` file named by a config path. No CLIP weights or
posters exist offline, so this stage writes the stand-in modalities we have:

  features/genre.npy         float32 [I, G] genre multi-hot, parsed from the
                             dataset's `genres` text field (ML-100K: u.item's
                             genre flags, or recbole's class:token_seq; both
                             loaded by data/sources.py as space-separated
                             names); vocabulary sorted, in meta.json
  features/lightgcn.npy      float32 [I, D] LightGCN item vectors, copied
                             from lightgcn/item_emb.npy (train_lightgcn; row
                             i = internal item i)
  features/title_minilm.npy  float32 [I, 384] MiniLM sentence vectors:
                             embeddings/items.npy (embed_items; its texts come
                             from the dataset's text template, recorded) when
                             present and `title.reuse_embeddings`, else the
                             titles encoded here (semantic_ids/encoders)
  features/meta.json         per modality: file, shape, source, how it was
                             made; or skipped + the reason (written last: the
                             done-marker)

Row i of every file is dataset item i (internal id, `dataset/items.json`
order). The folder is built in a temporary sibling and renamed into place.
A modality whose source is missing (no lightgcn/, no genres field) is
skipped with a warning and recorded as skipped in meta.json; a source that
exists but is wrong (row count, NaN) is an error.

Plugging in CLIP features
-------------------------
Any float32 [num_items, D] `.npy` whose row i describes dataset item i can
be used: point the training config's features path at it (`load_features`
checks rows, finiteness and shape, naming the file). To make one from CLIP
image embeddings of posters:

  1. read `dataset/items.json`: `item_ids[i]` is the raw id of internal item
     i (ML-100K: the movie id of u.item);
  2. fetch item i's poster by that raw id, encode it with a CLIP image
     encoder (e.g. ViT-B/32, 512-d) and L2-normalise it;
  3. stack the vectors in internal-id order (a zero row, or the mean of the
     others, for an item without a poster; count them) into an array of
     shape [len(item_ids), 512], cast to float32 and `np.save` it, e.g. as
     `features/clip.npy` next to these files.

Never key the rows by raw id order or by the poster files' order: only the
internal id order lines up with the dataset's item ids.
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

# The stage's folder and done-marker.
OUT_DIR = "features"
DONE_FILE = "features/meta.json"
# The modalities this stage knows, in the order they are built.
MODALITIES = ("genre", "lightgcn", "title_minilm")


def load_features(path: str | pathlib.Path, num_items: int) -> np.ndarray:
  """float32 [num_items, D] features from a `.npy` file, checked.

  Raises:
    DataError (naming the file): missing or unreadable, not 2-d, a row count
      other than num_items, a non-numeric dtype, or a NaN/inf entry (the
      first bad row is named).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: missing (item features, a [num_items, D] "
                    ".npy file)")
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"{path}: unreadable as .npy ({e})") from None
  if not isinstance(x, np.ndarray):
    raise DataError(f"{path}: holds {type(x).__name__}, not one array")
  if x.ndim != 2:
    raise DataError(f"{path}: a {x.ndim}-d array of shape {x.shape}, "
                    f"expected 2-d [num_items={num_items}, D]")
  if x.shape[0] != num_items:
    raise DataError(f"{path}: {x.shape[0]} rows, the dataset has "
                    f"{num_items} items (row i must be item i)")
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise DataError(f"{path}: dtype {x.dtype} is not numeric")
  x = x.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if len(bad):
    raise DataError(f"{path}: row {bad[0]} (item {bad[0]}) holds NaN/inf "
                    f"({len(bad)} bad rows)")
  return x


class Skipped(Exception):
  """A modality's source is absent: skip it, with this reason."""


def genre_multi_hot(dataset: Dataset, config) -> tuple[np.ndarray, dict]:
  """(float32 [I, G] multi-hot, meta) from the genres text field."""
  field = config.field
  if field not in dataset.item_fields:
    raise Skipped(f"dataset/items.json has no {field!r} field (fields: "
                  f"{sorted(dataset.item_fields)})")
  sep = config.get("separator") or None  # None: any whitespace
  per_item = [[g for g in (s.split(sep) if s else []) if g.strip()]
              for s in dataset.item_fields[field]]  # [I] lists of names
  per_item = [[g.strip() for g in gs] for gs in per_item]
  vocab = sorted({g for gs in per_item for g in gs})
  if not vocab:
    raise Skipped(f"dataset/items.json field {field!r} is empty for every "
                  "item")
  index = {g: j for j, g in enumerate(vocab)}
  x = np.zeros((dataset.num_items, len(vocab)), np.float32)  # [I, G]
  for i, gs in enumerate(per_item):
    x[i, [index[g] for g in gs]] = 1.0
  no_genre = int((x.sum(1) == 0).sum())
  return x, {
      "source": f"dataset/items.json field {field!r}",
      "how": ("multi-hot of the field's "
              f"{'whitespace' if sep is None else repr(sep)}-separated "
              "names; columns = vocabulary (sorted)"),
      "vocabulary": vocab,
      "items_without_genre": no_genre,
  }


def lightgcn_vectors(workdir: pathlib.Path, num_items: int,
                     config) -> tuple[np.ndarray, dict]:
  """(float32 [I, D] LightGCN item vectors, meta) copied in row order."""
  path = workdir / config.path
  if not path.exists():
    raise Skipped(f"{config.path} not found (run train_lightgcn first)")
  x = load_features(path, num_items)
  meta = {"source": str(config.path),
          "how": "copied: LightGCN final layer-averaged item embeddings, "
                 "row i = internal item i"}
  spec_path = path.parent / "model.json"
  if spec_path.exists():
    spec = json.loads(spec_path.read_text())
    if int(spec.get("num_items", num_items)) != num_items:
      raise DataError(f"{spec_path}: a model of {spec['num_items']} items, "
                      f"the dataset has {num_items}")
    meta["model_config"] = spec.get("model_config", {})
  return x, meta


def title_vectors(dataset: Dataset, workdir: pathlib.Path,
                  config) -> tuple[np.ndarray, dict]:
  """(float32 [I, D] MiniLM vectors, meta): embed_items' output or titles."""
  path = workdir / config.embeddings
  if config.reuse_embeddings and path.exists():
    x = load_features(path, dataset.num_items)
    meta_path = path.parent / "meta.json"
    emb_meta = (json.loads(meta_path.read_text())
                if meta_path.exists() else {})
    template = emb_meta.get("text_template", "unknown")
    return x, {
        "source": str(config.embeddings),
        "how": (f"copied from embed_items (encoder "
                f"{emb_meta.get('encoder', 'unknown')}); its texts are the "
                f"dataset's template {template!r}"),
        "text_template": template,
        "model": emb_meta.get("model"),
        "normalize": emb_meta.get("normalize"),
    }
  field = config.field
  titles = dataset.item_fields.get(field)
  if titles is None:
    raise Skipped(f"no {config.embeddings} to reuse and dataset/items.json "
                  f"has no {field!r} field")
  texts = [t if t.strip() else config.empty_text for t in titles]
  n_empty = sum(1 for t in titles if not t.strip())
  encoder = encoders.make(config.encoder)
  t0 = time.perf_counter()
  x = np.asarray(encoder.encode(texts), np.float32)  # [I, D]
  if x.shape != (dataset.num_items, encoder.dim):
    raise AssertionError(f"encoder returned {x.shape}, expected "
                         f"{(dataset.num_items, encoder.dim)}")
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if len(bad):
    raise DataError(f"encoder produced NaN/inf for {len(bad)} items "
                    f"(first {bad[:5].tolist()})")
  describe = encoder.describe()
  why = (f"no {config.embeddings}" if config.reuse_embeddings
         else "title.reuse_embeddings is off")
  return x, {
      "source": f"dataset/items.json field {field!r}",
      "how": f"encoded here ({why}): the {field!r} field only",
      "encoder": describe,
      "empty_texts": n_empty,
      "encode_seconds": round(time.perf_counter() - t0, 3),
  }


def run(config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Builds WORKDIR/features/; returns the meta written to meta.json."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  dataset = Dataset.load(workdir / "dataset")
  unknown = [m for m in config.modalities if m not in MODALITIES]
  if unknown:
    raise ValueError(f"config.modalities: {unknown} not in {MODALITIES}")
  builders = {
      "genre": lambda: genre_multi_hot(dataset, config.genre),
      "lightgcn": lambda: lightgcn_vectors(workdir, dataset.num_items,
                                           config.lightgcn),
      "title_minilm": lambda: title_vectors(dataset, workdir, config.title),
  }
  arrays, modalities = {}, {}
  for name in config.modalities:
    try:
      x, meta = builders[name]()
    except Skipped as e:
      logging.warning("features: modality %r skipped: %s", name, e)
      modalities[name] = {"skipped": True, "reason": str(e)}
      continue
    arrays[name] = x
    modalities[name] = {"file": f"{name}.npy", "shape": list(x.shape),
                        "dtype": "float32", **meta}
    logging.info("features: %s %s from %s", name, x.shape, meta["source"])
  if not arrays:
    raise DataError(f"{workdir}: no feature modality could be built: "
                    + "; ".join(f"{k}: {v['reason']}"
                                for k, v in modalities.items()))
  meta = {"num_items": dataset.num_items, "dataset": dataset.name,
          "modalities": modalities,
          "seconds": round(time.perf_counter() - t0, 3)}
  _write(workdir, arrays, meta)
  return meta


def _write(workdir: pathlib.Path, arrays: dict[str, np.ndarray],
           meta: dict[str, Any]) -> None:
  """features/ in a temp sibling, meta.json last, renamed into place."""
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=OUT_DIR + ".tmp", dir=workdir))
  try:
    for name, x in arrays.items():
      np.save(tmp / f"{name}.npy", np.asarray(x, np.float32))
    with open(tmp / "meta.json", "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=1, ensure_ascii=False)
    replace_dir(tmp, workdir / OUT_DIR)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
