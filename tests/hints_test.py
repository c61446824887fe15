"""Collaborative hints: brute-force agreement, self exclusion, errors, stage."""
import json
import subprocess
import sys

import numpy as np
import pytest

from configs import hints as hints_config
from genrec_jax.data.dataset import DataError
from genrec_jax.graph import hints
from tests.conftest import REPO


def _brute_force(emb, k):
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  sims = unit @ unit.T
  np.fill_diagonal(sims, -np.inf)
  return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_matches_brute_force_and_excludes_self():
  emb = np.random.default_rng(0).normal(size=(29, 5)).astype(np.float32)
  ids, sims = hints.top_k_neighbours(emb, 4)
  np.testing.assert_array_equal(ids, _brute_force(emb, 4))
  assert not np.any(ids == np.arange(29)[:, None])
  assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_duplicate_rows_still_exclude_self():
  emb = np.ones((5, 3), dtype=np.float32)  # every cosine ties at 1
  ids, _ = hints.top_k_neighbours(emb, 4)
  for i in range(5):
    assert sorted(ids[i].tolist()) == sorted(set(range(5)) - {i})


def test_zero_rows_skipped():
  emb = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
  emb[2] = 0
  ids, _ = hints.top_k_neighbours(emb, 3)
  assert np.all(ids[2] == -1) and not np.any(ids == 2)


def test_bad_inputs(tmp_path):
  emb = np.ones((4, 3), dtype=np.float32)
  with pytest.raises(ValueError, match="K=4"):
    hints.top_k_neighbours(emb, 4)
  with pytest.raises(ValueError, match="K=0"):
    hints.top_k_neighbours(emb, 0)
  with pytest.raises(ValueError, match="NaN"):
    hints.top_k_neighbours(np.full((4, 3), np.nan, np.float32), 1)
  with pytest.raises(DataError, match="train_lightgcn"):
    hints.run(hints_config.get_config(), str(tmp_path))


def test_stage_and_binary(tmp_path):
  emb = np.random.default_rng(2).normal(size=(11, 5)).astype(np.float32)
  (tmp_path / "lightgcn").mkdir()
  np.save(tmp_path / "lightgcn" / "item_emb.npy", emb)
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.build_hints",
       "--config=configs/hints.py:tiny", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads((tmp_path / "hints" / "hints.json").read_text())
  want = _brute_force(emb, 4)  # tiny: num_neighbours = 4
  assert got == {str(i): want[i].tolist() for i in range(11)}
  bad = subprocess.run(
      [sys.executable, "-m", "binaries.build_hints", "--config=configs/hints.py",
       "--config.num_neighbours=11", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "K=11" in bad.stderr.splitlines()[-1]
