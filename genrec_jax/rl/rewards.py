"""Rewards of GRPO rollouts, computed from item ids (never strings).

A group is the G beams of one prompt, sorted by beam score (beam rank =
list position). Every reward takes a `Rollouts` (items [P, G], -1 where the
search found fewer than G items; targets [P]) and returns float32 [P, G]
per-part rewards: {"rule": ..., "ranking": ...}; the total is their sum.
Beams that are not items get 0 in every part (and leave the loss).

  rule          1 if the beam is the target item, else 0
  ranking       rule + the NDCG-style penalty of wrong beams (MiniOneRec's
                default): a wrong beam at rank i gets
                -(1 / log2(i + 2)) / sum_j 1 / log2(j + 2), only in groups
                that contain the target; all-miss groups get 0
  ranking_only  the penalty alone
  semantic      cosine of the beam item's and the target's embeddings
                (WORKDIR/embeddings/items.npy)
  sasrec        a trained SASRec's softmax probability of the beam item
                given the prompt's history (a SASRec model folder)

A new reward: a function `(rollouts, context) -> {part: [P, G]}` under
`@register("name")`; `context` holds what `make_context` loaded for it.

Matching is by item id: with a dedup level every item has its own SID, so
id equality is SID equality (semantic_ids/table.py).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, EvalExamples
from genrec_jax.training import sasrec_train


@dataclasses.dataclass
class Rollouts:
  """One step's groups.

  Attributes:
    items: int [P, G] beam items, best first (-1: no item).
    examples: the P prompt rows (one target each; histories for model
      rewards).
  """
  items: np.ndarray
  examples: EvalExamples

  @property
  def targets(self) -> np.ndarray:
    return self.examples.targets.values

  @property
  def valid(self) -> np.ndarray:
    return self.items >= 0

  @property
  def hits(self) -> np.ndarray:
    return (self.items == self.targets[:, None]) & self.valid


RewardFn = Callable[[Rollouts, dict[str, Any]], dict[str, np.ndarray]]
REWARDS: dict[str, RewardFn] = {}


def register(name: str):
  def wrap(fn: RewardFn) -> RewardFn:
    REWARDS[name] = fn
    return fn
  return wrap


def rank_penalty(num_beams: int) -> np.ndarray:
  """-(1/log2(i+2)) / sum_j 1/log2(j+2) for beam ranks i < num_beams."""
  w = 1.0 / np.log2(np.arange(num_beams) + 2.0)
  return (-w / w.sum()).astype(np.float32)


def _rule(r: Rollouts) -> np.ndarray:
  return r.hits.astype(np.float32)


def _ranking_penalty(r: Rollouts) -> np.ndarray:
  pen = np.broadcast_to(rank_penalty(r.items.shape[1]), r.items.shape)
  group_hit = r.hits.any(axis=1, keepdims=True)
  wrong = r.valid & ~r.hits
  return np.where(group_hit & wrong, pen, 0.0).astype(np.float32)


@register("rule")
def rule(r: Rollouts, ctx) -> dict[str, np.ndarray]:
  del ctx
  return {"rule": _rule(r)}


@register("ranking")
def ranking(r: Rollouts, ctx) -> dict[str, np.ndarray]:
  del ctx
  return {"rule": _rule(r), "ranking": _ranking_penalty(r)}


@register("ranking_only")
def ranking_only(r: Rollouts, ctx) -> dict[str, np.ndarray]:
  del ctx
  return {"ranking": _ranking_penalty(r)}


@register("semantic")
def semantic(r: Rollouts, ctx) -> dict[str, np.ndarray]:
  emb = ctx["unit_embeddings"]  # [N, D] L2-normalised
  cos = np.einsum("pgd,pd->pg", emb[np.maximum(r.items, 0)], emb[r.targets])
  return {"semantic": np.where(r.valid, cos, 0.0).astype(np.float32)}


@register("sasrec")
def sasrec(r: Rollouts, ctx) -> dict[str, np.ndarray]:
  logits = np.asarray(ctx["sasrec"].scores(r.examples), np.float64)  # [P, N]
  logits -= logits.max(axis=1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(axis=1, keepdims=True)
  p = np.take_along_axis(probs, np.maximum(r.items, 0), axis=1)
  return {"sasrec": np.where(r.valid, p, 0.0).astype(np.float32)}


def make_context(name: str, config, workdir: pathlib.Path,
                 ds: Dataset) -> dict[str, Any]:
  """What reward `name` needs, loaded once (config: configs/rl.py reward)."""
  if name not in REWARDS:
    raise ValueError(f"config field 'reward.type': {name!r} is not one of "
                     f"{sorted(REWARDS)}")
  if name == "semantic":
    path = workdir / config.embeddings
    if not path.exists():
      raise FileNotFoundError(f"{path}: item embeddings for the semantic "
                              "reward (run embed_items first)")
    emb = np.load(path).astype(np.float32)
    if emb.shape[0] != ds.num_items or not np.isfinite(emb).all():
      raise DataError(f"{path}: {emb.shape[0]} rows for {ds.num_items} "
                      "items, or non-finite values")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return {"unit_embeddings": emb / np.maximum(norm, 1e-12)}
  if name == "sasrec":
    return {"sasrec": sasrec_train.load_ranker(
        workdir / config.sasrec_model, ds)}
  return {}


def compute(name: str, rollouts: Rollouts,
            context: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(total reward float32 [P, G], per-part rewards) of reward `name`."""
  parts = REWARDS[name](rollouts, context)
  total = np.zeros(rollouts.items.shape, np.float32)
  for v in parts.values():
    total += v
  return np.where(rollouts.valid, total, 0.0).astype(np.float32), parts


def group_advantages(rewards: np.ndarray, valid: np.ndarray,
                     eps: float = 1e-4) -> np.ndarray:
  """(r - mean_g) / (std_g + eps) over each group's valid beams.

  The std is unbiased (ddof 1, as torch.std); invalid beams and groups of
  fewer than two valid beams get 0.
  """
  r = np.asarray(rewards, np.float64)
  v = np.asarray(valid, bool)
  n = v.sum(axis=1, keepdims=True)
  mean = np.where(v, r, 0.0).sum(axis=1, keepdims=True) / np.maximum(n, 1)
  var = np.where(v, (r - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / (
      np.maximum(n - 1, 1))
  adv = (r - mean) / (np.sqrt(var) + eps)
  return np.where(v & (n >= 2), adv, 0.0).astype(np.float32)
