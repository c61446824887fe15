"""UR4Rec score fusion: hand-computed orders, masks, fitting, the gate."""
import numpy as np
import pytest

from genrec_jax import model_folder
from genrec_jax.data.dataset import EvalExamples, Ragged
from genrec_jax.ur4rec import fusion

# One row, 5 candidates; column 3 is masked (a history item) and gets the
# highest raw score of both scorers: it must never come first.
A = np.array([[2.0, 1.0, 0.0, 9.0, 1.0]])
B = np.array([[0.0, 3.0, 1.0, 9.0, 2.0]])
MASK = np.array([[True, True, True, False, True]])


def test_weighted_hand_computed():
  # softmax(a) over columns {0, 1, 2, 4}: e^2, e^1, e^0, e^1 = 7.389, 2.718,
  # 1, 2.718; sum 13.826 -> pa = .5344, .1966, .0723, -, .1966
  # softmax(b): e^0, e^3, e^1, e^2 = 1, 20.086, 2.718, 7.389; sum 31.193
  # -> pb = .0321, .6439, .0871, -, .2369
  pa = np.array([0.53444, 0.19661, 0.07233, 0.0, 0.19661])
  pb = np.array([0.03206, 0.64391, 0.08714, 0.0, 0.23688])
  # alpha = beta = .5: .2833, .4203, .0797, -, .2167 -> 1, 0, 4, 2, (3)
  got = fusion.weighted(A, B, MASK, 0.5, 0.5)
  np.testing.assert_allclose(got[0, MASK[0]], (0.5 * pa + 0.5 * pb)[MASK[0]],
                             atol=1e-4)
  assert got[0, 3] == fusion.NEG_INF
  assert fusion.order(got, MASK).tolist() == [[1, 0, 4, 2, 3]]
  # alpha .8, beta .2: .4340, .2861, .0753, -, .2047 -> 0, 1, 4, 2, (3)
  got = fusion.weighted(A, B, MASK, 0.8, 0.2)
  np.testing.assert_allclose(got[0, [0, 1, 2, 4]],
                             [0.4340, 0.2861, 0.0753, 0.2047], atol=1e-4)
  assert fusion.order(got, MASK).tolist() == [[0, 1, 4, 2, 3]]


def test_rank_hand_computed():
  # a: col0 (2) rank 0; cols 1 and 4 tie at 1 -> lower column first: col1
  # rank 1, col4 rank 2; col2 rank 3. RR_a = 1, 1/2, 1/4, -, 1/3.
  # b: col1 (3) 0, col4 (2) 1, col2 (1) 2, col0 (0) 3.
  # RR_b = 1/4, 1, 1/3, -, 1/2.
  np.testing.assert_array_equal(
      fusion.masked_ranks(A, MASK), [[0, 1, 3, 5, 2]])  # masked -> C
  # .5/.5: .625, .75, .2917, -, .4167 -> 1, 0, 4, 2, (3)
  got = fusion.rank(A, B, MASK, 0.5, 0.5)
  np.testing.assert_allclose(got[0, [0, 1, 2, 4]],
                             [0.625, 0.75, 0.29167, 0.41667], atol=1e-5)
  assert fusion.order(got, MASK).tolist() == [[1, 0, 4, 2, 3]]
  # .7/.3: .7 + .075 = .775, .35 + .3 = .65, .175 + .1 = .275, -,
  # .2333 + .15 = .3833 -> 0, 1, 4, 2, (3)
  got = fusion.rank(A, B, MASK, 0.7, 0.3)
  np.testing.assert_allclose(got[0, [0, 1, 2, 4]],
                             [0.775, 0.65, 0.275, 0.38333], atol=1e-5)
  assert fusion.order(got, MASK).tolist() == [[0, 1, 4, 2, 3]]


@pytest.mark.parametrize("shortlist,want", [
    # a's order: 0, 1, 4, 2 (4 valid candidates).
    (1, [0, 1, 4, 2, 3]),  # {0}; then a's order
    (2, [1, 0, 4, 2, 3]),  # {0, 1} by b: 1 (3) > 0 (0); then 4, 2
    (3, [1, 4, 0, 2, 3]),  # {0, 1, 4} by b: 1 (3), 4 (2), 0 (0); then 2
    (4, [1, 4, 2, 0, 3]),  # all valid: b's order
    (5, [1, 4, 2, 0, 3]),  # = C: b's order
])
def test_cascade_hand_computed(shortlist, want):
  got = fusion.cascade(A, B, MASK, shortlist)
  assert fusion.order(got, MASK).tolist() == [want]
  assert got[0, 3] == fusion.NEG_INF


def test_cascade_extremes_and_ties_on_random_rows():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 6, 9))
  mask = rng.random((6, 9)) > 0.3
  mask[:, 0] = True
  b_order = fusion.order(b, mask)
  a_order = fusion.order(a, mask)
  np.testing.assert_array_equal(
      fusion.order(fusion.cascade(a, b, mask, 9), mask), b_order)
  short1 = fusion.order(fusion.cascade(a, b, mask, 1), mask)
  np.testing.assert_array_equal(short1[:, 0], a_order[:, 0])
  np.testing.assert_array_equal(short1, a_order)
  # Equal b scores inside the shortlist keep a's order.
  tie = fusion.order(fusion.cascade(a, np.zeros_like(b), mask, 4), mask)
  np.testing.assert_array_equal(tie, a_order)


@pytest.mark.parametrize("method", ["weighted", "rank", "cascade", "gate"])
def test_masked_never_above_valid(method):
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 8, 11))
  mask = rng.random((8, 11)) > 0.4
  mask[:, 0] = True
  a[~mask] = b[~mask] = 100.0  # masked entries score highest
  if method == "gate":
    params = fusion.GateParams(
        w=np.ones(7, np.float32), c=0.0, mean=np.zeros(7, np.float32),
        std=np.ones(7, np.float32))
    fused = fusion.apply_gate(params, a, b, mask, np.full(8, 5))
  else:
    fused = fusion.fuse(method, a, b, mask,
                        {"alpha": 0.4, "beta": 0.6, "shortlist": 3})
  assert np.all(fused[~mask] == fusion.NEG_INF)
  assert fused[mask].min() > fusion.NEG_INF
  ranked = fusion.order(fused, mask)
  n_valid = mask.sum(1)
  for r in range(8):
    assert mask[r, ranked[r, :n_valid[r]]].all()


def test_normalisation_ignores_masked_entries():
  a = np.array([[1.0, 2.0, 3.0]])
  m = np.array([[True, True, False]])
  p = np.asarray(fusion.masked_softmax(a, m))
  np.testing.assert_allclose(p, [[1 / (1 + np.e), np.e / (1 + np.e), 0.0]],
                             rtol=1e-6)
  # A row with no valid candidate: zeros, no NaN.
  empty = np.asarray(fusion.masked_softmax(a, np.zeros_like(m)))
  assert np.all(empty == 0)


@pytest.mark.parametrize("field,value", [("alpha", 1.5), ("beta", -0.1)])
def test_weights_outside_unit_interval_raise(field, value):
  kw = {"alpha": 0.5, "beta": 0.5, field: value}
  for fn in (fusion.weighted, fusion.rank):
    with pytest.raises(ValueError, match=f"{field}={value}"):
      fn(A, B, MASK, **kw)
  with pytest.raises(ValueError, match="alpha=nan"):
    fusion.check_weight("alpha", float("nan"))
  with pytest.raises(ValueError, match="shortlist=0"):
    fusion.cascade(A, B, MASK, 0)
  with pytest.raises(ValueError, match="alpha=2"):
    fusion.fit_weights("weighted", A, B, MASK, [0], grid=[0.5, 2])
  with pytest.raises(ValueError, match="'sum'"):
    fusion.fuse("sum", A, B, MASK, {})


def _perfect_and_random(rows=60, c=30, seed=0):
  """A ranks every row's target first by a small margin; B is random."""
  rng = np.random.default_rng(seed)
  target = rng.integers(0, c, rows)
  mask = rng.random((rows, c)) > 0.1
  mask[np.arange(rows), target] = True
  perfect = rng.random((rows, c)) * 0.1
  perfect[np.arange(rows), target] = 0.2
  noise = rng.normal(size=(rows, c)) * 3.0
  return perfect, noise, mask, target


@pytest.mark.parametrize("method", ["weighted", "rank"])
def test_fit_weights_recovers_the_perfect_scorer(method):
  perfect, noise, mask, target = _perfect_and_random()
  best, table = fusion.fit_weights(method, perfect, noise, mask, target)
  assert best == {"alpha": 1.0, "beta": 0.0}
  assert [p["alpha"] for p, _ in table] == list(fusion.ALPHA_GRID)
  assert dict((p["alpha"], v) for p, v in table)[1.0] == pytest.approx(1.0)
  best, _ = fusion.fit_weights(method, noise, perfect, mask, target)
  assert best == {"alpha": 0.0, "beta": 1.0}


def test_fit_weights_cascade():
  perfect, noise, mask, target = _perfect_and_random()
  # A perfect: shortlist 1 already ranks the target first (ties -> smaller).
  best, table = fusion.fit_weights("cascade", perfect, noise, mask, target)
  assert best == {"shortlist": 1}
  assert [p["shortlist"] for p, _ in table] == [1, 5, 10, 20, 30]
  # B perfect: only the full shortlist lets it re-rank everything.
  best, _ = fusion.fit_weights("cascade", noise, perfect, mask, target)
  assert best == {"shortlist": 30}


def test_target_ranks_are_pessimistic_and_masked():
  fused = np.array([[0.5, 0.5, 0.9, 0.1], [0.3, 0.2, 0.1, 0.0]])
  mask = np.array([[True, True, False, True], [True, True, True, True]])
  # Row 0: target col 0 ties with col 1 -> rank 1; the masked 0.9 is ignored.
  # Row 1: target col -1 (not a candidate) -> NOT_FOUND.
  r = fusion.target_ranks(fused, mask, np.array([0, -1]))
  assert r.tolist() == [1, fusion.metrics.NOT_FOUND]
  m = fusion.evaluate(fused, mask, np.array([0, 2]), ks=(1, 3))
  assert m["hr@1"] == 0.0 and m["hr@3"] == 1.0
  assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def _gate_rows(n, c, seed):
  """A knows the target on long histories, B on short ones."""
  rng = np.random.default_rng(seed)
  hist = rng.integers(1, 100, n)
  long = hist >= 50
  target = rng.integers(0, c, n)
  mask = np.ones((n, c), bool)
  a = rng.normal(size=(n, c))
  b = rng.normal(size=(n, c))
  rows = np.arange(n)
  a[rows[long], target[long]] += 2.5
  b[rows[~long], target[~long]] += 2.5
  return a, b, mask, target, hist


def test_gate_beats_both_single_scorers_on_held_out_rows(tmp_path):
  a, b, mask, target, hist = _gate_rows(600, 40, seed=0)
  params = fusion.fit_gate(a, b, mask, target, hist, seed=0)
  again = fusion.fit_gate(a, b, mask, target, hist, seed=0)
  np.testing.assert_array_equal(params.w, again.w)  # seeded, deterministic
  ta, tb, tmask, ttarget, thist = _gate_rows(600, 40, seed=1)
  ndcg = lambda fused: fusion.evaluate(fused, tmask, ttarget,
                                       ks=(10,))["ndcg@10"]
  gated = ndcg(fusion.apply_gate(params, ta, tb, tmask, thist))
  only_a = ndcg(fusion.weighted(ta, tb, tmask, 1.0, 0.0))
  only_b = ndcg(fusion.weighted(ta, tb, tmask, 0.0, 1.0))
  even = ndcg(fusion.weighted(ta, tb, tmask, 0.5, 0.5))
  assert gated > max(only_a, only_b) + 0.1, (gated, only_a, only_b)
  assert gated > even, (gated, even)
  g = fusion.gate_weights(params, ta, tb, tmask, thist)
  assert g[thist >= 50].mean() > 0.8 and g[thist < 50].mean() < 0.2
  # Serialisable: dict of lists (JSON) and npz give the same gate.
  for name in ("gate.json", "gate.npz"):
    params.save(tmp_path / name)
    back = fusion.GateParams.load(tmp_path / name)
    np.testing.assert_allclose(
        fusion.apply_gate(back, ta, tb, tmask, thist),
        fusion.apply_gate(params, ta, tb, tmask, thist), rtol=1e-6)
  bad = params.to_dict()
  bad["w"] = bad["w"][:3]
  with pytest.raises(ValueError, match="'w'"):
    fusion.GateParams.from_dict(bad)


def _batch():
  # Two rows; row 0 has items 1 and 4 in its history (excluded).
  return EvalExamples(
      users=np.array([0, 1], np.int32),
      history=Ragged.from_lists([[1, 4], [2]]),
      targets=Ragged.from_lists([[3], [0]]),
      exclude=Ragged.from_lists([[1, 4], [2]]))


def test_candidate_scores_from_a_score_ranker():
  table = np.arange(12, dtype=np.float32).reshape(2, 6)  # [B, I]
  ranker = model_folder.ScoreRanker("toy", lambda batch: table, 6)
  batch = _batch()
  scores, mask = fusion.candidate_scores(ranker, batch)
  assert scores.shape == mask.shape == (2, 6)
  assert mask.tolist() == [[True, False, True, True, False, True],
                           [True, True, False, True, True, True]]
  assert scores[0, 1] == fusion.NEG_INF and scores[0, 3] == 3.0
  cands = np.array([[3, 4, 0, -1], [0, 5, 2, 1]])
  scores, mask = fusion.candidate_scores(ranker, batch, cands)
  assert mask.tolist() == [[True, False, True, False],
                           [True, True, False, True]]
  assert scores[0, 0] == 3.0 and scores[1, 1] == 11.0
  assert fusion.target_columns(batch, cands).tolist() == [0, 0]
  assert fusion.target_columns(batch, None).tolist() == [3, 0]
  with pytest.raises(ValueError, match="one row per batch row"):
    fusion.candidate_scores(ranker, batch, cands[:1])


def test_candidate_scores_refuses_a_generative_model():
  class OnlyRanks:
    kind = "decoder"
    beam_size = 4

    def rank(self, batch, *, top_n, exclude_history):
      del exclude_history
      return np.zeros((len(batch), top_n), np.int64)

  with pytest.raises(ValueError, match="'decoder' only ranks"):
    fusion.candidate_scores(OnlyRanks(), _batch())
