"""Top-N recommendations with titles from a trained workdir.

`Recommender(workdir, model)` loads `WORKDIR/<model>/model.json` (a folder
written by the train_generative stage or `decoding.evaluate.save_model`),
the dataset and the semantic IDs, and ranks items for a known user (their
full history) or for any given history with the same constrained beam
search and prompts as evaluation.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from genrec_jax.data.dataset import DataError, EvalExamples, Ragged
from genrec_jax.decoding import evaluate as evaluate_lib


class Recommender:
  """A generative model of a workdir, ready to rank items."""

  def __init__(self, workdir: str | pathlib.Path, model: str, *,
               sids_dir: str = "sids", beam_size: int = 20):
    self.model = evaluate_lib.ModelSearch(workdir, model, sids_dir=sids_dir)
    self.workdir, self.ds = self.model.workdir, self.model.ds
    self.beam_size = beam_size
    self._user_index = {u: i for i, u in enumerate(self.ds.user_ids)}
    self._item_index = {it: i for i, it in enumerate(self.ds.item_ids)}

  def user_history(self, raw_user: str) -> tuple[int, list[int]]:
    """(internal user, full time-ordered history) of a raw user id."""
    if raw_user not in self._user_index:
      raise DataError(f"user {raw_user!r} is not in {self.workdir}/dataset")
    u = self._user_index[raw_user]
    return u, self.ds.sequences[u].tolist()

  def items(self, raw_items: Sequence[str]) -> list[int]:
    """Internal ids of raw item ids (unknown ids are an error)."""
    missing = [i for i in raw_items if i not in self._item_index]
    if missing:
      raise DataError(f"items {missing} are not in {self.workdir}/dataset")
    return [self._item_index[i] for i in raw_items]

  def recommend(self, history: Sequence[int], *, user: int = 0,
                top_n: int = 10, exclude_history: bool = True) -> list[int]:
    """The top_n items (internal ids) after `history` (internal ids)."""
    if not len(history):
      raise ValueError("an empty history: give at least one item")
    hist = Ragged.from_lists([list(history)])
    batch = EvalExamples(np.array([user], np.int32), hist,
                         Ragged.from_lists([[int(history[-1])]]),
                         exclude=hist if exclude_history else None)
    items = self.model.search(batch, beam_size=self.beam_size,
                              top_n=min(top_n, self.beam_size),
                              exclude_history=exclude_history)
    return [int(i) for i in items[0] if i >= 0]

  def describe(self, items: Sequence[int]) -> list[str]:
    """'raw id: title' lines of internal item ids."""
    return [f"{self.ds.item_ids[i]}: {self.ds.title(i)}" for i in items]
