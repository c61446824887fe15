"""The train_ur4rec stage: batches, per-part optimizers, the whole stage."""
import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import sasrec as sasrec_config
from configs import ur4rec as ur4rec_config
from genrec_jax import model_folder
from genrec_jax import recommend
from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged
from genrec_jax.semantic_ids import encoders
from genrec_jax.training import sasrec_train
from genrec_jax.ur4rec import fusion
from genrec_jax.ur4rec import model as model_lib
from genrec_jax.ur4rec import scoring
from genrec_jax.ur4rec import stage
from genrec_jax.ur4rec import training

NUM_USERS, NUM_ITEMS, PER_USER = 41, 24, 9
WORDS = ("zero", "one")


def _dataset() -> Dataset:
  """Users of group u % 2 interact only with that group's 12 items."""
  rng = np.random.default_rng(0)
  seqs = [rng.choice(12, PER_USER, replace=False) + 12 * (u % 2)
          for u in range(NUM_USERS)]
  users = np.arange(NUM_USERS, dtype=np.int32)

  def split(cut):
    hist = Ragged.from_lists([s[:cut] for s in seqs])
    return EvalExamples(users=users, history=hist,
                        targets=Ragged.from_lists([[s[cut]] for s in seqs]),
                        exclude=hist)

  return Dataset(
      name="groups", num_users=NUM_USERS, num_items=NUM_ITEMS,
      item_ids=[str(i) for i in range(NUM_ITEMS)],
      user_ids=[f"u{u}" for u in range(NUM_USERS)],
      item_fields={"title": [f"movie {i}" for i in range(NUM_ITEMS)]},
      sequences=Ragged.from_lists(seqs), timestamps=None,
      train=Ragged.from_lists([s[:-2] for s in seqs]),
      valid=split(PER_USER - 2), test=split(PER_USER - 1),
      split="leave_one_out")


@encoders.register("test_bag_of_words")
class BagOfWords:
  """Counts of a few words (a stand-in for MiniLM)."""
  dim = 5

  def __init__(self, config):
    del config

  def encode(self, texts):
    vocab = ("zero", "one", "fan", "movie", "likes")
    return np.array([[t.split().count(w) for w in vocab] for t in texts],
                    np.float32)

  def describe(self):
    return {"encoder": "test_bag_of_words"}


@pytest.fixture(name="workdir", scope="module")
def fixture_workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("ur4rec")
  ds = _dataset()
  ds.save(path / "dataset")
  sasrec_train.run(sasrec_config.get_config("tiny"), str(path))
  texts = path / "texts_template"
  texts.mkdir()
  with open(texts / "users.jsonl", "w") as f:
    for u in range(NUM_USERS):
      f.write(json.dumps({"user": u, "text": f"likes {WORDS[u % 2]} fan"})
              + "\n")
  with open(texts / "items.jsonl", "w") as f:
    for i in range(NUM_ITEMS):
      f.write(json.dumps({"item": i, "text": f"{WORDS[i // 12]} movie"})
              + "\n")
  (texts / "report.json").write_text("{}")
  return path


def _config(**steps):
  config = ur4rec_config.get_config("tiny")
  config.encoder.name = "test_bag_of_words"
  config.train.steps.update(steps)
  return config


def test_batches_are_seeded_and_never_leak(workdir):
  ds = Dataset.load(workdir / "dataset")
  make = lambda seed: training.Batches(ds, batch_size=17, num_negatives=5,
                                    history_len=4, max_len=6, seed=seed)
  a, b = make(3).next_batch(None, 7), make(3).next_batch(None, 7)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["candidates"], make(3).next_batch(
      None, 8)["candidates"])
  assert not np.array_equal(a["candidates"], make(4).next_batch(
      None, 7)["candidates"])
  target = a["candidates"][:, 0]
  assert not (a["candidates"][:, 1:] == target[:, None]).any()
  for u, t, h in zip(a["users"], target, a["history"]):
    train = list(ds.train[u])
    assert t in train  # targets and histories come from training only
    pos = train.index(t)
    want = train[max(0, pos - 4):pos]
    np.testing.assert_array_equal(h[h >= 0], want)


def test_alternate_updates_on_its_parity_only():
  tx = training.alternate(optax.sgd(1.0), phase=1)
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  grads = {"w": jnp.array([1.0, 2.0, 3.0])}
  seen = []
  for _ in range(4):
    updates, state = tx.update(grads, state, params)
    seen.append(np.asarray(updates["w"]))
  np.testing.assert_array_equal(seen[0], 0)
  np.testing.assert_array_equal(seen[1], [-1, -2, -3])
  np.testing.assert_array_equal(seen[2], 0)
  np.testing.assert_array_equal(seen[3], [-1, -2, -3])


def test_retriever_stage_freezes_sasrec():
  cfg = _config().train
  cfg.warmup_steps = 0  # (step 0 of a warm-up has learning rate 0)
  tx = training.make_optimizer("retriever", cfg, 10)
  params = nnx.State({"sasrec": {"w": jnp.ones((2, 2))},
                      "retriever": {"w": jnp.ones((2, 2))}})
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["sasrec"]["w"], 0)
  assert np.abs(np.asarray(updates["retriever"]["w"])).min() > 0


def test_stage_learns_and_reports_both_protocols(workdir):
  config = _config(retriever=150, joint=4, end_to_end=4)
  config.train.retriever_lr = 3e-2
  m = stage.run(config, str(workdir))
  for protocol in scoring.PROTOCOLS:
    base = m[f"{protocol}/sasrec_pretrained/test/ndcg@10"]
    for method in scoring.METHODS[1:]:
      # The paired gain over the loaded SASRec: its mean is the difference
      # of the two means, and a gain of 0.0 on every user has no spread.
      gain = m[f"{protocol}/{method}/test/ndcg@10_gain"]
      assert gain == pytest.approx(
          m[f"{protocol}/{method}/test/ndcg@10"] - base, abs=1e-9)
      assert m[f"{protocol}/{method}/test/ndcg@10_gain_se"] >= 0
  assert m["full/retriever/test/ndcg@10_gain_se"] > 0
  # The retriever learned which group's items a user's text points to:
  # sampled candidates (1 + 9), chance HR@5 = 0.5.
  assert m["sampled/retriever/test/hr@5"] > 0.85
  assert m["full/retriever/test/hr@5"] > 0.6  # chance: 5 / 17 unseen
  assert m["selected"] in scoring.METHODS
  assert m[f"full/{m['selected']}/test/ndcg@10"] == m["test/ndcg@10"]
  spec = json.loads((workdir / "ur4rec" / "model.json").read_text())
  assert spec["kind"] == "ur4rec" and spec["fusion"]["method"] == m[
      "selected"]
  # The folder reloaded (recommend / evaluate / serve) reproduces the
  # selected fusion's full-ranking test metric.
  ds = Dataset.load(workdir / "dataset")
  ranker = recommend.load_model(workdir, "ur4rec", ds=ds)
  scores, mask = fusion.candidate_scores(ranker, ds.test)
  got = fusion.evaluate(scores, mask, fusion.target_columns(ds.test, None),
                        prefix="test/")
  assert got["test/ndcg@10"] == pytest.approx(m["test/ndcg@10"], abs=1e-6)
  rec = recommend.Recommender(workdir, "ur4rec")
  assert rec.explain(3) == f"likes {WORDS[1]} fan"
  assert rec.explain(-1) is None
  top = rec.recommend(list(ds.sequences[3]), user=3, top_n=3)
  assert len(top) == 3 and not set(top) & set(ds.sequences[3].tolist())


def test_sampled_candidates_do_not_depend_on_the_seed(workdir):
  got = []
  for seed in (0, 1):
    config = _config(retriever=2, joint=0, end_to_end=0)
    config.update(seed=seed, name=f"ur4rec_seed{seed}")
    got.append(stage.run(config, str(workdir)))
  # SASRec is frozen in the retriever stage: same lists -> same metrics.
  keys = [k for k in got[0] if k.startswith("sampled/sasrec")]
  assert len(keys) > 10
  for k in keys:
    assert got[0][k] == got[1][k], k


def test_bad_weights_and_features_are_named(workdir):
  config = _config()
  config.train.joint_weights = (1.5, 0.5)
  with pytest.raises(ValueError, match=r"joint_weights\[0\]"):
    stage.run(config, str(workdir))
  config = _config()
  config.features.path = "features/missing.npy"
  with pytest.raises(ValueError, match="missing.npy"):
    stage.run(config, str(workdir))


def test_multimodal_stage_with_uncertainty_weights(workdir):
  rng = np.random.default_rng(5)
  feats = np.concatenate([np.eye(2)[np.arange(NUM_ITEMS) // 12],
                          rng.normal(size=(NUM_ITEMS, 3))], 1)
  (workdir / "features").mkdir(exist_ok=True)
  np.save(workdir / "features" / "groups.npy", feats.astype(np.float32))
  config = _config(retriever=150, joint=0, end_to_end=4)
  config.update(name="ur4rec_mm")
  config.train.update(retriever_lr=3e-2, loss_weighting="uncertainty")
  config.features.path = "features/groups.npy"
  m = stage.run(config, str(workdir))
  assert m["multimodal"] and m["features"] == "features/groups.npy"
  # Chance 0.5; 34 of the 41 test users measured (35 without the feature
  # projection's dropout, which is per item since it runs on the item table).
  assert m["sampled/retriever/test/hr@5"] > 0.8
  ranker = recommend.load_model(workdir, "ur4rec_mm")
  assert ranker.kind == "ur4rec"


def test_encoder_blocks_get_their_own_learning_rate():
  cfg = _config().train
  cfg.update(warmup_steps=0, weight_decay=0.0, retriever_lr=1e-2,
             encoder_lr=1e-4)
  tx = training.make_optimizer("retriever", cfg, 10)
  params = nnx.State({"sasrec": {"w": jnp.ones((2, 2))},
                      "retriever": {"w": jnp.ones((2, 2)),
                                    "top": {"w": jnp.ones((2, 2))}}})
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # AdamW's first step moves each weight by its part's learning rate.
  np.testing.assert_array_equal(updates["sasrec"]["w"], 0)
  np.testing.assert_allclose(updates["retriever"]["w"], -1e-2, rtol=1e-3)
  np.testing.assert_allclose(updates["retriever"]["top"]["w"], -1e-4,
                             rtol=1e-3)


def test_trainable_minilm_block(workdir):
  """trainable_layers=1: the top MiniLM block starts as MiniLM, trains at
  encoder_lr, and the folder reloads to the same metrics."""
  config = _config(retriever=60, joint=0, end_to_end=0)
  config.encoder.name = "bert"  # the packaged all-MiniLM-L6-v2
  config.update(name="ur4rec_top1")
  config.retriever.trainable_layers = 1
  config.train.update(retriever_lr=3e-2, encoder_lr=1e-3)
  ds = Dataset.load(workdir / "dataset")
  texts = model_lib.encode_texts(config, workdir, ds)
  sasrec, _ = model_lib.load_sasrec(workdir, "sasrec", ds)
  model = model_lib.build_model(config, workdir, sasrec, texts, None)
  # At init the top block over the cached lower states is the full encoder.
  users = jnp.arange(NUM_USERS)
  b = model.retriever_batch(users, None)
  assert b["user_text"].ndim == 3 and b["user_mask"].shape[0] == NUM_USERS
  np.testing.assert_allclose(
      model.retriever.pool(b["user_text"], b["user_mask"]), texts[0],
      atol=2e-5)
  start = np.asarray(model.retriever.top.q[...])
  m = stage.run(config, str(workdir))
  assert m["sampled/retriever/test/hr@5"] > 0.85  # chance 0.5
  spec = json.loads((workdir / "ur4rec_top1" / "model.json").read_text())
  assert spec["retriever_config"]["trainable_layers"] == 1
  nnx.update(model, model_folder.restore_params(
      workdir / "ur4rec_top1", nnx.state(model, nnx.Param)))
  moved = np.abs(np.asarray(model.retriever.top.q[...]) - start).max()
  assert 0 < moved < 0.5, moved  # trained, at the small encoder_lr
  ranker = recommend.load_model(workdir, "ur4rec_top1", ds=ds)
  scores, mask = fusion.candidate_scores(ranker, ds.test)
  got = fusion.evaluate(scores, mask, fusion.target_columns(ds.test, None),
                        prefix="test/")
  assert got["test/ndcg@10"] == pytest.approx(m["test/ndcg@10"], abs=1e-6)
