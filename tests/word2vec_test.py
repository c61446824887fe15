"""word2vec in JAX: closed-form updates, tables, examples, learning, stage."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import data as data_config
from configs import item2vec as item2vec_config
from configs import lastfm as lastfm_config
from configs import sids as sids_config
from genrec_jax.data import prepare
from genrec_jax.data.dataset import Dataset
from genrec_jax.data.dataset import Ragged
from genrec_jax.gar import item2vec
from genrec_jax.gar import lastfm
from genrec_jax.semantic_ids import build as build_sids
from genrec_jax.semantic_ids import word2vec as w2v
from tests import lastfm_test


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def tiny(**kw) -> ml_collections.ConfigDict:
  c = item2vec_config.get_config("tiny").word2vec
  c.update(kw)
  return c


# ---------------------------------------------------------------------------
# Closed-form updates


def test_sgns_update_exact_values():
  # s = 0 everywhere: sigmoid = 1/2, so g = +lr/2 (centre), -lr/2 (noise).
  x_in = jnp.array([[[1.0, 2.0]]])  # [B=1, G=1, D=2]
  x_out = jnp.zeros((1, 3, 2))  # centre + 2 noise
  d_in, d_out, loss = w2v.sgns_group_updates(
      x_in, x_out, jnp.ones((1, 1)), jnp.ones((1, 3)), 0.1)
  np.testing.assert_array_equal(d_in, np.zeros((1, 1, 2)))
  np.testing.assert_allclose(d_out[0], [[0.05, 0.1], [-0.05, -0.1],
                                        [-0.05, -0.1]], rtol=1e-7)
  np.testing.assert_allclose(loss, [3 * np.log(2.0)], rtol=1e-6)


def _sgns_reference(x_in, x_out, in_mask, out_w, lr):
  """Loops over (group, context, output) as word2vec.c's inner loop."""
  d_in, d_out = np.zeros_like(x_in), np.zeros_like(x_out)
  for b in range(x_in.shape[0]):
    for c in range(x_in.shape[1]):
      for o in range(x_out.shape[1]):
        if not in_mask[b, c] or not out_w[b, o]:
          continue
        label = 1.0 if o == 0 else 0.0
        g = lr[b] * (label - sigmoid(x_in[b, c] @ x_out[b, o]))
        d_in[b, c] += g * x_out[b, o]
        d_out[b, o] += g * x_in[b, c]
  return d_in, d_out


def test_sgns_updates_match_numpy_reference_and_autodiff():
  rng = np.random.default_rng(0)
  b, g, k1, d = 3, 4, 6, 7
  x_in = rng.normal(size=(b, g, d)).astype(np.float32)
  x_out = rng.normal(size=(b, k1, d)).astype(np.float32)
  in_mask = np.ones((b, g), np.float32)
  in_mask[1, 2:] = 0
  out_w = np.ones((b, k1), np.float32)
  out_w[2, 3] = 0
  lr = np.array([0.1, 0.02, 0.5], np.float32)
  d_in, d_out, loss = w2v.sgns_group_updates(x_in, x_out, in_mask, out_w, lr)
  ref_in, ref_out = _sgns_reference(x_in.astype(np.float64),
                                    x_out.astype(np.float64), in_mask, out_w, lr)
  np.testing.assert_allclose(d_in, ref_in, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(d_out, ref_out, rtol=1e-5, atol=1e-6)

  # The updates are lr times the gradient of the log-likelihood (-loss).
  def log_likelihood(xi, xo):  # groups are independent: sum them
    return -w2v.sgns_group_updates(xi, xo, in_mask, out_w, 1.0)[2].sum()
  gi, go = jax.grad(log_likelihood, argnums=(0, 1))(x_in, x_out)
  np.testing.assert_allclose(d_in, lr[:, None, None] * gi, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(d_out, lr[:, None, None] * go, rtol=1e-5, atol=1e-6)


def test_cbow_updates_match_numpy_reference():
  rng = np.random.default_rng(1)
  b, c, k1, d = 2, 5, 4, 3
  x_ctx = rng.normal(size=(b, c, d)).astype(np.float32)
  x_out = rng.normal(size=(b, k1, d)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  out_w = np.ones((b, k1), np.float32)
  lr = 0.05
  for mean in (True, False):
    d_ctx, d_out, _ = w2v.cbow_updates(x_ctx, x_out, mask, out_w, lr, mean)
    for i in range(b):
      h = (mask[i, :, None] * x_ctx[i]).sum(0)
      if mean:
        h = h / mask[i].sum()
      g = lr * ((np.arange(k1) == 0) - sigmoid(x_out[i] @ h))
      np.testing.assert_allclose(d_out[i], g[:, None] * h[None], rtol=1e-5,
                                 atol=1e-7)
      work = g @ x_out[i]
      np.testing.assert_allclose(d_ctx[i], mask[i, :, None] * work[None],
                                 rtol=1e-5, atol=1e-7)


def test_one_step_is_word2vec_pair_update():
  """One (centre, context, negatives) example through the jitted scan equals
  word2vec.c / gensim's w2v_fast_sentence_sg_neg on the same rows."""
  rng = np.random.default_rng(2)
  v, d = 11, 5
  w_in = rng.normal(size=(v, d)).astype(np.float32)
  w_out = rng.normal(size=(v, d)).astype(np.float32)
  centre, context, noise, lr = 3, 7, [1, 3, 9], 0.025  # noise 3 == centre
  ref_in, ref_out = w_in.astype(np.float64), w_out.astype(np.float64)
  work = np.zeros(d)
  for target, label in [(centre, 1.0)] + [(n, 0.0) for n in noise]:
    if label == 0.0 and target == centre:
      continue  # gensim skips a noise draw equal to the centre
    g = lr * (label - sigmoid(ref_in[context] @ ref_out[target]))
    work += g * ref_out[target]
    ref_out[target] += g * ref_in[context]
  ref_in[context] += work
  table, loss = w2v.train_chunk(
      jnp.asarray(np.concatenate([w_in, w_out])),
      jnp.array([[[context, -1]]], jnp.int32),
      jnp.array([[[centre] + noise]], jnp.int32), jnp.array([lr], jnp.float32))
  new_in, new_out = table[:v], table[v:]
  np.testing.assert_allclose(new_in, ref_in, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_out, ref_out, rtol=1e-5, atol=1e-6)
  assert np.isfinite(loss).all()


# ---------------------------------------------------------------------------
# Tables and examples


def test_keep_probabilities_formula():
  counts = np.array([1000, 100, 10, 1, 0])
  t = 1e-2
  thr = t * counts.sum()  # 11.11
  p = w2v.keep_probabilities(counts, t)
  expected = [(np.sqrt(c / thr) + 1) * thr / c for c in counts[:2]]
  np.testing.assert_allclose(p[:2], expected, rtol=1e-12)
  np.testing.assert_array_equal(p[2:], [1.0, 1.0, 1.0])  # capped; unused
  np.testing.assert_array_equal(w2v.keep_probabilities(counts, 0.0), 1.0)


def test_noise_table_formula_and_draws():
  counts = np.array([81, 16, 0, 1, 256])
  p = w2v.noise_distribution(counts, 0.75)
  w = np.array([27.0, 8.0, 0.0, 1.0, 64.0])  # c^0.75
  np.testing.assert_allclose(p, w / w.sum(), rtol=1e-12)
  table = w2v.noise_table(counts, 0.75)
  np.testing.assert_allclose(np.diff(table, prepend=0.0), w / w.sum(),
                             atol=1e-12)
  assert table[-1] == 1.0
  draws = w2v.draw_noise(table, (200_000,), np.random.default_rng(0))
  freq = np.bincount(draws, minlength=5) / len(draws)
  assert freq[2] == 0  # never an item that does not occur
  np.testing.assert_allclose(freq, w / w.sum(), atol=0.004)
  p1 = w2v.noise_distribution(counts, 1.0)
  np.testing.assert_allclose(p1, counts / counts.sum())


def test_skipgram_pairs_are_the_dynamic_windows():
  sentences = Ragged.from_lists([[0, 1, 2, 3, 4, 5], [6], [7, 8, 9]])
  window = 3
  got = w2v.skipgram_pairs(sentences, window, np.random.default_rng(5))
  b = np.random.default_rng(5).integers(1, window + 1, size=10)
  expected, pos = [], 0
  for row in sentences.tolist():
    for i, centre in enumerate(row):
      for j in range(max(0, i - b[pos]), min(len(row), i + b[pos] + 1)):
        if j != i:
          expected.append((centre, row[j]))
      pos += 1
  assert list(zip(*(x.tolist() for x in got))) == expected


def test_group_pairs_keeps_every_pair_once():
  rng = np.random.default_rng(0)
  centres = rng.integers(0, 5, 200).astype(np.int32)
  contexts = rng.integers(0, 9, 200).astype(np.int32)
  for group in (1, 4, 16):
    gc, gx = w2v.group_pairs(centres, contexts, group, np.random.default_rng(1))
    assert gx.shape == (len(gc), group)
    pairs = sorted((int(c), int(x)) for c, row in zip(gc, gx) for x in row
                   if x >= 0)
    assert pairs == sorted(zip(centres.tolist(), contexts.tolist()))
    # Per centre item only its last group has padding.
    assert len(gc) == sum(-(-n // group) for n in np.bincount(centres))


def test_subsample_drops_frequent_items():
  sentences = Ragged.from_lists([[0] * 500 + [1, 2, 3]] * 4)
  keep = w2v.keep_probabilities(w2v.item_counts(sentences, 4), 1e-3)
  kept = w2v.subsample(sentences, keep, np.random.default_rng(0))
  counts = np.bincount(kept.values, minlength=4)
  assert counts[1:].tolist() == [4, 4, 4]  # rare items always kept
  assert abs(counts[0] / 2000 - keep[0]) < 0.05


# ---------------------------------------------------------------------------
# Learning


def planted_corpus(clusters=6, size=5, sentences=300, seed=0):
  """Sentences drawn inside one cluster of `size` items each."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(sentences):
    c = rng.integers(clusters)
    rows.append((c * size + rng.integers(0, size, rng.integers(4, 9))).tolist())
  return Ragged.from_lists(rows), clusters * size, size


def same_cluster_neighbours(vectors, size):
  x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  s = x @ x.T
  np.fill_diagonal(s, -np.inf)
  return np.mean(np.argmax(s, axis=1) // size == np.arange(len(x)) // size)


@pytest.mark.parametrize("kw", [dict(), dict(group=1, batch_size=32),
                                dict(model="cbow")])
def test_learns_planted_clusters(kw):
  sentences, v, size = planted_corpus()
  vec, _, info = w2v.train(sentences, v, tiny(epochs=5, **kw), log_every=0)
  assert vec.shape == (v, 16) and vec.dtype == np.float32
  assert same_cluster_neighbours(vec, size) >= 0.9
  assert info["mean_loss_per_epoch"][-1] < info["mean_loss_per_epoch"][0]
  # Held-out next item inside the cluster: HR@10 (> random 10/30) is high.
  rows = sentences.tolist()
  q = np.array([r[-2] for r in rows])
  t = np.array([r[-1] for r in rows])
  ok = q != t
  hits = w2v.neighbour_hits(vec, q[ok], t[ok], ks=(5,))
  assert hits["hr@5"] >= 0.9


def test_same_seed_same_vectors():
  sentences, v, _ = planted_corpus(sentences=60)
  a, _, ia = w2v.train(sentences, v, tiny(), log_every=0)
  b, _, ib = w2v.train(sentences, v, tiny(), log_every=0)
  c, _, _ = w2v.train(sentences, v, tiny(seed=1), log_every=0)
  np.testing.assert_array_equal(a, b)
  assert ia["pairs"] == ib["pairs"]
  assert not np.array_equal(a, c)


def test_neighbour_hits_excludes_the_query():
  vec = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
  hits = w2v.neighbour_hits(vec, np.array([0, 0, 2]), np.array([1, 3, 1]),
                            ks=(1, 2))
  # query 0 -> 1 at rank 1; 3 is the farthest of 3 others: rank 3;
  # query 2 -> 1 at rank 1.
  assert hits["hr@1"] == pytest.approx(2 / 3)
  assert hits["hr@2"] == pytest.approx(2 / 3)
  assert hits["mrr"] == pytest.approx((1 + 1 / 3 + 1) / 3)
  # Scored in chunks (the last one padded): the same ranks.
  for chunk in (1, 2):
    assert w2v.neighbour_hits(vec, np.array([0, 0, 2]), np.array([1, 3, 1]),
                              ks=(1, 2), chunk=chunk) == hits


def test_neighbour_hits_chunks_match_numpy_ranks():
  rng = np.random.default_rng(3)
  vec = rng.normal(size=(37, 5)).astype(np.float32)
  q, t = rng.integers(0, 37, 23), rng.integers(0, 37, 23)
  x = vec / np.linalg.norm(vec, axis=1, keepdims=True)
  s = x[q] @ x.T
  s[np.arange(23), q] = -np.inf
  rank = (s >= s[np.arange(23), t][:, None]).sum(1)
  rank = np.where(q == t, 37, rank)
  want = {"hr@3": np.mean(rank <= 3), "hr@10": np.mean(rank <= 10),
          "ndcg@10": np.mean(np.where(rank <= 10, 1 / np.log2(rank + 1), 0)),
          "mrr": np.mean(1 / rank)}
  for chunk in (4, 23, 100):
    got = w2v.neighbour_hits(vec, q, t, ks=(3, 10), chunk=chunk)
    assert got == pytest.approx(want, rel=1e-5)


def test_rejects_bad_config_and_ids():
  sentences, v, _ = planted_corpus(sentences=10)
  with pytest.raises(ValueError, match="'model'"):
    w2v.train(sentences, v, tiny(model="glove"))
  with pytest.raises(ValueError, match="'min_alpha'"):
    w2v.train(sentences, v, tiny(min_alpha=1.0))
  with pytest.raises(ValueError, match="outside 0..9"):
    w2v.train(sentences, 10, tiny())


# ---------------------------------------------------------------------------
# The stage


def test_item2vec_stage_writes_embeddings_build_sids_reads(tmp_path):
  root = lastfm_test.write_lastfm(tmp_path / "lfm")
  work = tmp_path / "work"
  config = lastfm_config.get_config("tiny")
  config.data.path = str(root)
  config.data.holdout_fraction = 1.0
  lastfm.run(config, work)
  metrics = item2vec.run(item2vec_config.get_config("tiny"), work)
  x = np.load(work / "embeddings" / "items.npy")
  assert x.shape == (len(lastfm_test.ARTISTS), 16) and x.dtype == np.float32
  assert metrics["num_heldout"] == 3
  assert set(metrics) >= {"heldout/hr@10", "heldout/ndcg@10", "heldout/mrr",
                          "seconds"}
  saved = json.loads((work / "embeddings" / "metrics.json").read_text())
  assert saved == metrics
  meta = json.loads((work / item2vec.DONE_FILE).read_text())
  assert meta["encoder"] == "item2vec" and meta["dim"] == 16
  # build_sids reads the folder as it reads embed_items' output.
  loaded, emb_meta = build_sids.load_embeddings(work, len(lastfm_test.ARTISTS))
  np.testing.assert_array_equal(loaded, x)
  sids = sids_config.get_config("tiny")
  sids.require_dataset = False
  sids.codebook_sizes = (2, 2)
  sids.quality.plot = False
  report = build_sids.run(sids, work)
  assert report["embeddings"]["encoder"] == "item2vec"
  codes = np.load(work / "sids" / "codes.npy")
  assert len(codes) == len(lastfm_test.ARTISTS)


def test_item2vec_on_dataset_train_sequences(tmp_path):
  """source "dataset": sentences = the train sequences, held out = each
  validation target after its row's last history item; vectors learn the
  planted item groups (no item text needed)."""
  rng = np.random.default_rng(0)
  groups, size = 3, 7
  lines = []
  for u in range(45):  # each user walks one group: g*size + (start + k) % size
    g, start, n = u % groups, rng.integers(size), rng.integers(5, 9)
    lines.append(f"{u} " + " ".join(str(g * size + (start + k) % size)
                                    for k in range(n)))
  (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
  (tmp_path / "items.tsv").write_text("item_id\ttitle\n" + "".join(
      f"{i}\t\n" for i in range(groups * size)))
  config = data_config.get_config("default")
  config.data.update(name="walks", source="seq_txt", text_template="$title",
                     sequence_file=str(tmp_path / "seq.txt"),
                     items_file=str(tmp_path / "items.tsv"))
  work = tmp_path / "work"
  prepare.run(config, work)
  ds = Dataset.load(work / "dataset")

  sentences, heldout, num_items, counts = item2vec.dataset_sentences(work)
  assert num_items == groups * size == ds.num_items
  np.testing.assert_array_equal(sentences.values, ds.train.values)
  np.testing.assert_array_equal(sentences.offsets, ds.train.offsets)
  # Leave-one-out: valid target = the second-to-last item, its query the
  # item before it (raw ids map to internal ids through item_ids).
  raw = [list(map(int, line.split()[1:])) for line in lines]
  internal = {int(r): i for i, r in enumerate(ds.item_ids)}
  user_of = {int(r): u for u, r in enumerate(ds.user_ids)}
  want = sorted((internal[raw[u][-3]], internal[raw[u][-2]])
                for u in range(45))
  got = sorted(zip(heldout["query"].tolist(), heldout["target"].tolist()))
  assert got == want and counts == {"heldout_rows_without_history": 0}
  assert sorted(user_of) == list(range(45))

  i2v = item2vec_config.get_config("dataset,tiny")
  i2v.word2vec.epochs = 30
  i2v.ks = (6, 10)
  metrics = item2vec.run(i2v, work)
  assert metrics["num_heldout"] == 45 and metrics["items_untrained"] == 0
  # The next item is one of the 6 other items of the query's group: with
  # the groups learned it is always in the top 6 of 20 (random: 0.3).
  assert metrics["heldout/hr@6"] == 1.0, metrics
  meta = json.loads((work / item2vec.DONE_FILE).read_text())
  assert meta["source"] == "dataset" and meta["num_items"] == num_items
  with pytest.raises(ValueError, match="'source'"):
    bad = item2vec_config.get_config("tiny")
    bad.source = "words"
    item2vec.run(bad, work)
