"""Tests for the constrained beam search (genrec_jax.decoding.beam_search)."""

import chex
import jax
import numpy as np
import pytest

from genrec_jax.decoding import beam_search as bs
from genrec_jax.decoding import trie as trie_lib
from tests.toy_scorer import TableScorer

NEG_INF = bs.NEG_INF


def _random_case(rng, n_max=40):
  num_levels = int(rng.integers(2, 5))
  sizes = tuple(int(s) for s in rng.integers(2, 6, size=num_levels))
  cap = int(np.prod(sizes))
  n = int(rng.integers(1, min(cap, n_max) + 1))
  flat = rng.choice(cap, size=n, replace=False)
  codes = np.stack(np.unravel_index(flat, sizes), axis=1)
  return codes, sizes


def _toy_setup(rng, sizes, base=None, vocab_extra=3, rows=13):
  base = int(rng.integers(0, 4)) if base is None else base
  sid = bs.SidTokens.contiguous(sizes, base=base)
  vocab = sid.end + vocab_extra
  # Wide logits so that log-probs differ a lot between tokens.
  table = (rng.normal(size=(rows, vocab)) * 3).astype(np.float32)
  return sid, table


def _brute_force(table, prompt, codes, item_ids, sid, top_n):
  lp = TableScorer.path_log_probs(table, prompt, sid.tokens(codes))
  order = np.argsort(-lp, kind="stable")[:top_n]
  return item_ids[order], lp[order]


def _reference_beam(table, prompt, trie, sid, beam, top_n):
  """Plain-python beam search over the trie with the same scorer."""
  m = table.shape[0]
  t64 = table.astype(np.float64)
  logp = t64 - np.log(np.exp(t64 - t64.max(1, keepdims=True)).sum(
      1, keepdims=True)) - t64.max(1, keepdims=True)
  beams = [((), 0.0, int(prompt))]  # (prefix codes, score, row)
  for level in range(trie.num_levels):
    cands = []
    for prefix, score, row in beams:
      for c in trie.children(list(prefix)):
        tok = sid.offsets[level] + c
        cands.append((prefix + (c,), score + logp[row, tok],
                      (row * 31 + tok + 7) % m))
    cands.sort(key=lambda x: -x[1])
    beams = cands[: beam if level + 1 < trie.num_levels else top_n]
  return [trie.item_of(list(p)) for p, _, _ in beams], [s for _, s, _ in beams]


def _levels_max_prefixes(codes):
  return max(len({tuple(r[: l + 1]) for r in codes.tolist()})
             for l in range(codes.shape[1]))


def test_exhaustive_beam_equals_brute_force_on_random_tries():
  rng = np.random.default_rng(0)
  for trial in range(6):
    codes, sizes = _random_case(rng)
    ids = rng.permutation(len(codes))
    num_dense = int(rng.integers(1, len(sizes) + 1))
    trie = trie_lib.build_trie(codes, sizes, num_dense=num_dense,
                               item_ids=ids)
    sid, table = _toy_setup(rng, sizes)
    # Beam as wide as the widest level: the search is exhaustive.
    beam = _levels_max_prefixes(codes)
    top_n = int(rng.integers(1, min(beam, len(codes)) + 1))
    prompts = rng.integers(0, table.shape[0], size=3).astype(np.int32)
    res = bs.beam_search(TableScorer(), table, prompts, trie,
                         beam_size=beam, top_n=top_n, sid_tokens=sid)
    for b, p in enumerate(prompts):
      items, scores = _brute_force(table, p, codes, ids, sid, top_n)
      np.testing.assert_array_equal(np.asarray(res.items[b]), items,
                                    err_msg=f"trial {trial}")
      np.testing.assert_allclose(np.asarray(res.scores[b]), scores,
                                 rtol=1e-5, atol=1e-4)
      np.testing.assert_array_equal(np.asarray(res.codes[b]),
                                    trie.codes[items])


def test_narrow_beam_matches_reference_beam_search():
  rng = np.random.default_rng(1)
  for trial in range(5):
    codes, sizes = _random_case(rng, n_max=60)
    trie = trie_lib.build_trie(codes, sizes)
    sid, table = _toy_setup(rng, sizes)
    beam = int(rng.integers(1, 5))
    prompts = rng.integers(0, table.shape[0], size=2).astype(np.int32)
    res = bs.beam_search(TableScorer(), table, prompts, trie,
                         beam_size=beam, sid_tokens=sid)
    for b, p in enumerate(prompts):
      items, scores = _reference_beam(table, p, trie, sid, beam, beam)
      got = np.asarray(res.items[b])
      np.testing.assert_array_equal(got[: len(items)], items)
      np.testing.assert_allclose(np.asarray(res.scores[b])[: len(items)],
                                 scores, rtol=1e-5, atol=1e-4)
      assert (got[len(items):] == -1).all()
      # Every returned item is in the trie, with its true path score.
      real = got[got >= 0]
      assert trie.is_valid_item(real).all()
      lp = TableScorer.path_log_probs(table, p, sid.tokens(trie.codes[real]))
      np.testing.assert_allclose(np.asarray(res.scores[b])[got >= 0], lp,
                                 rtol=1e-5, atol=1e-4)


def test_beam_wider_than_valid_continuations():
  rng = np.random.default_rng(2)
  codes = np.array([[3, 0, 1], [3, 0, 2], [1, 2, 0]])
  sizes = (4, 3, 3)
  trie = trie_lib.build_trie(codes, sizes)
  sid, table = _toy_setup(rng, sizes)
  res = bs.beam_search(TableScorer(), table, np.array([0, 5], np.int32),
                       trie, beam_size=8, top_n=6, sid_tokens=sid)
  items = np.asarray(res.items)
  scores = np.asarray(res.scores)
  for b, p in enumerate([0, 5]):
    want, want_s = _brute_force(table, p, codes, np.arange(3), sid, 3)
    np.testing.assert_array_equal(items[b, :3], want)
    np.testing.assert_allclose(scores[b, :3], want_s, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(items[b, 3:], -1)
    np.testing.assert_array_equal(scores[b, 3:], NEG_INF)
    np.testing.assert_array_equal(np.asarray(res.codes)[b, 3:], -1)
  # A single item, beam 1 and beam 5.
  one = trie_lib.build_trie(np.array([[2, 1]]), (3, 2))
  sid1, table1 = _toy_setup(rng, (3, 2))
  for beam in (1, 5):
    res = bs.beam_search(TableScorer(), table1, np.array([1], np.int32),
                         one, beam_size=beam, sid_tokens=sid1)
    assert np.asarray(res.items)[0, 0] == 0
    assert (np.asarray(res.items)[0, 1:] == -1).all()


def test_items_sharing_all_but_last_code():
  rng = np.random.default_rng(3)
  sizes = (2, 2, 9)
  # 9 items on one (a, b) prefix, one elsewhere.
  codes = np.array([[1, 0, c] for c in range(9)] + [[0, 1, 4]])
  trie = trie_lib.build_trie(codes, sizes, num_dense=2)
  assert trie.max_branch == 9
  sid, table = _toy_setup(rng, sizes)
  for beam in (1, 2, 10):
    res = bs.beam_search(TableScorer(), table, np.array([4], np.int32),
                         trie, beam_size=beam, sid_tokens=sid)
    items = np.asarray(res.items)[0]
    if beam == 10:  # exhaustive: exactly the brute-force order
      want, _ = _brute_force(table, 4, codes, np.arange(10), sid, 10)
      np.testing.assert_array_equal(items, want)
    real = items[items >= 0]
    assert len(set(real.tolist())) == len(real)
    assert trie.is_valid_item(real).all()


def test_same_result_for_every_dense_sparse_split():
  rng = np.random.default_rng(4)
  codes, sizes = _random_case(rng, n_max=50)
  while len(sizes) < 3:
    codes, sizes = _random_case(rng, n_max=50)
  sid, table = _toy_setup(rng, sizes)
  prompts = np.arange(4, dtype=np.int32)
  results = []
  for d in range(1, len(sizes) + 1):
    trie = trie_lib.build_trie(codes, sizes, num_dense=d)
    res = bs.beam_search(TableScorer(), table, prompts, trie,
                         beam_size=4, sid_tokens=sid)
    results.append(np.asarray(res.items))
  for r in results[1:]:
    np.testing.assert_array_equal(r, results[0])


def test_sid_blocks_wider_than_trie_codebooks():
  rng = np.random.default_rng(5)
  codes = np.array([[0, 1], [2, 0], [2, 1]])
  trie = trie_lib.build_trie(codes)  # sizes (3, 2) inferred
  sid = bs.SidTokens.contiguous((8, 8), base=1)
  table = rng.normal(size=(7, sid.end)).astype(np.float32)
  res = bs.beam_search(TableScorer(), table, np.array([2], np.int32),
                       trie, beam_size=3, sid_tokens=sid)
  want, _ = _brute_force(table, 2, codes, np.arange(3), sid, 3)
  np.testing.assert_array_equal(np.asarray(res.items)[0], want)


def test_no_retrace_across_calls():
  rng = np.random.default_rng(6)
  codes, sizes = _random_case(rng)
  trie = trie_lib.build_trie(codes, sizes)
  sid, table = _toy_setup(rng, sizes)
  fn = jax.jit(chex.assert_max_traces(bs.search_batch, n=1),
               static_argnames=("scorer", "sid_tokens", "beam_size",
                                "num_levels", "top_n"))
  for i in range(3):
    prompts = rng.integers(0, table.shape[0], size=5).astype(np.int32)
    fn(TableScorer(), table + i, prompts, trie.tables, sid_tokens=sid,
       beam_size=4, num_levels=trie.num_levels, top_n=2)
  # The module-level jitted search also compiles once for repeated calls.
  before = bs.beam_search_jit._cache_size()
  for i in range(3):
    bs.beam_search(TableScorer(), table * (i + 1), prompts, trie,
                   beam_size=3, top_n=3, sid_tokens=sid)
  assert bs.beam_search_jit._cache_size() == before + 1


def test_vocabulary_too_small_is_an_error():
  rng = np.random.default_rng(7)
  codes = np.array([[0, 1], [1, 0]])
  trie = trie_lib.build_trie(codes, (2, 2))
  sid = bs.SidTokens.contiguous((2, 2), base=5)  # needs 9 tokens
  table = rng.normal(size=(3, 8)).astype(np.float32)
  with pytest.raises(ValueError, match="beyond the model vocabulary"):
    bs.beam_search(TableScorer(), table, np.array([0], np.int32), trie,
                   beam_size=2, sid_tokens=sid)


def test_bad_arguments():
  codes = np.array([[0, 1], [1, 0]])
  trie = trie_lib.build_trie(codes, (2, 2))
  table = np.zeros((3, 8), np.float32)
  prompts = np.array([0], np.int32)
  with pytest.raises(ValueError, match="top_n"):
    bs.beam_search(TableScorer(), table, prompts, trie, beam_size=2,
                   top_n=3, sid_tokens=bs.SidTokens.contiguous((2, 2), 0))
  with pytest.raises(ValueError, match="do not cover"):
    bs.beam_search(TableScorer(), table, prompts, trie, beam_size=2,
                   sid_tokens=bs.SidTokens.contiguous((2, 1), 0))
  with pytest.raises(ValueError, match="do not cover"):
    bs.beam_search(TableScorer(), table, prompts, trie, beam_size=2,
                   sid_tokens=bs.SidTokens.contiguous((2, 2, 2), 0))


@pytest.mark.parametrize("ids,mask,kwargs,match", [
    ([[1, 2]], [[0, 0]], {}, "all padding"),
    ([[1, 2, 3]], [[1, 1, 0]], {}, "not left-padded"),
    ([[1, 2, 3]], [[1, 0, 1]], {}, "not left-padded"),
    (np.zeros((1, 0)), np.zeros((1, 0)), {}, "empty"),
    ([[1, 2, 3]], [[1, 1, 1]], dict(max_len=5, num_new=3), "cache length"),
    ([[1, 2, 3]], [[1, 1, 1]], dict(vocab_size=3), "outside"),
    ([[1, 2, 3]], [[1, 1, 1]], dict(required_suffix=(2, 4)), "marker"),
    ([[0, 2, 4]], [[0, 1, 1]], dict(required_suffix=(1, 2, 4)), "marker"),
    ([[1, 2]], [[1, 1, 1]], {}, "batch, length"),
])
def test_malformed_prompts_are_errors(ids, mask, kwargs, match):
  with pytest.raises(ValueError, match=match):
    bs.check_left_padded(np.asarray(ids), np.asarray(mask), **kwargs)


def test_good_prompts_pass_checks():
  bs.check_left_padded(np.array([[0, 0, 5, 2, 4], [1, 3, 3, 2, 4]]),
                       np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
                       vocab_size=6, max_len=8, num_new=3,
                       required_suffix=(2, 4))


# ---------------------------------------------------------------------------
# Evaluation.

from genrec_jax.data.dataset import EvalExamples, Ragged  # noqa: E402
from genrec_jax.evaluation import generative as evaluate_lib  # noqa: E402


def _toy_examples(rng, num_items, rows):
  hist = [rng.integers(0, num_items, size=int(rng.integers(0, 4))).tolist()
          for _ in range(rows)]
  targets = [[int(t)] for t in rng.integers(0, num_items, size=rows)]
  return EvalExamples(users=np.arange(rows, dtype=np.int32),
                      history=Ragged.from_lists(hist),
                      targets=Ragged.from_lists(targets))


def test_evaluate_generative_with_toy_search():
  rng = np.random.default_rng(8)
  codes = np.array([[0, 1, 2], [0, 1, 0], [2, 0, 1], [1, 1, 1], [2, 2, 2]])
  sizes = (3, 3, 3)
  trie = trie_lib.build_trie(codes, sizes)
  sid, table = _toy_setup(rng, sizes)
  examples = _toy_examples(rng, len(codes), 11)
  calls = []

  def search_fn(batch):
    calls.append(len(batch))
    prompts = (batch.users % table.shape[0]).astype(np.int32)
    return np.asarray(bs.beam_search(
        TableScorer(), table, prompts, trie, beam_size=4,
        sid_tokens=sid).items)

  out = evaluate_lib.evaluate_generative(
      search_fn, examples, is_valid_item=trie.is_valid_item, batch_size=4)
  assert calls == [4, 4, 4]  # the last batch is padded to one shape
  assert out["invalid_rate"] == 0.0 and out["empty_rate"] == 0.0
  assert out["num_eval_users"] == 11
  assert "test/hr@3" in out and "test/hr@5" not in out
  # Same figures as ranking the full lists directly.
  lists = search_fn(evaluate_lib.take_examples(examples, np.arange(11)))
  ranks = evaluate_lib.metrics_lib.ranks_from_lists(lists, examples.targets)
  want = evaluate_lib.metrics_lib.metrics_from_ranks(
      ranks, None, (1, 3), "test/")
  for k, v in want.items():
    assert out[k] == pytest.approx(v), k
  # invalid_rate is measured, not assumed: a non-item is caught.
  bad = evaluate_lib.evaluate_generative(
      lambda b: np.tile([[0, 9, -1, 1]], (len(b), 1)), examples,
      is_valid_item=trie.is_valid_item, batch_size=5)
  assert bad["invalid_rate"] == pytest.approx(1 / 3)
  assert bad["empty_rate"] == pytest.approx(1 / 4)
  with pytest.raises(ValueError, match="twice"):
    evaluate_lib.evaluate_generative(
        lambda b: np.zeros((len(b), 3), np.int64), examples,
        is_valid_item=trie.is_valid_item, batch_size=5)


# ---------------------------------------------------------------------------
# Real KV-cache decoders (the benchmark's Qwen2-like stand-in) and T5 plumbing.

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from genrec_jax.benchmarks import reference_decoder  # noqa: E402


def _tiny_decoder(vocab=29, seed=0):
  cfg = reference_decoder.decoder_config(
      hidden=16, layers=2, heads=4, kv_heads=2, intermediate=24, vocab=vocab,
      rope_theta=1e4)
  model = reference_decoder.ReferenceDecoder(cfg, rngs=nnx.Rngs(seed))
  # Larger weights than the 0.02 init so that log-probs are well separated.
  graphdef, params = nnx.split(model)
  params = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, params)
  return graphdef, params


def _decoder_path_log_probs(graphdef, params, prompt, paths_tokens):
  """Teacher-forced sum of full-vocab log-probs of each path after prompt."""
  model = nnx.merge(graphdef, params)
  p = len(paths_tokens)
  seq = np.concatenate([np.tile(prompt, (p, 1)), paths_tokens], 1)
  seq = jnp.asarray(seq, jnp.int32)
  cache = model.init_cache(p, seq.shape[1])
  logits, _ = model.prefill(seq, jnp.ones_like(seq, bool), cache)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
  t = len(prompt)
  total = np.zeros(p)
  for l in range(paths_tokens.shape[1]):
    total += logp[np.arange(p), t - 1 + l, paths_tokens[:, l]]
  return total


def test_decoder_exhaustive_search_equals_brute_force():
  rng = np.random.default_rng(10)
  sizes = (3, 4, 2)
  codes = np.stack(np.unravel_index(rng.choice(24, 15, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=7)
  graphdef, params = _tiny_decoder(vocab=sid.end + 4)
  scorer = bs.DecoderScorer(graphdef, vocab_size=sid.end + 4)
  ids = rng.integers(1, 7, size=(2, 5)).astype(np.int32)
  prompts = {"input_ids": ids, "attention_mask": np.ones_like(ids, bool)}
  beam = _levels_max_prefixes(codes)
  res = bs.beam_search(scorer, params, prompts, trie, beam_size=beam,
                       top_n=6, sid_tokens=sid)
  for b in range(2):
    lp = _decoder_path_log_probs(graphdef, params, ids[b], sid.tokens(codes))
    order = np.argsort(-lp)[:6]
    np.testing.assert_array_equal(np.asarray(res.items[b]), order)
    np.testing.assert_allclose(np.asarray(res.scores[b]), lp[order],
                               rtol=1e-4, atol=1e-4)


def test_decoder_rejects_malformed_prompts():
  trie = trie_lib.build_trie(np.array([[0, 1], [1, 0]]), (2, 2))
  sid = bs.SidTokens.contiguous((2, 2), base=3)
  graphdef, params = _tiny_decoder(vocab=9)
  good = np.array([[1, 2, 1]], np.int32)
  for scorer, ids, mask, match in [
      (bs.DecoderScorer(graphdef), good, np.zeros((1, 3), bool), "empty"),
      (bs.DecoderScorer(graphdef, max_len=4), good, np.ones((1, 3), bool),
       "cache length"),
      (bs.DecoderScorer(graphdef, required_suffix=(2, 2)), good,
       np.ones((1, 3), bool), "marker"),
      (bs.DecoderScorer(graphdef, vocab_size=9), good + 8,
       np.ones((1, 3), bool), "outside"),
  ]:
    with pytest.raises(ValueError, match=match):
      bs.beam_search(scorer, params, {"input_ids": ids,
                                      "attention_mask": mask}, trie,
                     beam_size=2, sid_tokens=sid)
  # SID tokens beyond the model vocabulary: caught at trace time.
  with pytest.raises(ValueError, match="vocabulary"):
    bs.beam_search(bs.DecoderScorer(graphdef), params,
                   {"input_ids": good, "attention_mask": np.ones((1, 3), bool)},
                   trie, beam_size=2,
                   sid_tokens=bs.SidTokens.contiguous((2, 2), base=6))


class _ToyT5(nnx.Module):
  """Stand-in with the T5 API: logits from (encoder mean, last 2 tokens)."""

  def __init__(self, vocab, d, *, rngs):
    self.emb = nnx.Param(jax.random.normal(rngs.params(), (vocab, d)) * 2.0)
    self.out = nnx.Param(jax.random.normal(rngs.params(), (3 * d, vocab)))

  def encode(self, ids, mask):
    return self.emb[...][ids] * mask[..., None]  # [B, S, D]

  def init_cache(self, batch, max_len):
    return {"tokens": jnp.zeros((batch, max_len), jnp.int32),
            "index": jnp.zeros((batch,), jnp.int32)}

  def cross_kv(self, enc):
    return enc[None], enc[None]  # [1 layer, B, S, D]

  def decode_step(self, tokens, enc, mask, cache, cross=None):
    b = tokens.shape[0]
    if cross is not None:  # batch 1, shared by the rows
      enc = cross[0][0]
    toks = cache["tokens"].at[jnp.arange(b), cache["index"]].set(tokens)
    prev = toks[jnp.arange(b), jnp.maximum(cache["index"] - 1, 0)]
    ctx = enc.sum(1) / mask.sum(1, keepdims=True)  # [B or 1, D]
    ctx = jnp.broadcast_to(ctx, (b, ctx.shape[1]))
    h = jnp.concatenate([ctx, self.emb[...][tokens], self.emb[...][prev]], -1)
    return jnp.tanh(h) @ self.out[...], {"tokens": toks,
                                         "index": cache["index"] + 1}


def test_t5_scorer_exhaustive_equals_brute_force():
  rng = np.random.default_rng(12)
  sizes = (3, 3, 2)
  codes = np.stack(np.unravel_index(rng.choice(18, 11, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=2)
  model = _ToyT5(sid.end + 1, 5, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  scorer = bs.T5Scorer(graphdef, start_token=0, vocab_size=sid.end + 1)
  ids = rng.integers(1, sid.end, size=(2, 4)).astype(np.int32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  res = bs.beam_search(scorer, params, {"input_ids": ids,
                                        "attention_mask": mask}, trie,
                       beam_size=_levels_max_prefixes(codes), top_n=5,
                       sid_tokens=sid)
  toks = sid.tokens(codes)
  for b in range(2):
    p = len(codes)
    enc = model.encode(jnp.asarray(ids[b:b + 1]).repeat(p, 0),
                       jnp.asarray(mask[b:b + 1]).repeat(p, 0))
    cache = model.init_cache(p, 4)
    cur = jnp.zeros((p,), jnp.int32)
    total = np.zeros(p)
    m = jnp.asarray(mask[b:b + 1]).repeat(p, 0)
    for l in range(3):
      logits, cache = model.decode_step(cur, enc, m, cache)
      logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
      total += logp[np.arange(p), toks[:, l]]
      cur = jnp.asarray(toks[:, l])
    order = np.argsort(-total)[:5]
    np.testing.assert_array_equal(np.asarray(res.items[b]), order)
    np.testing.assert_allclose(np.asarray(res.scores[b]), total[order],
                               rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="all padding"):
    bs.beam_search(scorer, params, {"input_ids": ids,
                                    "attention_mask": mask * False}, trie,
                   beam_size=3, sid_tokens=sid)


def test_forced_suffix_tokens_rescore_like_brute_force():
  rng = np.random.default_rng(14)
  sizes = (3, 3, 3)
  codes = np.stack(np.unravel_index(rng.choice(27, 14, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  plain = bs.SidTokens.contiguous(sizes, base=2)
  sid = bs.SidTokens.contiguous(sizes, base=2, suffix=(0, 1))
  table = (rng.normal(size=(11, plain.end)) * 3).astype(np.float32)
  beam = _levels_max_prefixes(codes)
  prompts = np.array([3, 8], np.int32)
  res = bs.beam_search(TableScorer(), table, prompts, trie,
                       beam_size=beam, top_n=7, sid_tokens=sid)
  ref = bs.beam_search(TableScorer(), table, prompts, trie,
                       beam_size=beam, top_n=7, sid_tokens=plain)
  toks = np.concatenate([sid.tokens(codes), np.tile([[0, 1]], (14, 1))], 1)
  changed = False
  for b, p in enumerate(prompts):
    lp = TableScorer.path_log_probs(table, p, toks)
    order = np.argsort(-lp)[:7]
    np.testing.assert_array_equal(np.asarray(res.items[b]), order)
    np.testing.assert_allclose(np.asarray(res.scores[b]), lp[order],
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.codes[b]), codes[order])
    changed |= not np.array_equal(np.asarray(ref.items[b]), order)
  assert changed  # the suffix log-probs do reorder the beams here


def test_forced_suffix_with_decoder_cache():
  rng = np.random.default_rng(15)
  sizes = (2, 3)
  codes = np.array([[0, 0], [0, 2], [1, 1], [1, 2]])
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=3, suffix=(1, 2))
  graphdef, params = _tiny_decoder(vocab=sid.end, seed=2)
  ids = rng.integers(1, 3, size=(1, 4)).astype(np.int32)
  res = bs.beam_search(bs.DecoderScorer(graphdef), params, {
      "input_ids": ids, "attention_mask": np.ones_like(ids, bool)}, trie,
                       beam_size=4, sid_tokens=sid)
  toks = np.concatenate([sid.tokens(codes), np.tile([[1, 2]], (4, 1))], 1)
  lp = _decoder_path_log_probs(graphdef, params, ids[0], toks)
  np.testing.assert_array_equal(np.asarray(res.items[0]), np.argsort(-lp))
  np.testing.assert_allclose(np.asarray(res.scores[0]), np.sort(lp)[::-1],
                             rtol=1e-4, atol=1e-4)
  # Teacher-forced likelihood of each item as a target: the same sums
  # (levels + the forced suffix).
  rows = np.repeat(ids, 4, 0)
  ll = bs.sid_log_likelihood(
      bs.DecoderScorer(graphdef), params,
      {"input_ids": rows, "attention_mask": np.ones_like(rows, bool)},
      sid.tokens(codes), sid_tokens=sid)
  np.testing.assert_allclose(ll, lp, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="negative ids"):
    bs.sid_log_likelihood(
        bs.DecoderScorer(graphdef), params,
        {"input_ids": rows, "attention_mask": np.ones_like(rows, bool)},
        np.full((4, 2), -1), sid_tokens=sid)


# ---------------------------------------------------------------------------
# The project's models (genrec_jax.models.decoder / t5).

from genrec_jax.models import decoder as decoder_lib  # noqa: E402
from genrec_jax.models import t5 as t5_lib  # noqa: E402


def _real_decoder(vocab, seed=0):
  cfg = decoder_lib.DecoderConfig(
      vocab_size=vocab, hidden_size=16, intermediate_size=24, num_layers=2,
      num_heads=4, num_kv_heads=2, attention_bias=True, rope_theta=1e4)
  model = decoder_lib.Decoder(cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  # Sharper logits than the 0.02 init: well separated beams.
  params = jax.tree.map(lambda x: x * 8.0 if x.ndim > 2 else x, params)
  return graphdef, params


def test_real_decoder_search_equals_brute_force_and_left_padding():
  rng = np.random.default_rng(16)
  sizes = (3, 4, 2)
  codes = np.stack(np.unravel_index(rng.choice(24, 16, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=6)
  graphdef, params = _real_decoder(sid.end + 3)
  scorer = bs.DecoderScorer(graphdef, vocab_size=sid.end + 3)
  lengths = [6, 3]
  rows = [rng.integers(1, 6, size=n).astype(np.int32) for n in lengths]
  t = max(lengths)
  ids = np.zeros((2, t), np.int32)
  mask = np.zeros((2, t), bool)
  for i, r in enumerate(rows):
    ids[i, t - len(r):] = r
    mask[i, t - len(r):] = True
  beam = _levels_max_prefixes(codes)
  res = bs.beam_search(scorer, params, {"input_ids": ids,
                                        "attention_mask": mask}, trie,
                       beam_size=beam, top_n=8, sid_tokens=sid)
  model = nnx.merge(graphdef, params)
  toks = sid.tokens(codes)
  narrow_batch = bs.beam_search(scorer, params, {
      "input_ids": ids, "attention_mask": mask}, trie, beam_size=3,
                                sid_tokens=sid)
  for i, r in enumerate(rows):
    # Brute force: teacher-forced full forward over prompt + every path.
    seq = jnp.asarray(np.concatenate([np.tile(r, (len(codes), 1)), toks], 1))
    logp = np.asarray(jax.nn.log_softmax(model(seq), -1), np.float64)
    lp = sum(logp[np.arange(len(codes)), len(r) - 1 + l, toks[:, l]]
             for l in range(3))
    order = np.argsort(-lp)[:8]
    np.testing.assert_array_equal(np.asarray(res.items[i]), order)
    np.testing.assert_allclose(np.asarray(res.scores[i]), lp[order],
                               rtol=1e-4, atol=1e-4)
    # The teacher-forced likelihood of three targets, from the left-padded
    # batch row: the brute-force sums.
    pick = np.array([0, 5, 11])
    ll = bs.sid_log_likelihood(scorer, params, {
        "input_ids": np.repeat(ids[i:i + 1], 3, 0),
        "attention_mask": np.repeat(mask[i:i + 1], 3, 0)}, toks[pick],
                               sid_tokens=sid)
    np.testing.assert_allclose(ll, lp[pick], rtol=1e-4, atol=1e-4)
    # Unpadded single prompt, narrower beam: same as the padded batch row.
    one = {"input_ids": r[None], "attention_mask": np.ones((1, len(r)), bool)}
    narrow_single = bs.beam_search(scorer, params, one, trie, beam_size=3,
                                   sid_tokens=sid)
    np.testing.assert_array_equal(np.asarray(narrow_batch.items[i]),
                                  np.asarray(narrow_single.items[0]))
    np.testing.assert_allclose(np.asarray(narrow_batch.scores[i]),
                               np.asarray(narrow_single.scores[0]),
                               rtol=1e-5, atol=1e-5)


def test_real_t5_search_equals_brute_force():
  rng = np.random.default_rng(17)
  sizes = (3, 3, 2)
  codes = np.stack(np.unravel_index(rng.choice(18, 12, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=3)
  cfg = t5_lib.T5Config(vocab_size=sid.end + 2, d_model=16, d_kv=4, d_ff=24,
                        num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8,
                        relative_attention_max_distance=16)
  model = t5_lib.T5Model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 2 else x, params)
  model = nnx.merge(graphdef, params)
  scorer = bs.T5Scorer(graphdef, start_token=cfg.decoder_start_token_id,
                       vocab_size=cfg.vocab_size)
  ids = rng.integers(2, sid.end, size=(2, 5)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
  res = bs.beam_search(scorer, params, {"input_ids": ids,
                                        "attention_mask": mask}, trie,
                       beam_size=_levels_max_prefixes(codes), top_n=6,
                       sid_tokens=sid)
  toks = sid.tokens(codes)
  p = len(codes)
  dec_in = np.concatenate([np.full((p, 1), cfg.decoder_start_token_id),
                           toks[:, :-1]], 1).astype(np.int32)
  for b in range(2):
    logits = model(jnp.asarray(ids[b:b + 1]).repeat(p, 0), jnp.asarray(dec_in),
                   jnp.asarray(mask[b:b + 1]).repeat(p, 0))
    logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    lp = sum(logp[np.arange(p), l, toks[:, l]] for l in range(3))
    order = np.argsort(-lp)[:6]
    np.testing.assert_array_equal(np.asarray(res.items[b]), order)
    np.testing.assert_allclose(np.asarray(res.scores[b]), lp[order],
                               rtol=1e-4, atol=1e-4)
    ll = bs.sid_log_likelihood(scorer, params, {
        "input_ids": np.repeat(ids[b:b + 1], p, 0),
        "attention_mask": np.repeat(mask[b:b + 1], p, 0)}, toks,
                               sid_tokens=sid)
    np.testing.assert_allclose(ll, lp, rtol=1e-4, atol=1e-4)


def test_shared_prefix_scorer_matches_full_cache():
  rng = np.random.default_rng(18)
  sizes = (4, 3, 3)
  codes = np.stack(np.unravel_index(rng.choice(36, 25, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=5, suffix=(1,))
  graphdef, params = _tiny_decoder(vocab=sid.end + 2, seed=4)
  ids = rng.integers(1, 5, size=(3, 6)).astype(np.int32)
  mask = np.ones_like(ids, bool)
  mask[1, :2] = False
  prompts = {"input_ids": ids, "attention_mask": mask}
  full = bs.beam_search(bs.DecoderScorer(graphdef), params, prompts, trie,
                        beam_size=6, sid_tokens=sid)
  shared = bs.beam_search(bs.SharedPrefixDecoderScorer(graphdef), params,
                          prompts, trie, beam_size=6, sid_tokens=sid)
  np.testing.assert_array_equal(np.asarray(shared.items),
                                np.asarray(full.items))
  np.testing.assert_allclose(np.asarray(shared.scores),
                             np.asarray(full.scores), rtol=1e-5, atol=1e-5)


def test_real_decoder_shared_prefix_equals_full_cache():
  rng = np.random.default_rng(19)
  sizes = (3, 4, 2)
  codes = np.stack(np.unravel_index(rng.choice(24, 17, replace=False), sizes),
                   1)
  trie = trie_lib.build_trie(codes, sizes)
  sid = bs.SidTokens.contiguous(sizes, base=6, suffix=(2,))
  graphdef, params = _real_decoder(sid.end + 3, seed=5)
  ids = rng.integers(1, 6, size=(3, 7)).astype(np.int32)
  mask = np.ones_like(ids, bool)
  mask[1, :3] = False  # left padding
  prompts = {"input_ids": ids, "attention_mask": mask}
  full = bs.beam_search(bs.DecoderScorer(graphdef), params, prompts, trie,
                        beam_size=5, top_n=5, sid_tokens=sid)
  shared = bs.beam_search(bs.SharedPrefixDecoderScorer(graphdef), params,
                          prompts, trie, beam_size=5, top_n=5,
                          sid_tokens=sid)
  np.testing.assert_array_equal(np.asarray(shared.items),
                                np.asarray(full.items))
  np.testing.assert_allclose(np.asarray(shared.scores),
                             np.asarray(full.scores), rtol=1e-5, atol=1e-5)
  # One step: the logits of decode_step_shared equal decode_step on W copies.
  model = nnx.merge(graphdef, params)
  prefix = model.init_cache(1, 7)
  _, prefix = model.prefill(jnp.asarray(ids[1:2]), jnp.asarray(mask[1:2]),
                            prefix)
  copies = jax.tree.map(lambda x: jnp.repeat(x, 4, 0), model.init_cache(1, 9))
  _, copies = model.prefill(jnp.asarray(np.repeat(ids[1:2], 4, 0)),
                            jnp.asarray(np.repeat(mask[1:2], 4, 0)), copies)
  suffix = model.init_suffix(4, 2)
  toks = jnp.asarray([6, 7, 8, 6], jnp.int32)
  for _ in range(2):
    want, copies = model.decode_step(toks, copies)
    got, suffix = model.decode_step_shared(toks, prefix, suffix)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    toks = toks + 3


def test_exclusion_equals_search_over_the_reduced_trie():
  """Excluding items per row == searching a trie built without them (any
  beam width), and no excluded item is ever returned."""
  rng = np.random.default_rng(7)
  for trial in range(6):
    codes, sizes = _random_case(rng, n_max=60)
    n = len(codes)
    ids = rng.permutation(n)
    trie = trie_lib.build_trie(codes, sizes, item_ids=ids,
                               num_dense=int(rng.integers(1, len(sizes) + 1)))
    sid, table = _toy_setup(rng, sizes)
    beam = int(rng.integers(1, 6))
    top_n = int(rng.integers(1, beam + 1))
    prompts = rng.integers(0, table.shape[0], size=3).astype(np.int32)
    # Each row excludes a random subset (maybe everything, maybe repeats).
    exclude = [rng.choice(n, size=int(rng.integers(0, n + 1)))
               for _ in prompts]
    res = bs.beam_search(TableScorer(), table, prompts, trie,
                         beam_size=beam, top_n=top_n, sid_tokens=sid,
                         exclude=[ids[e] for e in exclude])
    for b, p in enumerate(prompts):
      keep = np.setdiff1d(np.arange(n), exclude[b])
      got = np.asarray(res.items[b])
      if not len(keep):
        assert (got == -1).all()
        continue
      reduced = trie_lib.build_trie(codes[keep], sizes, item_ids=ids[keep],
                                    num_items=n)
      want = bs.beam_search(TableScorer(), table, prompts[b:b + 1], reduced,
                            beam_size=beam, top_n=top_n, sid_tokens=sid)
      np.testing.assert_array_equal(got, np.asarray(want.items[0]),
                                    err_msg=f"trial {trial} row {b}")
      np.testing.assert_allclose(np.asarray(res.scores[b]),
                                 np.asarray(want.scores[0]), rtol=1e-6)
      assert not np.isin(got, ids[exclude[b]]).any()


def test_exclusion_fills_top_n_when_the_catalogue_allows():
  """A history that covers the best items still yields top_n others."""
  codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])
  trie = trie_lib.build_trie(codes, (3, 2))
  rng = np.random.default_rng(3)
  sid, table = _toy_setup(rng, (3, 2))
  prompts = np.array([0, 1], np.int32)
  plain = np.asarray(bs.beam_search(TableScorer(), table, prompts, trie,
                                    beam_size=2, top_n=2,
                                    sid_tokens=sid).items)
  res = bs.beam_search(TableScorer(), table, prompts, trie, beam_size=2,
                       top_n=2, sid_tokens=sid, exclude=plain.tolist())
  got = np.asarray(res.items)
  for b in range(2):
    assert (got[b] >= 0).all() and not np.isin(got[b], plain[b]).any()
