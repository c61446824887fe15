"""Generate-and-rank: set metrics, SID catalogue, targets, hard negatives,
the generator and ranker models, the lastfm_tiny pipeline and the demo."""

import json
import pathlib
import re
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import pipeline as pipeline_config
from genrec_jax import pipeline
from genrec_jax.data.dataset import Ragged
from genrec_jax.decoding import set_search
from genrec_jax.gar import generator as gen_lib
from genrec_jax.gar import queries as q_lib
from genrec_jax.gar import ranker as rank_lib
from genrec_jax.models import bert
from tests.conftest import REPO
from tests.lastfm_test import write_lastfm


def _split(texts, text_of, targets, users=None):
  return q_lib.QuerySplit(list(texts), np.asarray(text_of),
                          Ragged.from_lists(targets),
                          np.asarray(users if users is not None
                                     else [-1] * len(text_of)))


def test_set_metrics_hand_computed():
  # Two texts; text 0 has two queries.
  sp = _split(["a", "b"], [0, 0, 1], [[1, 2, 3], [3], [7, 8]], [-1, 5, -1])
  ranked = np.array([[3, 9, 1] + [-1] * 47, [8] + [-1] * 49])
  m = q_lib.evaluate(ranked, sp, prefix="t/")
  # Query 0: hits at ranks 0 and 2 of 3 items; query 1: hit at 0 of 1;
  # query 2: hit at 0 of 2.
  assert m["t/recall@10"] == pytest.approx(np.mean([2 / 3, 1.0, 0.5]))
  dcg0 = 1 + 1 / np.log2(4)
  idcg0 = 1 + 1 / np.log2(3) + 1 / np.log2(4)
  idcg2 = 1 + 1 / np.log2(3)
  assert m["t/ndcg@10"] == pytest.approx(np.mean([dcg0 / idcg0, 1.0,
                                                  1 / idcg2]))
  assert m["t/mrr"] == pytest.approx(1.0)
  assert not any(k.startswith("t/hr@") for k in m)
  # Per-query lists give the same as per-text lists expanded.
  m2 = q_lib.evaluate(ranked[sp.text_of], sp, prefix="t/", per_text=False)
  assert m2 == m
  assert q_lib.pool_recall([np.array([1, 3]), np.array([8])], sp) == (
      pytest.approx(np.mean([2 / 3, 1.0, 0.5])))
  # text_items: the tag query's order, then what user queries add.
  sp2 = _split(["a"], [0, 0], [[4, 2], [2, 6]], [9, -1])
  assert sp2.text_items() == [[2, 6, 4]]


def _catalogue_dir(tmp_path, codes, sizes):
  d = tmp_path / "sids"
  d.mkdir(parents=True)
  np.save(d / "codes.npy", np.asarray(codes, np.int32))
  (d / "report.json").write_text(json.dumps({"codebook_sizes": sizes}))
  return tmp_path


CODES = [[0, 1, 2], [1, 0, 0], [0, 1, 2], [1, 0, 1], [0, 0, 1], [0, 1, 2]]


def test_catalogue_keeps_collisions(tmp_path):
  wd = _catalogue_dir(tmp_path, CODES, [2, 2, 3])
  popular = np.array([5, 3, 0, 1, 2, 4])  # item 5 most popular
  cat = gen_lib.load_catalogue(wd, "sids", popular)
  # Distinct SIDs, sorted: (0,0,1) (0,1,2) (1,0,0) (1,0,1).
  assert cat.codes.tolist() == [[0, 0, 1], [0, 1, 2], [1, 0, 0], [1, 0, 1]]
  assert cat.sid_of_item.tolist() == [1, 2, 1, 3, 0, 1]
  # Items of (0,1,2) by popularity: 5, 0, 2.
  assert cat.items_of_sid[1].tolist() == [5, 0, 2]
  assert cat.vocab_size == gen_lib.SID_BASE + 7
  # Items of the SIDs in order, then popular fill-up to top_n.
  items, pool = cat.items([3, 1], top_n=6)
  assert items.tolist() == [3, 5, 0, 2, 1, 4] and pool == 4
  items, pool = cat.items([1], top_n=2)  # the pool is cut at top_n
  assert items.tolist() == [5, 0] and pool == 2
  with pytest.raises(Exception, match="codes.npy"):
    gen_lib.load_catalogue(wd, "sids", popular[:5])


def test_target_orders_and_tokens(tmp_path):
  wd = _catalogue_dir(tmp_path, CODES, [2, 2, 3])
  cat = gen_lib.load_catalogue(wd, "sids", np.arange(6))
  # Text 0: tag query [3, 4, 0, 2] (by taggers); a user query [2, 3].
  sp = _split(["x"], [0, 0], [[3, 4, 0, 2], [2, 3]], [-1, 7])
  rel = gen_lib.target_sids(sp, cat, "relevance", 10)
  # SIDs of items 3, 4, 0, 2 = 3, 0, 1, 1 -> [3, 0, 1]; user query 3, 2 ->
  # relevance order of its items: 3 then 2.
  assert rel == [[3, 0, 1], [3, 1]]
  assert gen_lib.target_sids(sp, cat, "item_id", 10) == [[1, 3, 0], [1, 3]]
  assert gen_lib.target_sids(sp, cat, "sid", 2) == [[0, 1], [1, 3]]
  tok = gen_lib.target_tokens([[3, 0]], cat, max_sids=3)
  b = gen_lib.SID_BASE
  assert tok.tolist() == [[b + 1, b + 2 + 0, b + 4 + 1,
                           b + 0, b + 2 + 0, b + 4 + 1, gen_lib.EOS, 0, 0, 0]]
  with pytest.raises(ValueError, match="target_order"):
    gen_lib.target_sids(sp, cat, "random", 3)


def test_hard_negatives_share_the_longest_prefix(tmp_path):
  wd = _catalogue_dir(tmp_path, CODES, [2, 2, 3])
  cat = gen_lib.load_catalogue(wd, "sids", np.arange(6))
  codes = cat.codes[cat.sid_of_item]
  groups = rank_lib.prefix_groups(codes)
  rng = np.random.default_rng(0)
  # Item 0 (0,1,2) shares its SID with items 2 and 5; item 3 (1,0,1) shares
  # (1,0) with item 1 only; item 4 (0,0,1) shares (0,) with 0, 2, 5.
  neg, counts = rank_lib.hard_negatives([0, 3, 4], {0, 3, 4}, codes, groups,
                                        rng)
  assert neg[0] in (2, 5) and neg[1] == 1 and neg[2] in (2, 5)
  assert counts == [1, 1, 1, 0]
  for _ in range(20):  # a same-SID negative is never one of the text's items
    neg, counts = rank_lib.hard_negatives([0], {0, 2}, codes, groups, rng)
    assert neg[0] == 5 and counts[0] == 1
  # Item 1 (1,0,0): nothing else has its SID, item 3 shares (1, 0).
  neg, counts = rank_lib.hard_negatives([1], {0, 1, 2, 5}, codes, groups, rng)
  assert neg[0] == 3 and counts == [0, 1, 0, 0]
  # Its whole first-code group held: uniform over the items not held.
  neg, counts = rank_lib.hard_negatives([1], {1, 3}, codes, groups, rng)
  assert neg[0] in (0, 2, 4, 5) and counts == [0, 0, 0, 1]
  sp = _split(["x", "y"], [0, 1], [[0, 3], [1]])
  pairs = rank_lib.labelled_pairs(sp, codes, max_positives=1, seed=0)
  assert pairs["label"].tolist() == [1, 0, 1, 0]
  assert pairs["item"][0] == 0 and pairs["item"][2] == 1
  assert pairs["item"][1] in (2, 5)  # same SID as item 0
  for t, i, y in zip(pairs["text"], pairs["item"], pairs["label"]):
    if y == 0:
      assert i not in sp.text_items()[t]
  assert pairs["negatives_by_shared_codes"] == {"3": 1, "2": 1, "1": 0,
                                                "0": 0}


def test_pair_rows_layout():
  pe = rank_lib.PairEncoder([[11, 12, 13]], [[21, 22], [31]], cls=101,
                            sep=102, length=9)
  ids, types, mask = pe.rows(np.array([0, 0]), np.array([0, 1]))
  assert ids.tolist() == [[101, 0, 11, 12, 13, 102, 21, 22, 102],
                          [101, 0, 11, 12, 13, 102, 31, 102, 0]]
  assert types.tolist() == [[0, 1, 0, 0, 0, 0, 1, 1, 1],
                            [0, 1, 0, 0, 0, 0, 1, 1, 0]]
  assert mask.sum(1).tolist() == [9, 8]
  # Too long: both sides are cut, the final [SEP] stays.
  pe = rank_lib.PairEncoder([list(range(10, 20))], [list(range(30, 40))],
                            cls=101, sep=102, length=10)
  ids, _, mask = pe.rows(np.array([0]), np.array([0]))
  assert mask.sum() == 10 and ids[0, -1] == 102 and ids[0, 2] == 10
  assert 30 in ids[0]


def _tiny_bert():
  cfg = bert.BertConfig(vocab_size=50, hidden_size=12, num_hidden_layers=1,
                        num_attention_heads=3, intermediate_size=20,
                        max_position_embeddings=16)
  return bert.BertModel(cfg, rngs=nnx.Rngs(0))


def test_cross_encoder_reads_the_item_vector_and_freezes_the_table():
  model = rank_lib.CrossEncoder(_tiny_bert(), 5, train_word_embeddings=False,
                                rngs=nnx.Rngs(1))
  params = nnx.state(model, nnx.Param)
  names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert not any("word_emb" in n for n in names)
  assert any("vec_proj" in n for n in names)
  ids = jnp.array([[1, 0, 7, 2, 9, 2, 0]])
  types = jnp.array([[0, 1, 0, 0, 1, 1, 0]])
  mask = jnp.array([[1, 1, 1, 1, 1, 1, 0]])
  v1, v2 = jnp.ones((1, 5)), -jnp.ones((1, 5))
  a, b = model(ids, types, mask, v1), model(ids, types, mask, v2)
  assert a.shape == (1,) and abs(float(a[0] - b[0])) > 1e-4
  # The token id at the vector slot is ignored (its embedding is replaced).
  c = model(ids.at[0, 1].set(33), types, mask, v1)
  np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-6)
  # Padding does not change the logit (mean over real positions).
  d = model(ids.at[0, 6].set(44), types, mask, v1)
  np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=1e-6)


def test_text_knn_votes_by_similarity_and_rank():
  from genrec_jax.gar import baselines
  q = np.array([[1.0, 0.0], [0.0, 1.0]])
  train = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  lists = [[3, 1], [1, 4], [2]]
  out = baselines.text_knn(q, train, lists, num_items=5, k=2, depth=3)
  # Query 0: text 0 (cos 1) and text 1 (0.6): item 3: 1, item 1: 1/log2(3)
  # + 0.6, item 4: 0.6/log2(3).
  assert out[0].tolist() == [1, 3, 4]
  # Query 1: text 2 (cos 1) and text 1 (0.8): item 2: 1, item 1: 0.8,
  # item 4: 0.8/log2(3).
  assert out[1].tolist() == [2, 1, 4]
  # A catalogue smaller than the depth: every item once.
  out = baselines.text_knn(q, train, lists, num_items=5, k=2, depth=50)
  assert out.shape == (2, 5) and sorted(out[0].tolist()) == [0, 1, 2, 3, 4]


def test_fuse_reciprocal_ranks():
  cands = [np.array([7, 8, 9])]
  logits = [np.array([0.1, 2.0, -1.0])]  # ranker order: 8, 7, 9
  k = rank_lib.FUSION_K
  items, scores = rank_lib.fuse(cands, logits, 0.0)
  assert items[0].tolist() == [8, 7, 9]
  items, _ = rank_lib.fuse(cands, logits, 1.0)
  assert items[0].tolist() == [7, 8, 9]
  items, scores = rank_lib.fuse(cands, logits, 0.3)
  want = {7: 0.3 / k + 0.7 / (k + 1), 8: 0.3 / (k + 1) + 0.7 / k,
          9: 0.3 / (k + 2) + 0.7 / (k + 2)}
  assert items[0].tolist() == [8, 7, 9]
  np.testing.assert_allclose(scores[0], [want[i] for i in (8, 7, 9)])
  with pytest.raises(ValueError, match="outside"):
    rank_lib.fuse(cands, logits, 1.5)


def test_classification_metrics():
  m = rank_lib.classification(np.array([1.0, -1.0, 2.0, 0.5]),
                              np.array([1, 1, 0, 0]), "v/")
  assert m == {"v/precision": pytest.approx(1 / 3),
               "v/recall": pytest.approx(0.5),
               "v/f1": pytest.approx(0.4), "v/accuracy": 0.25}


def test_generator_learns_text_to_sid_lists(tmp_path):
  """Four 'texts' (random states) -> distinct SID lists; after training the
  constrained beam search returns each text's list exactly."""
  codes = [[a, b, c] for a in range(3) for b in range(2) for c in range(3)
           if (a + b + c) % 2 == 0]
  wd = _catalogue_dir(tmp_path, codes, [3, 2, 3])
  cat = gen_lib.load_catalogue(wd, "sids", np.arange(len(codes)))
  lists = [[0, 3, 5], [2, 1], [7, 4, 6, 8], [5]]
  tgt = gen_lib.target_tokens(lists, cat, max_sids=4)
  rng = np.random.default_rng(0)
  states = rng.normal(size=(4, 3, 7)).astype(np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.int32)
  mcfg = ml_collections.ConfigDict(dict(
      d_model=24, d_kv=6, d_ff=40, num_heads=2, num_layers=1,
      num_decoder_layers=1, feed_forward_proj="gated-gelu",
      relative_attention_num_buckets=8, relative_attention_max_distance=16))
  model = gen_lib.SetGenerator(gen_lib.model_config(mcfg, cat.vocab_size), 7,
                               rngs=nnx.Rngs(0))
  src = gen_lib.QueryBatches(states, mask, np.arange(4), tgt, 4, 0)
  batch = {k: jnp.asarray(v) for k, v in src.next_batch(None, 0).items()}
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)
  loss = lambda p: gen_lib.loss_fn(nnx.merge(graphdef, p), batch, None)[0]

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  loss0 = float(loss(params))
  for _ in range(300):
    params, opt_state = step(params, opt_state)
  assert float(loss(params)) < 0.02 * loss0
  model = nnx.merge(graphdef, params)
  gen = gen_lib.Generator(model, cat, {"method": "beam", "beam_size": 3,
                                       "max_sids": 4, "top_n": 5})
  res = jax.device_get(gen.search(states, mask))
  for t, want in enumerate(lists):
    n = int(res.lengths[t, 0])
    assert res.sids[t, 0, :n].tolist() == want
  items, scores, pools = gen.candidates(states, mask, batch_size=3)
  # Item i has SID i here: the candidates start with the list's items.
  for t, want in enumerate(lists):
    assert items[t][:len(want)].tolist() == want
    assert pools[t] >= len(want) and len(items[t]) == 5
  # Sampling at a low temperature gives the list too.
  gen.decode.update(method="sample", num_samples=4, temperature=0.05)
  res = jax.device_get(gen.search(states, mask))
  assert res.sids[1, 0, :2].tolist() == [2, 1]


# ----------------------------------------------------------------------------
# The whole thing on a planted Last.fm-like dataset.

GENRES = ("jazz", "metal", "reggae", "techno")


def write_planted(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """40 artists in 4 genres; users listen in one genre; tags name a genre."""
  rng = np.random.default_rng(seed)
  artists = {a: f"{GENRES[(a - 1) // 10]} band {a}" for a in range(1, 41)}
  tags, tagged, listens = {}, [], []
  for u in range(100, 140):
    g = u % 4
    for a in rng.choice(np.arange(1, 11) + 10 * g, 6, replace=False):
      listens.append((u, int(a), int(rng.integers(1, 1000))))
  words = ("best", "classic", "live", "new", "old", "great", "pure", "deep")
  t = 0
  for g, genre in enumerate(GENRES):
    for w in words:
      t += 1
      tags[t] = f"{w} {genre}"
      for u in rng.choice(np.arange(100, 140), 3, replace=False):
        for a in rng.choice(np.arange(1, 11) + 10 * g, 4, replace=False):
          tagged.append((int(u), int(a), t))
  return write_lastfm(root, artists=artists, tags=tags,
                      listens=sorted(set((u, a, w) for u, a, w in listens)),
                      tagged=sorted(set(tagged)))


def test_lastfm_tiny_pipeline_and_demo(tmp_path, capsys):
  data = write_planted(tmp_path / "lfm")
  cfg = pipeline_config.get_config("lastfm_tiny")
  cfg.prepare_lastfm.data.path = str(data)
  cfg.prepare_lastfm.data.min_query_items = 3
  wd = tmp_path / "wd"
  out = pipeline.run(cfg, wd)
  text = capsys.readouterr().out
  for row in ("popularity", "text_similarity", "text_knn", "item2vec_centroid",
              "generator", "generate_rank"):
    assert re.search(rf"^{row}\s", text, re.M), text
  assert "test/ndcg@20" in text and "query '" in text
  res = out["results"]
  assert set(res) >= {"popularity", "generator", "generate_rank"}
  gm = json.loads((wd / "generator_s0" / "metrics.json").read_text())
  assert gm["test/pool_size"] > 0 and 0 <= gm["test/pool_recall"] <= 1
  rm = json.loads((wd / "generate_rank_s0" / "metrics.json").read_text())
  assert {"valid/f1", "valid/precision", "test/ndcg@50",
          "ranker_only/test/ndcg@20", "fusion_weight"} <= set(rm)
  assert rm["valid/ndcg@20"] >= max(rm["fusion_valid_ndcg@20"].values()) - 1e-5
  # Candidates: only real items, no repeats, every generated SID's items.
  cands = json.loads((wd / "generator_s0" / "candidates.json").read_text())
  n_items = len(json.loads((wd / "lastfm/items.json").read_text())["names"])
  for c in cands["test"]:
    assert len(set(c["items"])) == len(c["items"])
    assert all(0 <= i < n_items for i in c["items"])
  # The demo, one shot: "query: ..." then "  1. name  (score x)" lines.
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.generate_rank", f"--workdir={wd}",
       "--query=Deep   Jazz", "--top_n=5"], cwd=REPO, capture_output=True,
      text=True, timeout=300, env={**__import__("os").environ,
                                   "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == "query: Deep   Jazz"
  hits = [re.match(r"^\s*(\d+)\. (.+)  \(score (-?[\d.]+)\)( \*)?$", l)
          for l in lines[1:]]
  assert len(hits) == 5 and all(hits), lines
  assert [int(h.group(1)) for h in hits] == [1, 2, 3, 4, 5]
  scores = [float(h.group(3)) for h in hits]
  assert scores == sorted(scores, reverse=True)
  names = set(json.loads((wd / "lastfm/items.json").read_text())["names"])
  assert all(h.group(2) in names for h in hits)
  # Interactive: two queries then quit.
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.generate_rank", f"--workdir={wd}",
       "--top_n=2"], input="old metal\n\nquit\nnew jazz\n", cwd=REPO,
      capture_output=True, text=True, timeout=300,
      env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("query: ") == 1 and "new jazz" not in proc.stdout
