"""UR4Rec evaluation: both scorers' full scores, both protocols, fusions.

  sampled  1 target + 99 negatives the user never had (the same lists for
           every model and seed)
  full     every item, the user's history masked
Every scorer and fusion (`METHODS`) is evaluated under both (`PROTOCOLS`),
each fusion's weights fitted on valid; `latency` times SASRec alone against
the fused scorer.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.data.dataset import EvalExamples
from genrec_jax.evaluation import metrics
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.ur4rec import fusion
from genrec_jax.ur4rec.model import UR4Rec

# Evaluation protocols.
PROTOCOLS = ("sampled", "full")
# Scorers and fusions reported: the SASRec folder as loaded (stage 1, the
# baseline), the SASRec and retriever parts after the training stages, and
# their fusions.
METHODS = ("sasrec_pretrained", "sasrec", "retriever", "weighted", "rank",
           "cascade", "gate")
# The fusions (the others are single scorers).
FUSIONS = ("weighted", "rank", "cascade", "gate")


def batch_rows(ex: EvalExamples, max_len: int, history_len: int,
               num_items: int):
  """(users, retriever history -1-padded, SASRec input pad-padded) arrays."""
  return (jnp.asarray(ex.users),
          jnp.asarray(ex.history.padded(history_len, -1, left=True)),
          jnp.asarray(ex.history.padded(max_len, num_items, left=True)))


@functools.lru_cache(maxsize=8)
def make_score_fn(graphdef):
  """Jitted (params, rest, users, history, seq) -> (SASRec, retriever).

  One per graph (cached): every evaluation during training reuses its
  compilation.
  """

  @jax.jit
  def score(params, rest, users, history, seq):
    return nnx.merge(graphdef, params, rest).scores(users, history, seq)

  return score


def all_scores(model: UR4Rec, ex: EvalExamples, *, max_len: int,
               history_len: int, batch_size: int = 256
               ) -> tuple[np.ndarray, np.ndarray]:
  """Full SASRec and retriever scores [E, I] of every row of `ex`."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  score = make_score_fn(graphdef)
  a, b = [], []
  for lo in range(0, len(ex), batch_size):
    part = take_examples(ex, np.arange(lo, min(lo + batch_size, len(ex))))
    sa, sb = score(params, rest, *batch_rows(part, max_len, history_len,
                                             model.sasrec.num_items))
    a.append(np.asarray(sa))
    b.append(np.asarray(sb))
  return np.concatenate(a), np.concatenate(b)


class FixedScores:
  """Precomputed full scores as a `scores(batch)` scorer (fusion adapter)."""

  def __init__(self, scores: np.ndarray):
    self._scores = scores

  def scores(self, batch):
    del batch
    return self._scores


def protocol_arrays(a_full, b_full, ex: EvalExamples, protocol: str):
  """(A [E, C], B [E, C], mask, target column) of one protocol."""
  cands = ex.candidates if protocol == "sampled" else None
  a, mask = fusion.candidate_scores(FixedScores(a_full), ex, cands)
  b, _ = fusion.candidate_scores(FixedScores(b_full), ex, cands)
  return a, b, mask, fusion.target_columns(ex, cands)


def evaluate_fusions(scores: dict[str, tuple[np.ndarray, np.ndarray]],
                     valid: EvalExamples, test: EvalExamples, *,
                     seed: int, pretrained: dict[str, np.ndarray]
                     ) -> tuple[dict[str, float], dict[str, Any]]:
  """Every scorer and fusion under both protocols; weights fit on valid.

  Args:
    scores: {"valid": (A, B), "test": (A, B)} full score arrays.
    pretrained: {"valid": A0, "test": A0}: the loaded SASRec's scores.
    valid, test: the rows (with sampled candidates).
    seed: the gate's seed.

  Returns:
    (flat metrics, the chosen fusion parameters per protocol and method).
    Besides each method's metrics, `<protocol>/<method>/test/ndcg@10_gain`
    and `..._gain_se`: its per-user NDCG@10 minus the loaded SASRec's, mean
    and paired standard error over the test users.
  """
  out: dict[str, float] = {}
  chosen: dict[str, Any] = {}
  for protocol in PROTOCOLS:
    va = protocol_arrays(*scores["valid"], valid, protocol)
    te = protocol_arrays(*scores["test"], test, protocol)
    hist_v = valid.history.lengths()
    hist_t = test.history.lengths()
    chosen[protocol] = {}
    test_ranks = {}
    for method in METHODS:
      if method == "sasrec_pretrained":
        fv = protocol_arrays(pretrained["valid"], scores["valid"][1], valid,
                             protocol)[0]
        ft = protocol_arrays(pretrained["test"], scores["test"][1], test,
                             protocol)[0]
        params = {}
      elif method == "sasrec":
        fv, ft = va[0], te[0]
        params = {}
      elif method == "retriever":
        fv, ft = va[1], te[1]
        params = {}
      elif method == "gate":
        gp = fusion.fit_gate(va[0], va[1], va[2], va[3], hist_v, seed=seed)
        fv = fusion.apply_gate(gp, va[0], va[1], va[2], hist_v)
        ft = fusion.apply_gate(gp, te[0], te[1], te[2], hist_t)
        params = gp.to_dict()
      else:
        params, _ = fusion.fit_weights(method, va[0], va[1], va[2], va[3])
        fv = fusion.fuse(method, va[0], va[1], va[2], params)
        ft = fusion.fuse(method, te[0], te[1], te[2], params)
      chosen[protocol][method] = params
      for split, f, arr in (("valid", fv, va), ("test", ft, te)):
        m = fusion.evaluate(f, arr[2], arr[3], prefix="")
        for k, v in m.items():
          out[f"{protocol}/{method}/{split}/{k}"] = float(v)
      test_ranks[method] = fusion.target_ranks(ft, te[2], te[3])
    for method in METHODS[1:]:
      gain, se = metrics.paired_gain(test_ranks["sasrec_pretrained"],
                                     test_ranks[method], k=10)
      out[f"{protocol}/{method}/test/ndcg@10_gain"] = gain
      out[f"{protocol}/{method}/test/ndcg@10_gain_se"] = se
  return out, chosen


def latency(model: UR4Rec, ex: EvalExamples, *, max_len: int,
            history_len: int, repeats: int = 5) -> dict[str, float]:
  """ms per user: SASRec alone vs SASRec + retriever, batch 1 and 256."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def sasrec_only(params, rest, users, history, seq):
    return nnx.merge(graphdef, params, rest).sasrec.score_last(seq)

  both = make_score_fn(graphdef)
  out = {}
  for b in (1, 256):
    rows = batch_rows(take_examples(ex, np.arange(min(b, len(ex)))),
                      max_len, history_len, model.sasrec.num_items)
    for name, fn in (("sasrec", sasrec_only), ("fusion", both)):
      jax.block_until_ready(fn(params, rest, *rows))
      ts = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, rest, *rows))
        ts.append(time.perf_counter() - t0)
      out[f"latency/{name}_batch{b}_ms_per_user"] = (
          1e3 * sorted(ts)[len(ts) // 2] / len(rows[0]))
  return out
