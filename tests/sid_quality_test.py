"""Tests of the SID report's cluster scores and coverage, kept collisions and
the hierarchical balanced quantizer (generate-and-rank SIDs)."""
import json
import math

import numpy as np
import pytest

from configs import sids as sids_config
from genrec_jax.data.dataset import DataError
from genrec_jax.semantic_ids import build, collisions, quality, quantizers
from genrec_jax.semantic_ids.table import SemanticIds

metrics = pytest.importorskip("sklearn.metrics")

# Codes of 11 items: paths (0,1) x3, (0,2) x2, (1,0) x4, (1,1), (2,1): 5 SIDs.
CODES = np.array([[0, 1], [1, 0], [0, 1], [0, 2], [1, 0], [1, 1], [0, 1],
                  [1, 0], [2, 1], [0, 2], [1, 0]], np.int32)


def tiny_config(*variants):
  return sids_config.get_config(",".join(("tiny",) + variants))


def sklearn_scores(x, labels):
  return (metrics.silhouette_score(x, labels),
          metrics.calinski_harabasz_score(x, labels),
          metrics.davies_bouldin_score(x, labels))


def test_report_scores_coverage_and_max_items_per_sid():
  x = np.random.default_rng(0).normal(size=(11, 7)).astype(np.float32)
  rep = quality.report(x, CODES, CODES, [3, 3], x, sample=0)
  # Coverage by hand: 5 distinct SIDs on 11 items; (1, 0) holds 4 items.
  assert rep["coverage_before"] == rep["coverage_after"] == 5 / 11
  assert rep["max_items_per_path_before"] == 4
  assert rep["max_items_per_path_after"] == 4
  assert rep["cluster_sample"] == 11
  full_labels = [f"{a},{b}" for a, b in CODES]  # the tuple as a string
  for name, labels, num in (("level1", CODES[:, 0], 3),
                            ("full", full_labels, 5)):
    expected = sklearn_scores(x, labels)
    got = [rep[f"{name}/{k}"] for k in quality.SCORES]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert rep[f"{name}/num_labels"] == num
    assert f"{name}/skipped" not in rep


def test_report_after_dedup_and_sampled_scores():
  x = np.random.default_rng(1).normal(size=(11, 7)).astype(np.float32)
  out, sizes, _ = collisions.make_collision_free(CODES, [3, 3], "dedup")
  rep = quality.report(x, CODES, out, sizes, x, sample=9, seed=3)
  assert rep["coverage_before"] == 5 / 11 and rep["coverage_after"] == 1.0
  assert rep["max_items_per_path_after"] == 1
  # Both labellings score the same 9 sampled items.
  idx = np.sort(np.random.default_rng(3).choice(11, 9, replace=False))
  assert rep["cluster_sample"] == 9
  np.testing.assert_allclose(
      [rep[f"level1/{k}"] for k in quality.SCORES],
      sklearn_scores(x[idx], CODES[idx, 0]), rtol=1e-6)


def test_full_tuple_scores_null_when_every_item_has_its_own_sid():
  x = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
  codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]], np.int32)
  rep = quality.report(x, codes, codes, [2, 3], x, sample=0)
  assert rep["coverage_before"] == 1.0
  assert all(rep[f"full/{k}"] is None for k in quality.SCORES)
  assert "5 distinct labels on 5 points" in rep["full/skipped"]
  assert rep["level1/silhouette"] == pytest.approx(
      metrics.silhouette_score(x, codes[:, 0]), rel=1e-6)
  # One label: level-1 scores are null too, nothing raises.
  one = quality.cluster_scores(x, np.zeros(5, int))
  assert one["silhouette"] is None and one["num_labels"] == 1


def test_keep_strategy_returns_codes_unchanged():
  out, sizes, info = collisions.make_collision_free(CODES, [3, 3], "keep")
  np.testing.assert_array_equal(out, CODES)
  assert sizes == [3, 3] and info == {"kept_collisions": 11 - 5}
  with pytest.raises(ValueError, match="keep"):
    collisions.make_collision_free(CODES, [3, 3], "nope")


def make_workdir(tmp_path, n_items=61, d=13):
  """Embeddings only, as an item2vec workdir (no dataset/)."""
  (tmp_path / "embeddings").mkdir()
  x = np.random.default_rng(4).normal(size=(n_items, d)).astype(np.float32)
  np.save(tmp_path / "embeddings" / "items.npy", x)
  return tmp_path


def test_build_keep_loads_codes_but_refuses_a_trie(tmp_path):
  w = make_workdir(tmp_path)
  cfg = tiny_config("hierarchical", "balanced", "keep")
  with cfg.unlocked():
    cfg.kmeans.last_level = "global"
    cfg.require_dataset = False
  rep = build.run(cfg, w)
  codes = np.load(w / "sids" / "codes.npy")
  saved = json.loads((w / "sids" / "report.json").read_text())
  assert saved["collision_strategy"] == "keep" and codes.shape == (61, 3)
  _, counts = np.unique(codes, axis=0, return_counts=True)
  assert saved["kept_collisions"] == rep["collisions_after"] == 61 - len(counts)
  assert rep["collisions_after"] > 0  # 61 items, a shared last level of 4
  assert saved["coverage_after"] == saved["coverage_before"] == len(counts) / 61
  assert saved["max_items_per_path_before"] == counts.max()
  for key in ("level1/silhouette", "full/calinski_harabasz",
              "full/davies_bouldin"):
    assert key in saved, key
  sids = SemanticIds.load(w / "sids", num_items=61)
  np.testing.assert_array_equal(sids.codes, codes)
  assert sids.collision_strategy == "keep"
  with pytest.raises(DataError, match=r"sids/report\.json: collision_strategy "
                     "'keep'"):
    sids.trie


def groups_of(codes, level):
  """Item indices of every prefix of `level` codes."""
  if level == 0:
    return [np.arange(len(codes))]
  _, inv = np.unique(codes[:, :level], axis=0, return_inverse=True)
  inv = inv.reshape(-1)
  return [np.flatnonzero(inv == g) for g in range(inv.max() + 1)]


@pytest.mark.parametrize("last_level", ["per_group", "global"])
def test_hierarchical_balanced_capacities_and_determinism(last_level):
  x = np.random.default_rng(5).normal(size=(61, 13)).astype(np.float32)
  x[:35] += 3.0  # a dense region that plain k-means would over-split
  cfg = tiny_config("hierarchical", "balanced")  # sizes (5, 3, 4)
  with cfg.unlocked():
    cfg.kmeans.last_level = last_level
  assert cfg.method == "hierarchical" and cfg.kmeans.balanced
  q = quantizers.get("hierarchical")(x, cfg)
  assert q.info["balanced"] and q.info["last_level"] == last_level
  clustered = 0
  for level, k in enumerate(q.codebook_sizes):
    is_global = level == 2 and last_level == "global"
    for members in groups_of(q.codes, 0 if is_global else level):
      m = len(members)
      counts = np.bincount(q.codes[members, level], minlength=k)
      if m > k:  # clustered: at most ceil(m / k) items per code
        clustered += 1
        assert counts.max() <= math.ceil(m / k), (level, m, counts)
      else:  # each item its own code
        assert counts.max() == 1
  assert clustered >= 5
  again = quantizers.get("hierarchical")(x, cfg)
  np.testing.assert_array_equal(again.codes, q.codes)
  np.testing.assert_array_equal(again.recon, q.recon)
  with cfg.unlocked():
    cfg.seed = 1
  assert not np.array_equal(quantizers.get("hierarchical")(x, cfg).codes,
                            q.codes)


def test_hierarchical_rejects_unknown_last_level():
  cfg = tiny_config("hierarchical")
  with cfg.unlocked():
    cfg.kmeans.last_level = "shared"
  x = np.zeros((61, 13), np.float32)
  with pytest.raises(ValueError, match="last_level"):
    quantizers.get("hierarchical")(x, cfg)


def test_config_variants():
  assert not sids_config.get_config("hierarchical").kmeans.balanced
  assert sids_config.get_config("balanced").method == "balanced"
  cfg = sids_config.get_config("lastfm")
  assert (cfg.method, cfg.kmeans.balanced, cfg.kmeans.last_level,
          cfg.collisions.strategy) == ("hierarchical", True, "global", "keep")
  assert tuple(cfg.codebook_sizes) == (16, 16, 32)
