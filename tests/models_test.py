"""Parity with tiny HF models, KV-cache decoding == full forward, no retrace."""
import dataclasses
import pathlib

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.models import bert, decoder, layers, t5
from genrec_jax.weights import load_pretrained

FIX = pathlib.Path(__file__).parent / "fixtures" / "parity"
TOL = 1e-4


def jit_apply(model, fn, *args):
  """fn(model, *args) under one jit (weights passed as arguments)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_decoder_parity(name):
  model = load_pretrained(FIX / name)
  ref = np.load(FIX / name / "reference.npz")
  got = np.asarray(jit_apply(model, lambda m, x: m(x),
                             jnp.asarray(ref["input_ids"])))
  np.testing.assert_allclose(got, ref["logits"], atol=TOL, rtol=0)
  mask = ref["attention_mask"].astype(bool)
  got = np.asarray(jit_apply(model, lambda m, x, k: m(x, k),
                             jnp.asarray(ref["input_ids"]), jnp.asarray(mask)))
  np.testing.assert_allclose(got[mask], ref["padded_logits"][mask], atol=TOL,
                             rtol=0)


@pytest.mark.parametrize("name", ["t5_relu", "t5_gated"])
def test_t5_parity(name):
  model = load_pretrained(FIX / name)
  ref = np.load(FIX / name / "reference.npz")
  enc_ids, enc_mask = (jnp.asarray(ref["encoder_ids"]),
                       jnp.asarray(ref["encoder_mask"]).astype(bool))
  got = np.asarray(jit_apply(model, lambda m, e, d, k: m(e, d, k), enc_ids,
                             jnp.asarray(ref["decoder_ids"]), enc_mask))
  np.testing.assert_allclose(got, ref["logits"], atol=TOL, rtol=0)

  def steps(m, enc_ids, enc_mask, dec_ids):  # cached decoding, scanned
    enc = m.encode(enc_ids, enc_mask)
    cache = m.init_cache(dec_ids.shape[0], dec_ids.shape[1])

    def body(c, tok):
      lg, c = m.decode_step(tok, enc, enc_mask, c)
      return c, lg
    return jax.lax.scan(body, cache, dec_ids.T)[1]  # [T, B, V]

  logits = jit_apply(model, steps, enc_ids, enc_mask,
                     jnp.asarray(ref["decoder_ids"]))
  np.testing.assert_allclose(np.asarray(logits).transpose(1, 0, 2),
                             ref["logits"], atol=TOL, rtol=0)

  def steps_cross(m, enc_ids, enc_mask, dec_ids):  # cross K/V once, row 0
    cross = m.cross_kv(m.encode(enc_ids[:1], enc_mask[:1]))  # batch 1
    cache = m.init_cache(dec_ids.shape[0], dec_ids.shape[1])

    def body(c, tok):
      lg, c = m.decode_step(tok, None, enc_mask[:1], c, cross=cross)
      return c, lg
    return jax.lax.scan(body, cache, dec_ids.T)[1]  # [T, B, V]

  row0 = jnp.asarray(ref["decoder_ids"])[:1].repeat(3, 0)  # 3 beams, row 0
  logits = jit_apply(model, steps_cross, enc_ids, enc_mask, row0)
  for beam in range(3):
    np.testing.assert_allclose(np.asarray(logits)[:, beam],
                               ref["logits"][0], atol=TOL, rtol=0)


def test_bert_parity():
  model = load_pretrained(FIX / "bert")
  assert isinstance(model, bert.BertModel) and model.config.hidden_size == 21
  ref = np.load(FIX / "bert" / "reference.npz")
  h = jit_apply(model, lambda m, *a: m(*a), jnp.asarray(ref["input_ids"]),
                jnp.asarray(ref["attention_mask"]),
                jnp.asarray(ref["token_type_ids"]))
  assert h.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(h), ref["last_hidden"], atol=TOL,
                             rtol=0)
  np.testing.assert_allclose(np.asarray(model.pooled(h)), ref["pooled"],
                             atol=TOL, rtol=0)


def _tiny_decoder(model_type="qwen2"):
  cfg = decoder.DecoderConfig(
      vocab_size=37, hidden_size=12, intermediate_size=19, num_layers=2,
      num_heads=3, num_kv_heads=1, head_dim=4, rope_theta=500.0,
      model_type=model_type, attention_bias=model_type == "qwen2",
      tie_word_embeddings=model_type == "qwen2")
  return decoder.Decoder(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("lead", [(), (5,), (3, 7), (2, 3, 5)])
def test_matmul_products_against_numpy(lead):
  """layers.matmul / dense / project_heads / merge_heads (leading axes
  flattened) against numpy's products in float64, gradients included."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(*lead, 6)).astype(np.float32)
  w = rng.normal(size=(6, 9)).astype(np.float32)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  np.testing.assert_allclose(layers.matmul(x, w), x64 @ w64, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(
      layers.matmul(x, w.T.copy(), transpose_kernel=True), x64 @ w64,
      rtol=1e-5, atol=1e-5)
  heads = layers.project_heads(x, w.reshape(6, 3, 3))
  np.testing.assert_allclose(heads, (x64 @ w64).reshape(*lead, 3, 3),
                             rtol=1e-5, atol=1e-5)
  m = rng.normal(size=(3, 3, 4)).astype(np.float32)
  np.testing.assert_allclose(
      layers.merge_heads(heads, m),
      (x64 @ w64) @ m.reshape(9, 4).astype(np.float64), rtol=1e-4, atol=1e-4)
  # d/dw sum(x @ w) = x^T 1 summed over every leading position.
  g = jax.grad(lambda w: jnp.sum(layers.dense(jnp.asarray(x), w)))(w)
  np.testing.assert_allclose(
      g, np.broadcast_to(x64.reshape(-1, 6).sum(0)[:, None], (6, 9)),
      rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transpose", [False, True])
def test_bf16_matmul_and_gradients_accumulate_in_f32(transpose):
  """A bfloat16 matmul and both its gradients: products of the bf16-rounded
  operands summed in float64 (numpy), then rounded as the outputs are
  (f32 out, bf16 gradients). 300 terms a sum: bf16 accumulation would be
  off by ~1e-2 relative, f32 accumulation is within one bf16 rounding."""
  rng = np.random.default_rng(5)
  bf = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)
  x = jnp.asarray(rng.normal(size=(7, 300)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(300, 11)), jnp.bfloat16)
  g = rng.normal(size=(7, 11)).astype(np.float32)
  kernel = w.T if transpose else w
  f = lambda x, k: layers.matmul(x, k, transpose_kernel=transpose,
                                 preferred_element_type=jnp.float32)
  y, vjp = jax.vjp(f, x, kernel)
  dx, dk = vjp(jnp.asarray(g))
  assert y.dtype == jnp.float32 and dx.dtype == dk.dtype == jnp.bfloat16
  x64, w64, g64 = bf(x), bf(w), bf(g)
  np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-4)
  want_dw = x64.T @ g64
  np.testing.assert_allclose(np.asarray(dx, np.float64), bf(g64 @ w64.T),
                             rtol=8e-3, atol=1e-2)
  np.testing.assert_allclose(np.asarray(dk, np.float64),
                             bf(want_dw.T if transpose else want_dw),
                             rtol=8e-3, atol=1e-2)
  # bf16 output (no preferred_element_type): the f32 sum rounded once.
  np.testing.assert_allclose(
      np.asarray(layers.matmul(x, kernel, transpose_kernel=transpose),
                 np.float64), bf(x64 @ w64), rtol=8e-3, atol=1e-2)



@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_cache_matches_full_forward_with_left_padding(model_type):
  chex.clear_trace_counter()
  model = _tiny_decoder(model_type)
  rng = np.random.default_rng(0)
  lengths = [6, 3, 1]
  T, steps = max(lengths), 4
  seqs = [rng.integers(0, 37, n + steps) for n in lengths]
  ids = np.zeros((3, T), np.int32)
  mask = np.zeros((3, T), bool)
  for b, n in enumerate(lengths):
    ids[b, T - n:] = seqs[b][:n]
    mask[b, T - n:] = True
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefill(state, ids, mask, cache):
    return nnx.merge(graphdef, state).prefill(ids, mask, cache)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def decode(state, tok, cache):
    return nnx.merge(graphdef, state).decode_step(tok, cache)

  cache = model.init_cache(3, T + steps)
  logits, cache = prefill(state, jnp.asarray(ids), jnp.asarray(mask), cache)
  jax.tree.map(lambda x: chex.assert_axis_dimension(x, 0, 3), cache)
  step_logits = [np.asarray(logits[:, -1])]
  for s in range(steps - 1):
    tok = np.array([seqs[b][n + s] for b, n in enumerate(lengths)], np.int32)
    lg, cache = decode(state, jnp.asarray(tok), cache)
    step_logits.append(np.asarray(lg))
  for b, n in enumerate(lengths):
    full = np.asarray(jit_apply(model, lambda m, x: m(x), jnp.asarray(
        seqs[b][None, :n + steps - 1], jnp.int32)))[0]  # unpadded
    np.testing.assert_allclose(np.asarray(logits)[b, T - n:], full[:n],
                               atol=1e-5)
    for s in range(steps):
      np.testing.assert_allclose(step_logits[s][b], full[n - 1 + s],
                                 atol=1e-5)


def test_prefill_last_only_equals_last_position_of_full_prefill():
  model = _tiny_decoder()
  rng = np.random.default_rng(5)
  ids = jnp.asarray(rng.integers(0, 37, (3, 6)), jnp.int32)
  mask = jnp.asarray(np.array([[1] * 6, [0] * 2 + [1] * 4, [0] * 5 + [1]],
                              bool))
  full, want_cache = jit_apply(
      model, lambda m, x, k, c: m.prefill(x, k, c), ids, mask,
      model.init_cache(3, 9))
  last, got_cache = jit_apply(
      model, lambda m, x, k, c: m.prefill(x, k, c, last_only=True), ids, mask,
      model.init_cache(3, 9))
  assert full.shape == (3, 6, 37) and last.shape == (3, 37)
  np.testing.assert_allclose(np.asarray(last), np.asarray(full)[:, -1],
                             atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, got_cache, want_cache)


def test_cache_beam_gather_and_scan():
  model = _tiny_decoder()
  graphdef, state = nnx.split(model)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 37, (2, 5)),
                    jnp.int32)
  cache = model.init_cache(2, 9)
  _, cache = jit_apply(model, lambda m, x, c: m.prefill(x, x >= 0, c), ids,
                       cache)
  cache = jax.tree.map(lambda x: x[jnp.array([1, 1, 0])], cache)  # 3 beams

  @jax.jit
  def run(state, cache):
    m = nnx.merge(graphdef, state)

    def body(c, tok):
      lg, c = m.decode_step(jnp.full((3,), tok, jnp.int32), c)
      return c, lg
    return jax.lax.scan(body, cache, jnp.arange(3))

  cache, lg = run(state, cache)
  assert lg.shape == (3, 3, 37)
  np.testing.assert_allclose(lg[:, 0], lg[:, 1], atol=1e-6)  # same beams
  assert cache["index"].tolist() == [8, 8, 8]


def test_greedy_generate_shapes():
  model = _tiny_decoder("llama")
  out = decoder.greedy_generate(model, jnp.ones((2, 3), jnp.int32),
                                jnp.ones((2, 3), bool), 5)
  assert out.shape == (2, 5) and out.dtype == jnp.int32


def test_t5_from_scratch_config():
  cfg = t5.T5Config(vocab_size=29, d_model=10, d_kv=3, d_ff=13, num_layers=1,
                    num_decoder_layers=2, num_heads=2,
                    relative_attention_num_buckets=6,
                    feed_forward_proj="gated-gelu")
  model = t5.T5Model(cfg, rngs=nnx.Rngs(0))
  logits = jit_apply(model, lambda m, e, d: m(e, d),
                     jnp.ones((2, 5), jnp.int32), jnp.zeros((2, 4), jnp.int32))
  assert logits.shape == (2, 4, 29) and logits.dtype == jnp.float32


def test_t5_dropout_only_with_a_key():
  """Dropout changes a training forward (a key) and nothing else; at rate
  p a unit is kept with probability 1 - p and scaled by 1 / (1 - p)."""
  kw = dict(vocab_size=29, d_model=10, d_kv=3, d_ff=13, num_layers=2,
            num_decoder_layers=1, num_heads=2,
            relative_attention_num_buckets=6)
  plain = t5.T5Model(t5.T5Config(**kw), rngs=nnx.Rngs(0))
  drop = t5.T5Model(t5.T5Config(**kw, dropout_rate=0.3), rngs=nnx.Rngs(0))
  enc, dec = jnp.arange(10).reshape(2, 5) % 29, jnp.zeros((2, 4), jnp.int32)
  np.testing.assert_array_equal(np.asarray(drop(enc, dec)),
                                np.asarray(plain(enc, dec)))
  key = jax.random.key(3)
  a = np.asarray(drop(enc, dec, dropout_key=key))
  b = np.asarray(drop(enc, dec, dropout_key=key))
  c = np.asarray(drop(enc, dec, dropout_key=jax.random.key(4)))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - np.asarray(plain(enc, dec))).max() > 1e-3
  assert np.abs(a - c).max() > 1e-3
  np.testing.assert_array_equal(
      np.asarray(plain(enc, dec, dropout_key=key)),
      np.asarray(plain(enc, dec)))  # rate 0: the key changes nothing
  x = jnp.ones((200_000,))
  y = np.asarray(drop._dropout(x, key, 0))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7], rtol=1e-5)  # 2**-16
  assert abs((y > 0).mean() - 0.7) < 0.005


def test_dropout_mask_bits_rate_and_sharding():
  """layers.dropout: element i of a row keeps when its 16-bit draw (the
  uint32 threefry words of fold_in(key, site), low half first) is at least
  round(rate * 2**16), rebuilt here in numpy; kept units are scaled by the
  exact inverse keep probability; the mask of a batch-sharded x (8 fake
  devices) equals the one-device mask; rate 0 / no key is the identity."""
  from genrec_jax.training import sharding
  key, rate = jax.random.key(11), 0.3
  x = jnp.arange(1.0, 1.0 + 16 * 5 * 7).reshape(16, 5, 7)  # odd last axis
  y = np.asarray(layers.dropout(x, rate, key, site=4))
  words = np.asarray(jax.random.bits(jax.random.fold_in(key, 4), (16, 5, 4),
                                     jnp.uint32))
  bits = np.stack([words & 0xFFFF, words >> 16], -1).reshape(16, 5, 8)[..., :7]
  drop = round(rate * 65536)
  expected = np.where(bits >= drop, np.asarray(x) * 65536 / (65536 - drop), 0)
  np.testing.assert_allclose(y, expected, rtol=1e-6)
  big = np.asarray(layers.dropout(jnp.ones((300, 1001)), rate, key))
  assert abs((big > 0).mean() - 0.7) < 0.005  # 300k draws: SE 0.0008
  np.testing.assert_allclose(np.unique(big), [0.0, 65536 / (65536 - drop)])
  mesh = sharding.make_mesh((-1,), ("data",))
  xs = jax.device_put(x, sharding.batch_sharding(mesh, 3))
  with jax.set_mesh(mesh):
    ys = jax.jit(lambda v: layers.dropout(v, rate, key, site=4))(xs)
  np.testing.assert_array_equal(np.asarray(ys), y)
  np.testing.assert_array_equal(np.asarray(layers.dropout(x, 0.0, key)), x)
  np.testing.assert_array_equal(np.asarray(layers.dropout(x, rate, None)), x)


def test_decoder_dropout_only_with_a_key():
  """The decoder's dropout (embeddings, attention and MLP outputs) changes a
  training forward (`hidden(dropout_key=)`) and nothing else; the same key
  gives the same draw scanned or unrolled."""
  kw = dict(vocab_size=31, hidden_size=12, intermediate_size=19,
            num_layers=3, num_heads=3, num_kv_heads=1, head_dim=4)
  plain = decoder.Decoder(decoder.DecoderConfig(**kw), rngs=nnx.Rngs(0))
  drop = decoder.Decoder(decoder.DecoderConfig(**kw, dropout_rate=0.2),
                         rngs=nnx.Rngs(0))
  unrolled = decoder.Decoder(
      decoder.DecoderConfig(**kw, dropout_rate=0.2, scan_layers=False),
      rngs=nnx.Rngs(0))
  ids = jnp.arange(14).reshape(2, 7) % 31
  mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7], bool)
  ref = np.asarray(plain.hidden(ids, mask))
  np.testing.assert_array_equal(np.asarray(drop.hidden(ids, mask)), ref)
  key = jax.random.key(5)
  a = np.asarray(drop.hidden(ids, mask, dropout_key=key))
  np.testing.assert_array_equal(
      a, np.asarray(drop.hidden(ids, mask, dropout_key=key)))
  np.testing.assert_allclose(
      a, np.asarray(unrolled.hidden(ids, mask, dropout_key=key)), atol=1e-5)
  assert np.abs(a - ref).max() > 1e-3
  c = np.asarray(drop.hidden(ids, mask, dropout_key=jax.random.key(6)))
  assert np.abs(a - c).max() > 1e-3
  np.testing.assert_array_equal(
      np.asarray(plain.hidden(ids, mask, dropout_key=key)), ref)
  # The decoder loss draws it from the trainer's key; without dropout the
  # loss equals full-logit cross-entropy computed here.
  from genrec_jax.generative import losses
  batch = {"input_ids": ids, "attention_mask": mask,
           "loss_mask": jnp.array([[0, 0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 0, 0,
                                                           1]], jnp.float32)}
  logits = np.asarray(plain(ids, mask), np.float64)[:, :-1]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  tok = np.take_along_axis(logp, np.asarray(ids)[:, 1:, None], -1)[..., 0]
  w = np.asarray(batch["loss_mask"])[:, 1:]
  expected = -(tok * w).sum() / w.sum()
  for fn in (losses.decoder_loss, losses.make_decoder_loss(4)):
    np.testing.assert_allclose(float(fn(plain, batch, key)[0]), expected,
                               rtol=1e-5)
    assert abs(float(fn(drop, batch, key)[0]) - expected) > 1e-4


def test_bf16_model_runs():
  cfg = decoder.DecoderConfig(
      vocab_size=37, hidden_size=12, intermediate_size=19, num_layers=2,
      num_heads=3, num_kv_heads=1, head_dim=4, dtype=jnp.bfloat16)
  model = decoder.Decoder(cfg, rngs=nnx.Rngs(0))
  assert model.layers.q[...].dtype == jnp.bfloat16
  logits = jit_apply(model, lambda m, x: m(x), jnp.ones((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


# -- every path through the one block equals the full forward ---------------

PATH_TOL = 1e-5


def _randomize(model, seed, scale=0.5):
  """Replaces every parameter by N(0, scale^2) (biases and norms included),
  so that each weight kind moves the logits by O(1)."""
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [scale * jax.random.normal(k, x.shape, x.dtype)
            for k, x in zip(keys, leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def _decoder_paths(m, ids, mask, prompt, prompt_mask, conts, perm):
  """Logits of the full forward and of the three cached paths."""
  B, T = ids.shape
  full = m(ids, mask)  # [B, T, V]

  def step(c, tok):
    lg, c = m.decode_step(tok, c)
    return c, lg

  # decode_step from an empty cache, every token (no padding).
  _, steps = jax.lax.scan(step, m.init_cache(B, T), ids.T)  # [T, B, V]
  # prefill of the left-padded first 3 columns, then decode_step.
  first, cache = m.prefill(ids[:, :3], mask[:, :3], m.init_cache(B, T))
  _, rest = jax.lax.scan(step, cache, ids[:, 3:].T)  # [T - 3, B, V]
  # One prompt shared by 3 beams; beams reordered by `perm` after step 0.
  P = prompt.shape[0]
  W, M = conts.shape
  _, prefix = m.prefill(prompt[None], prompt_mask[None], m.init_cache(1, P))
  suffix = m.init_suffix(W, M)
  shared = []
  for s in range(M):
    lg, suffix = m.decode_step_shared(conts[:, s], prefix, suffix)
    shared.append(lg)
    if s == 0:
      suffix = jax.tree.map(lambda x: x[perm], suffix)
  return full, steps, first, rest, jnp.stack(shared)  # shared [M, W, V]


@pytest.mark.parametrize("kv_heads,tied,model_type", [
    (1, True, "qwen2"),  # GQA, 3 query heads per kv head
    (1, False, "qwen2"),
    (3, True, "llama"),  # no GQA; o_proj and MLP biases on
    (3, False, "llama"),
])
def test_decoder_paths_equal_full_forward(kv_heads, tied, model_type):
  cfg = decoder.DecoderConfig(
      vocab_size=31, hidden_size=15, intermediate_size=23, num_layers=3,
      num_heads=3, num_kv_heads=kv_heads, head_dim=6, rope_theta=97.0,
      model_type=model_type, attention_bias=True,
      o_bias=model_type == "llama", mlp_bias=model_type == "llama",
      tie_word_embeddings=tied)
  model = _randomize(decoder.Decoder(cfg, rngs=nnx.Rngs(0)), seed=kv_heads)
  rng = np.random.default_rng(kv_heads + 2 * tied)
  B, T, W, M = 3, 7, 3, 4
  ids = rng.integers(0, 31, (B, T)).astype(np.int32)
  mask = np.ones((B, T), bool)
  mask[1, :2] = False  # left padding inside the prefilled columns
  prompt, prompt_mask = ids[1, :5], mask[1, :5]
  conts = rng.integers(0, 31, (W, M)).astype(np.int32)
  perm = np.array([2, 0, 0])
  full, steps, first, rest, shared = (np.asarray(x) for x in jit_apply(
      model, _decoder_paths, *map(jnp.asarray, (
          ids, mask, prompt, prompt_mask, conts, perm))))
  assert full.std() > 0.1  # logits depend on the weights
  # decode_step token by token == the unpadded full forward.
  nopad = np.asarray(jit_apply(model, lambda m, x: m(x), jnp.asarray(ids)))
  np.testing.assert_allclose(steps.transpose(1, 0, 2), nopad, atol=PATH_TOL,
                             rtol=0)
  # prefill + decode_step == the left-padded full forward (real tokens).
  cached = np.concatenate([first, rest.transpose(1, 0, 2)], 1)
  np.testing.assert_allclose(cached[mask], full[mask], atol=PATH_TOL, rtol=0)
  # decode_step_shared: beam w at step s has fed hist[s][w]; its reference
  # is a left-padded full forward of prompt + hist (one row per s, w).
  hist = [conts[:, :1]]
  for s in range(1, M):
    prev = hist[-1][perm] if s == 1 else hist[-1]
    hist.append(np.concatenate([prev, conts[:, s:s + 1]], 1))
  rows = np.zeros((M * W, 5 + M), np.int32)
  rmask = np.zeros((M * W, 5 + M), bool)
  for s in range(M):
    for w in range(W):
      r, pad = s * W + w, M - 1 - s
      rows[r, pad:] = np.concatenate([prompt, hist[s][w]])
      rmask[r, pad:] = np.concatenate([prompt_mask, np.ones(s + 1, bool)])
  want = np.asarray(jit_apply(model, lambda m, x, k: m(x, k),
                              jnp.asarray(rows), jnp.asarray(rmask)))
  np.testing.assert_allclose(shared.reshape(M * W, -1), want[:, -1],
                             atol=PATH_TOL, rtol=0)


def _t5_paths(m, enc_ids, enc_mask, dec_ids):
  """Full forward, decode_step per token, decode_step with shared cross."""
  B, T = dec_ids.shape
  full = m(enc_ids, dec_ids, enc_mask)  # [B, T, V]
  enc = m.encode(enc_ids, enc_mask)

  def step(c, tok):
    lg, c = m.decode_step(tok, enc, enc_mask, c)
    return c, lg

  _, steps = jax.lax.scan(step, m.init_cache(B, T), dec_ids.T)  # [T, B, V]
  cross = m.cross_kv(enc[:1])  # encoder row 0, shared by B beams

  def step_cross(c, tok):
    lg, c = m.decode_step(tok, None, enc_mask[:1], c, cross=cross)
    return c, lg

  _, beams = jax.lax.scan(step_cross, m.init_cache(B, T), dec_ids.T)
  row0 = m(enc_ids[:1].repeat(B, 0), dec_ids, enc_mask[:1].repeat(B, 0))
  return full, steps, beams, row0


@pytest.mark.parametrize("ff,tied", [("relu", True), ("gated-gelu", False)])
def test_t5_paths_equal_full_forward(ff, tied):
  cfg = t5.T5Config(vocab_size=29, d_model=11, d_kv=3, d_ff=13, num_layers=2,
                    num_decoder_layers=3, num_heads=3,
                    relative_attention_num_buckets=6,
                    relative_attention_max_distance=9, feed_forward_proj=ff,
                    tie_word_embeddings=tied)
  model = _randomize(t5.T5Model(cfg, rngs=nnx.Rngs(0)), seed=len(ff))
  rng = np.random.default_rng(len(ff))
  enc_ids = rng.integers(0, 29, (3, 6)).astype(np.int32)
  enc_mask = np.arange(6)[None] < np.array([[6], [3], [5]])  # right padding
  dec_ids = rng.integers(0, 29, (3, 5)).astype(np.int32)
  full, steps, beams, row0 = (np.asarray(x) for x in jit_apply(
      model, _t5_paths, *map(jnp.asarray, (enc_ids, enc_mask, dec_ids))))
  assert full.std() > 0.1  # logits depend on the weights
  np.testing.assert_allclose(steps.transpose(1, 0, 2), full, atol=PATH_TOL,
                             rtol=0)
  np.testing.assert_allclose(beams.transpose(1, 0, 2), row0, atol=PATH_TOL,
                             rtol=0)


@pytest.mark.parametrize("family", ["decoder", "t5"])
def test_unrolled_layers_equal_scanned(family):
  """scan_layers=False (unrolled blocks) == the scan: loss and gradients."""
  if family == "decoder":
    cfg = decoder.DecoderConfig(
        vocab_size=31, hidden_size=15, intermediate_size=23, num_layers=3,
        num_heads=3, num_kv_heads=1, head_dim=6, model_type="llama")
    make = decoder.Decoder
  else:
    cfg = t5.T5Config(vocab_size=29, d_model=11, d_kv=3, d_ff=13,
                      num_layers=2, num_decoder_layers=3, num_heads=3,
                      relative_attention_num_buckets=6,
                      relative_attention_max_distance=9)
    make = t5.T5Model
  model = _randomize(make(cfg, rngs=nnx.Rngs(0)), seed=3)
  _, state = nnx.split(model)
  unrolled = nnx.graphdef(make(dataclasses.replace(cfg, scan_layers=False),
                               rngs=nnx.Rngs(0)))
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 29, (2, 7)),
                    jnp.int32)

  def loss(state, graphdef):
    m = nnx.merge(graphdef, state)
    out = m(ids) if family == "decoder" else m(ids, ids[:, :4])
    return jnp.sum(jnp.tanh(out))

  scanned = jax.value_and_grad(loss)(state, nnx.graphdef(model))
  flat = jax.value_and_grad(loss)(state, unrolled)
  assert abs(float(scanned[0])) > 1e-3
  for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(flat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5,
                               rtol=1e-5)
