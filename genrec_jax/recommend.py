"""Any trained model of a workdir, loaded to rank items; top-N with titles.

  ranker = load_model(WORKDIR, "sasrec")        # or tiger, minigr_cf, ...
  items = ranker.rank(batch, top_n=10, exclude_history=True)

`load_model` reads `WORKDIR/<name>/model.json` and dispatches on its kind:
SASRec and LightGCN give a `model_folder.ScoreRanker` (full scores,
history masked), TIGER and the decoders a `generative.ranker.
GenerativeRanker` (constrained beam search with the folder's prompts, at
the beam width it was evaluated with). `Recommender` serves a model for a
known user (their whole history) or any given history
(`binaries/recommend.py`).
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from genrec_jax import model_folder
from genrec_jax.data.dataset import DataError, Dataset, EvalExamples, Ragged
from genrec_jax.generative import ranker as generative_ranker
from genrec_jax.graph import lightgcn_train
from genrec_jax.training import sasrec_train
from genrec_jax.ur4rec import stage as ur4rec_stage


def _generative(model_dir, workdir, spec, ds):
  """TIGER and the decoders: a GenerativeRanker of the folder."""
  return generative_ranker.load(model_dir, workdir, spec=spec, ds=ds)


# model.json kind -> loader(model_dir, workdir, spec, ds) -> Ranker.
_LOADERS = {
    "sasrec": lambda d, w, spec, ds: sasrec_train.load_ranker(d, ds),
    "lightgcn": lambda d, w, spec, ds: lightgcn_train.load_ranker(d, ds),
    "t5": _generative,
    "decoder": _generative,
    "ur4rec": ur4rec_stage.load_ranker,
}


def load_model(workdir: str | pathlib.Path, name: str, *,
               ds: Dataset | None = None) -> model_folder.Ranker:
  """The Ranker of the model folder WORKDIR/<name>."""
  workdir = pathlib.Path(workdir).resolve()
  model_dir = workdir / name
  ds = ds or Dataset.load(workdir / "dataset")
  spec = model_folder.read_spec(model_dir, num_items=ds.num_items)
  kind = spec["kind"]
  if kind not in _LOADERS:
    raise ValueError(f"{model_dir / model_folder.MODEL_JSON}: field 'kind' = "
                     f"{kind!r} is not one of {sorted(_LOADERS)}")
  return _LOADERS[kind](model_dir, workdir, spec, ds)


class Recommender:
  """A trained model of a workdir, ready to rank items for users."""

  def __init__(self, workdir: str | pathlib.Path, model: str, *,
               beam_size: int = 0):
    self.workdir = pathlib.Path(workdir)
    self.ds = Dataset.load(self.workdir / "dataset")
    self.model = load_model(self.workdir, model, ds=self.ds)
    if beam_size and self.model.beam_size is not None:
      self.model.beam_size = int(beam_size)
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

  def recommend(self, history: Sequence[int], *, user: int = -1,
                top_n: int = 10, exclude_history: bool = True) -> list[int]:
    """The top_n items (internal ids) after `history` (internal ids).

    `user` is the internal id of a known user (-1: an anonymous history;
    models with user embeddings then work from the history alone).
    """
    if not len(history):
      raise ValueError("an empty history: give at least one item")
    hist = Ragged.from_lists([list(history)])
    batch = EvalExamples(np.array([user], np.int32), hist,
                         Ragged.from_lists([[int(history[-1])]]),
                         exclude=hist if exclude_history else None)
    items = self.model.rank(batch, top_n=top_n,
                            exclude_history=exclude_history)
    return [int(i) for i in items[0] if i >= 0]

  def explain(self, user: int) -> str | None:
    """Why: the user's preference text, for models that read one."""
    explain = getattr(self.model, "explain", None)
    return None if explain is None else explain(user)

  def describe(self, items: Sequence[int]) -> list[str]:
    """'raw id: title' lines of internal item ids."""
    return [f"{self.ds.item_ids[i]}: {self.ds.title(i)}" for i in items]
