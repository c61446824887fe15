"""One loader per dataset source format (see INTERFACES.md).

Each loader returns `RawData`: internal ids, item text fields, time-ordered
per-user sequences, and (for sources with their own split) the given split.
`SOURCES` maps a source name to its loader; `configs/data.py` picks one.
Adding a source: write `load_<name>(config) -> RawData` and register it.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import datetime
import html
import importlib.resources
import pathlib
import re
from typing import Any, Callable

import numpy as np

from genrec_jax.data import readers
from genrec_jax.data.dataset import DataError, EvalExamples, Ragged


@dataclasses.dataclass
class RawData:
  """A loaded source before splitting. Ids are internal (0-based, dense)."""

  name: str
  user_ids: list[str]
  item_ids: list[str]
  item_fields: dict[str, list[str]]
  sequences: list[np.ndarray]  # per user, int32 items in time order
  timestamps: list[np.ndarray] | None = None  # per user, int64, aligned
  # Sources with their own split: train per user + valid/test rows.
  given_train: list[np.ndarray] | None = None
  given_valid: EvalExamples | None = None
  given_test: EvalExamples | None = None
  filtered: dict[str, int] = dataclasses.field(default_factory=dict)
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


class _Ids:
  """Raw id string -> dense internal id, in order of first registration."""

  def __init__(self, raw: list[str] | None = None):
    self.raw: list[str] = []
    self.index: dict[str, int] = {}
    for r in raw or []:
      self.get(r)

  def get(self, key: str) -> int:
    i = self.index.get(key)
    if i is None:
      i = self.index[key] = len(self.raw)
      self.raw.append(key)
    return i

  def __len__(self) -> int:
    return len(self.raw)


def _sort_by_time(items: list[int], times: list[int]) -> tuple[np.ndarray, np.ndarray]:
  """Stable time order; ties broken by item id (documented in DATA.md)."""
  items = np.asarray(items, dtype=np.int32)
  times = np.asarray(times, dtype=np.int64)
  order = np.lexsort((items, times))
  return items[order], times[order]


def _clean(text: str) -> str:
  return " ".join(html.unescape(text or "").split())


# ---------------------------------------------------------------------------
# MovieLens-100K


def _recbole_ml100k_dir() -> pathlib.Path:
  try:
    root = importlib.resources.files("recbole")
  except ModuleNotFoundError:
    raise DataError("ml100k: the `recbole` package is not installed "
                    "(run `make setup`) and no --config.data.path was given") from None
  return pathlib.Path(str(root)) / "dataset_example" / "ml-100k"


def load_ml100k(config) -> RawData:
  """MovieLens-100K from GroupLens files (u.data/u.item) or recbole's copy."""
  path = pathlib.Path(config.path) if config.get("path") else _recbole_ml100k_dir()
  min_rating = float(config.get("min_rating", 0) or 0)
  if (path / "u.data").exists():
    rows = []
    for lineno, vals in readers.int_rows(path / "u.data", min_fields=4):
      rows.append(vals[:4])
    item_text = readers.read_text(path / "u.item", encoding="latin-1")
    titles, years, genres_of = {}, {}, {}
    genre_names = []
    if (path / "u.genre").exists():
      for line in readers.read_text(path / "u.genre", "latin-1").splitlines():
        if "|" in line:
          genre_names.append(line.split("|")[0])
    seen = readers.UniqueKeys(path / "u.item", "item_id")
    for lineno, line in enumerate(item_text.splitlines(), start=1):
      if not line.strip():
        continue
      f = line.split("|")
      if len(f) < 2:
        raise DataError(f"{path / 'u.item'}:{lineno}: expected |-separated "
                        "fields (item_id|title|...)")
      iid = readers.parse_int(f[0], path / "u.item", lineno, "item_id")
      seen.add(iid, lineno)
      titles[iid] = f[1]
      years[iid] = f[2][-4:] if len(f) > 2 else ""
      flags = f[5:24]
      genres_of[iid] = " ".join(g for g, x in zip(genre_names, flags) if x == "1")
  else:
    inter = path / "ml-100k.inter"
    rows = []
    text = readers.read_text(inter, encoding="latin-1")
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
      f = line.split("\t")
      if len(f) < 4:
        raise DataError(f"{inter}:{lineno}: expected 4 tab-separated fields")
      rows.append([readers.parse_int(f[0], inter, lineno, "user_id"),
                   readers.parse_int(f[1], inter, lineno, "item_id"),
                   float(f[2]), int(float(f[3]))])
    item_rows = readers.read_tsv(path / "ml-100k.item",
                                 ("item_id:token", "movie_title:token_seq"),
                                 encoding="latin-1")
    titles, years, genres_of = {}, {}, {}
    seen = readers.UniqueKeys(path / "ml-100k.item", "item_id")
    for lineno, r in enumerate(item_rows, start=2):
      iid = readers.parse_int(r["item_id:token"], path / "ml-100k.item", lineno, "item_id")
      seen.add(iid, lineno)
      year = r.get("release_year:token") or ""
      titles[iid] = r["movie_title:token_seq"] + (f" ({year})" if year else "")
      years[iid] = year
      genres_of[iid] = r.get("class:token_seq") or ""
  filtered = {}
  if min_rating:
    kept = [r for r in rows if r[2] >= min_rating]
    filtered["ratings_below_min_rating"] = len(rows) - len(kept)
    rows = kept
  if not rows:
    raise DataError(f"{path}: no interactions")
  # Items: the catalogue in id order (all items of u.item, even unrated ones).
  item_keys = sorted(set(titles) | {r[1] for r in rows})
  items = _Ids([str(i) for i in item_keys])
  users = _Ids([str(u) for u in sorted({r[0] for r in rows})])
  per_user = collections.defaultdict(lambda: ([], []))
  for u, i, _, t in rows:
    seq, ts = per_user[users.index[str(u)]]
    seq.append(items.index[str(i)])
    ts.append(int(t))
  sequences, timestamps = [], []
  for u in range(len(users)):
    s, t = _sort_by_time(*per_user[u])
    sequences.append(s)
    timestamps.append(t)
  fields = {
      "title": [titles.get(int(k), "") for k in items.raw],
      "year": [years.get(int(k), "") for k in items.raw],
      "genres": [genres_of.get(int(k), "") for k in items.raw],
  }
  return RawData("ml100k", users.raw, items.raw, fields, sequences, timestamps,
                 filtered=filtered, info={"path": str(path)})


# ---------------------------------------------------------------------------
# Sequence text + item TSV (Amazon Beauty, P5 layout)


def _items_tsv(path, items: _Ids) -> dict[str, list[str]]:
  rows = readers.read_tsv(path, ("item_id", "title"))
  extra = [c for c in rows[0].keys() if c not in ("item_id",)]
  values: dict[str, dict[int, str]] = {c: {} for c in extra}
  seen = readers.UniqueKeys(path, "item_id")
  for lineno, r in enumerate(rows, start=2):
    key = r["item_id"]
    if key is None or not key.strip():
      raise DataError(f"{path}:{lineno}: field 'item_id' is empty")
    iid = readers.parse_int(key, path, lineno, "item_id")
    seen.add(iid, lineno)
    i = items.get(str(iid))
    for c in extra:
      values[c][i] = _clean(r.get(c) or "")
  return values


def load_seq_txt(config) -> RawData:
  """`user item item ...` lines (time order) + an item TSV (item_id, title, ...)."""
  items = _Ids()
  text_fields = _items_tsv(config.items_file, items) if config.get("items_file") else {}
  n_tsv = len(items)
  users = _Ids()
  sequences = []
  seen_users = set()
  for lineno, vals in readers.int_rows(config.sequence_file, min_fields=2):
    user = str(vals[0])
    if user in seen_users:
      raise DataError(f"{config.sequence_file}:{lineno}: user {user} appears twice")
    seen_users.add(user)
    users.get(user)
    sequences.append(np.array([items.get(str(i)) for i in vals[1:]], dtype=np.int32))
  fields = {c: [v.get(i, "") for i in range(len(items))] for c, v in text_fields.items()}
  if "title" not in fields:
    fields["title"] = [""] * len(items)
  filtered = {}
  if text_fields and len(items) > n_tsv:
    filtered["items_missing_from_item_file"] = len(items) - n_tsv
  return RawData(config.get("name", "seq_txt"), users.raw, items.raw, fields, sequences,
                 filtered=filtered)


# ---------------------------------------------------------------------------
# SASRec `user item` lines


def load_sasrec_txt(config) -> RawData:
  users, items = _Ids(), _Ids()
  per_user = collections.defaultdict(list)
  for lineno, vals in readers.int_rows(config.path, min_fields=2):
    per_user[users.get(str(vals[0]))].append(items.get(str(vals[1])))
  # Keep numeric order of raw ids for readability of internal ids.
  sequences = [np.array(per_user[u], dtype=np.int32) for u in range(len(users))]
  fields = {"title": [""] * len(items)}
  if config.get("items_file"):
    tsv = _items_tsv(config.items_file, items)
    fields = {c: [v.get(i, "") for i in range(len(items))] for c, v in tsv.items()}
  return RawData(config.get("name", "sasrec_txt"), users.raw, items.raw, fields, sequences)


# ---------------------------------------------------------------------------
# LightGCN train.txt / test.txt


def _adjacency(path) -> dict[int, list[int]]:
  rows = {}
  for lineno, vals in readers.int_rows(path, min_fields=1):
    if vals[0] in rows:
      raise DataError(f"{path}:{lineno}: user {vals[0]} appears twice")
    if min(vals) < 0:
      raise DataError(f"{path}:{lineno}: negative id")
    rows[vals[0]] = vals[1:]
  return rows


def load_lightgcn_txt(config) -> RawData:
  """LightGCN split: train/test adjacency lists, 0-based ids, no text."""
  root = pathlib.Path(config.path)
  train = _adjacency(root / config.get("train_file", "train.txt"))
  test = _adjacency(root / config.get("test_file", "test.txt"))
  valid = _adjacency(root / config.valid_file) if config.get("valid_file") else {}
  n_users = max(max(train), max(test), max(valid, default=-1)) + 1
  n_items = 1 + max(max((max(v) for v in d.values() if v), default=-1)
                    for d in (train, test, valid))
  filtered = {}
  dup = 0
  train_rows, test_rows, valid_rows = [], [], []
  for u in range(n_users):
    tr = list(dict.fromkeys(train.get(u, [])))
    dup += len(train.get(u, [])) - len(tr)
    train_rows.append(np.array(tr, dtype=np.int32))
    test_rows.append(np.array(test.get(u, []), dtype=np.int32))
    valid_rows.append(np.array(valid.get(u, []), dtype=np.int32))
  if dup:
    filtered["duplicate_train_pairs"] = dup

  def examples(rows, history_rows):
    users = np.array([u for u in range(n_users) if len(rows[u])], dtype=np.int32)
    hist = Ragged.from_lists([history_rows[u] for u in users])
    return EvalExamples(users, hist, Ragged.from_lists([rows[u] for u in users]), exclude=hist)

  given_valid = examples(valid_rows, train_rows) if valid else None
  if valid:  # test ranks exclude train and valid items.
    hist = [np.concatenate([a, b]) for a, b in zip(train_rows, valid_rows)]
  else:
    hist = train_rows
  given_test = examples(test_rows, hist)
  sequences = [np.concatenate([a, b, c]) for a, b, c in zip(train_rows, valid_rows, test_rows)]
  item_ids = [str(i) for i in range(n_items)]
  if (root / "item_list.txt").exists():
    org = {}
    for lineno, line in enumerate(readers.read_text(root / "item_list.txt").splitlines()[1:], 2):
      f = line.split()
      if len(f) >= 2:
        org[int(f[1])] = f[0]
    item_ids = [org.get(i, str(i)) for i in range(n_items)]
  return RawData(config.get("name", "lightgcn_txt"), [str(u) for u in range(n_users)], item_ids,
                 {"title": [""] * n_items}, sequences, given_train=train_rows,
                 given_valid=given_valid, given_test=given_test, filtered=filtered,
                 info={"train_interactions": int(sum(len(r) for r in train_rows)),
                       "test_interactions": int(sum(len(r) for r in test_rows)),
                       "valid_interactions": int(sum(len(r) for r in valid_rows))})


# ---------------------------------------------------------------------------
# MiniOneRec processed folders


def _one(root: pathlib.Path, pattern: str) -> pathlib.Path:
  found = sorted(root.glob(pattern))
  if not found:
    raise DataError(f"{root}/{pattern}: not found")
  return found[0]


def _literal(value: str, path, lineno: int, field: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise DataError(f"{path}:{lineno}: field {field!r}: not a Python literal") from None


def load_minionerec(config) -> RawData:
  """MiniOneRec folders: index/*.item.json + valid/test CSV (train is absent).

  The train split is not shipped; each user's train sequence is rebuilt as
  the history of that user's earliest validation (else test) row, which by
  the global temporal cut precedes every valid/test target.
  """
  root = pathlib.Path(config.path)
  meta_path = _one(root / "index", "*.item.json")
  meta, seen = {}, readers.UniqueKeys(meta_path, "item id")
  for lineno, key, value in readers.json_object_items(meta_path):
    i = readers.parse_int(key, meta_path, lineno, "item id")
    seen.add(i, lineno)
    if i < 0:
      raise DataError(f"{meta_path}:{lineno}: negative item id {i}")
    if not isinstance(value, dict):
      raise DataError(f"{meta_path}:{lineno}: item {i}: expected an object "
                      f"of fields, got {type(value).__name__}")
    meta[i] = value
  if not meta:
    raise DataError(f"{meta_path}: no items")
  n_items = 1 + max(meta)
  items = [str(i) for i in range(n_items)]
  fields = {f: [""] * n_items for f in ("title", "description", "brand", "categories")}
  for i, m in meta.items():
    for f in fields:
      v = m.get(f, "") or ""
      if f == "description" and v.startswith("["):
        try:
          v = " ".join(x for x in ast.literal_eval(v) if x)
        except (ValueError, SyntaxError):
          pass
      fields[f][i] = _clean(v)
  sid_path = sorted((root / "index").glob("*.index.json"))
  users = _Ids()
  # Users are `A<n>` remapped integers: keep their numbering (A0..A<max>).
  user_keys = set()
  for split in ("valid", "test"):
    for r in readers.read_csv(_one(root / split, "*.csv"), ("user_id",)):
      user_keys.add(r["user_id"])
  if all(re.fullmatch(r"A\d+", k) for k in user_keys):
    for n in range(1 + max(int(k[1:]) for k in user_keys)):
      users.get(f"A{n}")
  splits = {}
  first_hist: dict[int, list[int]] = {}
  required = ("user_id", "history_item_id", "item_id")
  for split in ("valid", "test"):
    path = _one(root / split, "*.csv")
    rows = readers.read_csv(path, required)
    u_arr, hist, tgt = [], [], []
    for lineno, r in enumerate(rows, start=2):
      u = users.get(r["user_id"])
      h = [int(x) for x in _literal(r["history_item_id"], path, lineno, "history_item_id")]
      t = readers.parse_int(r["item_id"], path, lineno, "item_id")
      for i in h + [t]:
        if not 0 <= i < n_items:
          raise DataError(f"{path}:{lineno}: item id {i} outside 0..{n_items - 1}")
      u_arr.append(u)
      hist.append(h)
      tgt.append([t])
      if u not in first_hist:
        first_hist[u] = h
    splits[split] = EvalExamples(np.array(u_arr, dtype=np.int32), Ragged.from_lists(hist),
                                 Ragged.from_lists(tgt))
  train = [np.array(first_hist.get(u, []), dtype=np.int32) for u in range(len(users))]
  # Sequences: per user, train history then the valid/test targets in order.
  seqs = [list(t) for t in train]
  for split in ("valid", "test"):
    ex = splits[split]
    for j in range(len(ex)):
      seqs[ex.users[j]].append(int(ex.targets[j][0]))
  info = {"sid_index": str(sid_path[0]) if sid_path else None}
  return RawData(config.get("name", root.name), users.raw, items, fields,
                 [np.array(s, dtype=np.int32) for s in seqs], given_train=train,
                 given_valid=splits["valid"], given_test=splits["test"], info=info)


# ---------------------------------------------------------------------------
# Raw Amazon 2018 reviews + meta


def _month(value: str, field: str) -> int:
  try:
    y, m = value.split("-")
    return int(y) * 12 + int(m) - 1
  except ValueError:
    raise DataError(f"config field {field!r}: expected YYYY-MM, got {value!r}") from None


def load_amazon2018(config) -> RawData:
  """Amazon 2018 `*_5.json(.gz)` + `meta_*.json(.gz)`; window + k-core."""
  filtered = collections.Counter()
  start = _month(config.start_month, "start_month") if config.get("start_month") else None
  end = _month(config.end_month, "end_month") if config.get("end_month") else None
  titles, meta_fields = {}, {}
  # asin -> (first line, the fields we keep): a repeated asin whose kept
  # fields are the same is counted and dropped, any other repeat is an error.
  first: dict[str, tuple[int, tuple]] = {}
  for lineno, m in readers.json_lines(config.meta_file):
    asin = m.get("asin")
    if not asin:
      raise DataError(f"{config.meta_file}:{lineno}: field 'asin' missing")
    title = _clean(m.get("title", ""))
    desc = m.get("description", "")
    if isinstance(desc, list):
      desc = " ".join(str(d) for d in desc)
    cats = m.get("category", m.get("categories", ""))
    if isinstance(cats, list):
      cats = " ".join(str(c) for c in cats if isinstance(c, str))
    kept = {"description": _clean(desc), "brand": _clean(m.get("brand", "")),
            "categories": _clean(cats)}
    record = (title, *kept.values())
    if asin in first:
      line0, record0 = first[asin]
      if record0 != record:
        raise DataError(f"{config.meta_file}:{lineno}: asin {asin} appears "
                        f"twice with different fields (first on line {line0})")
      filtered["meta_duplicate_asins"] += 1
      continue
    first[asin] = (lineno, record)
    if not title or len(title) > 500 or "<" in title:
      filtered["meta_items_bad_title"] += 1
      continue
    titles[asin] = title
    meta_fields[asin] = kept
  events = []
  seen = set()
  for lineno, r in enumerate_reviews(config.reviews_file):
    user, asin, ts = r
    if asin not in titles:
      filtered["reviews_item_without_title"] += 1
      continue
    if start is not None or end is not None:
      d = datetime.datetime.fromtimestamp(ts, datetime.UTC)
      m = d.year * 12 + d.month - 1
      if (start is not None and m < start) or (end is not None and m > end):
        filtered["reviews_outside_window"] += 1
        continue
    if (user, asin) in seen and config.get("dedup", True):
      filtered["duplicate_reviews"] += 1
      continue
    seen.add((user, asin))
    events.append((user, asin, ts))
  k = int(config.get("k_core", 5))
  while k > 0:
    uc = collections.Counter(e[0] for e in events)
    ic = collections.Counter(e[1] for e in events)
    kept = [e for e in events if uc[e[0]] >= k and ic[e[1]] >= k]
    if len(kept) == len(events):
      break
    filtered["k_core"] += len(events) - len(kept)
    events = kept
  if not events:
    raise DataError(f"{config.reviews_file}: no interactions left after filtering {dict(filtered)}")
  items = _Ids(sorted({e[1] for e in events}))
  users = _Ids(sorted({e[0] for e in events}))
  per_user = collections.defaultdict(lambda: ([], []))
  for u, a, t in events:
    s, ts = per_user[users.index[u]]
    s.append(items.index[a])
    ts.append(t)
  sequences, timestamps = [], []
  for u in range(len(users)):
    s, t = _sort_by_time(*per_user[u])
    sequences.append(s)
    timestamps.append(t)
  fields = {"title": [titles[a] for a in items.raw]}
  for f in ("description", "brand", "categories"):
    fields[f] = [meta_fields[a][f] for a in items.raw]
  return RawData(config.get("name", "amazon2018"), users.raw, items.raw, fields, sequences,
                 timestamps, filtered=dict(filtered))


def enumerate_reviews(path):
  for lineno, r in readers.json_lines(path):
    try:
      yield lineno, (str(r["reviewerID"]), str(r["asin"]), int(r["unixReviewTime"]))
    except KeyError as e:
      raise DataError(f"{path}:{lineno}: field {e.args[0]!r} missing") from None
    except (TypeError, ValueError):
      raise DataError(f"{path}:{lineno}: field 'unixReviewTime' is not an integer") from None


SOURCES: dict[str, Callable[[Any], RawData]] = {
    "ml100k": load_ml100k,
    "seq_txt": load_seq_txt,
    "sasrec_txt": load_sasrec_txt,
    "lightgcn_txt": load_lightgcn_txt,
    "minionerec": load_minionerec,
    "amazon2018": load_amazon2018,
}


def load_source(config) -> RawData:
  name = config.source
  if name not in SOURCES:
    raise DataError(f"config field 'data.source': unknown source {name!r} "
                    f"(known: {', '.join(sorted(SOURCES))})")
  return SOURCES[name](config)
