"""Generate-and-rank queries as arrays, and their set-retrieval metrics.

A split of WORKDIR/lastfm/queries.json becomes a `QuerySplit`: the distinct
query texts (models that read only the text rank once per text) and, per
query, its text, its user (-1 for a tag query) and its item set. Metrics
are means over queries (a (user, tag) query is an example of its own) of
Recall@K (hits / |set|) and NDCG@K (binary gains, ideal DCG of
min(|set|, K) hits) of the ranked list of the query's text
(`evaluation.metrics.ranks_from_lists` + `metrics_from_ranks`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from genrec_jax.data.dataset import Ragged
from genrec_jax.evaluation import metrics as metrics_lib
from genrec_jax.gar import lastfm

# Cut-offs of every generate-and-rank metric.
KS = (10, 20, 50)


@dataclasses.dataclass
class QuerySplit:
  """The queries of one split.

  Attributes:
    texts: distinct query texts, in first-appearance order.
    text_of: int [Q] index into `texts` of each query.
    targets: [Q] ragged item sets (most-tagged first for tag queries).
    users: int64 [Q] raw user id of a (user, tag) query, -1 for a tag query.
  """

  texts: list[str]
  text_of: np.ndarray
  targets: Ragged
  users: np.ndarray

  def __len__(self) -> int:
    return len(self.text_of)

  def text_items(self) -> list[list[int]]:
    """Per text, its items: the tag query's list (by taggers), extended by
    the items of the text's (user, tag) queries that it lacks."""
    out = [[] for _ in self.texts]
    seen = [set() for _ in self.texts]
    order = np.argsort(self.users >= 0, kind="stable")  # tag queries first
    for q in order:
      t = self.text_of[q]
      for i in self.targets[q].tolist():
        if i not in seen[t]:
          seen[t].add(i)
          out[t].append(i)
    return out


def split_of(queries: Sequence[dict]) -> QuerySplit:
  """A QuerySplit from the query dicts of queries.json."""
  index: dict[str, int] = {}
  text_of = np.array([index.setdefault(q["text"], len(index))
                      for q in queries], np.int32)
  users = np.array([-1 if q["user"] is None else int(q["user"])
                    for q in queries], np.int64)
  return QuerySplit(list(index), text_of,
                    Ragged.from_lists([q["items"] for q in queries]), users)


def load_splits(workdir) -> dict[str, QuerySplit]:
  """split name -> QuerySplit of WORKDIR/lastfm/queries.json."""
  return {s: split_of(qs) for s, qs in lastfm.load_queries(workdir).items()}


def popularity_order(splits: dict[str, QuerySplit],
                     listeners: np.ndarray) -> np.ndarray:
  """Every item, best first: training-query frequency, then listeners,
  then id (the popularity baseline; the generator's fill-up order)."""
  listeners = np.asarray(listeners)
  counts = np.bincount(splits["train"].targets.values,
                       minlength=len(listeners))
  return np.lexsort((np.arange(len(listeners)), -listeners, -counts))


def evaluate(ranked: np.ndarray, split: QuerySplit, *, prefix: str,
             ks: Sequence[int] = KS, per_text: bool = True
             ) -> dict[str, float]:
  """Recall@K / NDCG@K / MRR of ranked item lists (-1 = no item).

  Args:
    ranked: int [texts, M] one list per distinct text (per_text) or
      [queries, M] one per query.
    split: the queries.
    prefix: key prefix, e.g. "test/".
    ks: cut-offs (M should be >= max(ks)).
    per_text: whether rows are texts (expanded to their queries) or queries.
  """
  ranked = np.asarray(ranked)
  if per_text:
    ranked = ranked[split.text_of]
  if len(ranked) != len(split):
    raise ValueError(f"evaluate: {len(ranked)} ranked lists for "
                     f"{len(split)} queries")
  ranks = metrics_lib.ranks_from_lists(ranked, split.targets)
  out = metrics_lib.metrics_from_ranks(ranks, split.targets.lengths(),
                                       tuple(ks), prefix)
  # hr@K (any hit) says little for sets of ~25 items: Recall / NDCG only.
  return {k: v for k, v in out.items()
          if not k[len(prefix):].startswith("hr@")}


def pool_recall(pools: Sequence[np.ndarray], split: QuerySplit) -> float:
  """Mean fraction of a query's items that its text's candidate pool holds."""
  sets = [set(np.asarray(p).tolist()) for p in pools]
  vals = [np.mean([i in sets[split.text_of[q]] for i in split.targets[q]])
          for q in range(len(split))]
  return float(np.mean(vals)) if vals else 0.0
