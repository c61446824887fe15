"""Requests -> padded batches -> ranked items with titles, for any model.

  engine = Engine.load(WORKDIR, "sasrec", buckets=(1, 8, 32, 64))
  query = engine.parse({"user": "196", "top_n": 5})      # RequestError: 400
  [answer] = engine.rank([query])  # [{"item", "title", "score"}, ...]

A request names a raw user id (ranked after their whole time-ordered
history, the user's embedding used where the model has one) or a raw item
history (oldest first, an anonymous user). Every model folder ranks through
its `Ranker`; the histories are cut to the model's window by the ranker
itself (SASRec: the last `max_len` items, the generative formats: the last
`max_history`; LightGCN averages the items of an anonymous history), and
the whole history is what `exclude_history` masks.

`rank` pads the rows it gets to the smallest batch bucket that holds them
(copies of the first row, dropped from the answer), so the jitted scorer or
search compiles once per bucket (`warm_up` does it at start). Scoring
models (SASRec, LightGCN: a `model_folder.ScoreRanker`) answer with each
item's score; generative models (TIGER, the decoders) with the ranked items
only (the beam search's ranks; the answer has no "score").
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from genrec_jax import model_folder
from genrec_jax import recommend
from genrec_jax.checks import check_ranges
from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged

# Fields a /recommend request may hold.
FIELDS = ("user", "history", "top_n", "exclude_history")
# Unknown raw ids named in an error message (the rest are counted).
MAX_NAMED = 10


class RequestError(ValueError):
  """A bad request (HTTP 400); the message names the field."""

  def __init__(self, field: str, message: str):
    super().__init__(f"field {field!r}: {message}")
    self.field = field


@dataclasses.dataclass(frozen=True)
class Query:
  """One request in internal ids.

  Attributes:
    user: internal user id (-1: an anonymous history).
    history: internal item ids, oldest first (never empty).
    top_n: items to return.
    exclude_history: mask the history's items.
  """

  user: int
  history: tuple[int, ...]
  top_n: int
  exclude_history: bool


def _raw_id(value: Any) -> str | None:
  """A JSON string or integer as a raw id string (None otherwise)."""
  if isinstance(value, str):
    return value
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  return None


class Engine:
  """A loaded model with its dataset's ids and titles, ranking in buckets.

  Attributes:
    name: the model folder's name.
    ranker: the model (`recommend.load_model`).
    ds: the dataset (raw ids, titles, users' histories).
    buckets: batch sizes rank() pads to, ascending.
    top_n, max_top_n: default and largest top_n of a request.
    exclude_history: default of a request's exclude_history.
    scored: True when answers carry scores (a ScoreRanker).
  """

  def __init__(self, ranker: model_folder.Ranker, ds: Dataset, *,
               name: str, buckets: Sequence[int] = (1, 8, 32, 64),
               top_n: int = 10, max_top_n: int = 100,
               exclude_history: bool = True):
    buckets = tuple(sorted({int(b) for b in buckets}))
    if not buckets:
      raise ValueError("config field 'buckets': empty")
    check_ranges([("buckets", buckets[0], 1, None),
                  ("max_top_n", max_top_n, 1, None),
                  ("top_n", top_n, 1, max_top_n)])
    self.name = name
    self.ranker = ranker
    self.ds = ds
    self.buckets = buckets
    self.top_n = int(top_n)
    self.max_top_n = int(max_top_n)
    self.exclude_history = bool(exclude_history)
    self.scored = isinstance(ranker, model_folder.ScoreRanker)
    self._users = {u: i for i, u in enumerate(ds.user_ids)}
    self._items = {it: i for i, it in enumerate(ds.item_ids)}
    self._titles = ds.item_fields.get("title", [""] * ds.num_items)

  @classmethod
  def load(cls, workdir: str | pathlib.Path, name: str, *,
           beam_size: int = 0, **kwargs: Any) -> Engine:
    """The engine of the model folder WORKDIR/<name> (loaded once).

    Args:
      workdir: the trained workdir (holds dataset/ and <name>/).
      name: the model folder.
      beam_size: beam width of a generative model (0: the width it was
        evaluated with, from its model.json).
      **kwargs: Engine's keyword arguments.
    """
    workdir = pathlib.Path(workdir)
    ds = Dataset.load(workdir / "dataset")
    ranker = recommend.load_model(workdir, name, ds=ds)
    if beam_size and ranker.beam_size is not None:
      ranker.beam_size = int(beam_size)
    return cls(ranker, ds, name=name, **kwargs)

  def info(self) -> dict[str, Any]:
    """What is served (for /health)."""
    return {"model": self.name, "kind": self.ranker.kind,
            "scored": self.scored, "users": self.ds.num_users,
            "items": self.ds.num_items, "buckets": list(self.buckets),
            "beam_size": self.ranker.beam_size}

  # ---- requests ---------------------------------------------------------
  def user_query(self, user: int, *, top_n: int | None = None,
                 exclude_history: bool | None = None) -> Query:
    """The query of an internal user id: their whole history."""
    history = tuple(int(i) for i in self.ds.sequences[user])
    if not history:
      raise RequestError("user", f"user {self.ds.user_ids[user]!r} has no "
                         "interactions to rank after")
    return Query(int(user), history,
                 self.top_n if top_n is None else int(top_n),
                 self.exclude_history if exclude_history is None
                 else bool(exclude_history))

  def parse(self, payload: Any) -> Query:
    """A decoded JSON request -> Query; RequestError names a bad field."""
    if not isinstance(payload, dict):
      raise RequestError("body", "expected a JSON object such as "
                         '{"user": "196"} or {"history": ["50", "181"]}')
    for key in payload:
      if key not in FIELDS:
        raise RequestError(key, f"unknown field (expected {list(FIELDS)})")
    top_n = payload.get("top_n", self.top_n)
    if (not isinstance(top_n, int) or isinstance(top_n, bool)
        or not 1 <= top_n <= self.max_top_n):
      raise RequestError("top_n", f"{top_n!r} is not an integer in "
                         f"[1, {self.max_top_n}]")
    exclude = payload.get("exclude_history", self.exclude_history)
    if not isinstance(exclude, bool):
      raise RequestError("exclude_history", f"{exclude!r} is not true/false")
    if ("user" in payload) == ("history" in payload):
      raise RequestError("user", "give exactly one of 'user' (a raw user id) "
                         "and 'history' (raw item ids, oldest first)")
    if "user" in payload:
      raw = _raw_id(payload["user"])
      if raw is None:
        raise RequestError("user", f"{payload['user']!r} is not a string or "
                           "integer id")
      if raw not in self._users:
        raise RequestError("user", f"unknown user {raw!r}")
      return self.user_query(self._users[raw], top_n=top_n,
                             exclude_history=exclude)
    history = payload["history"]
    if not isinstance(history, list) or not history:
      raise RequestError("history", "expected a non-empty list of raw item "
                         "ids, oldest first")
    raws = [_raw_id(x) for x in history]
    if None in raws:
      bad = history[raws.index(None)]
      raise RequestError("history", f"{bad!r} is not a string or integer id")
    missing = [r for r in raws if r not in self._items]
    if missing:
      more = (f" (and {len(missing) - MAX_NAMED} more)"
              if len(missing) > MAX_NAMED else "")
      raise RequestError("history", f"unknown items {missing[:MAX_NAMED]}"
                         f"{more}")
    return Query(-1, tuple(self._items[r] for r in raws), top_n, exclude)

  # ---- ranking ----------------------------------------------------------
  def bucket(self, n: int) -> int:
    """The smallest bucket >= n (n <= the largest bucket)."""
    return next(b for b in self.buckets if b >= n)

  def rank(self, queries: Sequence[Query]) -> list[list[dict[str, Any]]]:
    """The answer of each query: [{"item", "title"[, "score"]}], best first.

    Queries that share (top_n, exclude_history) go through the model
    together, in chunks of the largest bucket; each chunk is padded to its
    bucket. A row's answer does not depend on the rows beside it.
    """
    out: list[list[dict[str, Any]]] = [[] for _ in queries]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, q in enumerate(queries):
      groups.setdefault((q.top_n, q.exclude_history), []).append(i)
    step = self.buckets[-1]
    for (top_n, exclude), rows in groups.items():
      for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        items, scores = self._rank_rows([queries[i] for i in chunk],
                                        top_n=top_n, exclude=exclude)
        for r, i in enumerate(chunk):
          out[i] = self._answer(items[r], None if scores is None
                                else scores[r])
    return out

  def _rank_rows(self, queries: Sequence[Query], *, top_n: int,
                 exclude: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(int [n, top_n] items (-1 = none), float [n, top_n] scores or None)."""
    n = len(queries)
    rows = list(queries) + [queries[0]] * (self.bucket(n) - n)
    history = Ragged.from_lists([q.history for q in rows])
    batch = EvalExamples(
        np.array([q.user for q in rows], np.int32), history,
        Ragged.from_lists([[q.history[-1]] for q in rows]),
        exclude=history if exclude else None)
    if not self.scored:
      items = self.ranker.rank(batch, top_n=top_n, exclude_history=exclude)
      return np.asarray(items)[:n], None
    scores = self.ranker.scores(batch)  # [bucket, I]
    items = model_folder.mask_and_top(scores, batch, top_n=top_n,
                                      exclude_history=exclude)  # [bucket, N]
    picked = np.take_along_axis(scores, np.maximum(items, 0), 1)
    return items[:n], picked[:n]

  def _answer(self, items: np.ndarray,
              scores: np.ndarray | None) -> list[dict[str, Any]]:
    out = []
    for r, i in enumerate(items.tolist()):
      if i < 0:
        continue
      entry = {"item": self.ds.item_ids[i], "title": self._titles[i]}
      if scores is not None:
        entry["score"] = float(scores[r])
      out.append(entry)
    return out

  def warm_up(self) -> dict[int, float]:
    """Runs every bucket once (compiles them); bucket -> seconds."""
    user = next(u for u in range(self.ds.num_users)
                if len(self.ds.sequences[u]))
    query = self.user_query(user)
    seconds = {}
    for b in self.buckets:
      t0 = time.perf_counter()
      self._rank_rows([query] * b, top_n=query.top_n,
                      exclude=query.exclude_history)
      seconds[b] = time.perf_counter() - t0
    return seconds
