"""Collision handling of semantic IDs (METHODS.md 1.5, 7).

Three strategies, all deterministic; the first two make every item's code
path unique:

* `dedup` (TIGER): append a code 0, 1, 2, ... to the items sharing an L-code
  path, in item-id order; the extra level's size is the largest group. Decoders
  must generate (and evaluate) this level too.
* `reassign`: keep L codes; in each colliding path the item closest to the
  last-level centre keeps the code, the others (in item-id order) move to the
  nearest last-level code that no item under the same prefix uses. Fails with
  a ValueError when a prefix has more items than last-level codes.
* `keep` ("embrace collisions", the music generate-and-rank original,
  METHODS.md 7): the codes stay as the quantizer made them; several items may
  share one SID and a consumer maps an SID to its list of items. Consumers
  that need one item per path (the decoding trie) refuse such SIDs.
"""

from __future__ import annotations

import numpy as np

# Strategies after which every item has its own code path.
COLLISION_FREE = ("dedup", "reassign")
STRATEGIES = COLLISION_FREE + ("keep",)


def path_stats(codes: np.ndarray) -> dict:
  """Collision figures of int [N, L] codes.

  Returns:
    dict with `collisions` (items that share their path with an earlier item:
    N - distinct paths), `colliding_items` (items on a path shared by two or
    more), `colliding_paths`, `collision_rate` (collisions / N) and
    `max_items_per_path`.
  """
  n = len(codes)
  if n == 0:
    return {"collisions": 0, "colliding_items": 0, "colliding_paths": 0,
            "collision_rate": 0.0, "max_items_per_path": 0}
  _, counts = np.unique(codes, axis=0, return_counts=True)
  return {
      "collisions": int(n - len(counts)),
      "colliding_items": int(counts[counts > 1].sum()),
      "colliding_paths": int((counts > 1).sum()),
      "collision_rate": float((n - len(counts)) / n),
      "max_items_per_path": int(counts.max()),
  }


def add_dedup_code(codes: np.ndarray) -> tuple[np.ndarray, int]:
  """int32 [N, L + 1] codes with the TIGER dedup level, and its size."""
  codes = np.asarray(codes, np.int32)
  n = len(codes)
  _, inv = np.unique(codes, axis=0, return_inverse=True)
  inv = inv.reshape(-1)
  order = np.lexsort((np.arange(n), inv))  # by path, then by item id
  sorted_inv = inv[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
  group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
  dedup = np.empty(n, np.int32)
  dedup[order] = np.arange(n) - group_start
  size = int(dedup.max()) + 1 if n else 1
  return np.concatenate([codes, dedup[:, None]], axis=1), size


def reassign_last_level(codes: np.ndarray, last_size: int,
                        last_cost: np.ndarray | None = None) -> tuple[np.ndarray, int]:
  """Moves colliding items to free last-level codes under the same prefix.

  Args:
    codes: int [N, L] codes.
    last_size: number of codes of the last level.
    last_cost: float [N, last_size] cost of each last-level code per item
      (e.g. squared distance to the centre); non-finite entries are taken
      only when no finite free code is left. None: lowest free code.

  Returns:
    (collision-free int32 [N, L] codes, number of items moved).

  Raises:
    ValueError: a prefix holds more items than there are last-level codes.
  """
  codes = np.array(codes, np.int32, copy=True)
  n, levels = codes.shape
  _, path_inv, path_counts = np.unique(codes, axis=0, return_inverse=True,
                                       return_counts=True)
  path_inv = path_inv.reshape(-1)
  colliding = path_counts[path_inv] > 1
  if not colliding.any():
    return codes, 0
  if levels > 1:
    _, pre_inv = np.unique(codes[:, :-1], axis=0, return_inverse=True)
    pre_inv = pre_inv.reshape(-1)
  else:
    pre_inv = np.zeros(n, np.int64)
  order = np.argsort(pre_inv, kind="stable")
  bounds = np.flatnonzero(np.diff(pre_inv[order])) + 1
  bad_groups = set(np.unique(pre_inv[colliding]).tolist())
  moved = 0
  for members in np.split(order, bounds):
    if pre_inv[members[0]] not in bad_groups:
      continue
    if len(members) > last_size:
      raise ValueError(
          f"collisions: {len(members)} items share the prefix "
          f"{codes[members[0], :-1].tolist()} but the last level has only "
          f"{last_size} codes; use collisions.strategy='dedup' or larger "
          "codebooks")
    last = codes[members, -1]
    used = np.zeros(last_size, bool)
    used[last] = True
    movers = []
    for code in np.unique(last):
      same = members[last == code]
      if len(same) == 1:
        continue
      if last_cost is not None:
        cost = last_cost[same, code]
        keep = same[np.lexsort((same, cost))[0]]
      else:
        keep = same.min()
      movers.extend(int(i) for i in same if i != keep)
    for i in sorted(movers):
      if last_cost is None:
        new = int(np.flatnonzero(~used)[0])
      else:
        cost = np.asarray(last_cost[i], np.float64).copy()
        cost[~np.isfinite(cost)] = np.finfo(np.float64).max / 4
        cost[used] = np.inf
        new = int(np.argmin(cost))
      used[new] = True
      codes[i, -1] = new
      moved += 1
  return codes, moved


def make_collision_free(codes: np.ndarray, sizes: list[int], strategy: str,
                        last_cost: np.ndarray | None = None):
  """Applies `strategy`; returns (codes, codebook sizes, info dict).

  With `keep` the codes and sizes come back unchanged and the info says how
  many collisions were kept (`kept_collisions`, N - distinct paths).
  """
  if strategy == "keep":
    codes = np.asarray(codes, np.int32)
    return codes, list(sizes), {
        "kept_collisions": path_stats(codes)["collisions"]}
  if strategy == "dedup":
    out, size = add_dedup_code(codes)
    info = {"dedup_level_size": size}
    sizes = list(sizes) + [size]
  elif strategy == "reassign":
    out, moved = reassign_last_level(codes, sizes[-1], last_cost)
    info = {"reassigned_items": moved}
    sizes = list(sizes)
  else:
    raise ValueError(f"collisions.strategy must be one of {STRATEGIES}, got {strategy!r}")
  after = path_stats(out)["collisions"]
  if after:
    raise AssertionError(f"{strategy} left {after} collisions")  # a bug
  return out, sizes, info
