"""Tests for set decoding under a repeating trie (decoding/set_search.py)."""

import dataclasses
import itertools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.decoding import beam_search as bs
from genrec_jax.decoding import set_search as ss
from genrec_jax.decoding import trie as trie_lib
from genrec_jax.models import t5 as t5_lib

NEG_INF = bs.NEG_INF
PAD, EOS, START = 0, 1, 2
SIZES = (3, 2, 3)
# Six unique SIDs, not in lexicographic order: a_0 holds only SID 2, prefix
# (1, 0) holds SIDs 0 and 5, (2, 1) holds 1 and 4; (0, 0), (2, 0) are empty.
CODES = np.array([[1, 0, 2], [2, 1, 0], [0, 1, 2], [1, 1, 1], [2, 1, 2],
                  [1, 0, 0]])
SID = bs.SidTokens.contiguous(SIZES, base=3)  # tokens 3..10
VOCAB = SID.end + 2  # two unused tokens at the top


@dataclasses.dataclass(frozen=True)
class StepTableScorer:
  """Toy scorer: logits = params[step, previous token].

  params: float [S, V, V]; prompt: int32 [] the token before the first step.
  Steps past S - 1 reuse the last table.
  """

  def init(self, params, prompt):
    prev = jnp.asarray(prompt, jnp.int32).reshape(1)  # [1]
    return (jnp.zeros((1,), jnp.int32), prev), params[0, prev[0]]

  def step(self, params, state, tokens):
    t = jnp.minimum(state[0] + 1, params.shape[0] - 1)  # [W]
    return (t, tokens), params[t, tokens]  # [W, V]

  def gather(self, state, beam):
    return bs.gather_beams(state, beam)

  def check_prompts(self, prompts, num_new):
    if np.asarray(prompts).ndim != 1:
      raise ValueError("StepTableScorer prompts must be int [B]")


def _table(seed, steps):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(steps, VOCAB, VOCAB)) * 2).astype(np.float32)


def _log_prob(table, prompt, tokens):
  """float64 full-vocabulary log-prob of a token sequence."""
  t64 = np.asarray(table, np.float64)
  logp = t64 - np.log(np.exp(t64).sum(-1, keepdims=True))
  prev, total = int(prompt), 0.0
  for t, tok in enumerate(tokens):
    total += logp[min(t, len(t64) - 1), prev, tok]
    prev = tok
  return total


def _seq_tokens(sids):
  return [int(t) for s in sids for t in SID.tokens(CODES[s])] + [EOS]


def _valid_lists(max_sids, min_sids=1):
  """Every valid list: ordered distinct SIDs, min..max of them."""
  return [p for k in range(min_sids, max_sids + 1)
          for p in itertools.permutations(range(len(CODES)), k)]


def _tables():
  return ss.set_tables(trie_lib.build_trie(CODES, SIZES))


def _rows(res, b):
  """[(sids tuple, length, score)] of prompt b."""
  sids, lengths, scores = (np.asarray(x)[b] for x in res)
  return [(tuple(s[:n].tolist()), int(n), float(v), s)
          for s, n, v in zip(sids, lengths, scores)]


def _check_row(sids, n, row, max_sids):
  assert 1 <= n <= max_sids
  assert len(set(sids)) == n and all(0 <= s < len(CODES) for s in sids)
  assert (row[n:] == -1).all()


@pytest.mark.parametrize("max_sids,beam,alpha", [(1, 8, 0.0), (2, 37, 0.0),
                                                 (3, 157, 0.0),
                                                 (2, 37, 0.7)])
def test_exhaustive_beam_equals_brute_force(max_sids, beam, alpha):
  steps = max_sids * 3 + 1
  table = _table(3, steps)
  prompts = np.array([START, 7], np.int32)
  res = ss.set_beam_search(StepTableScorer(), table, prompts, _tables(),
                           sid_tokens=SID, eos_token=EOS, pad_token=PAD,
                           beam_size=beam, max_sids=max_sids,
                           length_penalty=alpha)
  assert res.sids.shape == (2, beam, max_sids)
  lists = _valid_lists(max_sids)
  assert beam >= len(lists)  # every list fits: the search is exhaustive
  for b, p in enumerate(prompts):
    want = sorted(((_log_prob(table, p, _seq_tokens(l)) / len(l) ** alpha, l)
                   for l in lists), reverse=True)
    rows = _rows(res, b)
    for (score, l), (sids, n, got, row) in zip(want, rows):
      assert sids == l
      np.testing.assert_allclose(got, score, rtol=1e-5, atol=1e-4)
    for sids, n, got, row in rows[len(lists):]:  # dead beams
      assert n == 0 and got == NEG_INF and (row == -1).all()


def test_narrow_beam_results_are_valid_and_exact():
  table = _table(5, 10)
  prompts = np.array([START, 4, 9], np.int32)
  res = ss.set_beam_search(StepTableScorer(), table, prompts, _tables(),
                           sid_tokens=SID, eos_token=EOS, pad_token=PAD,
                           beam_size=3, max_sids=3)
  best = ss.set_beam_search(StepTableScorer(), table, prompts, _tables(),
                            sid_tokens=SID, eos_token=EOS, pad_token=PAD,
                            beam_size=157, max_sids=3)
  for b, p in enumerate(prompts):
    rows = _rows(res, b)
    assert len({r[0] for r in rows}) == 3
    scores = [r[2] for r in rows]
    assert scores == sorted(scores, reverse=True)
    for sids, n, got, row in rows:
      _check_row(sids, n, row, 3)
      np.testing.assert_allclose(got, _log_prob(table, p, _seq_tokens(sids)),
                                 rtol=1e-5, atol=1e-4)
    assert float(best.scores[b, 0]) >= scores[0] - 1e-5


def test_min_sids_and_max_sids():
  table = _table(6, 7)
  res = ss.set_beam_search(StepTableScorer(), table,
                           np.array([START], np.int32), _tables(),
                           sid_tokens=SID, eos_token=EOS, pad_token=PAD,
                           beam_size=31, max_sids=2, min_sids=2)
  rows = _rows(res, 0)
  assert {r[0] for r in rows[:30]} == set(_valid_lists(2, min_sids=2))
  assert rows[30][1] == 0 and rows[30][2] == NEG_INF
  with pytest.raises(ValueError, match="min_sids"):
    ss.set_beam_search(StepTableScorer(), table, np.array([START], np.int32),
                       _tables(), sid_tokens=SID, eos_token=EOS,
                       pad_token=PAD, beam_size=2, max_sids=8, min_sids=7)
  with pytest.raises(ValueError, match="SID token of level 0"):
    ss.SetSpec(SID, eos_token=4, pad_token=PAD, max_sids=2)


def test_jitted_once():
  spec = ss.SetSpec(SID, EOS, PAD, max_sids=2)
  fn = jax.jit(chex.assert_max_traces(ss.set_search_batch, n=1),
               static_argnames=("scorer", "spec", "beam_size",
                                "length_penalty"))
  tables = _tables()
  for i in range(3):
    fn(StepTableScorer(), _table(i, 7), np.array([START, i + 3], np.int32),
       tables, spec=spec, beam_size=5)


def _reference_allowed(prefix, lists):
  """Next tokens after a token prefix, from the enumerated valid lists."""
  seqs = [_seq_tokens(l) for l in lists]
  n = len(prefix)
  nxt = {s[n] for s in seqs if len(s) > n and s[:n] == list(prefix)}
  if not nxt and any(s == list(prefix[:len(s)]) for s in seqs):
    return {PAD}  # finished
  return nxt


def test_allowed_matches_enumeration_and_masks_used_prefixes():
  spec = ss.SetSpec(SID, EOS, PAD, max_sids=2)
  tables = _tables()
  allowed = jax.jit(ss.allowed, static_argnums=(0, 3))
  advance = jax.jit(ss.advance, static_argnums=0)
  lists = _valid_lists(2)
  seen = set()
  for l in lists:
    toks = _seq_tokens(l) + [PAD]
    state = ss.init_state(spec, tables)
    for n in range(len(toks)):
      if tuple(toks[:n]) not in seen:
        seen.add(tuple(toks[:n]))
        got = set(np.flatnonzero(allowed(spec, tables, state, VOCAB)).tolist())
        assert got == _reference_allowed(toks[:n], lists), toks[:n]
      state = advance(spec, tables, state, toks[n])
    np.testing.assert_array_equal(state.sids, l + (-1,) * (2 - len(l)))
    assert bool(state.finished) and int(state.num_sids) == len(l)

  # a_0 holds only SID 2: once it is used, a_0 is masked. Prefix (1, 0)
  # holds SIDs 0 and 5: once both are used, b_0 is masked under a_1.
  spec = ss.SetSpec(SID, EOS, PAD, max_sids=4)
  state = ss.init_state(spec, tables)
  a0, b0 = SID.offsets[0], SID.offsets[1]  # tokens of a_0 and b_0
  a1, b1 = a0 + 1, b0 + 1
  for s in (2, 0, 5):
    for t in SID.tokens(CODES[s]):
      state = advance(spec, tables, state, int(t))
  mask = np.asarray(allowed(spec, tables, state, VOCAB))
  assert not mask[a0] and mask[a1] and mask[EOS] and not mask[PAD]
  mask = np.asarray(allowed(spec, tables, advance(spec, tables, state, a1),
                            VOCAB))
  assert not mask[b0] and mask[b1] and not mask[EOS]
  # A disallowed token changes nothing.
  same = advance(spec, tables, state, a0)
  chex.assert_trees_all_equal(same, state)


def _first_sid_distribution(table, prompt, lists):
  """Exact P(first SID) under renormalised sampling at temperature 1."""
  t64 = np.asarray(table, np.float64)
  probs = np.zeros(len(CODES))
  for s in range(len(CODES)):
    prefix, prev, p = [], int(prompt), 1.0
    for t, tok in enumerate(SID.tokens(CODES[s])):
      ok = sorted(_reference_allowed(prefix, lists))
      z = np.exp(t64[t, prev, ok] - t64[t, prev, ok].max())
      p *= z[ok.index(int(tok))] / z.sum()
      prefix, prev = prefix + [int(tok)], int(tok)
    probs[s] = p
  return probs


def test_sampling_valid_seeded_and_distributed():
  table = _table(8, 10)
  prompts = np.array([START, 6], np.int32)
  tables = _tables()
  kw = dict(sid_tokens=SID, eos_token=EOS, pad_token=PAD, num_samples=401,
            max_sids=3, temperature=1.0)
  res = ss.set_sample(StepTableScorer(), table, prompts, tables,
                      rng=jax.random.key(0), **kw)
  lists = _valid_lists(3)
  for b, p in enumerate(prompts):
    rows = _rows(res, b)
    for sids, n, got, row in rows[:50]:
      _check_row(sids, n, row, 3)
      np.testing.assert_allclose(got, _log_prob(table, p, _seq_tokens(sids)),
                                 rtol=1e-5, atol=1e-4)
    for sids, n, _, row in rows:
      _check_row(sids, n, row, 3)
    first = np.bincount([r[0][0] for r in rows], minlength=len(CODES))
    want = _first_sid_distribution(table, p, lists)
    np.testing.assert_allclose(first / len(rows), want, atol=0.08)
  again = ss.set_sample(StepTableScorer(), table, prompts, tables,
                        rng=jax.random.key(0), **kw)
  other = ss.set_sample(StepTableScorer(), table, prompts, tables,
                        rng=jax.random.key(1), **kw)
  chex.assert_trees_all_equal(res, again)
  assert (np.asarray(res.sids) != np.asarray(other.sids)).any()


def test_top1_sampling_is_constrained_greedy():
  table = _table(9, 10)
  prompt = 5
  res = ss.set_sample(StepTableScorer(), table, np.array([prompt], np.int32),
                      _tables(), sid_tokens=SID, eos_token=EOS,
                      pad_token=PAD, num_samples=3, max_sids=3,
                      temperature=0.7, rng=jax.random.key(3), top_k=1)
  lists = _valid_lists(3)
  prefix, prev = [], prompt
  while prefix[-1:] != [EOS]:
    ok = sorted(_reference_allowed(prefix, lists))
    tok = ok[int(np.argmax(table[min(len(prefix), 9), prev, ok]))]
    prefix, prev = prefix + [tok], tok
  for sids, n, _, _ in _rows(res, 0):
    assert _seq_tokens(sids) == prefix


def test_votes_by_hand():
  # Sequences [3, 1], [1], [3, 0] with probabilities .5, .3, .2 + a dead beam.
  res = ss.SetResult(
      sids=np.array([[[3, 1], [1, -1], [3, 0], [-1, -1]]]),
      lengths=np.array([[2, 1, 2, 0]]),
      scores=np.log(np.array([[0.5, 0.3, 0.2, 1.0]])) + [[0, 0, 0, NEG_INF]])
  count = ss.votes(res, num_sids=5)
  # SIDs 3 and 1 both occur twice; 3 at mean position 0, 1 at 0.5.
  np.testing.assert_array_equal(count.sids, [[3, 1, 0, -1, -1]])
  np.testing.assert_allclose(count.scores, [[2, 2, 1, 0, 0]])
  beam = ss.votes(res, num_sids=5, weighting="beam")
  np.testing.assert_array_equal(beam.sids, [[1, 3, 0, -1, -1]])
  np.testing.assert_allclose(beam.scores, [[0.8, 0.7, 0.2, 0, 0]])
  with pytest.raises(ValueError, match="weighting"):
    ss.votes(res, num_sids=5, weighting="rank")


def test_t5_scorer_composes():
  cfg = t5_lib.T5Config(vocab_size=VOCAB, d_model=12, d_kv=3, d_ff=14,
                        num_layers=1, num_heads=4,
                        relative_attention_num_buckets=8,
                        relative_attention_max_distance=16)
  model = t5_lib.T5Model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)
  scorer = bs.T5Scorer(graphdef, start_token=cfg.decoder_start_token_id,
                       vocab_size=VOCAB)
  ids = np.array([[5, 8, 3, 0], [9, 4, 0, 0]], np.int32)
  prompts = {"input_ids": ids, "attention_mask": ids > 0}
  res = ss.set_beam_search(scorer, params, prompts, _tables(), beam_size=5,
                           sid_tokens=SID, eos_token=EOS, pad_token=PAD,
                           max_sids=2)
  # Teacher-forced log-probs of every returned list, one jitted forward.
  rows = _rows(res, 0) + _rows(res, 1)
  dec = np.zeros((len(rows), 7), np.int32)  # start token 0, then pad
  for i, (sids, n, _, row) in enumerate(rows):
    _check_row(sids, n, row, 2)
    toks = _seq_tokens(sids)
    dec[i, 1:len(toks)] = toks[:-1]
  enc = ids.repeat(5, 0)  # [2 * W, S]
  forward = jax.jit(lambda p, e, d: nnx.merge(graphdef, p)(e, d, e > 0))
  logp = np.asarray(jax.nn.log_softmax(forward(params, enc, dec), -1),
                    np.float64)  # [2 * W, 7, V]
  for i, (sids, _, got, _) in enumerate(rows):
    toks = _seq_tokens(sids)
    want = logp[i, np.arange(len(toks)), toks].sum()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
