"""The dataset container shared by every stage.

A `Dataset` holds internal integer ids only: users are 0..num_users-1 and items
0..num_items-1 (0 is a real item; padding is done by the pipelines, never
here). Raw ids and item text live in `items` / `user_ids`. A processed dataset
is written to `WORKDIR/dataset/` by `save` and read back by `load`:

  dataset/arrays.npz   the ragged arrays (CSR offsets + values) and splits
  dataset/items.json   raw item ids and text fields, one list per field
  dataset/meta.json    name, sizes, split name, text template, user raw ids
  dataset/stats.json   users, items, interactions, items_with_text, filtered
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import string
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np


class DataError(ValueError):
  """Bad input data: the message names the file, line or field."""


@dataclasses.dataclass(frozen=True)
class Ragged:
  """A list of int32 arrays in CSR form: row i is values[offsets[i]:offsets[i+1]]."""

  offsets: np.ndarray  # int64 [n + 1]
  values: np.ndarray  # int32 [nnz]

  @classmethod
  def from_lists(cls, rows: Iterable[Sequence[int]]) -> Ragged:
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = (np.concatenate(rows) if rows else np.zeros(0)).astype(np.int32)
    return cls(offsets, values)

  @classmethod
  def from_lengths(cls, lengths: np.ndarray, values: np.ndarray) -> Ragged:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return cls(offsets, np.asarray(values, dtype=np.int32))

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> np.ndarray:
    return self.values[self.offsets[i] : self.offsets[i + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def row_ids(self) -> np.ndarray:
    """int32 [nnz]: the row each value belongs to."""
    return np.repeat(np.arange(len(self), dtype=np.int32), self.lengths())

  def tolist(self) -> list[list[int]]:
    return [self[i].tolist() for i in range(len(self))]

  def take(self, rows: np.ndarray) -> Ragged:
    """The rows `rows`, in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = self.lengths()[rows]
    starts = self.offsets[rows]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                    lengths) + np.arange(lengths.sum())
    return Ragged.from_lengths(lengths, self.values[idx])

  def padded(self, length: int, pad: int, left: bool = True) -> np.ndarray:
    """int32 [n, length]: the last `length` values of each row, padded."""
    out = np.full((len(self), length), pad, dtype=np.int32)
    for i in range(len(self)):
      row = self[i][-length:]
      if left:
        out[i, length - len(row) :] = row
      else:
        out[i, : len(row)] = row
    return out


@dataclasses.dataclass
class EvalExamples:
  """Evaluation rows: rank `targets` given `history` (time-ordered).

  One row per evaluated (user, time) point. `targets` usually has one item per
  row (leave-one-out, sliding window); LightGCN-style splits have several.
  `exclude` lists the items masked at ranking time (never a target).
  `candidates`, when set, restricts ranking to int32 [rows, C] items (sampled
  protocol; column 0 is the first target).
  """

  users: np.ndarray  # int32 [E]
  history: Ragged
  targets: Ragged
  exclude: Ragged | None = None
  candidates: np.ndarray | None = None  # int32 [E, C]

  def __len__(self) -> int:
    return len(self.users)

  def _arrays(self, prefix: str) -> dict[str, np.ndarray]:
    out = {
        f"{prefix}users": self.users,
        f"{prefix}history_offsets": self.history.offsets,
        f"{prefix}history_values": self.history.values,
        f"{prefix}targets_offsets": self.targets.offsets,
        f"{prefix}targets_values": self.targets.values,
    }
    if self.exclude is not None:
      out[f"{prefix}exclude_offsets"] = self.exclude.offsets
      out[f"{prefix}exclude_values"] = self.exclude.values
    if self.candidates is not None:
      out[f"{prefix}candidates"] = self.candidates
    return out

  @classmethod
  def _from_arrays(cls, arrays, prefix: str) -> EvalExamples | None:
    if f"{prefix}users" not in arrays:
      return None

    def ragged(name):
      key = f"{prefix}{name}_offsets"
      if key not in arrays:
        return None
      return Ragged(arrays[key], arrays[f"{prefix}{name}_values"])

    return cls(
        users=arrays[f"{prefix}users"],
        history=ragged("history"),
        targets=ragged("targets"),
        exclude=ragged("exclude"),
        candidates=arrays.get(f"{prefix}candidates"),
    )


@dataclasses.dataclass
class Dataset:
  """Users, items, item text, time-ordered interactions and one split.

  Attributes:
    name: the source's name (e.g. "ml100k", "beauty").
    num_users, num_items: id ranges of the internal ids.
    item_ids: raw id of each internal item (strings).
    user_ids: raw id of each internal user (strings).
    item_fields: text field name -> one string per item ("" when unknown).
    sequences: per user, all known interactions in time order.
    timestamps: per user, aligned with `sequences`; None when unknown.
    train: per user, the interactions a model may train on (time order).
    valid, test: evaluation rows (valid may be None).
    split: the split's name.
    text_template: a `string.Template` over the item fields (see item_text).
    stats: what was loaded and what was filtered (written as stats.json).
  """

  name: str
  num_users: int
  num_items: int
  item_ids: list[str]
  user_ids: list[str]
  item_fields: dict[str, list[str]]
  sequences: Ragged
  timestamps: Ragged | None
  train: Ragged
  valid: EvalExamples | None
  test: EvalExamples
  split: str
  text_template: str = "$title"
  stats: dict[str, Any] = dataclasses.field(default_factory=dict)

  # ---- item text --------------------------------------------------------
  def item_text(self, item: int) -> str:
    """The item's text from the template; missing fields become ""."""
    fields = {k: v[item] for k, v in self.item_fields.items()}
    text = string.Template(self.text_template).safe_substitute(fields)
    # Fields a template names but the source lacks are left as "$x": drop them.
    for name in _template_names(self.text_template):
      if name not in fields:
        text = text.replace("$" + name, "").replace("${" + name + "}", "")
    return " ".join(text.split())

  def item_texts(self) -> list[str]:
    return [self.item_text(i) for i in range(self.num_items)]

  def title(self, item: int) -> str:
    return self.item_fields.get("title", [""] * self.num_items)[item]

  @property
  def num_interactions(self) -> int:
    return int(len(self.sequences.values))

  # ---- (de)serialisation -------------------------------------------------
  def save(self, path: str | os.PathLike) -> None:
    """Writes the dataset folder atomically (temp folder, then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
    try:
      arrays = {
          "sequences_offsets": self.sequences.offsets,
          "sequences_values": self.sequences.values,
          "train_offsets": self.train.offsets,
          "train_values": self.train.values,
          **self.test._arrays("test_"),
      }
      if self.timestamps is not None:
        arrays["timestamps_offsets"] = self.timestamps.offsets
        arrays["timestamps_values"] = self.timestamps.values
      if self.valid is not None:
        arrays.update(self.valid._arrays("valid_"))
      np.savez(tmp / "arrays.npz", **arrays)
      _write_json(tmp / "items.json", {"item_ids": self.item_ids, "fields": self.item_fields})
      _write_json(tmp / "meta.json", {
          "name": self.name,
          "num_users": self.num_users,
          "num_items": self.num_items,
          "split": self.split,
          "text_template": self.text_template,
          "user_ids": self.user_ids,
      })
      _write_json(tmp / "stats.json", self.stats)
      replace_dir(tmp, path)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise

  @classmethod
  def load(cls, path: str | os.PathLike) -> Dataset:
    path = pathlib.Path(path)
    for f in ("arrays.npz", "items.json", "meta.json"):
      if not (path / f).exists():
        raise DataError(f"{path / f}: missing; run binaries.prepare_data first")
    with np.load(path / "arrays.npz") as z:
      arrays = {k: z[k] for k in z.files}
    items = json.loads((path / "items.json").read_text())
    meta = json.loads((path / "meta.json").read_text())
    stats_path = path / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    ts = None
    if "timestamps_offsets" in arrays:
      ts = Ragged(arrays["timestamps_offsets"], arrays["timestamps_values"])
    return cls(
        name=meta["name"],
        num_users=meta["num_users"],
        num_items=meta["num_items"],
        item_ids=items["item_ids"],
        user_ids=meta["user_ids"],
        item_fields=items["fields"],
        sequences=Ragged(arrays["sequences_offsets"], arrays["sequences_values"]),
        timestamps=ts,
        train=Ragged(arrays["train_offsets"], arrays["train_values"]),
        valid=EvalExamples._from_arrays(arrays, "valid_"),
        test=EvalExamples._from_arrays(arrays, "test_"),
        split=meta["split"],
        text_template=meta["text_template"],
        stats=stats,
    )


def _template_names(template: str) -> list[str]:
  return [m.group("named") or m.group("braced")
          for m in string.Template.pattern.finditer(template)
          if m.group("named") or m.group("braced")]


def _write_json(path: pathlib.Path, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False)


def replace_dir(tmp: pathlib.Path, final: pathlib.Path) -> None:
  """Moves a finished temp folder onto `final`, replacing what was there."""
  final = pathlib.Path(final)
  old = None
  if final.exists():
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
  os.rename(tmp, final)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON to a temp name in the same folder, then renames it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  """np.save to a temp name in the same folder, then rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npy", dir=path.parent)
  os.close(fd)
  try:
    np.save(tmp, array)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
