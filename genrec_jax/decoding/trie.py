"""Trie tables for constrained decoding of semantic IDs (SIDs).

An item is a path of L codes `(c_0, ..., c_{L-1})`, code `c_l` in
`[0, codebook_sizes[l])`. The trie over all item paths is stored as plain
numpy arrays (`TrieTables`) that a jitted beam search takes as *arguments*
(never closed over), in the hybrid layout of STATIC
(youtube/static-constraint-decoding; METHODS.md section 9):

* States. State 0 is the root (the empty prefix). Every distinct prefix of
  length 1..L-1 is one state; states are numbered level by level, so all
  states of the first `num_dense` levels come first.
* Dense levels (`level < num_dense`): `dense_next[s, c]` is the state reached
  from state `s` with code `c`, or -1 when no item continues that way.
  O(1) lookup, `S_dense x C_max` int32.
* Sparse levels (`level >= num_dense`): compressed sparse rows. The children
  of sparse state `s` (row `r = s - S_dense`) are the entries
  `csr_codes[indptr[r]:indptr[r + 1]]` / `csr_next[...]`, sorted by code.
  A lookup reads a fixed window of `max_branch` entries from `indptr[r]`
  (the flat arrays are padded at the end by `max_branch`), so the cost is
  O(beam x max_branch) per step whatever the catalogue size, and storage is
  O(number of edges) -- 4 levels with a dedup code or 8 levels stay small.
* Leaves. At the last level the "next state" is the item id itself, so a
  full path maps straight to its item (leaf state -> item id).

Duplicate full paths (two items with the same SID, a collision) are an
error: the SID stage appends a dedup code so that there are none, and a
trie cannot say which of two items a path means.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

# Size budget (entries) for the dense part when choosing num_dense
# automatically: 2**22 int32 entries = 16 MiB.
DENSE_BUDGET = 1 << 22
# Minimum fraction of a level's dense rows that must be real edges for the
# level to be stored densely when num_dense is chosen automatically.
DENSE_MIN_FILL = 1 / 16


class ExclusionTables(NamedTuple):
  """What a jitted search needs to mask excluded items (a pytree of arrays).

  A row's excluded items (e.g. its history) are removed from the trie *for
  that row*: the last level never emits them, and a prefix state whose
  items are all excluded is never entered (so no beam is wasted on it).

  Attributes:
    item_states: int32 [num_items, L] the state after 0..L-1 codes of each
      item's path (column 0 = root); rows of items without an SID hold -1.
    state_items: int32 [num_states] items below each state.
  """

  item_states: np.ndarray
  state_items: np.ndarray


class TrieTables(NamedTuple):
  """The arrays a jitted search takes (a pytree of arrays).

  Attributes:
    dense_next: int32 [S_dense, C_max] next state (item id at the last level)
      or -1, for the states of levels < num_dense.
    indptr: int32 [S_sparse + 1] CSR row starts of the sparse states.
    csr_codes: int32 [E + max_branch] child codes, -1 padding at the end.
    csr_next: int32 [E + max_branch] child states (item ids at the last level).
    window: int32 [max_branch] = arange(max_branch); its *shape* carries the
      static window width into the jitted function.
    num_dense: int32 [] number of dense levels (>= 1).
  """

  dense_next: np.ndarray
  indptr: np.ndarray
  csr_codes: np.ndarray
  csr_next: np.ndarray
  window: np.ndarray
  num_dense: np.ndarray


@dataclasses.dataclass(frozen=True)
class Trie:
  """A trie over item SIDs plus what the host needs to interpret it.

  Attributes:
    tables: the device-side arrays (pass `trie.tables` to the search).
    codes: int32 [num_items, L] the item paths (row i = item i; rows of
      items without an SID hold -1).
    codebook_sizes: codes per level.
    num_items: item id bound (ids are 0..num_items-1).
    has_item: bool [num_items] True for items that have a path in the trie.
    exclusion: the tables that mask excluded items per row.
  """

  tables: TrieTables
  codes: np.ndarray
  codebook_sizes: tuple[int, ...]
  num_items: int
  has_item: np.ndarray
  exclusion: ExclusionTables

  @property
  def num_levels(self) -> int:
    return len(self.codebook_sizes)

  @property
  def num_dense(self) -> int:
    return int(self.tables.num_dense)

  @property
  def max_branch(self) -> int:
    return int(self.tables.window.shape[0])

  @property
  def nbytes(self) -> int:
    return int(sum(np.asarray(a).nbytes for a in self.tables))

  def children(self, prefix: Sequence[int]) -> dict[int, int]:
    """Host-side lookup: code -> next state (item id at the last level)."""
    t = self.tables
    state = 0
    for level, c in enumerate(prefix):
      kids = self._children_of(state, level)
      if c not in kids:
        return {}
      state = kids[c]
    return self._children_of(state, len(prefix))

  def _children_of(self, state: int, level: int) -> dict[int, int]:
    t = self.tables
    if level < self.num_dense:
      row = t.dense_next[state]
      return {int(c): int(row[c]) for c in np.flatnonzero(row >= 0)}
    r = state - t.dense_next.shape[0]
    lo, hi = int(t.indptr[r]), int(t.indptr[r + 1])
    return dict(zip(t.csr_codes[lo:hi].tolist(), t.csr_next[lo:hi].tolist()))

  def item_of(self, path: Sequence[int]) -> int:
    """Item id of a full code path, or -1 if the path is not in the trie."""
    if len(path) != self.num_levels:
      raise ValueError(f"path {list(path)} has {len(path)} codes, the trie "
                       f"has {self.num_levels} levels")
    return self.children(path[:-1]).get(int(path[-1]), -1)

  def is_valid_item(self, items: np.ndarray) -> np.ndarray:
    """bool, same shape as `items`: a real item that is in the trie."""
    items = np.asarray(items)
    ok = (items >= 0) & (items < self.num_items)
    out = np.zeros(items.shape, dtype=bool)
    out[ok] = self.has_item[items[ok]]
    return out


def build_trie(
    codes: np.ndarray,
    codebook_sizes: Sequence[int] | None = None,
    *,
    num_dense: int | None = None,
    item_ids: np.ndarray | None = None,
    num_items: int | None = None,
) -> Trie:
  """Builds the trie tables from item paths.

  Args:
    codes: int [num_paths, L] one SID path per row.
    codebook_sizes: codes per level; default max code + 1 per level.
    num_dense: levels stored as dense tables (1..L); default: the leading
      levels whose tables are at least DENSE_MIN_FILL full, while the dense
      part fits in DENSE_BUDGET entries (at least 1: the root).
    item_ids: int [num_paths] item id of each row (default: the row index).
    num_items: item id bound (default max item id + 1).

  Returns:
    The trie.

  Raises:
    ValueError: bad shapes, negative or out-of-range codes, repeated item
      ids, or two items with the same path (a collision).
  """
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] < 1:
    raise ValueError(f"codes must be int [num_items, levels], got shape "
                     f"{codes.shape}")
  if codes.shape[0] == 0:
    raise ValueError("codes is empty: no items to decode")
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"codes must be integers, got {codes.dtype}")
  codes = codes.astype(np.int64)
  n, num_levels = codes.shape
  if item_ids is None:
    item_ids = np.arange(n, dtype=np.int64)
  item_ids = np.asarray(item_ids, dtype=np.int64)
  if item_ids.shape != (n,):
    raise ValueError(f"item_ids shape {item_ids.shape} != ({n},)")
  if (item_ids < 0).any():
    raise ValueError("item ids must be >= 0")
  if len(np.unique(item_ids)) != n:
    raise ValueError("an item id appears twice")
  if num_items is None:
    num_items = int(item_ids.max()) + 1
  if item_ids.max() >= num_items:
    raise ValueError(f"item id {item_ids.max()} >= num_items {num_items}")
  if (codes < 0).any():
    i, l = np.argwhere(codes < 0)[0]
    raise ValueError(f"item {item_ids[i]}: negative code {codes[i, l]} at "
                     f"level {l}")
  if codebook_sizes is None:
    codebook_sizes = tuple(int(s) for s in codes.max(axis=0) + 1)
  codebook_sizes = tuple(int(s) for s in codebook_sizes)
  if len(codebook_sizes) != num_levels:
    raise ValueError(f"{len(codebook_sizes)} codebook sizes for "
                     f"{num_levels} levels")
  for l, size in enumerate(codebook_sizes):
    bad = np.flatnonzero(codes[:, l] >= size)
    if len(bad):
      raise ValueError(f"item {item_ids[bad[0]]}: code {codes[bad[0], l]} at "
                       f"level {l} >= codebook size {size}")
  c_max = max(codebook_sizes)

  # State ids of every prefix, level by level. prefix_state[:, l] is the
  # state after l codes (column 0 = root = state 0).
  prefix_state = np.zeros((n, num_levels), dtype=np.int64)
  level_start = [0, 1]  # first state id of each level; level 0 = {root}
  for l in range(1, num_levels):
    key = prefix_state[:, l - 1] * c_max + codes[:, l - 1]
    uniq, inv = np.unique(key, return_inverse=True)
    prefix_state[:, l] = level_start[l] + inv
    level_start.append(level_start[l] + len(uniq))
  num_states = level_start[num_levels]

  # Collisions: the full path must be unique.
  leaf_key = prefix_state[:, -1] * c_max + codes[:, -1]
  order = np.argsort(leaf_key, kind="stable")
  dup = np.flatnonzero(np.diff(leaf_key[order]) == 0)
  if len(dup):
    a, b = item_ids[order[dup[0]]], item_ids[order[dup[0] + 1]]
    raise ValueError(
        f"{len(dup)} SID collision(s): items {a} and {b} share the path "
        f"{codes[order[dup[0]]].tolist()}; add a dedup level (the SID stage "
        "does) so that every item has its own path")

  # Edges (parent state, code, child) for every level; the child at the last
  # level is the item id.
  parents, edge_codes, children = [], [], []
  for l in range(num_levels):
    child = prefix_state[:, l + 1] if l + 1 < num_levels else item_ids
    key = prefix_state[:, l] * c_max + codes[:, l]
    _, first = np.unique(key, return_index=True)
    parents.append(prefix_state[first, l])
    edge_codes.append(codes[first, l])
    children.append(child[first])

  if num_dense is None:
    # Dense while a level's table is well filled and the total fits the
    # budget; the deeper, sparse levels go to CSR rows.
    num_dense = 1
    while (num_dense < num_levels
           and level_start[num_dense + 1] * c_max <= DENSE_BUDGET
           and len(parents[num_dense]) >= DENSE_MIN_FILL * c_max * (
               level_start[num_dense + 1] - level_start[num_dense])):
      num_dense += 1
  if not 1 <= num_dense <= num_levels:
    raise ValueError(f"num_dense={num_dense} outside [1, {num_levels}]")
  s_dense = level_start[num_dense]

  dense_next = np.full((s_dense, c_max), -1, dtype=np.int32)
  for l in range(num_dense):
    dense_next[parents[l], edge_codes[l]] = children[l]

  # Sparse rows: edges of levels >= num_dense, sorted by (parent, code).
  if num_dense < num_levels:
    p = np.concatenate(parents[num_dense:]) - s_dense
    c = np.concatenate(edge_codes[num_dense:])
    ch = np.concatenate(children[num_dense:])
    order = np.lexsort((c, p))
    p, c, ch = p[order], c[order], ch[order]
    num_sparse = num_states - s_dense
    counts = np.bincount(p, minlength=num_sparse)
    max_branch = int(counts.max())
  else:
    p = c = ch = np.zeros(0, dtype=np.int64)
    num_sparse, counts, max_branch = 1, np.zeros(1, np.int64), 1
  indptr = np.zeros(num_sparse + 1, dtype=np.int32)
  np.cumsum(counts, out=indptr[1:])
  pad = np.full(max_branch, -1, dtype=np.int32)
  csr_codes = np.concatenate([c.astype(np.int32), pad])
  csr_next = np.concatenate([ch.astype(np.int32), pad])

  if max(num_states, num_items) >= np.iinfo(np.int32).max:
    raise ValueError("too many states for int32 tables")
  tables = TrieTables(
      dense_next=dense_next,
      indptr=indptr,
      csr_codes=csr_codes,
      csr_next=csr_next,
      window=np.arange(max_branch, dtype=np.int32),
      num_dense=np.asarray(num_dense, dtype=np.int32),
  )
  full_codes = np.full((num_items, num_levels), -1, dtype=np.int32)
  full_codes[item_ids] = codes
  has_item = np.zeros(num_items, dtype=bool)
  has_item[item_ids] = True
  item_states = np.full((num_items, num_levels), -1, dtype=np.int32)
  item_states[item_ids] = prefix_state
  state_items = np.bincount(prefix_state.reshape(-1), minlength=num_states)
  exclusion = ExclusionTables(item_states=item_states,
                              state_items=state_items.astype(np.int32))
  return Trie(tables=tables, codes=full_codes, codebook_sizes=codebook_sizes,
              num_items=num_items, has_item=has_item, exclusion=exclusion)
