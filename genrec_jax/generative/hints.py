"""miniGR-CF collaborative hints as the prompts show them.

`Hints.load(WORKDIR/hints/hints.json, k, has_sid)` reads the neighbours the
build_hints stage stored (more than K per item, best first) and keeps those
that have an SID. `for_item(last_item, target)` is the hint of a prompt whose
last history item is `last_item`:

* training passes the row's `target`: it is removed from the list (clean
  target: a training prompt never contains its answer), then the list is cut
  to K;
* evaluation passes no target: the first K neighbours (full hints).

Because the stored list is longer than K, both show K hints; cutting to K
first and cleaning after would leave K - 1 hints exactly when the answer was
a neighbour, a tell the model can learn at train time and never sees at test.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

from genrec_jax.data.dataset import DataError

HINTS_FILE = "hints/hints.json"


class Hints:
  """Per item its neighbours (ids with an SID, best first) and K."""

  def __init__(self, neighbours: Mapping[int, Sequence[int]], k: int,
               has_sid: np.ndarray | None = None):
    if k < 1:
      raise ValueError(f"config field 'hints.k' = {k}: must be >= 1")
    self.k = int(k)
    n = None if has_sid is None else len(has_sid)
    self._lists = {}
    for item, ids in neighbours.items():
      ids = [int(x) for x in ids
             if n is None or (0 <= int(x) < n and has_sid[int(x)])]
      if ids:
        self._lists[int(item)] = ids

  @classmethod
  def load(cls, path: str | os.PathLike, k: int,
           has_sid: np.ndarray) -> Hints:
    """From a hints.json ({"item": [neighbours]}).

    Raises:
      DataError: the file is missing, malformed, or stores no more than K
        neighbours per item (clean target would then show K - 1).
    """
    path = pathlib.Path(path)
    if not path.exists():
      raise DataError(f"{path}: hints are enabled but the build_hints stage "
                      "has not run")
    try:
      obj = json.loads(path.read_text())
      lists = {int(key): [int(x) for x in v] for key, v in obj.items()}
    except (ValueError, TypeError, AttributeError) as e:
      raise DataError(f"{path}: not an item -> neighbour list mapping: {e}"
                      ) from None
    stored = max((len(v) for v in lists.values()), default=0)
    if stored <= k:
      raise DataError(
          f"{path}: stores {stored} neighbours per item, but hints.k = {k} "
          f"needs at least {k + 1} (re-run build_hints with "
          f"--config.num_neighbours={2 * k})")
    return cls(lists, k, has_sid)

  def __len__(self) -> int:
    return len(self._lists)

  def for_item(self, last_item: int, target: int | None = None
               ) -> list[int]:
    """The K hints of `last_item` ([] when none); `target` removed first."""
    ids = self._lists.get(int(last_item), ())
    if target is not None:
      ids = [h for h in ids if h != target]
    return list(ids[:self.k])
