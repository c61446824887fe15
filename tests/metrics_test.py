"""Ranking metrics against hand-computed values (pessimistic ties)."""
import math

import numpy as np
import pytest

from genrec_jax.data.dataset import EvalExamples, Ragged
from genrec_jax.evaluation import metrics


def _examples(histories, targets, exclude=True, candidates=None):
  hist = Ragged.from_lists(histories)
  return EvalExamples(np.arange(len(histories), dtype=np.int32), hist,
                      Ragged.from_lists(targets),
                      exclude=hist if exclude else None, candidates=candidates)


def _fixed_scores(table):
  table = np.asarray(table, dtype=np.float32)

  def score(users, history):
    del history
    return table[users]

  return score


def test_ranks_from_candidate_scores_matches_brute_force():
  rng = np.random.default_rng(0)
  B, C = 64, 7
  scores = rng.integers(0, 4, (B, C)).astype(np.float32)  # many ties
  mask = rng.random((B, C)) < 0.7
  target = rng.integers(-1, C, B)  # -1: absent
  want = []
  for b in range(B):
    t = target[b]
    if t < 0:
      want.append(metrics.NOT_FOUND)
      continue
    others = [c for c in range(C) if c != t and mask[b, c]]
    if not mask[b, t]:  # masked target: after every valid candidate
      want.append(len(others))
    else:  # ties count against the target
      want.append(sum(scores[b, c] >= scores[b, t] for c in others))
  got = metrics.ranks_from_candidate_scores(scores, mask, target)
  assert got.dtype == np.int32 and got.shape == (B,)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert (~mask[np.arange(B), np.maximum(target, 0)] & (target >= 0)).any()


def test_ranks_full_with_mask_and_pessimistic_ties():
  # 5 items. Row 0: target 2; scores 0.9 (item 0, masked history), 0.5, 0.7,
  # 0.7, 0.1 -> items ranked above-or-equal to 2: item 3 (tie) -> rank 1.
  # Row 1: target 4 with the top score, nothing masked -> rank 0.
  # Row 2: constant scores -> pessimistic: last of the 4 unmasked items.
  scores = [[0.9, 0.5, 0.7, 0.7, 0.1],
            [0.1, 0.2, 0.3, 0.4, 0.5],
            [1.0, 1.0, 1.0, 1.0, 1.0]]
  ex = _examples([[0], [], [1]], [[2], [4], [3]])
  ranks = metrics.ranks_from_scores(_fixed_scores(scores), ex, 5,
                                    max_history=3, batch_size=2)
  np.testing.assert_array_equal(ranks[:, 0], [1, 0, 3])


def test_target_in_history_is_never_masked():
  ex = _examples([[1, 2]], [[2]])  # repeat purchase of item 2
  ranks = metrics.ranks_from_scores(_fixed_scores([[0.0, 0.9, 0.8, 0.1]]), ex,
                                    4, max_history=2, batch_size=1)
  assert ranks[0, 0] == 0  # item 1 masked, item 2 kept and on top


def test_metrics_from_ranks_hand_computed():
  ranks = np.array([[0], [1], [4], [metrics.NOT_FOUND]])
  m = metrics.metrics_from_ranks(ranks, ks=(1, 3, 5), prefix="test/")
  assert m["test/hr@1"] == pytest.approx(1 / 4)
  assert m["test/hr@3"] == pytest.approx(2 / 4)
  assert m["test/hr@5"] == pytest.approx(3 / 4)
  assert m["test/recall@5"] == m["test/hr@5"]
  assert m["test/ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
  assert m["test/ndcg@5"] == pytest.approx(
      (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
  assert m["test/mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 0) / 4)


def test_paired_gain_hand_computed():
  # Per-row NDCG@3: A = [1, 0, 1/log2(3), 0], B = [1/2, 1, 1, 0].
  a = np.array([0, 5, 1, metrics.NOT_FOUND])
  b = np.array([2, 0, 0, 3])
  d = np.array([0.5 - 1, 1, 1 - 1 / math.log2(3), 0])
  gain, se = metrics.paired_gain(a, b, k=3)
  assert gain == pytest.approx(d.mean())
  assert se == pytest.approx(np.std(d, ddof=1) / 2)
  # The mean gain is the difference of the two NDCG@3 means.
  ma = metrics.metrics_from_ranks(a[:, None], ks=(3,))["ndcg@3"]
  mb = metrics.metrics_from_ranks(b[:, None], ks=(3,))["ndcg@3"]
  assert gain == pytest.approx(mb - ma)


def test_multi_target_recall_and_ndcg():
  # One row, 3 targets ranked 0, 2, 7: at K=3 two hits of three.
  ranks = np.array([[0, 2, 7]])
  m = metrics.metrics_from_ranks(ranks, np.array([3]), ks=(3,))
  assert m["hr@3"] == 1.0
  assert m["recall@3"] == pytest.approx(2 / 3)
  idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
  assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
  # Padding targets (NOT_FOUND beyond num_targets) do not count.
  padded = np.array([[0, metrics.NOT_FOUND]])
  m = metrics.metrics_from_ranks(padded, np.array([1]), ks=(3,))
  assert m["recall@3"] == 1.0 and m["ndcg@3"] == pytest.approx(1.0)


def test_ranks_from_lists():
  ranked = np.array([[4, 2, 9], [1, 3, -1], [7, 8, 5]])
  ranks = metrics.ranks_from_lists(ranked, Ragged.from_lists([[2], [5], [5]]))
  np.testing.assert_array_equal(ranks[:, 0], [1, metrics.NOT_FOUND, 2])


def test_sampled_candidates_protocol():
  # Candidates: target first, then negatives. Target 3 scores 0.4; of the
  # negatives only item 1 (0.8) is higher -> sampled rank 1. Full ranking
  # (history item 0 masked): items 1 and 4 are higher -> rank 2.
  scores = [[0.9, 0.8, 0.1, 0.4, 0.6, 0.2]]
  ex = _examples([[0]], [[3]], candidates=np.array([[3, 1, 2, 5]]))
  m = metrics.evaluate_scorer(_fixed_scores(scores), ex, 6, prefix="",
                              ks=(1, 3), max_history=2, batch_size=1)
  assert m["hr@1"] == 0.0 and m["hr@3"] == 1.0
  assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))
  assert m["sampled_hr@1"] == 0.0
  assert m["sampled_ndcg@3"] == pytest.approx(1 / math.log2(3))
