"""decoding/sampling.py: greedy = a no-cache reference, seeds, top-k/p, EOS."""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.decoding import sampling
from genrec_jax.models import decoder

V = 37
PROMPTS = ([5, 9, 2, 30, 11, 7], [3, 14], [20, 1, 8, 36])


def _model(model_type="llama", scale=0.5):
  """A tiny random decoder with weights large enough to vary its output."""
  cfg = decoder.DecoderConfig(
      vocab_size=V, hidden_size=12, intermediate_size=19, num_layers=2,
      num_heads=3, num_kv_heads=1, head_dim=4, rope_theta=500.0,
      model_type=model_type, attention_bias=model_type == "qwen2",
      tie_word_embeddings=model_type == "qwen2")
  model = decoder.Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [scale * jax.random.normal(k, x.shape) for k, x in
            zip(keys, leaves)]
  return graphdef, jax.tree.unflatten(treedef, leaves)


def _batch(prompts=PROMPTS, left=True, extra=2):
  T = max(map(len, prompts)) + extra
  ids = np.zeros((len(prompts), T), np.int32)  # [B, T]
  mask = np.zeros((len(prompts), T), bool)  # [B, T]
  for b, p in enumerate(prompts):
    sl = slice(T - len(p), T) if left else slice(0, len(p))
    ids[b, sl], mask[b, sl] = p, True
  return ids, mask


def _greedy_reference(graphdef, state, prompts, steps):
  """Step by step: the full forward of each unpadded row, no cache."""
  model = nnx.merge(graphdef, state)
  out = []
  for p in prompts:
    seq = list(p)
    for _ in range(steps):
      logits = model(jnp.asarray([seq], jnp.int32))  # [1, T, V]
      seq.append(int(jnp.argmax(logits[0, -1])))
    out.append(seq[len(p):])
  return np.array(out)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_greedy_matches_full_forward_reference(model_type):
  graphdef, state = _model(model_type, 0.5 if model_type == "llama" else 1.0)
  ref = _greedy_reference(graphdef, state, PROMPTS, 6)
  assert len({tuple(r) for r in ref}) > 1  # a model that varies
  assert len(np.unique(ref)) > 3
  settings = sampling.SamplingSettings(max_new_tokens=6, temperature=0.0)
  for left in (True, False):  # left padding, and a mask on the right
    ids, mask = _batch(left=left)
    out = sampling.sample(graphdef, state, ids, mask, jax.random.key(0),
                          settings)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.lengths), [6, 6, 6])
    assert not np.asarray(out.finished).any()


def test_top_k_one_is_greedy_and_seeds():
  graphdef, state = _model()
  ids, mask = _batch()
  greedy = sampling.sample(
      graphdef, state, ids, mask, jax.random.key(0),
      sampling.SamplingSettings(max_new_tokens=9, temperature=0.0)).tokens
  top1 = sampling.sample(
      graphdef, state, ids, mask, jax.random.key(3),
      sampling.SamplingSettings(max_new_tokens=9, temperature=1.0,
                                top_k=1)).tokens
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))
  hot = sampling.SamplingSettings(max_new_tokens=9, temperature=1.0)
  a = sampling.sample(graphdef, state, ids, mask, jax.random.key(7), hot)
  b = sampling.sample(graphdef, state, ids, mask, jax.random.key(7), hot)
  c = sampling.sample(graphdef, state, ids, mask, jax.random.key(8), hot)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()
  # A legacy uint32 key works too, and per-row keys make a row independent
  # of the others.
  sampling.sample(graphdef, state, ids, mask, jax.random.PRNGKey(7), hot)
  rows = jax.random.split(jax.random.key(5), 3)
  full = sampling.sample(graphdef, state, ids, mask, rows, hot).tokens
  alone = sampling.sample(graphdef, state, ids[1:2], mask[1:2], rows[1:2],
                          hot).tokens
  np.testing.assert_array_equal(np.asarray(full[1:2]), np.asarray(alone))


def _numpy_nucleus(p, top_p):
  order = np.argsort(-p, kind="stable")
  cum = np.cumsum(p[order])
  n = int(np.searchsorted(cum, top_p - 1e-12) + 1)  # first cum >= top_p
  keep = np.zeros(p.shape, bool)
  keep[order[:n]] = True
  return keep


P = np.array([0.05, 0.4, 0.02, 0.15, 0.25, 0.1, 0.03])


@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.7, 0.85, 0.95, 1.0])
def test_top_p_keeps_the_nucleus(top_p):
  logits = jnp.log(jnp.asarray(P, jnp.float32))[None]  # [1, 7]
  keep = _numpy_nucleus(P, top_p)
  x = np.asarray(sampling.filter_logits(logits, 1.0, 0, top_p))[0]
  np.testing.assert_array_equal(x > sampling.NEG_INF / 2, keep)
  # Draws (full-vocabulary path and top-k path) stay in the nucleus, with
  # the renormalised frequencies.
  n = 4000
  keys = jax.random.split(jax.random.key(0), n)
  want = np.where(keep, P, 0) / P[keep].sum()
  for top_k in (0, 6):
    s = sampling.SamplingSettings(max_new_tokens=1, temperature=1.0,
                                  top_k=top_k, top_p=top_p)
    draws = np.asarray(sampling.next_token(jnp.repeat(logits, n, 0), keys,
                                           s))
    assert keep[draws].all()
    freq = np.bincount(draws, minlength=len(P)) / n
    np.testing.assert_allclose(freq, want, atol=0.03)


def test_top_k_and_temperature_filter():
  logits = jnp.log(jnp.asarray(P, jnp.float32))[None]
  x = np.asarray(sampling.filter_logits(logits, 0.5, 3))[0]
  np.testing.assert_array_equal(np.flatnonzero(x > -1e8), [1, 3, 4])
  np.testing.assert_allclose(x[1], 2 * np.log(0.4), rtol=1e-6)


def test_eos_stops_a_row_then_pads():
  graphdef, state = _model()
  ref = _greedy_reference(graphdef, state, PROMPTS, 6)
  eos = int(ref[0, 2])  # row 0's third greedy token
  pad = 36 if eos != 36 else 35
  s = sampling.SamplingSettings(max_new_tokens=6, temperature=0.0,
                                eos_ids=(eos,), pad_id=pad)
  ids, mask = _batch()
  out = sampling.sample(graphdef, state, ids, mask, jax.random.key(0), s)
  tokens = np.asarray(out.tokens)
  for b in range(len(PROMPTS)):
    hits = np.flatnonzero(ref[b] == eos)
    if hits.size:
      n = hits[0]
      np.testing.assert_array_equal(tokens[b, :n + 1], ref[b, :n + 1])
      assert (tokens[b, n + 1:] == pad).all()
      assert int(out.lengths[b]) == n and bool(out.finished[b])
    else:
      np.testing.assert_array_equal(tokens[b], ref[b])
      assert int(out.lengths[b]) == 6 and not bool(out.finished[b])
  assert int(out.lengths[0]) <= 2
  # Every row ends at once: all rows' first token is EOS.
  s1 = sampling.SamplingSettings(max_new_tokens=5, temperature=0.0,
                                 eos_ids=tuple(int(t) for t in ref[:, 0]),
                                 pad_id=pad)
  out = sampling.sample(graphdef, state, ids, mask, jax.random.key(0), s1)
  np.testing.assert_array_equal(np.asarray(out.lengths), [0, 0, 0])
  assert (np.asarray(out.tokens)[:, 1:] == pad).all()


def test_settings_are_checked():
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingSettings(max_new_tokens=3, top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.SamplingSettings(max_new_tokens=0)
