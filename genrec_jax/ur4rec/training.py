"""UR4Rec training: batches, each stage's loss, per-part optimizers.

Stages (`STAGES`, run in order by the train_ur4rec stage): `retriever`
(the retriever alone, SASRec frozen), `joint` (both losses, the parts
updated on alternating steps), `end_to_end` (the softmax cross-entropy of
the summed scores over the candidates plus the parts' own losses).
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genrec_jax.data.dataset import Dataset
from genrec_jax.models.sasrec import sasrec_loss
from genrec_jax.training import loop
from genrec_jax.training import optimizer as optimizer_lib
from genrec_jax.ur4rec import multimodal
from genrec_jax.ur4rec import retriever as retriever_lib
from genrec_jax.ur4rec.model import UR4Rec

# The training stages, in order.
STAGES = ("retriever", "joint", "end_to_end")


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
  """Per-part AdamW (own learning rate, schedule, clipping) for a stage.

  Parts: "sasrec", "retriever" and "encoder" (the retriever's trainable
  text-encoder blocks, `train.encoder_lr`), each its own AdamW.
  """

  def part(lr: float) -> optax.GradientTransformation:
    cfg = ml_collections.ConfigDict(tcfg.to_dict())
    cfg.learning_rate = lr
    return optimizer_lib.make_optimizer(cfg, num_steps)

  sasrec = part(tcfg.sasrec_lr)
  retriever = part(tcfg.retriever_lr)
  encoder = part(tcfg.encoder_lr)
  if stage == "retriever":
    sasrec = optax.set_to_zero()
  elif stage == "joint":
    sasrec, retriever = alternate(sasrec, 0), alternate(retriever, 1)
    encoder = alternate(encoder, 1)

  def label(path, _) -> str:
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] == "retriever" and "top" in keys:  # retriever_lib: self.top
      return "encoder"
    return keys[0]  # the top-level attribute: "sasrec" or "retriever"

  return optax.multi_transform(
      {"sasrec": sasrec, "retriever": retriever, "encoder": encoder},
      lambda params: jax.tree_util.tree_map_with_path(label, params))
