"""The UR4Rec features stage: modalities, row order, skips, the loader."""
import json
import subprocess
import sys

import numpy as np
import pytest

from configs import ur4rec_features as features_config
from genrec_jax.data.dataset import DataError, Dataset, EvalExamples, Ragged
from genrec_jax.semantic_ids import encoders
from genrec_jax.ur4rec import features
from tests.conftest import REPO

# 7 items; genres as data/sources.py stores ML-100K's (space-separated).
GENRES = ["Action Comedy", "", "Children's Drama", "Sci-Fi",
          "Comedy Drama Sci-Fi", "Drama", "Action"]
# The vocabulary sorted: Action, Children's, Comedy, Drama, Sci-Fi.
WANT_GENRE = np.array([
    [1, 0, 1, 0, 0],  # Action Comedy
    [0, 0, 0, 0, 0],  # (none)
    [0, 1, 0, 1, 0],  # Children's Drama
    [0, 0, 0, 0, 1],  # Sci-Fi
    [0, 0, 1, 1, 1],  # Comedy Drama Sci-Fi
    [0, 0, 0, 1, 0],  # Drama
    [1, 0, 0, 0, 0],  # Action
], np.float32)
N_ITEMS = len(GENRES)


def tiny_dataset() -> Dataset:
  seqs = [[0, 2, 4, 6], [1, 3, 5, 0], [6, 5, 4, 3]]
  test = EvalExamples(users=np.arange(3, dtype=np.int32),
                      history=Ragged.from_lists([s[:-1] for s in seqs]),
                      targets=Ragged.from_lists([[s[-1]] for s in seqs]))
  return Dataset(name="tiny", num_users=3, num_items=N_ITEMS,
                 item_ids=[str(10 + i) for i in range(N_ITEMS)],
                 user_ids=["u0", "u1", "u2"],
                 item_fields={"title": [f"movie {i}" for i in range(N_ITEMS)],
                              "genres": GENRES},
                 sequences=Ragged.from_lists(seqs), timestamps=None,
                 train=Ragged.from_lists([s[:-1] for s in seqs]), valid=None,
                 test=test, split="leave_one_out")


def make_workdir(path, *, lightgcn=True, embeddings=True):
  tiny_dataset().save(path / "dataset")
  rng = np.random.default_rng(0)
  out = {}
  if lightgcn:
    (path / "lightgcn").mkdir()
    out["lightgcn"] = rng.normal(size=(N_ITEMS, 5)).astype(np.float32)
    np.save(path / "lightgcn" / "item_emb.npy", out["lightgcn"])
  if embeddings:
    (path / "embeddings").mkdir()
    out["title"] = rng.normal(size=(N_ITEMS, 3)).astype(np.float32)
    np.save(path / "embeddings" / "items.npy", out["title"])
    (path / "embeddings" / "meta.json").write_text(json.dumps(
        {"encoder": "bert", "model": "/x/model", "text_template": "$title",
         "normalize": True}))
  return out


def test_stage_writes_every_modality_in_item_order(tmp_path):
  src = make_workdir(tmp_path)
  meta = features.run(features_config.get_config("tiny"), tmp_path)
  out = tmp_path / "features"
  genre = np.load(out / "genre.npy")
  np.testing.assert_array_equal(genre, WANT_GENRE)
  assert genre.dtype == np.float32
  np.testing.assert_array_equal(np.load(out / "lightgcn.npy"),
                                src["lightgcn"])
  np.testing.assert_array_equal(np.load(out / "title_minilm.npy"),
                                src["title"])
  saved = json.loads((out / "meta.json").read_text())
  assert saved == json.loads(json.dumps(meta))
  mods = saved["modalities"]
  assert mods["genre"]["vocabulary"] == ["Action", "Children's", "Comedy",
                                         "Drama", "Sci-Fi"]
  assert mods["genre"]["shape"] == [N_ITEMS, 5]
  assert mods["genre"]["items_without_genre"] == 1
  assert mods["lightgcn"]["shape"] == [N_ITEMS, 5]
  assert mods["lightgcn"]["source"] == "lightgcn/item_emb.npy"
  assert mods["title_minilm"]["text_template"] == "$title"
  assert saved["num_items"] == N_ITEMS
  # Atomic: no temp folder left; every file loads through load_features.
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "dataset", "embeddings", "features", "lightgcn"]
  for name in ("genre", "lightgcn", "title_minilm"):
    assert features.load_features(out / f"{name}.npy", N_ITEMS).shape[0] == (
        N_ITEMS)


def test_missing_sources_are_recorded_as_skipped(tmp_path):
  make_workdir(tmp_path, lightgcn=False)
  config = features_config.get_config("tiny")
  meta = features.run(config, tmp_path)
  skipped = meta["modalities"]["lightgcn"]
  assert skipped["skipped"] is True
  assert "lightgcn/item_emb.npy not found" in skipped["reason"]
  assert not (tmp_path / "features" / "lightgcn.npy").exists()
  saved = json.loads((tmp_path / "features" / "meta.json").read_text())
  assert saved["modalities"]["lightgcn"] == skipped
  # Nothing to build at all: an error, and the old features/ stays.
  config.modalities = ("lightgcn",)
  with pytest.raises(DataError, match="no feature modality"):
    features.run(config, tmp_path)
  assert (tmp_path / "features" / "genre.npy").exists()


def test_titles_encoded_when_no_embeddings(tmp_path):
  @encoders.register("test_title_length")
  class Length:  # pylint: disable=unused-variable
    dim = 2

    def __init__(self, config):
      del config

    def encode(self, texts):
      return np.array([[len(t), t.count(" ")] for t in texts], np.float32)

    def describe(self):
      return {"encoder": "test_title_length", "dim": 2}

  make_workdir(tmp_path, embeddings=False)
  config = features_config.get_config("tiny")
  config.title.encoder.name = "test_title_length"
  meta = features.run(config, tmp_path)
  x = np.load(tmp_path / "features" / "title_minilm.npy")
  np.testing.assert_array_equal(x[:, 0], [len(f"movie {i}")
                                          for i in range(N_ITEMS)])
  assert "encoded here" in meta["modalities"]["title_minilm"]["how"]


def test_load_features_errors_name_the_file(tmp_path):
  good = np.ones((N_ITEMS, 3), np.float32)
  path = tmp_path / "f.npy"
  np.save(path, good)
  np.testing.assert_array_equal(features.load_features(path, N_ITEMS), good)
  with pytest.raises(DataError, match=r"f\.npy: 7 rows, the dataset has 8"):
    features.load_features(path, N_ITEMS + 1)
  bad = good.copy()
  bad[4, 1] = np.nan
  bad[6, 0] = np.inf
  np.save(path, bad)
  with pytest.raises(DataError, match=r"f\.npy: row 4 .*NaN/inf \(2 bad"):
    features.load_features(path, N_ITEMS)
  np.save(path, np.ones(N_ITEMS, np.float32))
  with pytest.raises(DataError, match=r"f\.npy: a 1-d array"):
    features.load_features(path, N_ITEMS)
  with pytest.raises(DataError, match=r"missing\.npy: missing"):
    features.load_features(tmp_path / "missing.npy", N_ITEMS)
  path.write_bytes(b"not an npy file")
  with pytest.raises(DataError, match=r"f\.npy: unreadable"):
    features.load_features(path, N_ITEMS)


def test_binary_and_a_bad_source(tmp_path):
  make_workdir(tmp_path)
  cmd = [sys.executable, "-m", "binaries.build_features",
         "--config=configs/ur4rec_features.py:tiny", f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "features" / "meta.json").exists()
  # A LightGCN file of the wrong catalogue is an error, not a skip.
  np.save(tmp_path / "lightgcn" / "item_emb.npy",
          np.ones((N_ITEMS - 1, 5), np.float32))
  bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 1
  assert "item_emb.npy: 6 rows" in bad.stderr.splitlines()[-1]
