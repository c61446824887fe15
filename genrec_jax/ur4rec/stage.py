"""The train_ur4rec stage: a preference retriever fused with SASRec.

python -m binaries.train_ur4rec --config=configs/ur4rec.py --workdir=runs/ml100k

Reads (all from WORKDIR):
  dataset/                 leave-one-out ML-100K (valid/test rows)
  sasrec/                  the SASRec model folder (stage 1: train_sasrec)
  <config.texts>/          users.jsonl + items.jsonl (generate_texts)
  <config.features.path>   a [num_items, D] .npy (multimodal only; the
                           `build_features` stage writes stand-ins)
Writes WORKDIR/<config.name>/:
  model.json, params/      the model folder (kind "ur4rec": SASRec +
                           retriever params, the fusion chosen on valid)
  metrics.json             both protocols (see below), every scorer and
                           fusion, latency, the stages' training summaries
  train_log.json           each training stage's curve and evaluations
  checkpoints/<stage>/     Orbax latest + best of each training stage
  tb/<stage>/              TensorBoard summaries

Multi-stage training on the one trainer (`training/loop.train`), each
stage resumable from its checkpoints and early-stopped on valid NDCG@10
(100 sampled candidates): (1) SASRec pre-trained by train_sasrec (loaded
here); (2) `retriever`: the retriever alone (SASRec frozen); (3) `joint`:
both losses (weights `train.joint_weights`), the parts updated on
alternating steps; (4) `end_to_end`: the softmax cross-entropy of the
summed scores over the candidates plus the parts' own losses (weights
`train.end_to_end_weights`), every part each step. Learning rates per
part (`train.sasrec_lr`, `train.retriever_lr`);
a stage with 0 steps is skipped.

The user and item texts go through the frozen MiniLM once; the pooled
vectors are cached in WORKDIR/<texts>.minilm.npz (keyed by the texts' and
the encoder's digest), so seeds and variants do not re-encode.

Evaluation (metrics.json): the same rows scored by SASRec (A) and the
retriever (B), under two protocols, both stated in metrics.json:
  sampled  1 target + 99 negatives the user never had, drawn once with
           `eval.candidate_seed` (the same lists for every model and seed)
  full     every item, the user's history masked
Fusions (genrec_jax/ur4rec/fusion.py): weighted, rank, cascade (their
weights / shortlist chosen on valid NDCG@10 of each protocol) and a gate
fitted on the valid rows. Keys `<protocol>/<method>/<split>/<metric>`;
`test/*` and `valid/*` are the fusion picked by valid NDCG@10 under the
full protocol (`selected`). `sasrec_pretrained` is the SASRec folder as
loaded (the baseline every fusion is compared with); `sasrec` is the SASRec
part after the joint stages.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genrec_jax import model_folder
from genrec_jax.checks import check_ranges
from genrec_jax.data import splits
from genrec_jax.data.dataset import Dataset, DataError, EvalExamples
from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.models.sasrec import SASRec, sasrec_loss
from genrec_jax.semantic_ids import encoders
from genrec_jax.training import loop
from genrec_jax.training import optimizer as optimizer_lib
from genrec_jax.training import sharding
from genrec_jax.training import sasrec_train
from genrec_jax.ur4rec import features as features_lib
from genrec_jax.ur4rec import fusion
from genrec_jax.ur4rec import multimodal
from genrec_jax.ur4rec import retriever as retriever_lib
from genrec_jax.ur4rec import texts as texts_lib

# model.json kind.
KIND = "ur4rec"
# The training stages, in order.
STAGES = ("retriever", "joint", "end_to_end")
# Early-stopping metric of every training stage.
SELECT = "valid/ndcg@10"
# Evaluation protocols.
PROTOCOLS = ("sampled", "full")
# Scorers and fusions reported: the SASRec folder as loaded (stage 1, the
# baseline), the SASRec and retriever parts after the training stages, and
# their fusions.
METHODS = ("sasrec_pretrained", "sasrec", "retriever", "weighted", "rank",
           "cascade", "gate")
# The fusions (the others are single scorers).
FUSIONS = ("weighted", "rank", "cascade", "gate")


class UserText(nnx.Variable):
  """Cached text encodings of every user [U, in_dim] (a per-run constant)."""


class UR4Rec(nnx.Module):
  """SASRec + a preference retriever (text or multimodal), two scorers."""

  def __init__(self, sasrec: SASRec, retriever: nnx.Module,
               user_text: np.ndarray):
    self.sasrec = sasrec
    self.retriever = retriever
    self.user_text = UserText(jnp.asarray(user_text, jnp.float32))

  @property
  def is_multimodal(self) -> bool:
    return isinstance(self.retriever, multimodal.MultimodalRetriever)

  def retriever_batch(self, users, history) -> dict[str, jax.Array]:
    """What the retriever reads: the users' text vectors (+ history)."""
    return {"user_text": self.user_text[...][users], "history": history}

  def user_vectors(self, users, history) -> jax.Array:
    """Unit user vectors [B, D] (evaluation: no dropout)."""
    b = self.retriever_batch(users, history)
    if self.is_multimodal:
      return self.retriever.users(b)
    return retriever_lib.user_vectors(self.retriever, b)

  def scores(self, users, history, seq) -> tuple[jax.Array, jax.Array]:
    """(SASRec [B, I], retriever [B, I]) scores of every item."""
    a = self.sasrec.score_last(seq)  # [B, I]
    b = self.retriever.scores(self.user_vectors(users, history))  # [B, I]
    return a, b


# ----------------------------------------------------------------------------
# Texts and features.


def _digest(*parts: Any) -> str:
  h = hashlib.sha256()
  for p in parts:
    h.update(json.dumps(p, sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def encode_texts(config, workdir: pathlib.Path, ds: Dataset
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(user vectors [U, 384], item vectors [I, 384], user texts), cached."""
  folder = workdir / config.texts
  user_texts, item_texts = texts_lib.load_texts(folder, ds.num_users,
                                                ds.num_items)
  enc_cfg = config.encoder
  key = _digest(user_texts, item_texts, enc_cfg.to_dict())
  cache = workdir / f"{config.texts}.minilm.npz"
  if cache.exists():
    with np.load(cache) as z:
      if str(z["key"]) == key:
        logging.info("text encodings from %s", cache)
        return z["users"], z["items"], user_texts
  t0 = time.time()
  enc = encoders.make(enc_cfg)
  users = enc.encode(user_texts).astype(np.float32)
  items = enc.encode(item_texts).astype(np.float32)
  tmp = cache.with_suffix(".tmp.npz")
  np.savez(tmp, key=key, users=users, items=items)
  tmp.replace(cache)
  logging.info("encoded %d user and %d item texts in %.0fs -> %s",
               len(users), len(items), time.time() - t0, cache)
  return users, items, user_texts


# ----------------------------------------------------------------------------
# Training batches.


class Batches:
  """The trainer's BatchSource: per step, B training interactions.

  Each row: a user, one item of their training sequence (the target), the
  items before it (the retriever's history, -1 padded on the left; SASRec's
  input, pad_id padded on the left), `num_negatives` items drawn uniformly
  from the others (candidates = [target, negatives]) and a SASRec
  next-item sequence of a uniformly drawn user. A deterministic function of
  (seed, step), as the trainer requires.
  """

  def __init__(self, ds: Dataset, *, batch_size: int, num_negatives: int,
               history_len: int, max_len: int, seed: int):
    self.train = ds.train
    self.num_items = ds.num_items
    self.b, self.n = batch_size, num_negatives
    self.history_len, self.max_len, self.seed = history_len, max_len, seed
    lengths = ds.train.lengths()
    self.row_of = np.repeat(np.arange(len(lengths)), lengths)  # [P]
    self.pos_of = np.concatenate([np.arange(n) for n in lengths])  # [P]
    self.users_with_pairs = np.flatnonzero(lengths >= 2)

  def _before(self, user: int, pos: int, length: int, pad: int):
    seq = self.train[user][max(0, pos - length):pos]
    out = np.full(length, pad, np.int32)
    out[length - len(seq):] = seq
    return out

  def next_batch(self, model, step: int) -> dict[str, np.ndarray]:
    del model
    rng = np.random.default_rng([self.seed, step])
    pick = rng.integers(0, len(self.row_of), self.b)
    users = self.row_of[pick].astype(np.int32)
    pos = self.pos_of[pick]
    target = np.array([self.train[u][p] for u, p in zip(users, pos)],
                      np.int32)
    neg = rng.integers(0, self.num_items - 1, (self.b, self.n))
    neg = (neg + (neg >= target[:, None])).astype(np.int32)  # never target
    history = np.stack([self._before(u, p, self.history_len, -1)
                        for u, p in zip(users, pos)])
    seq = np.stack([self._before(u, p, self.max_len, self.num_items)
                    for u, p in zip(users, pos)])
    su = rng.choice(self.users_with_pairs, self.b)
    full = [self.train[u][-(self.max_len + 1):] for u in su]
    inputs = np.full((self.b, self.max_len), self.num_items, np.int32)
    targets = np.full((self.b, self.max_len), self.num_items, np.int32)
    for i, s in enumerate(full):
      inputs[i, self.max_len - len(s) + 1:] = s[:-1]
      targets[i, self.max_len - len(s) + 1:] = s[1:]
    return {"users": users, "candidates": np.concatenate(
        [target[:, None], neg], 1), "history": history, "seq": seq,
            "inputs": inputs, "targets": targets}


def make_loss(stage: str, tcfg: ml_collections.ConfigDict,
              sasrec_loss_kind: str) -> loop.LossFn:
  """The loss of one training stage (see the module docstring)."""
  weights = (tcfg.end_to_end_weights if stage == "end_to_end"
             else tcfg.joint_weights)
  w_sasrec, w_retriever = (float(w) for w in weights)

  def retriever_part(model: UR4Rec, batch, key):
    rb = model.retriever_batch(batch["users"], batch["history"])
    rb["candidates"] = batch["candidates"]
    if model.is_multimodal:
      weights = ("uncertainty" if tcfg.loss_weighting == "uncertainty"
                 else "default")
      return multimodal.multimodal_loss(model.retriever, rb, key,
                                        weights=weights)
    return retriever_lib.retrieval_loss(model.retriever, rb, key,
                                        kind=tcfg.retriever_loss)

  def loss_fn(model: UR4Rec, batch, key):
    k_r, k_s, k_e = jax.random.split(key, 3)
    r_loss, aux = retriever_part(model, batch, k_r)
    if stage == "retriever":
      return r_loss, aux
    total = w_retriever * r_loss
    if w_sasrec:  # (its full-catalogue CE is the costly part of a step)
      s_loss, _ = sasrec_loss(model.sasrec, batch["inputs"],
                              batch["targets"], k_s, loss=sasrec_loss_kind)
      aux = {**aux, "sasrec": s_loss}
      total = total + w_sasrec * s_loss
    if stage == "end_to_end":
      # Softmax CE of SASRec + retriever scores over the candidates.
      rngs = nnx.Rngs(dropout=k_e)
      h = model.sasrec(batch["seq"], rngs)[:, -1]  # [B, D]
      cands = batch["candidates"]  # [B, C]
      a = jnp.einsum("BD,BCD->BC", h, model.sasrec.item_table()[cands])
      u = model.user_vectors(batch["users"], batch["history"])  # [B, D']
      b = model.retriever.scores(u, cands)  # [B, C]
      fused = jax.nn.log_softmax(a + b, axis=-1)
      e2e = -jnp.mean(fused[:, 0])
      aux["fused"] = e2e
      total = total + e2e
    return total, aux

  return loss_fn


def alternate(inner: optax.GradientTransformation, phase: int,
              period: int = 2) -> optax.GradientTransformation:
  """`inner`, applied only on steps with step % period == phase.

  On the other steps the update is zero and `inner`'s state (moments,
  schedule count) does not move: the part sits still, as in UR4Rec's
  alternating joint fine-tuning.
  """

  def init(params):
    return (jnp.zeros([], jnp.int32), inner.init(params))

  def update(grads, state, params=None):
    count, inner_state = state
    active = (count % period) == phase
    updates, new_state = inner.update(grads, inner_state, params)
    updates = jax.tree.map(lambda u: jnp.where(active, u, 0.0), updates)
    new_state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state,
                             inner_state)
    return updates, (count + 1, new_state)

  return optax.GradientTransformation(init, update)


def make_optimizer(stage: str, tcfg: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """Per-part AdamW (own learning rate, schedule, clipping) for a stage."""

  def part(lr: float) -> optax.GradientTransformation:
    cfg = ml_collections.ConfigDict(tcfg.to_dict())
    cfg.learning_rate = lr
    return optimizer_lib.make_optimizer(cfg, num_steps)

  sasrec = part(tcfg.sasrec_lr)
  retriever = part(tcfg.retriever_lr)
  if stage == "retriever":
    sasrec = optax.set_to_zero()
  elif stage == "joint":
    sasrec, retriever = alternate(sasrec, 0), alternate(retriever, 1)

  def labels(params):  # the top-level attribute: "sasrec" or "retriever"
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[0], "key", path[0])), params)

  return optax.multi_transform({"sasrec": sasrec, "retriever": retriever},
                               labels)


# ----------------------------------------------------------------------------
# Evaluation.


def _rows(ex: EvalExamples, max_len: int, history_len: int, num_items: int):
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
    sa, sb = score(params, rest, *_rows(part, max_len, history_len,
                                        model.sasrec.num_items))
    a.append(np.asarray(sa))
    b.append(np.asarray(sb))
  return np.concatenate(a), np.concatenate(b)


class _Fixed:
  """Precomputed full scores as a `scores(batch)` scorer (fusion adapter)."""

  def __init__(self, scores: np.ndarray):
    self._scores = scores

  def scores(self, batch):
    del batch
    return self._scores


def protocol_arrays(a_full, b_full, ex: EvalExamples, protocol: str):
  """(A [E, C], B [E, C], mask, target column) of one protocol."""
  cands = ex.candidates if protocol == "sampled" else None
  a, mask = fusion.candidate_scores(_Fixed(a_full), ex, cands)
  b, _ = fusion.candidate_scores(_Fixed(b_full), ex, cands)
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
  """
  out: dict[str, float] = {}
  chosen: dict[str, Any] = {}
  for protocol in PROTOCOLS:
    va = protocol_arrays(*scores["valid"], valid, protocol)
    te = protocol_arrays(*scores["test"], test, protocol)
    hist_v = valid.history.lengths()
    hist_t = test.history.lengths()
    chosen[protocol] = {}
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
    rows = _rows(take_examples(ex, np.arange(min(b, len(ex)))), max_len,
                 history_len, model.sasrec.num_items)
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


# ----------------------------------------------------------------------------
# The stage.


def build_model(config, ds: Dataset, sasrec: SASRec, user_vecs, item_vecs,
                feats: np.ndarray | None) -> UR4Rec:
  """A UR4Rec of the config's retriever around a loaded SASRec."""
  rcfg = retriever_lib.RetrieverConfig(
      in_dim=int(user_vecs.shape[1]), **config.retriever.to_dict())
  rngs = nnx.Rngs(config.seed)
  if feats is None:
    retr = retriever_lib.PreferenceRetriever(rcfg, item_init=item_vecs,
                                             rngs=rngs)
  else:
    mcfg = multimodal.MultimodalConfig(
        retriever=rcfg, feat_dim=int(feats.shape[1]),
        **config.features.model.to_dict())
    retr = multimodal.MultimodalRetriever(mcfg, item_init=item_vecs,
                                          item_features=feats, rngs=rngs)
  del ds
  return UR4Rec(sasrec, retr, user_vecs)


def load_sasrec(workdir: pathlib.Path, name: str, ds: Dataset
                ) -> tuple[SASRec, ml_collections.ConfigDict]:
  """The SASRec model folder's module (stage 1's output)."""
  folder = workdir / name
  spec = model_folder.read_spec(folder, kind=sasrec_train.KIND,
                                num_items=ds.num_items)
  mcfg = ml_collections.ConfigDict(spec["model_config"])
  model = SASRec(ds.num_items, mcfg, rngs=nnx.Rngs(0))
  params = model_folder.restore_params(folder, nnx.state(model, nnx.Param))
  nnx.update(model, params)
  return model, mcfg


def _check(config) -> None:
  t = config.train
  check_ranges([
      ("train.batch_size", t.batch_size, 1, None),
      ("train.num_negatives", t.num_negatives, 1, None),
      ("train.sasrec_lr", t.sasrec_lr, 0.0, None),
      ("train.retriever_lr", t.retriever_lr, 0.0, None),
      ("history_len", config.history_len, 1, None),
      ("eval.num_negatives", config.eval.num_negatives, 1, None),
  ])
  for field in ("joint_weights", "end_to_end_weights"):
    for i, w in enumerate(t[field]):
      fusion.check_weight(f"train.{field}[{i}]", w)
  for s in t.steps:
    if s not in STAGES:
      raise ValueError(f"config field 'train.steps': unknown stage {s!r} "
                       f"(stages: {', '.join(STAGES)})")
  if t.retriever_loss not in ("bce", "infonce"):
    raise ValueError(f"config field 'train.retriever_loss': "
                     f"{t.retriever_loss!r} is not bce or infonce")
  if t.loss_weighting not in ("fixed", "uncertainty"):
    raise ValueError(f"config field 'train.loss_weighting': "
                     f"{t.loss_weighting!r} is not fixed or uncertainty")
  if config.retriever.get("trainable_layers", 0):
    raise ValueError("config field 'retriever.trainable_layers': the stage "
                     "trains on cached pooled MiniLM vectors (0)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates one UR4Rec model; returns its metrics."""
  t_start = time.time()
  _check(config)
  workdir = pathlib.Path(workdir)
  ds = Dataset.load(workdir / "dataset")
  if ds.valid is None:
    raise DataError(f"{workdir / 'dataset'}: UR4Rec needs a valid split")
  out = workdir / config.name
  user_vecs, item_vecs, _ = encode_texts(config, workdir, ds)
  feats = None
  if config.features.path:
    feats = features_lib.load_features(workdir / config.features.path,
                                       ds.num_items)
  sasrec, scfg = load_sasrec(workdir, config.sasrec, ds)
  model = build_model(config, ds, sasrec, user_vecs, item_vecs, feats)
  max_len, hl = int(scfg.max_len), int(config.history_len)

  # The same sampled candidates for every model and seed.
  seqs = [ds.sequences[u] for u in range(ds.num_users)]
  valid = splits.add_sampled_candidates(
      take_examples(ds.valid, np.arange(len(ds.valid))), seqs, ds.num_items,
      config.eval.num_negatives, config.eval.candidate_seed)
  test = splits.add_sampled_candidates(
      take_examples(ds.test, np.arange(len(ds.test))), seqs, ds.num_items,
      config.eval.num_negatives, config.eval.candidate_seed + 1)

  # The baseline: stage 1's SASRec before any UR4Rec training.
  pretrained = {"valid": all_scores(model, valid, max_len=max_len,
                                    history_len=hl)[0],
                "test": all_scores(model, test, max_len=max_len,
                                   history_len=hl)[0]}
  tcfg = config.train
  mesh = sharding.mesh_from_config(config.get("mesh"))
  logs = {}
  ckpt_root = out / "checkpoints"
  loop.reset_stale_checkpoints(ckpt_root, _fingerprint(config))
  for stage in STAGES:
    steps = int(tcfg.steps.get(stage, 0))
    if not steps:
      continue

    def valid_metrics(m, stage=stage):
      a, b = all_scores(m, valid, max_len=max_len, history_len=hl)
      sa, sb, mask, col = protocol_arrays(a, b, valid, "sampled")
      f = sb if stage == "retriever" else fusion.weighted(sa, sb, mask)
      res = fusion.evaluate(f, mask, col, prefix="valid/")
      return {SELECT: float(res[SELECT]), "valid/hr@10":
              float(res["valid/hr@10"])}

    source = Batches(ds, batch_size=tcfg.batch_size,
                     num_negatives=tcfg.num_negatives, history_len=hl,
                     max_len=max_len, seed=config.seed + 1000 * len(logs))
    result = loop.train(
        model, make_loss(stage, tcfg, config.sasrec_loss), source, tcfg,
        mesh=mesh, ckpt_dir=ckpt_root / stage, num_steps=steps,
        seed=config.seed, evaluate=valid_metrics,
        select=SELECT, examples_key="users", name=f"ur4rec/{stage}",
        summary_dir=out / "tb" / stage,
        optimizer=make_optimizer(stage, tcfg, steps))
    model = result.model
    logs[stage] = {"steps": result.step, "best": result.best,
                   "best_step": result.best_step,
                   "stop_reason": result.stop_reason,
                   "seconds": round(result.seconds, 1),
                   "curve": result.curve, "evals": result.evals}

  scores = {"valid": all_scores(model, valid, max_len=max_len,
                                history_len=hl),
            "test": all_scores(model, test, max_len=max_len,
                               history_len=hl)}
  metrics, chosen = evaluate_fusions(scores, valid, test, seed=config.seed,
                                     pretrained=pretrained)
  best = max(FUSIONS, key=lambda m: (metrics[f"full/{m}/valid/ndcg@10"],
                                     -FUSIONS.index(m)))
  for k, v in list(metrics.items()):
    protocol, method, rest = k.split("/", 2)
    if method == best:
      metrics[rest if protocol == "full" else f"sampled/{rest}"] = v
  metrics.update(latency(model, test, max_len=max_len, history_len=hl))
  metrics.update({
      "selected": best, "num_eval_users": int(len(test)),
      "protocols": {
          "sampled": (f"leave-one-out, 1 target + {config.eval.num_negatives}"
                      f" negatives the user never had (seed "
                      f"{config.eval.candidate_seed}: the same lists for "
                      "every model)"),
          "full": "leave-one-out, every item, the user's history masked"},
      "texts": config.texts, "features": config.features.path,
      "multimodal": model.is_multimodal, "fusion_params": chosen,
      "stages": {k: {kk: vv for kk, vv in v.items()
                     if kk not in ("curve", "evals")}
                 for k, v in logs.items()},
      "seconds": round(time.time() - t_start, 1)})
  _save(out, model, config, scfg, chosen, best, metrics, logs)
  logging.info("ur4rec %s: selected %s; full test NDCG@10 %s; sampled %s",
               config.name, best,
               {m: round(metrics[f"full/{m}/test/ndcg@10"], 4)
                for m in METHODS},
               {m: round(metrics[f"sampled/{m}/test/ndcg@10"], 4)
                for m in METHODS})
  return metrics


def _save(out: pathlib.Path, model: UR4Rec, config, scfg, chosen, best,
          metrics, logs) -> None:
  if jax.process_index() != 0:
    return
  retr_cfg = model.retriever.config
  spec = {"kind": KIND, "num_items": int(model.sasrec.num_items),
          "sasrec_config": model_folder.config_dict(scfg),
          "retriever_config": _config_json(retr_cfg),
          "multimodal": model.is_multimodal,
          "texts": config.texts, "encoder": config.encoder.to_dict(),
          "features": config.features.path,
          "history_len": int(config.history_len),
          "fusion": {"method": best, "params": chosen["full"][best]}}
  (out / "metrics.json").unlink(missing_ok=True)
  model_folder.save(out, spec, nnx.state(model, nnx.Param))
  atomic_write_json(out / "train_log.json", logs)
  atomic_write_json(out / "metrics.json", metrics)  # the done-marker


def _fingerprint(config) -> dict[str, Any]:
  """What the checkpoints depend on (resume needs the same)."""
  keys = ("seed", "texts", "sasrec", "features", "retriever", "train",
          "history_len", "sasrec_loss", "encoder")
  return {k: (config[k].to_dict() if hasattr(config[k], "to_dict")
              else config[k]) for k in keys}


def _config_json(cfg) -> dict[str, Any]:
  """A (nested) config dataclass as JSON (dtypes by name)."""

  def clean(x):
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (int, float, str, bool, type(None), list, tuple)):
      return x
    return jnp.dtype(x).name

  return clean(dataclasses.asdict(cfg))


# ----------------------------------------------------------------------------
# The model folder as a Ranker (recommend, evaluate, serve).


@dataclasses.dataclass
class UR4RecRanker(model_folder.ScoreRanker):
  """Fused full scores of a known user; SASRec alone for a bare history.

  `explain(user)` is the user's preference text (what the retriever read).
  """

  user_texts: list[str] = dataclasses.field(default_factory=list)

  def explain(self, user: int) -> str | None:
    return self.user_texts[user] if 0 <= user < len(self.user_texts) else None


def load_ranker(model_dir: str | pathlib.Path, workdir: str | pathlib.Path,
                spec: dict[str, Any], ds: Dataset) -> UR4RecRanker:
  """A `ur4rec` model folder -> UR4RecRanker (the fusion chosen on valid)."""
  model_dir, workdir = pathlib.Path(model_dir), pathlib.Path(workdir)
  cfg = ml_collections.ConfigDict({"texts": spec["texts"],
                                   "encoder": spec["encoder"]})
  user_vecs, item_vecs, user_texts = encode_texts(cfg, workdir, ds)
  scfg = ml_collections.ConfigDict(spec["sasrec_config"])
  rd = dict(spec["retriever_config"])
  if spec.get("multimodal"):
    rd["retriever"] = retriever_lib.RetrieverConfig(**rd["retriever"])
    retr = multimodal.MultimodalRetriever(
        multimodal.MultimodalConfig(**rd), item_init=item_vecs,
        item_features=features_lib.load_features(workdir / spec["features"],
                                                 ds.num_items),
        rngs=nnx.Rngs(0))
  else:
    retr = retriever_lib.PreferenceRetriever(
        retriever_lib.RetrieverConfig(**rd), item_init=item_vecs,
        rngs=nnx.Rngs(0))
  model = UR4Rec(SASRec(ds.num_items, scfg, rngs=nnx.Rngs(0)), retr,
                 user_vecs)
  nnx.update(model, model_folder.restore_params(
      model_dir, nnx.state(model, nnx.Param)))
  max_len, hl = int(scfg.max_len), int(spec["history_len"])
  method, params = spec["fusion"]["method"], spec["fusion"]["params"]
  gate = fusion.GateParams.from_dict(params) if method == "gate" else None
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)
  score = make_score_fn(graphdef)

  def score_fn(batch: EvalExamples) -> np.ndarray:
    a, b = (np.asarray(x) for x in score(
        state, rest, *_rows(batch, max_len, hl, ds.num_items)))
    known = (batch.users >= 0) & (batch.users < ds.num_users)  # [B]
    # As evaluated: history items (batch.exclude) out of the normalisation.
    _, mask = fusion.candidate_scores(_Fixed(a), batch, None)
    if gate is not None:
      fused = fusion.apply_gate(gate, a, b, mask, batch.history.lengths())
    else:
      fused = fusion.fuse(method, a, b, mask, params)
    return np.where(known[:, None], fused, a)

  return UR4RecRanker(KIND, score_fn, ds.num_items, user_texts=user_texts)
