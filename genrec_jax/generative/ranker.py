"""Generative models as rankers: constrained beam search, model folders.

  ranker = GenerativeRanker(fmt, model, beam_size=20)
  items = ranker.rank(batch, top_n=10, exclude_history=True)  # int [B, 10]
  save(WORKDIR / "tiger", ranker, sids_dir="sids")
  ranker = load(WORKDIR / "tiger", WORKDIR)  # the same search, reloaded

The search is the jitted trie-constrained beam search over the items'
semantic IDs with the format's prompts and scorer. With `exclude_history`
each row's history items are removed from its trie inside the search (the
full-ranking protocol of SASRec / most-popular masks them), so the top_n
results are top_n unseen items and no beam is spent on a seen one. `beam_size` is the width the model was evaluated with; model.json
records it, so `evaluate` and `recommend` search as training evaluated.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

from flax import nnx
import numpy as np

from genrec_jax import model_folder
from genrec_jax.data.dataset import Dataset, EvalExamples
from genrec_jax.decoding import beam_search as bs
from genrec_jax.generative import formats
from genrec_jax.semantic_ids.table import SemanticIds

# Registered formats (import for their @register).
from genrec_jax.generative import sid_decoder  # noqa: F401  pylint: disable=unused-import
from genrec_jax.generative import text_decoder  # noqa: F401  pylint: disable=unused-import
from genrec_jax.generative import tiger  # noqa: F401  pylint: disable=unused-import


class GenerativeRanker:
  """A generative model and its format, ready to rank items.

  Attributes:
    fmt: the prompt format (prompts, scorer, SID layout).
    kind: the model kind ("t5" / "decoder").
    beam_size: default beam width of `rank`.
  """

  def __init__(self, fmt: formats.PromptFormat, model: nnx.Module, *,
               beam_size: int):
    self.fmt = fmt
    self.kind = fmt.model_kind
    self.beam_size = int(beam_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    self.graphdef = graphdef
    self.params = (params, rest)
    self.scorer = fmt.scorer(graphdef)

  @property
  def model(self) -> nnx.Module:
    """The model (sharing the ranker's arrays)."""
    return nnx.merge(self.graphdef, *self.params)

  @property
  def trie(self):
    return self.fmt.sids.trie

  def is_valid_item(self, items: np.ndarray) -> np.ndarray:
    return self.fmt.sids.trie.is_valid_item(items)

  def search(self, batch: EvalExamples, *, beam_size: int, top_n: int,
             exclude_history: bool) -> np.ndarray:
    """int [B, top_n] ranked items (-1 = none)."""
    top_n = min(top_n, beam_size)
    exclude = None
    if exclude_history and batch.exclude is not None:
      exclude = [batch.exclude[i] for i in range(len(batch.users))]
    res = bs.beam_search(self.scorer, self.params,
                         self.fmt.eval_prompts(batch), self.trie,
                         beam_size=beam_size, top_n=top_n,
                         sid_tokens=self.fmt.layout, exclude=exclude)
    return np.asarray(res.items)

  def target_log_likelihood(self, batch: EvalExamples) -> np.ndarray:
    """float [B]: the teacher-forced log-likelihood of each row's first
    target's SID after the row's search prompt (NaN: no SID)."""
    first = batch.targets.values[batch.targets.offsets[:-1]]
    tokens = self._item_tokens[first]  # [B, L]
    has_sid = (tokens >= 0).all(1)
    tokens = np.where(has_sid[:, None], tokens,
                      np.asarray(self.fmt.layout.offsets)[None, :])
    ll = bs.sid_log_likelihood(self.scorer, self.params,
                               self.fmt.eval_prompts(batch), tokens,
                               sid_tokens=self.fmt.layout)
    return np.where(has_sid, ll, np.nan)

  @functools.cached_property
  def _item_tokens(self) -> np.ndarray:
    """The format's SID token table, built once (not once a batch)."""
    return self.fmt.item_tokens

  def rank(self, batch: EvalExamples, *, top_n: int,
           exclude_history: bool) -> np.ndarray:
    return self.search(batch, beam_size=max(self.beam_size, top_n),
                       top_n=top_n, exclude_history=exclude_history)


def save(model_dir: str | pathlib.Path, ranker: GenerativeRanker, *,
         sids_dir: str) -> None:
  """Writes the model folder (model.json + params/) of a ranker."""
  spec = ranker.fmt.spec()
  spec.update(beam_size=ranker.beam_size, sids_dir=sids_dir,
              num_items=ranker.fmt.sids.num_items)
  model_folder.save(model_dir, spec, ranker.params[0])


def load(model_dir: str | pathlib.Path, workdir: str | pathlib.Path, *,
         spec: dict[str, Any] | None = None,
         ds: Dataset | None = None) -> GenerativeRanker:
  """The ranker of a generative model folder of `workdir`.

  Reads WORKDIR/dataset, WORKDIR/<sids_dir> (and hints) as the folder's
  model.json says, restores the params onto one device.
  """
  model_dir = pathlib.Path(model_dir)
  workdir = pathlib.Path(workdir)
  where = str(model_dir / model_folder.MODEL_JSON)
  ds = ds or Dataset.load(workdir / "dataset")
  spec = spec or model_folder.read_spec(model_dir, num_items=ds.num_items)
  sids = SemanticIds.load(workdir / spec.get("sids_dir", "sids"),
                          num_items=ds.num_items)
  fmt = formats.from_spec(spec, ds, sids, workdir, where=where)
  model = fmt.build_model(nnx.Rngs(0))
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  params = model_folder.restore_params(model_dir, abstract)
  return GenerativeRanker(fmt, nnx.merge(graphdef, params, rest),
                          beam_size=int(spec.get("beam_size", 20)))
