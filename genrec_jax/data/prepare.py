"""The prepare_data stage: source files -> WORKDIR/dataset/ (+ stats.json)."""

from __future__ import annotations

import pathlib
import time

from absl import logging
import numpy as np

from genrec_jax.data import sources, splits
from genrec_jax.data.dataset import Dataset, Ragged

DONE_FILE = "dataset/stats.json"


def _drop_repeats(raw: sources.RawData) -> int:
  """Collapses consecutive repeats of the same item (counted, not silent)."""
  dropped = 0
  for u, s in enumerate(raw.sequences):
    if len(s) < 2:
      continue
    keep = np.concatenate([[True], s[1:] != s[:-1]])
    dropped += int((~keep).sum())
    raw.sequences[u] = s[keep]
    if raw.timestamps is not None:
      raw.timestamps[u] = raw.timestamps[u][keep]
  return dropped


def build(config) -> Dataset:
  """Loads and splits the source named by config.data; returns the Dataset."""
  data = config.data
  t0 = time.perf_counter()
  raw = sources.load_source(data)
  t_load = time.perf_counter() - t0
  filtered = dict(raw.filtered)
  if data.get("collapse_repeats", False):
    filtered["consecutive_repeats"] = _drop_repeats(raw)
  t1 = time.perf_counter()
  train, valid, test = splits.split(raw, data)
  t_split = time.perf_counter() - t1
  n_items = len(raw.item_ids)
  titles = raw.item_fields.get("title", [""] * n_items)
  with_text = sum(1 for t in titles if t.strip())
  if any(titles):
    filtered.setdefault("items_without_title", n_items - with_text)
  train_only = len(raw.sequences) - len(test.users) if data.split in (
      "leave_one_out", "sampled_candidates") else 0
  if train_only:
    filtered["users_train_only_too_short"] = train_only
  seqs = Ragged.from_lists(raw.sequences)
  ts = Ragged.from_lists(raw.timestamps) if raw.timestamps is not None else None
  stats = {
      "name": raw.name,
      "source": data.source,
      "split": data.split,
      "users": len(raw.user_ids),
      "items": n_items,
      "interactions": int(len(seqs.values)),
      "items_with_text": with_text,
      "filtered": filtered,
      "train_interactions": int(len(train.values)),
      "valid_rows": 0 if valid is None else len(valid),
      "test_rows": len(test),
      "mean_sequence_length": float(seqs.lengths().mean()) if len(seqs) else 0.0,
      "load_seconds": round(t_load, 3),
      "split_seconds": round(t_split, 3),
      **raw.info,
  }
  return Dataset(
      name=raw.name, num_users=len(raw.user_ids), num_items=n_items,
      item_ids=raw.item_ids, user_ids=raw.user_ids, item_fields=raw.item_fields,
      sequences=seqs, timestamps=ts, train=train, valid=valid, test=test,
      split=data.split, text_template=data.get("text_template", "$title"), stats=stats)


def run(config, workdir: str | pathlib.Path) -> dict:
  """Writes WORKDIR/dataset/ atomically and returns its stats."""
  t0 = time.perf_counter()
  ds = build(config)
  ds.stats["seconds"] = round(time.perf_counter() - t0, 3)
  ds.save(pathlib.Path(workdir) / "dataset")
  s = ds.stats
  logging.info("dataset %s: %d users, %d items, %d interactions (%s split: %d valid / %d test rows) "
               "in %.2fs; filtered %s", s["name"], s["users"], s["items"], s["interactions"],
               s["split"], s["valid_rows"], s["test_rows"], s["seconds"], s["filtered"])
  return s
