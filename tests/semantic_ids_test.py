"""Tests of the semantic-ID quantizers, collisions, report and build stage."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import sids as sids_config
from genrec_jax.data.dataset import DataError, Dataset, EvalExamples, Ragged
from genrec_jax.semantic_ids import build, collisions, kmeans as km, quantizers
from genrec_jax.semantic_ids import rq_kmeans, rq_vae

REPO = pathlib.Path(__file__).resolve().parents[1]


def blobs(n=61, d=13, k=5, seed=0, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d)).astype(np.float32) * 3
  labels = np.arange(n) % k
  x = centres[labels] + spread * rng.normal(size=(n, d)).astype(np.float32)
  return x.astype(np.float32), labels


def tiny_dataset(n_items=61, n_users=5, titles=None):
  rng = np.random.default_rng(0)
  seqs = [rng.integers(0, n_items, 6).tolist() for _ in range(n_users)]
  test = EvalExamples(users=np.arange(n_users, dtype=np.int32),
                      history=Ragged.from_lists([s[:-1] for s in seqs]),
                      targets=Ragged.from_lists([[s[-1]] for s in seqs]))
  titles = titles or [f"item {i} title" for i in range(n_items)]
  return Dataset(name="tiny", num_users=n_users, num_items=n_items,
                 item_ids=[str(i + 1) for i in range(n_items)],
                 user_ids=[str(u) for u in range(n_users)],
                 item_fields={"title": titles},
                 sequences=Ragged.from_lists(seqs), timestamps=None,
                 train=Ragged.from_lists([s[:-2] for s in seqs]), valid=None,
                 test=test, split="leave_one_out")


def make_workdir(tmp_path, x=None, n_items=61, d=13):
  tiny_dataset(n_items).save(tmp_path / "dataset")
  (tmp_path / "embeddings").mkdir()
  if x is None:
    x = np.random.default_rng(1).normal(size=(n_items, d)).astype(np.float32)
  np.save(tmp_path / "embeddings" / "items.npy", x)
  return tmp_path


# ---- k-means ---------------------------------------------------------------
@pytest.mark.parametrize("init", ["kmeans++", "greedy_kmeans++"])
def test_kmeans_recovers_blobs_and_matches_brute_force(init):
  x, labels = blobs()
  res = km.kmeans(x, 5, seed=0, iters=10, restarts=2, init=init)
  # Same partition as the true blobs (up to renaming).
  pairs = set(zip(labels.tolist(), res.assign.tolist()))
  assert len(pairs) == 5
  # The assignment is the brute-force nearest centre and the error matches.
  d2 = ((x[:, None, :] - res.centroids[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(res.assign, d2.argmin(1))
  np.testing.assert_allclose(res.error, d2.min(1).mean(), rtol=1e-4)


def test_kmeans_error_not_worse_than_faiss():
  faiss = pytest.importorskip("faiss")
  x = np.random.default_rng(3).normal(size=(61, 13)).astype(np.float32)
  res = km.kmeans(x, 5, seed=0, iters=10, restarts=2)
  f = faiss.Kmeans(13, 5, niter=10, seed=1, nredo=2)
  f.train(x)
  d, _ = f.index.search(x, 1)
  assert res.error <= d.mean() * 1.05


def test_kmeans_same_seed_same_result_and_reseeds_empty():
  x = np.random.default_rng(4).normal(size=(61, 13)).astype(np.float32)
  a = km.kmeans(x, 5, seed=7, iters=10, restarts=2)
  b = km.kmeans(x, 5, seed=7, iters=10, restarts=2)
  np.testing.assert_array_equal(a.assign, b.assign)
  # Duplicated points: random init may pick equal centres -> empty clusters,
  # which must be re-seeded: every cluster ends up used.
  dup = np.repeat(x[:7], 9, axis=0)[:61]
  r = km.kmeans(dup, 7, seed=0, iters=10, restarts=2, init="random")
  assert len(np.unique(r.assign)) == 7
  assert r.error < 1e-4


def test_kmeans_rejects_too_few_points_and_nan():
  x = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match="cannot fill"):
    km.kmeans(x, 5)
  x = np.ones((9, 3), np.float32)
  x[2, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    km.kmeans(x, 3)


def test_capacity_assign_respects_capacity():
  cost = np.random.default_rng(0).random((61, 7))
  cost[:, 0] -= 5  # everybody wants cluster 0
  a = km.capacity_assign(cost, 9)
  counts = np.bincount(a, minlength=7)
  assert counts.max() <= 9 and counts.sum() == 61


# ---- quantizers --------------------------------------------------------------
def tiny_config(*variants):
  return sids_config.get_config(",".join(("tiny",) + variants))


def test_rq_kmeans_residual_levels_and_determinism():
  x = np.random.default_rng(1).normal(size=(61, 13)).astype(np.float32)
  cfg = tiny_config()
  a = quantizers.get("rq_kmeans")(x, cfg)
  b = quantizers.get("rq_kmeans")(x, cfg)
  np.testing.assert_array_equal(a.codes, b.codes)
  assert a.codes.shape == (61, 3) and a.codes.max() < 7
  books = a.info["codebooks"]
  recon = sum(books[l][a.codes[:, l]] for l in range(3))
  np.testing.assert_allclose(recon, a.recon, atol=1e-5)
  errs = [lv["error_after"] for lv in a.info["levels"]]
  assert errs[0] > errs[1] > errs[2]
  # last_cost is the final squared error of each item at its code.
  final = a.last_cost[np.arange(61), a.codes[:, 2]]
  np.testing.assert_allclose(final, ((x - a.recon) ** 2).sum(1), rtol=1e-3, atol=1e-4)


def test_balanced_sizes():
  x = np.random.default_rng(2).normal(size=(61, 13)).astype(np.float32)
  x[:40] += 4.0  # a dense region that plain k-means would over-split
  q = quantizers.get("balanced")(x, tiny_config("balanced"))
  for level in range(3):
    counts = np.bincount(q.codes[:, level], minlength=7)
    assert counts.max() <= 9 and counts.min() >= 1, counts


def test_hierarchical_parent_constraint():
  x, _ = blobs(n=61, k=4, spread=1.0)
  cfg = tiny_config("hierarchical")  # sizes (5, 3, 4)
  q = quantizers.get("hierarchical")(x, cfg)
  assert q.codebook_sizes == [5, 3, 4]
  for level, k in enumerate(q.codebook_sizes):
    assert q.codes[:, level].max() < k
  # Groups (prefixes) small enough get one code per item at the next level.
  for level in (1, 2):
    _, inv, counts = np.unique(q.codes[:, :level], axis=0, return_inverse=True,
                               return_counts=True)
    for g in np.flatnonzero(counts <= q.codebook_sizes[level]):
      members = np.flatnonzero(inv.reshape(-1) == g)
      assert len(np.unique(q.codes[members, level])) == len(members)
  # Codes restart inside every parent: a global level-2 k-means could not give
  # every small group distinct codes; the recon is consistent with the error.
  assert np.isfinite(q.recon).all()
  assert q.last_cost.shape == (61, 4)


def test_faiss_rq_unpack_matches_decode():
  faiss = pytest.importorskip("faiss")
  x = np.random.default_rng(5).normal(size=(61, 13)).astype(np.float32)
  rq = faiss.ResidualQuantizer(13, 3, 4)
  rq.train(x)
  packed = rq.compute_codes(x)
  from genrec_jax.semantic_ids import faiss_backend
  codes = faiss_backend.unpack_codes(packed, 4, 3)
  books = faiss.vector_to_array(rq.codebooks).reshape(3 * 16, 13)
  recon = sum(books[l * 16 + codes[:, l]] for l in range(3))
  np.testing.assert_allclose(recon, rq.decode(packed), atol=1e-5)


# ---- RQ-VAE ------------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["ste", "rotation"])
def test_rq_vae_lowers_loss(gradient):
  x = np.random.default_rng(6).normal(size=(61, 13)).astype(np.float32)
  cfg = tiny_config("rq_vae")
  with cfg.unlocked():
    cfg.rq_vae.steps = 40
    cfg.rq_vae.log_every = 39
    cfg.rq_vae.learning_rate = 1e-2
    cfg.rq_vae.batch_size = 32
    cfg.rq_vae.gradient = gradient
  q = quantizers.get("rq_vae")(x, cfg)
  hist = q.info["history"]
  assert hist[-1]["loss"] < hist[0]["loss"]
  assert q.info["resets"] and q.info["resets"][-1]["step"] <= 32  # 0.8 * 40
  assert q.codes.shape == (61, 3) and q.recon.shape == x.shape


def test_rotation_trick_value_is_zq():
  import jax
  import jax.numpy as jnp
  z = jax.random.normal(jax.random.key(0), (5, 7))
  zq = jax.random.normal(jax.random.key(1), (5, 7))
  np.testing.assert_allclose(rq_vae.rotation_trick(z, zq), zq, atol=1e-5)
  g = jax.grad(lambda z: jnp.sum(rq_vae.rotation_trick(z, zq)[:, 0]))(z)
  assert np.isfinite(np.asarray(g)).all()


# ---- collisions --------------------------------------------------------------
def test_dedup_code_order_by_item_id():
  codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
  out, size = collisions.add_dedup_code(codes)
  np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 0])
  assert size == 3
  assert collisions.path_stats(out)["collisions"] == 0
  stats = collisions.path_stats(codes)
  assert stats == {"collisions": 2, "colliding_items": 3, "colliding_paths": 1,
                   "collision_rate": 2 / 5, "max_items_per_path": 3}


def test_reassign_nearest_free_code():
  codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1]])
  cost = np.array([[5.0, 1.0, 0.0, 9.0],  # item 0: farther from code 1
                   [5.0, 0.5, 0.1, 9.0],  # item 1 keeps code 1
                   [0.0, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, 0.0]])
  out, moved = collisions.reassign_last_level(codes, 4, cost)
  assert moved == 1
  # Item 0 moves to its nearest code not used under prefix 0 (2 is taken).
  np.testing.assert_array_equal(out, [[0, 0], [0, 1], [0, 2], [1, 1]])
  with pytest.raises(ValueError, match="share the prefix"):
    collisions.reassign_last_level(np.zeros((5, 2), int), 4, None)


@pytest.mark.parametrize("strategy", collisions.COLLISION_FREE)
def test_collision_free_random_codes(strategy):
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 3, size=(40, 3))
  out, sizes, _ = collisions.make_collision_free(
      codes, [3, 3, 7], strategy, rng.random((40, 7)))
  assert collisions.path_stats(out)["collisions"] == 0
  assert len(sizes) == out.shape[1]
  np.testing.assert_array_equal(out[:, :2], codes[:, :2])


# ---- the stage ---------------------------------------------------------------
def test_build_run_writes_artifacts(tmp_path):
  w = make_workdir(tmp_path)
  rep = build.run(tiny_config(), w)
  out = w / "sids"
  assert rep["collisions_after"] == 0 and rep["levels"] == 4
  for f in ("item_sids.json", "tiny.index.json", "report.json", "codes.npy",
            "code_usage.png"):
    assert (out / f).exists(), f
  sids = json.loads((out / "item_sids.json").read_text())
  index = json.loads((out / "tiny.index.json").read_text())
  assert len(sids) == 61 and len(sids["0"]) == 4
  assert index["0"] == [f"<{c}_{v}>" for c, v in zip("abcd", sids["0"])]
  saved = json.loads((out / "report.json").read_text())
  for key in ("levels", "codebook_sizes", "collisions_before", "collisions_after",
              "utilization", "entropy_bits", "perplexity", "max_items_per_prefix",
              "quantization_error", "level1/silhouette",
              "level1/calinski_harabasz", "level1/davies_bouldin",
              "full/silhouette", "coverage_before", "coverage_after",
              "max_items_per_path_before", "timings"):
    assert key in saved, key
  # Same seed, same codes.
  first = np.load(out / "codes.npy")
  build.run(tiny_config(), w)
  np.testing.assert_array_equal(first, np.load(out / "codes.npy"))
  assert not [p for p in w.iterdir() if p.name.startswith("sids.tmp")]


def test_build_run_reassign_keeps_levels(tmp_path):
  w = make_workdir(tmp_path)
  cfg = tiny_config("reassign")
  with cfg.unlocked():
    cfg.codebook_sizes = (7, 7, 61)  # room for any prefix group
  rep = build.run(cfg, w)
  codes = np.load(w / "sids" / "codes.npy")
  assert codes.shape == (61, 3) and rep["collisions_after"] == 0
  assert rep["reassigned_items"] == rep["collisions_before"]
  assert rep["quantization_error_after_collisions"] >= rep["quantization_error"] - 1e-5


@pytest.mark.parametrize("problem", ["nan", "inf", "rows", "too_few"])
def test_build_bad_input_writes_nothing(tmp_path, problem):
  x = np.random.default_rng(1).normal(size=(61, 13)).astype(np.float32)
  if problem == "nan":
    x[3, 2] = np.nan
  if problem == "inf":
    x[5, 0] = np.inf
  if problem == "rows":
    x = x[:60]
  w = make_workdir(tmp_path, x)
  cfg = tiny_config()
  if problem == "too_few":
    with cfg.unlocked():
      cfg.codebook_sizes = (7, 64, 7)
  err = ValueError if problem == "too_few" else DataError
  with pytest.raises(err, match={"nan": "NaN", "inf": "NaN", "rows": "60 rows",
                                 "too_few": "level 2 has 64 codes"}[problem]):
    build.run(cfg, w)
  assert not (w / "sids").exists()
  assert not [p for p in w.iterdir() if p.name.startswith("sids.tmp")]


def test_binary_smoke(tmp_path):
  w = make_workdir(tmp_path)
  cmd = [sys.executable, "-m", "binaries.build_sids",
         "--config=configs/sids.py:tiny", f"--workdir={w}"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rep = json.loads((w / "sids" / "report.json").read_text())
  assert rep["levels"] == 4 and rep["collisions_after"] == 0
  # Bad input: one-line error, non-zero exit.
  np.save(w / "embeddings" / "items.npy", np.zeros((5, 13), np.float32))
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "5 rows" in r.stderr


def test_benchmark_module_tiny(tmp_path):
  pytest.importorskip("faiss")
  from configs import benchmarks as bench_configs
  from genrec_jax.benchmarks import rq_kmeans as bench
  path = tmp_path / "x.npy"
  np.save(path, np.random.default_rng(1).normal(size=(61, 13)).astype(np.float32))
  config = bench_configs.get_config("rq_kmeans")
  config.embeddings = str(path)
  config.codebook_sizes = (7, 7, 7)
  config.iters = 5
  config.init_sample = 0
  config.repeats = 1
  config.seeds = 2
  out = bench.run(config, tmp_path)
  for key in ("jax_seconds", "faiss_seconds", "time_ratio_jax_over_faiss",
              "jax_error", "faiss_error", "error_ratio_jax_over_faiss"):
    assert np.isfinite(out[key]), key
  config.embeddings = str(tmp_path / "missing.npy")
  with pytest.raises(DataError, match="missing"):
    bench.run(config, tmp_path)
