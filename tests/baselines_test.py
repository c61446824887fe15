"""Tests for genrec_jax/baselines/simple.py (most_popular, item_knn and the
tuned sequential item-kNN)."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import baselines as baselines_config
from genrec_jax.baselines import simple
from genrec_jax.data import splits
from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged
from genrec_jax.data.sources import RawData
from genrec_jax.evaluation import metrics

LENGTHS = (1, 2, 3, 5, 10, 20, 50)
DECAYS = (1.0, 0.8, 0.5, 0.3)


def make_dataset(seqs, num_items, mask_history=True) -> Dataset:
  """A leave-one-out Dataset of `seqs` (lists of item ids)."""
  seqs = [np.asarray(s, np.int32) for s in seqs]
  raw = RawData(name="tiny", user_ids=[str(u) for u in range(len(seqs))],
                item_ids=[str(i) for i in range(num_items)],
                item_fields={"title": [f"t{i}" for i in range(num_items)]},
                sequences=seqs)
  train, valid, test = splits.leave_one_out(raw, 3, mask_history)
  return Dataset(name="tiny", num_users=len(seqs), num_items=num_items,
                 item_ids=raw.item_ids, user_ids=raw.user_ids,
                 item_fields=raw.item_fields,
                 sequences=Ragged.from_lists(seqs), timestamps=None,
                 train=train, valid=valid, test=test, split="leave_one_out")


def chain_dataset(num_items=23, copies=3, length=7) -> Dataset:
  """Item i is always followed by item i + 1 (mod num_items)."""
  seqs = [[(s + k) % num_items for k in range(length)]
          for s in list(range(num_items)) * copies]
  return make_dataset(seqs, num_items)


def random_dataset(num_items=17, num_users=11, seed=0) -> Dataset:
  rng = np.random.default_rng(seed)
  seqs = [rng.choice(num_items, size=rng.integers(3, 9), replace=False)
          for _ in range(num_users)]
  return make_dataset(seqs, num_items)


def seq_cfg(**kw) -> ml_collections.ConfigDict:
  cfg = baselines_config.get_config().baselines.seq_knn
  cfg.update(kw)
  return cfg


def numpy_similarity(ds: Dataset) -> np.ndarray:
  """float64 [N, N] cosine of the binary train user-item matrix, 0 diagonal."""
  x = np.zeros((ds.num_users, ds.num_items))
  x[ds.train.row_ids(), ds.train.values] = 1.0
  cooc = x.T @ x
  norm = np.sqrt(np.maximum(x.sum(0), 1.0))
  sim = cooc / norm[:, None] / norm[None, :]
  np.fill_diagonal(sim, 0.0)
  return sim


def numpy_scores(sim: np.ndarray, history: list[np.ndarray], n: int,
                 decay: float) -> np.ndarray:
  """[E, N]: sum over the last n items of decay**age * sim[item]."""
  out = np.zeros((len(history), sim.shape[1]))
  for r, h in enumerate(history):
    for age, item in enumerate(h[::-1][:n]):
      out[r] += decay**age * sim[item]
  return out


def numpy_ranks(scores, targets, exclude):
  """Pessimistic 0-based rank of each target among items not in `exclude`."""
  ranks = []
  for s, t, ex in zip(scores, targets, exclude):
    keep = np.ones(len(s), bool)
    keep[list(ex)] = False
    keep[t] = False
    ranks.append(int(np.sum(keep & (s >= s[t]))))
  return np.array(ranks)


def test_chain_picks_last_item_and_hits_at_one():
  ds = chain_dataset()
  m = simple.seq_knn(ds, seq_cfg(lengths=LENGTHS, decays=DECAYS))
  chosen = m["seq_knn"]
  assert chosen["tuned_on"] == "valid"
  assert chosen["n"] == 1 or chosen["decay"] <= 0.5
  assert m["test/hr@1"] == 1.0 and m["valid/hr@1"] == 1.0
  # The grid matters: equal weights over long histories tie the next item
  # with the one before the history and lose HR@1.
  grid = {(g["n"], g["decay"]): g["valid/ndcg@10"] for g in chosen["grid"]}
  assert len(grid) == len(LENGTHS) * len(DECAYS)
  assert grid[(50, 1.0)] < 1.0
  assert max(grid.values()) == 1.0


def test_similarity_and_scores_match_numpy():
  ds = random_dataset()
  sim = simple.item_similarity(ds, neighbors=0)  # [N + 1, N]
  want_sim = numpy_similarity(ds)
  np.testing.assert_allclose(np.asarray(sim[:-1]), want_sim, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(sim[-1]), 0.0)
  hist = ds.test.history.padded(7, ds.num_items, left=True)
  for n, decay in ((1, 1.0), (2, 0.5), (3, 0.8), (7, 0.3), (20, 1.0)):
    h = ds.test.history.padded(max(n, 7), ds.num_items, left=True)
    got = simple.seq_knn_scores(sim, jnp.asarray(h), jnp.float32(decay), n)
    want = numpy_scores(want_sim, ds.test.history.tolist(), n, decay)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="n=8 > history length 7"):
    simple.seq_knn_scores(sim, jnp.asarray(hist), jnp.float32(1.0), 8)
  # n = 1 is the last item's row.
  got = simple.seq_knn_scores(sim, jnp.asarray(hist), jnp.float32(0.5), 1)
  np.testing.assert_allclose(np.asarray(got), np.asarray(sim)[hist[:, -1]])


def test_grid_ranks_match_the_shared_evaluation():
  ds = random_dataset(seed=1)
  sim = simple.item_similarity(ds, neighbors=0)
  grid = simple.tune_seq_knn(sim, ds.valid, ds.num_items, (1, 3, 20),
                             (1.0, 0.5), batch_size=4)
  assert [(g["n"], g["decay"]) for g in grid] == [
      (1, 1.0), (1, 0.5), (3, 1.0), (3, 0.5), (20, 1.0), (20, 0.5)]
  for g in grid:
    m = metrics.evaluate_scorer(simple.seq_knn_scorer(sim, g["n"], g["decay"]),
                                ds.valid, ds.num_items, prefix="valid/",
                                max_history=g["n"], batch_size=4)
    assert g["valid/ndcg@10"] == pytest.approx(m["valid/ndcg@10"], abs=1e-9)


def test_history_items_never_ranked():
  ds = random_dataset(num_items=13, num_users=9, seed=2)
  sim = simple.item_similarity(ds, neighbors=0)
  want_sim = numpy_similarity(ds)
  n, decay = 5, 0.8
  ranks = metrics.ranks_from_scores(simple.seq_knn_scorer(sim, n, decay),
                                    ds.test, ds.num_items, max_history=n,
                                    batch_size=4)[:, 0]
  hist = ds.test.history.tolist()
  targets = [t[0] for t in ds.test.targets.tolist()]
  scores = numpy_scores(want_sim, hist, n, decay)
  np.testing.assert_array_equal(ranks, numpy_ranks(scores, targets, hist))
  # Unmasked, history items would have outranked some targets.
  no_mask = numpy_ranks(scores, targets, [[] for _ in hist])
  assert (no_mask > ranks).any()
  # The tuning pass masks the same way.
  grid_ranks = simple._grid_ranks(
      sim, jnp.asarray(ds.test.history.padded(n, ds.num_items)),
      jnp.asarray(ds.test.targets.padded(1, -1, left=False)),
      jnp.asarray(_mask(ds.test, ds.num_items)),
      jnp.asarray([decay], jnp.float32), (n,))
  np.testing.assert_array_equal(np.asarray(grid_ranks)[0, 0, :, 0], ranks)


def _mask(examples: EvalExamples, num_items: int) -> np.ndarray:
  mask = np.zeros((len(examples), num_items), bool)
  mask[examples.exclude.row_ids(), examples.exclude.values] = True
  return mask


def test_tuning_reads_only_the_validation_split():
  ds = random_dataset(num_items=19, num_users=23, seed=3)
  cfg = seq_cfg(lengths=(1, 2, 3, 5), decays=(1.0, 0.5))
  base = simple.seq_knn(ds, cfg)["seq_knn"]
  # Other test targets (and test histories): same grid, same choice.
  rng = np.random.default_rng(0)
  ds.test = EvalExamples(
      users=ds.test.users,
      history=Ragged.from_lists(
          [rng.permutation(h) for h in ds.test.history.tolist()]),
      targets=Ragged.from_lists([[int(rng.integers(ds.num_items))]
                                 for _ in range(len(ds.test))]),
      exclude=ds.test.exclude)
  again = simple.seq_knn(ds, cfg)["seq_knn"]
  assert again == base
  # Other validation targets do change the grid.
  ds.valid = EvalExamples(
      users=ds.valid.users, history=ds.valid.history,
      targets=Ragged.from_lists([[int(rng.integers(ds.num_items))]
                                 for _ in range(len(ds.valid))]),
      exclude=ds.valid.exclude)
  assert simple.seq_knn(ds, cfg)["seq_knn"]["grid"] != base["grid"]


def test_no_validation_split_uses_fallback():
  ds = random_dataset()
  ds.valid = None
  m = simple.seq_knn(ds, seq_cfg(fallback=(2, 0.5)))
  assert m["seq_knn"]["tuned_on"] is None
  assert (m["seq_knn"]["n"], m["seq_knn"]["decay"]) == (2, 0.5)
  assert "test/ndcg@10" in m and not any(k.startswith("valid/") for k in m)


def test_run_writes_every_default_baseline(tmp_path):
  chain_dataset().save(tmp_path / "dataset")
  config = baselines_config.get_config()
  assert "seq_item_knn" in config.baselines.models
  config.baselines.seq_knn.lengths = (1, 3)
  config.baselines.seq_knn.decays = (1.0, 0.5)
  results = simple.run(config, tmp_path)
  assert set(results) == set(config.baselines.models)
  popular = tmp_path / "most_popular" / "metrics.json"
  keys = set(json.loads(popular.read_text()))
  m = json.loads((tmp_path / "seq_item_knn" / "metrics.json").read_text())
  assert keys <= set(m)
  assert m["seq_knn"]["n"] == 1 and m["test/hr@1"] == 1.0
  assert len(m["seq_knn"]["grid"]) == 4
