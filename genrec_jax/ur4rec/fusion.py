"""Fusion of two scorers over the same candidate list (UR4Rec, METHODS §8).

Both scorers give float [B, C] scores over the same C candidates per row
(C = num_items for full ranking) and one bool [B, C] validity mask (False =
padding, or a masked history item). Invalid entries never take part in a
normalisation and always rank below every valid candidate: every fused score
array below holds NEG_INF there.

Methods (`fuse(method, a, b, mask, params)`):

  weighted  alpha * softmax(a) + beta * softmax(b), each softmax over the
            valid candidates of its row (UR4Rec: alpha = beta = 0.5).
  rank      alpha / (rank_a + 1) + beta / (rank_b + 1), rank 0 = best valid
            candidate of that scorer.
  cascade   the first scorer (SASRec) shortlists its top `shortlist` valid
            candidates, the second re-ranks them; everything outside the
            shortlist follows, in the first scorer's order. The fused score
            is C - position (no ties). UR4Rec's code approximates this as
            a + 0.5 * b; this is the cascade itself.
  Gate      (ours) a per-row weight g = sigmoid(w . f + c) from cheap per-row
            features f (each scorer's top-1 probability, top-1 - top-2
            margin, normalised entropy, all over the valid candidates, and
            log(1 + history length)): g * softmax(a) + (1 - g) * softmax(b);
            `fit_gate` minimises the cross-entropy of the target on
            validation rows (optax Adam, jitted), `apply_gate` serves it.

Ties. Inside one scorer (the rank method, the cascade's shortlist) equal
scores are broken by the lower column index first, as `order` and
`model_folder.mask_and_top` (a stable sort on -score) do; in the cascade's
re-ranking equal second-scorer scores keep the first scorer's order.
Metrics (`evaluate`, `fit_weights`) use the repository's pessimistic rule
(`evaluation.metrics`): the target's rank is the number of other valid
candidates whose fused score is >= its own, so a fusion that ties many
candidates is never rewarded for it.

Model folders: `candidate_scores(ranker, batch, candidates)` turns any
scoring model (`model_folder.ScoreRanker`: SASRec, LightGCN, ...) into
(scores [B, C], mask) at a candidate list or over the whole catalogue;
generative models only rank and are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrec_jax import model_folder
from genrec_jax.data.dataset import EvalExamples
from genrec_jax.evaluation import metrics

# Fused score of an invalid candidate (model_folder's masked score).
NEG_INF = model_folder.NEG_INF
# Fusion methods of `fuse` / `fit_weights`.
METHODS = ("weighted", "rank", "cascade")
# Default alpha grid of fit_weights (beta = 1 - alpha).
ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))
# Default shortlist grid of fit_weights (capped at C; C itself is added).
SHORTLIST_GRID = (1, 5, 10, 20, 50, 100, 200)
# Cut-off of the selection metric of fit_weights.
SELECT_K = 10
# Names of the gate's per-row features, in column order.
GATE_FEATURES = ("a_top1", "a_margin", "a_entropy", "b_top1", "b_margin",
                 "b_entropy", "log_history")


# ---- validation -------------------------------------------------------------
def check_weight(name: str, value: float) -> float:
  """`value` as a float in [0, 1]; else ValueError naming the field `name`."""
  v = float(value)
  if not 0.0 <= v <= 1.0:  # NaN fails too
    raise ValueError(f"{name}={value}: a fusion weight must be in [0, 1]")
  return v


def check_shortlist(name: str, value: int) -> int:
  """`value` as an int >= 1; else ValueError naming the field `name`."""
  if int(value) != value or value < 1:
    raise ValueError(f"{name}={value}: the cascade shortlist must be an "
                     "integer >= 1")
  return int(value)


def _check_shapes(a, b, mask) -> None:
  if not (np.shape(a) == np.shape(b) == np.shape(mask)) or np.ndim(a) != 2:
    raise ValueError(f"fusion: scores a {np.shape(a)}, b {np.shape(b)} and "
                     f"mask {np.shape(mask)} must be the same [B, C] shape")


# ---- normalisations (jnp, usable under jit) ---------------------------------
def masked_softmax(x: jax.Array, mask: jax.Array) -> jax.Array:
  """float [B, C] softmax of each row over its valid entries (0 elsewhere;
  a row without a valid entry is all 0)."""
  x = jnp.where(mask, x.astype(jnp.float32), -jnp.inf)  # [B, C]
  top = jnp.max(x, axis=1, keepdims=True)  # [B, 1]
  e = jnp.where(mask, jnp.exp(x - jnp.where(jnp.isfinite(top), top, 0.0)),
                0.0)  # [B, C]
  return e / jnp.maximum(e.sum(axis=1, keepdims=True), 1e-30)


def masked_ranks(x: jax.Array, mask: jax.Array) -> jax.Array:
  """int32 [B, C] 0-based rank of each valid entry among the valid entries
  of its row (ties: lower column first); invalid entries get C."""
  c = x.shape[1]
  key = jnp.where(mask, -x.astype(jnp.float32), jnp.inf)  # [B, C]
  perm = jnp.argsort(key, axis=1, stable=True)  # [B, C] columns, best first
  pos = jnp.argsort(perm, axis=1, stable=True)  # [B, C] inverse permutation
  return jnp.where(mask, pos, c).astype(jnp.int32)


# ---- the three fixed methods -------------------------------------------------
def weighted(a, b, mask, alpha: float = 0.5, beta: float = 0.5) -> np.ndarray:
  """float32 [B, C]: alpha * softmax(a) + beta * softmax(b) (NEG_INF where
  invalid)."""
  alpha, beta = check_weight("alpha", alpha), check_weight("beta", beta)
  _check_shapes(a, b, mask)
  return np.asarray(_weighted(jnp.asarray(a), jnp.asarray(b),
                              jnp.asarray(mask, bool), alpha, beta))


@jax.jit
def _weighted(a, b, mask, alpha, beta):
  fused = alpha * masked_softmax(a, mask) + beta * masked_softmax(b, mask)
  return jnp.where(mask, fused, NEG_INF)  # [B, C]


def rank(a, b, mask, alpha: float = 0.5, beta: float = 0.5) -> np.ndarray:
  """float32 [B, C]: alpha / (rank_a + 1) + beta / (rank_b + 1) (NEG_INF
  where invalid; ranks among the valid entries, ties lower column first)."""
  alpha, beta = check_weight("alpha", alpha), check_weight("beta", beta)
  _check_shapes(a, b, mask)
  return np.asarray(_rank(jnp.asarray(a), jnp.asarray(b),
                          jnp.asarray(mask, bool), alpha, beta))


@jax.jit
def _rank(a, b, mask, alpha, beta):
  ra = masked_ranks(a, mask).astype(jnp.float32)  # [B, C]
  rb = masked_ranks(b, mask).astype(jnp.float32)  # [B, C]
  fused = alpha / (ra + 1.0) + beta / (rb + 1.0)
  return jnp.where(mask, fused, NEG_INF)


def cascade(a, b, mask, shortlist: int) -> np.ndarray:
  """float32 [B, C]: C - final position (NEG_INF where invalid).

  The top `shortlist` valid candidates by `a` (ties lower column first) come
  first, ordered by `b` (ties: a's order); the other valid candidates follow
  in a's order. shortlist >= the valid count is b's order; 1 keeps a's best
  first.
  """
  shortlist = check_shortlist("shortlist", shortlist)
  _check_shapes(a, b, mask)
  return np.asarray(_cascade(jnp.asarray(a), jnp.asarray(b),
                             jnp.asarray(mask, bool), shortlist))


@jax.jit
def _cascade(a, b, mask, shortlist):
  c = a.shape[1]
  pos_a = masked_ranks(a, mask)  # [B, C], C where invalid
  short = mask & (pos_a < shortlist)  # [B, C]
  group = jnp.where(short, 0, jnp.where(mask, 1, 2))  # [B, C]
  within = jnp.where(short, -b.astype(jnp.float32),
                     pos_a.astype(jnp.float32))  # [B, C]
  cols = jnp.broadcast_to(jnp.arange(c), a.shape)
  # jnp.lexsort: the last key is the primary one.
  perm = jnp.lexsort((cols, pos_a, within, group), axis=-1)  # [B, C]
  pos = jnp.argsort(perm, axis=1, stable=True)  # [B, C] final position
  return jnp.where(mask, (c - pos).astype(jnp.float32), NEG_INF)


def fuse(method: str, a, b, mask, params: dict[str, Any]) -> np.ndarray:
  """Fused float32 [B, C] scores of `method` with its params dict
  ({"alpha", "beta"} or {"shortlist"})."""
  if method == "weighted":
    return weighted(a, b, mask, params["alpha"], params["beta"])
  if method == "rank":
    return rank(a, b, mask, params["alpha"], params["beta"])
  if method == "cascade":
    return cascade(a, b, mask, params["shortlist"])
  raise ValueError(f"fusion method {method!r} is not one of {METHODS}")


def order(fused, mask) -> np.ndarray:
  """int [B, C] candidate columns best first: valid ones by descending
  fused score (ties: lower column first), then the invalid ones."""
  key = np.where(np.asarray(mask, bool), -np.asarray(fused, np.float64),
                 np.inf)  # [B, C]
  return np.argsort(key, axis=1, kind="stable")


# ---- metrics ---------------------------------------------------------------
def target_ranks(fused, mask, target_col) -> np.ndarray:
  """int32 [B] pessimistic 0-based rank of each row's target column.

  `metrics.ranks_from_candidate_scores` on float32 scores: the number of
  OTHER valid candidates whose fused score is >= the target's; a masked
  target ranks after every valid candidate; target_col < 0 (target not among
  the candidates) gives metrics.NOT_FOUND.
  """
  return np.asarray(metrics.ranks_from_candidate_scores(
      np.asarray(fused, np.float32), np.asarray(mask, bool),
      np.asarray(target_col, np.int32)))


def evaluate(fused, mask, target_col, *, ks=metrics.KS,
             prefix: str = "") -> dict[str, float]:
  """HR/Recall/NDCG@K and MRR of fused scores (metrics.metrics_from_ranks)."""
  ranks = target_ranks(fused, mask, target_col)[:, None]  # [B, 1]
  return metrics.metrics_from_ranks(ranks, None, ks, prefix)


def target_columns(batch: EvalExamples,
                   candidates: np.ndarray | None) -> np.ndarray:
  """int64 [B]: the column of each row's first target (-1: not a
  candidate); with candidates None the column is the item id."""
  first = np.array([row[0] if len(row) else -1
                    for row in batch.targets.tolist()], np.int64)  # [B]
  if candidates is None:
    return first
  hit = np.asarray(candidates) == first[:, None]  # [B, C]
  return np.where(hit.any(1) & (first >= 0), hit.argmax(1), -1)


# ---- fitting the fixed methods on validation rows ----------------------------
def fit_weights(
    method: str, a_valid, b_valid, mask, target_col,
    grid: Sequence[Any] | None = None,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]:
  """The method's params with the best validation NDCG@10.

  Args:
    method: "weighted" or "rank" (grid over alpha, beta = 1 - alpha) or
      "cascade" (grid over shortlist).
    a_valid, b_valid: float [B, C] scores of the two scorers.
    mask: bool [B, C] valid candidates.
    target_col: int [B] target column per row (-1: absent, a miss).
    grid: alphas in [0, 1] (default ALPHA_GRID) or shortlists >= 1 (default
      SHORTLIST_GRID capped at C, plus C).

  Returns:
    (best params dict, [(params, ndcg@10)] in grid order).

  Tie-break (deterministic): higher NDCG@10, then higher MRR; then for
  alphas the value nearest to one scorer alone (largest |alpha - 0.5|),
  and alpha > 0.5 (the first scorer) before alpha < 0.5; for shortlists the
  smaller one (fewer candidates re-scored).
  """
  _check_shapes(a_valid, b_valid, mask)
  c = np.shape(a_valid)[1]
  if method in ("weighted", "rank"):
    values = [check_weight("alpha", x)
              for x in (ALPHA_GRID if grid is None else grid)]
    candidates = [{"alpha": x, "beta": round(1.0 - x, 12)} for x in values]
    # Larger is preferred at equal metrics.
    prefer = [(abs(x - 0.5), x) for x in values]
  elif method == "cascade":
    if grid is None:
      grid = sorted({s for s in SHORTLIST_GRID if s < c} | {c})
    values = [check_shortlist("shortlist", s) for s in grid]
    candidates = [{"shortlist": s} for s in values]
    prefer = [(-s,) for s in values]
  else:
    raise ValueError(f"fusion method {method!r} is not one of {METHODS}")
  if not candidates:
    raise ValueError(f"fit_weights({method!r}): an empty grid")
  table, keys = [], []
  for params, pref in zip(candidates, prefer):
    m = evaluate(fuse(method, a_valid, b_valid, mask, params), mask,
                 target_col, ks=(SELECT_K,))
    table.append((params, m[f"ndcg@{SELECT_K}"]))
    keys.append((m[f"ndcg@{SELECT_K}"], m["mrr"], *pref))
  best = max(range(len(keys)), key=lambda i: keys[i])
  logging.info("fusion %s: best %s (ndcg@%d %.4f) of %d", method,
               candidates[best], SELECT_K, table[best][1], len(table))
  return candidates[best], table


# ---- the learned gate --------------------------------------------------------
@dataclasses.dataclass
class GateParams:
  """A fitted gate: g = sigmoid(w . (f - mean) / std + c).

  Attributes:
    w: float32 [F] weights of the standardised features.
    c: the bias.
    mean, std: float32 [F] feature standardisation (from the fit rows).
    features: the F feature names (GATE_FEATURES).
  """

  w: np.ndarray
  c: float
  mean: np.ndarray
  std: np.ndarray
  features: tuple[str, ...] = GATE_FEATURES

  def to_dict(self) -> dict[str, Any]:
    """JSON-able: lists and floats."""
    return {"features": list(self.features), "w": self.w.tolist(),
            "c": float(self.c), "mean": self.mean.tolist(),
            "std": self.std.tolist()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> GateParams:
    """Inverse of to_dict (ValueError naming the field that does not fit)."""
    feats = tuple(d.get("features", ()))
    if feats != GATE_FEATURES:
      raise ValueError(f"gate params: field 'features' = {list(feats)}, "
                       f"expected {list(GATE_FEATURES)}")
    arrays = {}
    for k in ("w", "mean", "std"):
      arrays[k] = np.asarray(d[k], np.float32)
      if arrays[k].shape != (len(feats),):
        raise ValueError(f"gate params: field {k!r} has shape "
                         f"{arrays[k].shape}, expected ({len(feats)},)")
    return cls(c=float(d["c"]), features=feats, **arrays)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the params to `path` (.npz, or .json for a dict of lists)."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
      path.write_text(json.dumps(self.to_dict(), indent=1))
    else:
      np.savez(path, w=self.w, c=np.float32(self.c), mean=self.mean,
               std=self.std, features=np.array(self.features))

  @classmethod
  def load(cls, path: str | os.PathLike) -> GateParams:
    """Reads what `save` wrote."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
      return cls.from_dict(json.loads(path.read_text()))
    with np.load(path) as z:
      return cls.from_dict({"features": z["features"].tolist(),
                            "w": z["w"], "c": z["c"], "mean": z["mean"],
                            "std": z["std"]})


def _confidence(p: jax.Array, mask: jax.Array) -> jax.Array:
  """float [B, 3]: top-1 probability, top-1 - top-2, normalised entropy of
  softmax rows p [B, C] over the valid entries."""
  top2 = jax.lax.top_k(jnp.where(mask, p, -1.0), 2)[0]  # [B, 2]
  top1 = jnp.maximum(top2[:, 0], 0.0)
  second = jnp.maximum(top2[:, 1], 0.0)
  n = mask.sum(axis=1).astype(jnp.float32)  # [B]
  ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0),
                 axis=1)  # [B]
  ent = ent / jnp.log(jnp.maximum(n, 2.0))
  return jnp.stack([top1, top1 - second, ent], axis=1)


@jax.jit
def _gate_inputs(a, b, mask, hist_len):
  """(features [B, F], softmax(a) [B, C], softmax(b) [B, C])."""
  pa, pb = masked_softmax(a, mask), masked_softmax(b, mask)
  hist = jnp.log1p(jnp.maximum(hist_len.astype(jnp.float32), 0.0))[:, None]
  feats = jnp.concatenate([_confidence(pa, mask), _confidence(pb, mask),
                           hist], axis=1)  # [B, F]
  return feats, pa, pb


def _gate(w, c, z):
  return jax.nn.sigmoid(z @ w + c)  # [B]


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(z, pa_t, pb_t, w0, *, steps, learning_rate, l2):
  """Adam on the mean -log(g pa_t + (1 - g) pb_t) + l2 |w|^2."""
  tx = optax.adam(learning_rate)
  params = {"w": w0, "c": jnp.zeros((), jnp.float32)}

  def loss_fn(p):
    g = _gate(p["w"], p["c"], z)  # [B]
    prob = g * pa_t + (1.0 - g) * pb_t  # [B]
    return (-jnp.mean(jnp.log(jnp.maximum(prob, 1e-12)))
            + l2 * jnp.sum(p["w"] ** 2))

  def step(carry, _):
    p, opt = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None,
                                     length=steps)
  return params, losses


def fit_gate(a, b, mask, target_col, hist_len, seed: int = 0, *,
             steps: int = 300, learning_rate: float = 0.05,
             l2: float = 1e-3) -> GateParams:
  """Fits the gate on validation rows.

  Args:
    a, b: float [B, C] scores of the two scorers.
    mask: bool [B, C] valid candidates.
    target_col: int [B] the target's column (rows with -1 or a masked
      target are left out).
    hist_len: int [B] history length of each row.
    seed: seeds the initial weights.
    steps, learning_rate, l2: full-batch Adam steps, its learning rate and
      the L2 penalty on w.

  Returns:
    The fitted GateParams.
  """
  _check_shapes(a, b, mask)
  mask = np.asarray(mask, bool)
  target_col = np.asarray(target_col, np.int64)
  rows = np.arange(len(target_col))
  t = np.clip(target_col, 0, mask.shape[1] - 1)
  keep = (target_col >= 0) & mask[rows, t]  # [B]
  if not keep.any():
    raise ValueError("fit_gate: no row has its target among the valid "
                     "candidates")
  feats, pa, pb = _gate_inputs(jnp.asarray(a), jnp.asarray(b),
                               jnp.asarray(mask),
                               jnp.asarray(np.asarray(hist_len)))
  feats = np.asarray(feats)[keep]  # [R, F]
  pa_t = np.asarray(pa)[rows, t][keep]  # [R]
  pb_t = np.asarray(pb)[rows, t][keep]  # [R]
  mean = feats.mean(0)
  std = np.maximum(feats.std(0), 1e-6)
  z = (feats - mean) / std  # [R, F]
  w0 = 0.01 * jax.random.normal(jax.random.key(seed), (z.shape[1],))
  params, losses = _fit(jnp.asarray(z, jnp.float32), jnp.asarray(pa_t),
                        jnp.asarray(pb_t), w0, steps=int(steps),
                        learning_rate=float(learning_rate), l2=float(l2))
  losses = np.asarray(losses)
  logging.info("fusion gate: %d rows, loss %.4f -> %.4f in %d steps",
               len(z), losses[0], losses[-1], steps)
  return GateParams(w=np.asarray(params["w"], np.float32),
                    c=float(params["c"]), mean=mean.astype(np.float32),
                    std=std.astype(np.float32))


def gate_weights(params: GateParams, a, b, mask, hist_len) -> np.ndarray:
  """float32 [B]: the gate's weight g of the first scorer per row."""
  feats, _, _ = _gate_inputs(jnp.asarray(a), jnp.asarray(b),
                             jnp.asarray(mask, bool),
                             jnp.asarray(np.asarray(hist_len)))
  z = (np.asarray(feats) - params.mean) / params.std  # [B, F]
  return np.asarray(_gate(jnp.asarray(params.w), params.c, jnp.asarray(z)))


def apply_gate(params: GateParams, a, b, mask, hist_len) -> np.ndarray:
  """float32 [B, C]: g * softmax(a) + (1 - g) * softmax(b), NEG_INF where
  invalid."""
  _check_shapes(a, b, mask)
  g = jnp.asarray(gate_weights(params, a, b, mask, hist_len))[:, None]
  m = jnp.asarray(mask, bool)
  pa, pb = masked_softmax(jnp.asarray(a), m), masked_softmax(jnp.asarray(b), m)
  return np.asarray(jnp.where(m, g * pa + (1.0 - g) * pb, NEG_INF))


# ---- any two scorers from model folders --------------------------------------
def candidate_scores(ranker: Any, batch: EvalExamples,
                     candidates: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """A scoring model's (float32 scores [B, C], bool mask [B, C]).

  Args:
    ranker: a loaded model (recommend.load_model) with `scores(batch) ->
      [B, num_items]` (a model_folder.ScoreRanker: SASRec, LightGCN).
    batch: the rows; `batch.exclude` (history, never a target) is masked.
    candidates: int [B, C] item ids per row (-1 or out of range = padding,
      masked), or None: all items, C = num_items.

  Raises:
    ValueError: the model only ranks (generative kinds: no scores), or the
      candidates do not fit the batch.
  """
  if not callable(getattr(ranker, "scores", None)):
    raise ValueError(
        f"model kind {getattr(ranker, 'kind', type(ranker).__name__)!r} only "
        "ranks (a generative model: no scores over the catalogue), so it "
        "cannot be fused by score; use a scoring model (sasrec, lightgcn)")
  scores = np.asarray(ranker.scores(batch), np.float32)  # [B, I]
  b, num_items = scores.shape
  if b != len(batch):
    raise ValueError(f"{ranker.kind}: {b} score rows for {len(batch)} rows")
  hist = np.zeros((b, num_items), bool)  # [B, I] excluded items
  if batch.exclude is not None:
    hist[batch.exclude.row_ids(), batch.exclude.values] = True
  if candidates is None:
    mask = ~hist
    return np.where(mask, scores, NEG_INF).astype(np.float32), mask
  candidates = np.asarray(candidates, np.int64)
  if candidates.ndim != 2 or candidates.shape[0] != b:
    raise ValueError(f"candidates of shape {candidates.shape}, expected "
                     f"[{b}, C] (one row per batch row)")
  inside = (candidates >= 0) & (candidates < num_items)  # [B, C]
  safe = np.where(inside, candidates, 0)
  mask = inside & ~np.take_along_axis(hist, safe, 1)
  got = np.take_along_axis(scores, safe, 1)  # [B, C]
  return np.where(mask, got, NEG_INF).astype(np.float32), mask
