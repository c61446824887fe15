"""Prompt formats: how a generative model sees a user, and its registry.

A format owns everything that differs between the generative models: the
model it builds, its training batches, its evaluation prompts, the beam
search scorer and what `model.json` records about it. Everything else
(trainer, constrained search, evaluation, model folders) is shared.

  fmt, model = formats.for_training(config, ds, sids, workdir)
  batches = fmt.train_batches(batch_size=256, num_epochs=3, seed=0)
  prompts = fmt.eval_prompts(examples)          # left-padded, full hints
  result = beam_search(fmt.scorer(graphdef), params, prompts, sids.trie,
                       beam_size=20, sid_tokens=fmt.layout)
  spec = fmt.spec()                             # -> model.json
  fmt = formats.from_spec(spec, ds, sids, workdir)   # back from a folder

Registered formats (`FORMATS`): "tiger" (T5 on history SID tokens,
generative/tiger.py), "sid" (decoder on bare SID-token prompts with hints as
SID tokens, generative/sid_decoder.py) and "text" (decoder on MiniOneRec's
text prompts, generative/text_decoder.py). A new format subclasses
`PromptFormat` and registers itself with `@register`.
"""

from __future__ import annotations

import abc
import functools
import pathlib
from typing import Any, Callable, ClassVar

from flax import nnx
import ml_collections
import numpy as np

from genrec_jax.checks import check_ranges
from genrec_jax.data.dataset import Dataset, EvalExamples
from genrec_jax.decoding.beam_search import SidTokens
from genrec_jax.generative.hints import HINTS_FILE, Hints
from genrec_jax.model_folder import config_dict
from genrec_jax.semantic_ids.table import SemanticIds
from genrec_jax.training.batching import Batches

FORMATS: dict[str, type[PromptFormat]] = {}
# Old spellings of format names in model.json files.
ALIASES = {"sid_sep": "sid"}


def register(cls: type[PromptFormat]) -> type[PromptFormat]:
  FORMATS[cls.name] = cls
  return cls


def format_name(config: ml_collections.ConfigDict) -> str:
  """The format a train_generative config asks for."""
  if config.kind == "tiger":
    return "tiger"
  if config.kind == "decoder":
    name = config.prompt.format
    if name not in ("sid", "text"):
      raise ValueError(f"config field 'prompt.format': {name!r} is not 'sid' "
                       "or 'text'")
    return name
  raise ValueError(f"config field 'kind': {config.kind!r} is not 'tiger' or "
                   "'decoder'")


def _lookup(name: str, where: str) -> type[PromptFormat]:
  name = ALIASES.get(name, name)
  if name not in FORMATS:
    raise ValueError(f"{where}: prompt format {name!r} is not one of "
                     f"{sorted(FORMATS)}")
  return FORMATS[name]


def for_training(config: ml_collections.ConfigDict, ds: Dataset,
                 sids: SemanticIds, workdir: pathlib.Path
                 ) -> tuple[PromptFormat, nnx.Module]:
  """(format, freshly built or pretrained model) of a train config."""
  check_config(config)
  cls = _lookup(format_name(config), "config")
  return cls.for_training(config, ds, sids, pathlib.Path(workdir))


def from_spec(spec: dict[str, Any], ds: Dataset, sids: SemanticIds,
              workdir: pathlib.Path, where: str = "model.json"
              ) -> PromptFormat:
  """The format of a model folder's spec (model.json)."""
  prompt = spec.get("prompt") or {}
  name = prompt.get("format")
  if name is None:
    raise ValueError(f"{where}: missing field 'prompt.format'")
  try:
    return _lookup(name, where).from_spec(spec, ds, sids,
                                          pathlib.Path(workdir))
  except (KeyError, TypeError) as e:
    raise ValueError(f"{where}: bad or missing field {e}") from None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Range checks of the probabilities and sizes a format reads."""
  checks = [
      ("hints.dropout", config.hints.dropout, 0.0, 1.0),
      ("hints.k", config.hints.k, 1, None),
      ("hints.positions", config.hints.get("positions", 1), 0, None),
      ("data.max_history", config.data.max_history, 1, None),
      ("data.num_user_tokens", config.data.num_user_tokens, 0, None),
      ("train.batch_size", config.train.batch_size, 1, None),
      ("train.answer_budget", config.train.answer_budget, 0, None),
      ("eval.beam_size", config.eval.beam_size, 1, None),
      ("eval.top_n", config.eval.top_n, 1, None),
  ]
  check_ranges(checks)
  examples = config.data.get("examples", "prefix")
  if examples not in ("prefix", "causal"):
    raise ValueError(f"config field 'data.examples': {examples!r} is not "
                     "'prefix' or 'causal'")
  positions = config.hints.get("positions", 1)
  if positions != 1 and examples != "causal":
    raise ValueError(f"config field 'hints.positions' = {positions}: "
                     "per-prefix prompts show one hint block, after the last "
                     "item (1); only causal windows (data.examples = "
                     "'causal') show them at other positions")
  if examples == "causal" and format_name(config) != "sid":
    raise ValueError("config field 'data.examples' = 'causal' needs the 'sid' "
                     f"format (kind 'decoder', prompt.format 'sid'), not "
                     f"{format_name(config)!r}")
  if config.eval.top_n > config.eval.beam_size:
    raise ValueError(f"config field 'eval.top_n' = {config.eval.top_n} "
                     f"exceeds eval.beam_size = {config.eval.beam_size}")


def load_hints(settings: dict[str, Any], sids: SemanticIds,
               workdir: pathlib.Path) -> Hints | None:
  """The hints a format's settings ask for (None when off)."""
  if not settings.get("hints"):
    return None
  return Hints.load(workdir / HINTS_FILE, int(settings["hint_k"]),
                    sids.has_sid)


class PromptFormat(abc.ABC):
  """One way to present users to a generative model.

  Attributes:
    name: the registry name (model.json `prompt.format`).
    model_kind: "t5" or "decoder" (model.json `kind`).
    model_config: the model's config dataclass.
    layout: where the SID tokens live in the model vocabulary.
    settings: the JSON-able prompt settings (model.json `prompt`).
    loss: (model, batch, key) -> (loss, aux) for training/loop.py.
    training: the train_generative config (`for_training` sets it; batch
      buckets, task mix and hint dropout are read from it), None for a
      format loaded from a model folder.
  """

  name: ClassVar[str]
  model_kind: ClassVar[str]
  model_config: Any
  layout: SidTokens
  settings: dict[str, Any]
  loss: Callable

  def __init__(self, ds: Dataset, sids: SemanticIds, workdir: pathlib.Path):
    self.ds, self.sids, self.workdir = ds, sids, pathlib.Path(workdir)
    self.training: ml_collections.ConfigDict | None = None

  @functools.cached_property
  def item_tokens(self) -> np.ndarray:
    """int32 [items, L] SID token ids of every item (-1 rows: no SID)."""
    return self.sids.token_table(self.layout)

  @property
  def max_history(self) -> int:
    return int(self.settings["max_history"])

  # -- construction ----------------------------------------------------------

  @classmethod
  @abc.abstractmethod
  def for_training(cls, config, ds, sids, workdir
                   ) -> tuple[PromptFormat, nnx.Module]:
    """The format and its model (fresh or pretrained) for a train config."""

  @classmethod
  @abc.abstractmethod
  def from_spec(cls, spec, ds, sids, workdir) -> PromptFormat:
    """The format of a saved model (its model built by `build_model`)."""

  @abc.abstractmethod
  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """A model of `model_config` (parameters to be restored or trained)."""

  def spec(self) -> dict[str, Any]:
    """What model.json records (the folder adds beam_size, sids_dir)."""
    return {"kind": self.model_kind,
            "model_config": config_dict(self.model_config),
            "sid_tokens": {"offsets": list(self.layout.offsets),
                           "sizes": list(self.layout.sizes),
                           "suffix": list(self.layout.suffix)},
            "prompt": dict(self.settings)}

  # -- data ------------------------------------------------------------------

  @abc.abstractmethod
  def train_batches(self, *, batch_size: int, num_epochs: int | None,
                    seed: int, shard_index: int = 0,
                    shard_count: int = 1) -> Batches:
    """Local training batches for the format's loss (needs `training`)."""

  @abc.abstractmethod
  def eval_prompts(self, batch: EvalExamples) -> dict[str, np.ndarray]:
    """Left-padded search prompts of evaluation rows (full hints)."""

  def rollout_prompts(self, batch: EvalExamples,
                      title_rows: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
    """Search prompts of training rows (one target each): as `eval_prompts`
    but hints never show the row's target (reinforcement-learning
    rollouts). `title_rows` (bool per row): ask for the SID of the target's
    title instead (formats with text prompts only). Formats without hints
    or titles need not override it."""
    if self.settings.get("hints"):
      raise NotImplementedError(f"format {self.name!r} has hints but no "
                                "rollout_prompts")
    if title_rows is not None and np.any(title_rows):
      raise ValueError(f"format {self.name!r} has no title prompts "
                       "(config field 'rollout.title_fraction' must be 0)")
    return self.eval_prompts(batch)

  @abc.abstractmethod
  def scorer(self, graphdef):
    """The beam-search scorer of the format's model."""


def layout_from_spec(spec: dict[str, Any]) -> SidTokens:
  s = spec["sid_tokens"]
  try:
    return SidTokens(tuple(s["offsets"]), tuple(s["sizes"]),
                     tuple(s.get("suffix", ())))
  except (TypeError, ValueError) as e:
    raise ValueError(f"field 'sid_tokens': {e}") from None
