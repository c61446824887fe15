"""Tests for genrec_jax.decoding.trie."""

import json

import numpy as np
import pytest

from genrec_jax.data.dataset import DataError
from genrec_jax.decoding import trie as trie_lib
from genrec_jax.semantic_ids.table import SemanticIds


def _random_codes(rng, num_levels=None, sizes=None, n=None):
  num_levels = num_levels or int(rng.integers(2, 5))
  sizes = sizes or tuple(int(s) for s in rng.integers(2, 7, size=num_levels))
  cap = int(np.prod(sizes))
  n = n or int(rng.integers(1, min(cap, 60) + 1))
  flat = rng.choice(cap, size=n, replace=False)
  codes = np.stack(np.unravel_index(flat, sizes), axis=1)
  return codes, sizes


def _all_paths(trie):
  """Enumerates {path: item} by walking the tables from the root."""
  out = {}

  def walk(prefix):
    kids = trie.children(prefix)
    for c, nxt in kids.items():
      if len(prefix) + 1 == trie.num_levels:
        out[tuple(prefix) + (c,)] = nxt
      else:
        walk(list(prefix) + [c])

  walk([])
  return out


def test_small_trie_lookup():
  codes = np.array([[0, 1, 2], [0, 1, 0], [2, 0, 0], [0, 0, 1]])
  trie = trie_lib.build_trie(codes, (3, 2, 3), num_dense=2)
  assert trie.num_levels == 3 and trie.num_dense == 2
  assert trie.children([]) == {0: trie.children([])[0], 2: trie.children([])[2]}
  assert set(trie.children([0])) == {0, 1}
  assert set(trie.children([0, 1])) == {0, 2}
  assert trie.children([1]) == {}
  for i, row in enumerate(codes):
    assert trie.item_of(row) == i
  assert trie.item_of([0, 1, 1]) == -1
  assert trie.item_of([1, 0, 0]) == -1
  # Leaves store item ids; the last-level max branch here is 2.
  assert trie.max_branch == 2
  with pytest.raises(ValueError, match="levels"):
    trie.item_of([0, 1])


def test_random_tries_round_trip():
  rng = np.random.default_rng(1)
  for trial in range(40):
    codes, sizes = _random_codes(rng)
    num_levels = len(sizes)
    ids = rng.permutation(len(codes) + 5)[: len(codes)]
    num_dense = int(rng.integers(1, num_levels + 1)) if trial % 3 else None
    trie = trie_lib.build_trie(codes, sizes, num_dense=num_dense,
                               item_ids=ids, num_items=len(codes) + 5)
    paths = _all_paths(trie)
    expected = {tuple(int(c) for c in row): int(i)
                for row, i in zip(codes, ids)}
    assert paths == expected, trial
    # Number of states = 1 + distinct proper prefixes.
    n_states = 1 + sum(len({tuple(r[:l]) for r in codes.tolist()})
                       for l in range(1, num_levels))
    t = trie.tables
    assert t.dense_next.shape[0] + len(t.indptr) - 1 == n_states or (
        trie.num_dense == num_levels)
    assert trie.has_item.sum() == len(codes)
    np.testing.assert_array_equal(trie.codes[ids], codes)
    assert trie.is_valid_item(ids).all()
    assert not trie.is_valid_item(np.array([-1, len(codes) + 5])).any()


def test_deep_and_dedup_tries_stay_small():
  rng = np.random.default_rng(2)
  # 8 levels x 256 codes, 5000 items: dense only for the first levels.
  codes = rng.integers(0, 256, size=(5000, 8))
  trie = trie_lib.build_trie(codes, (256,) * 8)
  assert trie.num_dense <= 2
  assert trie.nbytes < 2_000_000, trie.nbytes
  # 3 x 16 + a dedup level: many items share (a, b, c).
  base = rng.integers(0, 16, size=(3000, 3))
  _, inv = np.unique(base, axis=0, return_inverse=True)
  inv = inv.reshape(-1)
  dedup = np.zeros(len(base), dtype=np.int64)
  for g in np.unique(inv):
    idx = np.flatnonzero(inv == g)
    dedup[idx] = np.arange(len(idx))
  codes = np.concatenate([base, dedup[:, None]], axis=1)
  trie = trie_lib.build_trie(codes)
  assert trie.nbytes < 400_000, trie.nbytes
  for i in rng.choice(len(codes), 50):
    assert trie.item_of(codes[i]) == i


def test_collision_is_an_error():
  codes = np.array([[0, 1], [1, 1], [0, 1]])
  with pytest.raises(ValueError, match="collision.*items 0 and 2"):
    trie_lib.build_trie(codes)


@pytest.mark.parametrize("codes,sizes,match", [
    (np.array([[0, -1]]), None, "negative"),
    (np.array([[0, 3]]), (2, 3), "codebook size"),
    (np.zeros((0, 3), int), None, "empty"),
    (np.zeros((3,), int), None, "shape"),
    (np.array([[0.5, 1]]), None, "integers"),
])
def test_bad_codes(codes, sizes, match):
  with pytest.raises(ValueError, match=match):
    trie_lib.build_trie(codes, sizes)


def test_load_item_sids_json(tmp_path):
  sids = {"0": [1, 0, 2], "2": [1, 1, 0], "3": [0, 1, 1]}
  (tmp_path / "item_sids.json").write_text(json.dumps(sids))
  (tmp_path / "report.json").write_text(json.dumps(
      {"codebook_sizes": [4, 4, 4]}))
  trie = SemanticIds.load(tmp_path, num_items=5).trie
  assert trie.codebook_sizes == (4, 4, 4)
  assert trie.num_items == 5
  assert trie.item_of([1, 1, 0]) == 2
  assert list(trie.has_item) == [True, False, True, True, False]
  np.testing.assert_array_equal(trie.codes[1], [-1, -1, -1])


@pytest.mark.parametrize("obj,match", [
    ({"0": [1, 2], "1": [1]}, "expected 2"),
    ({"a": [1, 2]}, "not an integer"),
    ({"0": [1, "x"]}, "list of ints"),
    ({}, "no items"),
    (3, "expected an object"),
])
def test_bad_item_sids(tmp_path, obj, match):
  path = tmp_path / "item_sids.json"
  path.write_text(json.dumps(obj))
  with pytest.raises(DataError, match=match):
    SemanticIds.load(tmp_path, num_items=5)


def test_collision_in_file_names_the_file(tmp_path):
  path = tmp_path / "item_sids.json"
  path.write_text(json.dumps({"0": [1, 2], "1": [1, 2]}))
  with pytest.raises(DataError, match="item_sids.json.*collision"):
    SemanticIds.load(tmp_path, num_items=5).trie
