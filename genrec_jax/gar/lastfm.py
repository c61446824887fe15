"""Last.fm 2K (HetRec 2011) for generate-and-rank: the prepare_lastfm stage.

python -m binaries.prepare_lastfm --config=configs/lastfm.py --workdir=runs/lastfm

Reads `data.path` (tab-separated, a header row each): artists.dat (UTF-8:
id, name, url, pictureURL), tags.dat (Latin-1: tagID, tagValue),
user_artists.dat (userID, artistID, weight = listen count) and
user_taggedartists.dat (userID, artistID, tagID, day, month, year). A wrong
header or column count, a non-integer or repeated id, an unknown id or bytes
that do not decode stop with `file:line`; artists of user_taggedartists.dat
missing from artists.dat are dropped and counted by default (the release
has 1,538 such rows over 390 artists; `unknown_tagged_artists="error"`
makes them an error).

Items are the artists with at least `min_listeners` listeners (internal id
= rank of the raw id). Queries (text -> item set), a tag's text being the
query: `tag` (the artists anyone tagged with it, by number of taggers) and
`user_tag` (the artists one user tagged with it); texts are lower-cased and
whitespace-collapsed, tags with the same text are merged. Queries with fewer
than `min_query_items` items are dropped. The split is by text: the
distinct texts are shuffled (seed) and cut by `split_fractions`, so every
query of a text lands in one split and test texts never occur in training.

Item2vec sentences: each user's artists by listen count (most played first,
ties by item id) and, when enabled, the train split's tag / user-tag item
lists (never valid or test ones). For the next-item check, the last item of
a `holdout_fraction` of the users with at least 3 items is held out of their
sentence: (user, query = the item before it, target).

Writes, atomically (a temp folder renamed onto WORKDIR/lastfm/):

  items.json    artist_ids, names, listeners, plays (row i = item i)
  queries.json  {"train"|"valid"|"test": [{"text", "kind", "user",
                "tag_ids", "items", "counts"}]}; counts = taggers per item
  corpus.npz    sentences_offsets/values (Ragged), sentence_kind (0 user,
                1 tag, 2 user_tag), sentence_user (raw user id of a user
                list, -1 otherwise), heldout_user/query/target
  stats.json    sizes, split sizes, `filtered` counts, seconds (last)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import shutil
import tempfile
import time
from typing import Any

from absl import logging
import numpy as np

from genrec_jax import model_folder
from genrec_jax.data import readers
from genrec_jax.data.dataset import DataError, Ragged, replace_dir

DONE_FILE = "lastfm/stats.json"
FOLDER = "lastfm"
SPLITS = ("train", "valid", "test")
KINDS = ("user", "tag", "user_tag")  # sentence_kind codes 0, 1, 2

ARTISTS = ("id", "name", "url", "pictureURL")
TAGS = ("tagID", "tagValue")
LISTENS = ("userID", "artistID", "weight")
TAGGED = ("userID", "artistID", "tagID", "day", "month", "year")


@dataclasses.dataclass
class Raw:
  """The four files, checked; ids are the raw integers."""

  artists: dict[int, str]  # id -> name, file order
  tags: dict[int, str]  # id -> text
  listens: list[tuple[int, int, int]]  # (user, artist, plays)
  tagged: list[tuple[int, int, int]]  # (user, artist, tag)
  filtered: dict[str, int]


def normalize_text(text: str) -> str:
  """The query form of a tag: lower case, single spaces."""
  return " ".join(text.lower().split())


def read(path, unknown_tagged_artists: str = "drop") -> Raw:
  """Reads and checks the Last.fm 2K files under `path`.

  Raises:
    DataError: with file:line for a bad header, a wrong column count,
      bytes that do not decode, a non-integer, repeated or unknown id.
  """
  if unknown_tagged_artists not in ("drop", "error"):
    raise ValueError("config field 'data.unknown_tagged_artists': expected "
                     f"'drop' or 'error', got {unknown_tagged_artists!r}")
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataError(f"{root}: Last.fm 2K folder not found")
  filtered = collections.Counter()

  f = root / "artists.dat"
  artists, seen = {}, readers.UniqueKeys(f, "artist id")
  for lineno, (aid, name, _, _) in readers.tsv_rows(f, ARTISTS, "utf-8"):
    a = readers.parse_int(aid, f, lineno, "id")
    seen.add(a, lineno)
    name = " ".join(name.split())
    if not name:
      raise DataError(f"{f}:{lineno}: artist {a} has an empty name")
    artists[a] = name

  f = root / "tags.dat"
  tags, seen = {}, readers.UniqueKeys(f, "tag id")
  for lineno, (tid, text) in readers.tsv_rows(f, TAGS, "latin-1"):
    t = readers.parse_int(tid, f, lineno, "tagID")
    seen.add(t, lineno)
    tags[t] = text

  f = root / "user_artists.dat"
  listens, seen = [], readers.UniqueKeys(f, "(user, artist)")
  for lineno, (uid, aid, w) in readers.tsv_rows(f, LISTENS, "utf-8"):
    u = readers.parse_int(uid, f, lineno, "userID")
    a = readers.parse_int(aid, f, lineno, "artistID")
    plays = readers.parse_int(w, f, lineno, "weight")
    if a not in artists:
      raise DataError(f"{f}:{lineno}: artist {a} is not in artists.dat")
    if plays < 0:
      raise DataError(f"{f}:{lineno}: negative listen count {plays}")
    seen.add((u, a), lineno)
    listens.append((u, a, plays))

  f = root / "user_taggedartists.dat"
  tagged, seen_rows = [], set()
  for lineno, row in readers.tsv_rows(f, TAGGED, "utf-8"):
    u, a, t = (readers.parse_int(v, f, lineno, c)
               for v, c in zip(row[:3], TAGGED[:3]))
    if t not in tags:
      raise DataError(f"{f}:{lineno}: tag {t} is not in tags.dat")
    if a not in artists:
      if unknown_tagged_artists == "error":
        raise DataError(f"{f}:{lineno}: artist {a} is not in artists.dat")
      filtered["tag_rows_unknown_artist"] += 1
      continue
    if (u, a, t) in seen_rows:
      filtered["tag_rows_repeated"] += 1
      continue
    seen_rows.add((u, a, t))
    tagged.append((u, a, t))
  if not listens:
    raise DataError(f"{root / 'user_artists.dat'}: no data rows")
  return Raw(artists, tags, listens, tagged, dict(filtered))


@dataclasses.dataclass
class Prepared:
  """Everything prepare_lastfm writes, in memory."""

  items: dict[str, list]  # artist_ids, names, listeners, plays
  queries: dict[str, list[dict[str, Any]]]  # split -> queries
  sentences: Ragged
  sentence_kind: np.ndarray  # int8 [S]
  sentence_user: np.ndarray  # int64 [S] raw user id of a user list, else -1
  heldout: dict[str, np.ndarray]  # user, query, target: int32 [H]
  stats: dict[str, Any]

  @property
  def num_items(self) -> int:
    return len(self.items["artist_ids"])


def _check_config(data) -> None:
  fr = tuple(float(x) for x in data.split_fractions)
  if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
    raise ValueError("config field 'data.split_fractions': expected three "
                     f"non-negative fractions summing to 1, got {fr}")
  if not 0.0 <= float(data.holdout_fraction) <= 1.0:
    raise ValueError("config field 'data.holdout_fraction': expected a value "
                     f"in [0, 1], got {data.holdout_fraction}")
  for field in ("min_listeners", "min_query_items"):
    if int(data[field]) < 1:
      raise ValueError(f"config field 'data.{field}': must be >= 1, got "
                       f"{data[field]}")


def split_texts(texts, fractions, seed: int) -> dict[str, str]:
  """text -> split: the sorted distinct texts shuffled by `seed` and cut by
  the fractions (rounded; the last split takes the rest)."""
  texts = sorted(set(texts))
  order = np.random.default_rng([int(seed), 0]).permutation(len(texts))
  n_train = int(round(fractions[0] * len(texts)))
  n_valid = int(round(fractions[1] * len(texts)))
  out = {}
  for rank, i in enumerate(order):
    out[texts[i]] = ("train" if rank < n_train else
                     "valid" if rank < n_train + n_valid else "test")
  return out


def build(data) -> Prepared:
  """Reads the files named by `data` (the `data` sub-config) and builds the
  items, queries, split and item2vec sentences."""
  _check_config(data)
  t0 = time.perf_counter()
  raw = read(data.path, data.unknown_tagged_artists)
  filtered = collections.Counter(raw.filtered)
  t_read = time.perf_counter() - t0

  # Items: artists with enough listeners, by raw id.
  listeners = collections.Counter(a for _, a, _ in raw.listens)
  plays = collections.Counter()
  for _, a, w in raw.listens:
    plays[a] += w
  kept = sorted(a for a in raw.artists if listeners[a] >= data.min_listeners)
  if not kept:
    raise DataError(f"{data.path}: no artist has min_listeners="
                    f"{data.min_listeners} listeners")
  filtered["artists_below_min_listeners"] = len(raw.artists) - len(kept)
  item_of = {a: i for i, a in enumerate(kept)}
  items = {
      "artist_ids": [str(a) for a in kept],
      "names": [raw.artists[a] for a in kept],
      "listeners": [int(listeners[a]) for a in kept],
      "plays": [int(plays[a]) for a in kept],
  }

  # User sentences: most played first.
  per_user = collections.defaultdict(list)
  for u, a, w in raw.listens:
    if a in item_of:
      per_user[u].append((-w, item_of[a]))
    else:
      filtered["listens_of_dropped_artists"] += 1
  users = sorted(per_user)
  n_listeners = len({u for u, _, _ in raw.listens})
  if n_listeners > len(users):
    filtered["users_without_kept_artists"] = n_listeners - len(users)
  user_lists = {u: [i for _, i in sorted(per_user[u])] for u in users}

  # Queries.
  texts = {t: normalize_text(v) for t, v in raw.tags.items()}
  tag_ids_of = collections.defaultdict(set)
  taggers = collections.defaultdict(collections.Counter)  # text -> item -> n
  user_tag = collections.defaultdict(set)  # (user, text) -> items
  for u, a, t in raw.tagged:
    text = texts[t]
    if not text:
      filtered["tag_rows_empty_text"] += 1
      continue
    if a not in item_of:
      filtered["tag_rows_of_dropped_artists"] += 1
      continue
    i = item_of[a]
    tag_ids_of[text].add(t)
    taggers[text][i] += 1
    user_tag[(u, text)].add(i)
  used_tags = {t for ids in tag_ids_of.values() for t in ids}
  filtered["tags_merged_same_text"] = len(used_tags) - len(tag_ids_of)
  queries = []
  for text in sorted(taggers):
    ranked = sorted(taggers[text].items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) < data.min_query_items:
      filtered["tag_queries_too_few_items"] += 1
      continue
    queries.append({"text": text, "kind": "tag", "user": None,
                    "tag_ids": sorted(tag_ids_of[text]),
                    "items": [i for i, _ in ranked],
                    "counts": [c for _, c in ranked]})
  tag_ids_by_user_text = collections.defaultdict(set)
  for u, a, t in raw.tagged:
    if texts[t] and a in item_of:
      tag_ids_by_user_text[(u, texts[t])].add(t)
  for (u, text) in sorted(user_tag):
    its = sorted(user_tag[(u, text)])
    if len(its) < data.min_query_items:
      filtered["user_tag_queries_too_few_items"] += 1
      continue
    queries.append({"text": text, "kind": "user_tag", "user": str(u),
                    "tag_ids": sorted(tag_ids_by_user_text[(u, text)]),
                    "items": its, "counts": [1] * len(its)})
  if not queries:
    raise DataError(f"{data.path}: no query has min_query_items="
                    f"{data.min_query_items} items")
  split_of = split_texts([q["text"] for q in queries],
                         tuple(data.split_fractions), data.seed)
  by_split = {s: [q for q in queries if split_of[q["text"]] == s]
              for s in SPLITS}

  # Item2vec sentences (+ the held-out next items).
  rng = np.random.default_rng([int(data.seed), 1])
  sentences, kinds, sentence_user = [], [], []
  held_user, held_query, held_target = [], [], []
  draws = rng.random(len(users))
  for j, u in enumerate(users):
    s = user_lists[u]
    if len(s) >= 3 and draws[j] < data.holdout_fraction:
      held_user.append(u)
      held_query.append(s[-2])
      held_target.append(s[-1])
      s = s[:-1]
    sentences.append(s)
    kinds.append(0)
    sentence_user.append(u)
  for kind, enabled in (("tag", data.sentences.tags),
                        ("user_tag", data.sentences.user_tags)):
    if enabled:
      for q in by_split["train"]:
        if q["kind"] == kind:
          sentences.append(q["items"])
          kinds.append(KINDS.index(kind))
          sentence_user.append(-1)
  ragged = Ragged.from_lists(sentences)
  heldout = {"user": np.asarray(held_user, np.int32),
             "query": np.asarray(held_query, np.int32),
             "target": np.asarray(held_target, np.int32)}

  def split_stats(s):
    qs = by_split[s]
    return {"queries": len(qs), "texts": len({q["text"] for q in qs}),
            "tag_queries": sum(q["kind"] == "tag" for q in qs),
            "user_tag_queries": sum(q["kind"] == "user_tag" for q in qs),
            "mean_items": round(float(np.mean([len(q["items"]) for q in qs])),
                                2) if qs else 0.0}

  stats = {
      "name": "lastfm",
      "path": str(data.path),
      "artists": len(raw.artists),
      "tags": len(raw.tags),
      "listen_rows": len(raw.listens),
      "tag_rows": len(raw.tagged) + sum(raw.filtered.values()),
      "items": len(kept),
      "users": len(users),
      "queries": {s: split_stats(s) for s in SPLITS},
      "sentences": {k: int(np.sum(np.asarray(kinds) == c))
                    for c, k in enumerate(KINDS)},
      "tokens": int(len(ragged.values)),
      "heldout": len(held_user),
      "filtered": {k: int(v) for k, v in sorted(filtered.items())},
      "read_seconds": round(t_read, 3),
  }
  return Prepared(items, by_split, ragged, np.asarray(kinds, np.int8),
                  np.asarray(sentence_user, np.int64), heldout, stats)


def save(prep: Prepared, path) -> None:
  """Writes the lastfm folder atomically (temp folder, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".tmp",
                                      dir=path.parent))
  try:
    with open(tmp / "items.json", "w", encoding="utf-8") as f:
      json.dump(prep.items, f, ensure_ascii=False)
    with open(tmp / "queries.json", "w", encoding="utf-8") as f:
      json.dump(prep.queries, f, ensure_ascii=False)
    np.savez(tmp / "corpus.npz",
             sentences_offsets=prep.sentences.offsets,
             sentences_values=prep.sentences.values,
             sentence_kind=prep.sentence_kind,
             sentence_user=prep.sentence_user,
             **{f"heldout_{k}": v for k, v in prep.heldout.items()})
    with open(tmp / "stats.json", "w", encoding="utf-8") as f:
      json.dump(prep.stats, f, indent=1, ensure_ascii=False)
    replace_dir(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


@dataclasses.dataclass
class Corpus:
  """The item2vec inputs of WORKDIR/lastfm/corpus.npz."""

  sentences: Ragged
  sentence_kind: np.ndarray
  sentence_user: np.ndarray
  heldout: dict[str, np.ndarray]
  num_items: int

  def user_lists(self) -> dict[str, np.ndarray]:
    """Raw user id (as in queries.json) -> the user's items, most played
    first (the held-out last item, if any, is not in it)."""
    return {str(u): self.sentences[j]
            for j, u in enumerate(self.sentence_user) if u >= 0}


def load_corpus(workdir) -> Corpus:
  """Reads WORKDIR/lastfm/{corpus.npz, items.json}."""
  root = pathlib.Path(workdir) / FOLDER
  for name in ("corpus.npz", "items.json", "stats.json"):
    if not (root / name).exists():
      raise DataError(f"{root / name}: missing; run binaries.prepare_lastfm "
                      "first")
  with np.load(root / "corpus.npz") as z:
    arrays = {k: z[k] for k in z.files}
  items = json.loads((root / "items.json").read_text(encoding="utf-8"))
  heldout = {k: arrays[f"heldout_{k}"] for k in ("user", "query", "target")}
  return Corpus(Ragged(arrays["sentences_offsets"], arrays["sentences_values"]),
                arrays["sentence_kind"], arrays["sentence_user"], heldout,
                len(items["artist_ids"]))


def load_queries(workdir) -> dict[str, list[dict[str, Any]]]:
  """split -> queries of WORKDIR/lastfm/queries.json."""
  path = pathlib.Path(workdir) / FOLDER / "queries.json"
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.prepare_lastfm first")
  return json.loads(path.read_text(encoding="utf-8"))


def load_items(workdir) -> dict[str, list]:
  """WORKDIR/lastfm/items.json: artist_ids, names, listeners, plays."""
  path = pathlib.Path(workdir) / FOLDER / "items.json"
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.prepare_lastfm first")
  return json.loads(path.read_text(encoding="utf-8"))


def read_model_spec(workdir, name: str, kind: str
                    ) -> tuple[pathlib.Path, dict[str, list], dict[str, Any]]:
  """(WORKDIR/<name>, items.json, its model.json checked for `kind` and
  this catalogue) of a generate-and-rank model folder."""
  model_dir = pathlib.Path(workdir) / name
  items = load_items(workdir)
  spec = model_folder.read_spec(model_dir, kind=kind,
                                num_items=len(items["artist_ids"]))
  return model_dir, items, spec


def run(config, workdir) -> dict[str, Any]:
  """The prepare_lastfm stage: writes WORKDIR/lastfm/, returns its stats."""
  t0 = time.perf_counter()
  prep = build(config.data)
  prep.stats["seconds"] = round(time.perf_counter() - t0, 3)
  save(prep, pathlib.Path(workdir) / FOLDER)
  s = prep.stats
  q = s["queries"]
  logging.info(
      "lastfm: %d items (of %d artists), %d users; queries train/valid/test "
      "%d/%d/%d (texts %d/%d/%d); %d sentences, %d tokens, %d held out; "
      "%.2fs; filtered %s", s["items"], s["artists"], s["users"],
      q["train"]["queries"], q["valid"]["queries"], q["test"]["queries"],
      q["train"]["texts"], q["valid"]["texts"], q["test"]["texts"],
      sum(s["sentences"].values()), s["tokens"], s["heldout"], s["seconds"],
      s["filtered"])
  return s
