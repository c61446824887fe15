"""The quantizer interface: item vectors -> L codes per item.

A quantizer is a function `fit(x, config) -> Quantized` registered under a
name; `configs/sids.py` picks one with `config.method`. New methods register
themselves with `@register("name")` in their module (and the module is listed
in `_MODULES` so that `get` can import it lazily).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Quantized:
  """Codes and what the report and the collision step need.

  Attributes:
    codes: int32 [N, L] code of each item at each level.
    codebook_sizes: number of codes per level (codes[:, l] < sizes[l]).
    recon: float32 [N, D] reconstruction of the input from its codes (for
      the quantization error), in the input space.
    last_cost: float32 [N, K_L] cost of giving item i last-level code c
      (squared distance), used to re-assign colliding items; None if the
      method cannot say (re-assignment then takes the lowest free code).
    info: method-specific figures (iterations, losses, timings).
  """

  codes: np.ndarray
  codebook_sizes: list[int]
  recon: np.ndarray
  last_cost: np.ndarray | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


FitFn = Callable[[np.ndarray, Any], Quantized]
_REGISTRY: dict[str, FitFn] = {}
# Modules that register quantizers, imported on first use.
_MODULES = ("genrec_jax.semantic_ids.rq_kmeans",
            "genrec_jax.semantic_ids.faiss_backend",
            "genrec_jax.semantic_ids.rq_vae")


def register(name: str) -> Callable[[FitFn], FitFn]:
  """Decorator: makes `fn(x, config) -> Quantized` available as `name`."""

  def deco(fn: FitFn) -> FitFn:
    _REGISTRY[name] = fn
    return fn

  return deco


def get(name: str) -> FitFn:
  """The quantizer registered under `name`."""
  if name not in _REGISTRY:
    for m in _MODULES:
      importlib.import_module(m)
  if name not in _REGISTRY:
    raise ValueError(f"unknown SID method {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  for m in _MODULES:
    importlib.import_module(m)
  return sorted(_REGISTRY)
