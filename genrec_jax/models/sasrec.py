"""SASRec (Kang & McAuley, ICDM 2018) in Flax NNX.

Item embedding (tied with the output layer) scaled by sqrt(D) plus a learned
position embedding, embedding dropout, `num_blocks` causal self-attention
blocks (attention + point-wise FFN, residuals, Pre-LN or Post-LN as in
pmixer/SASRec.pytorch `--norm_first`), a final LayerNorm; the state at a
position scores every item by dot product with the item embeddings.

Conventions:
  * Items are 0..num_items-1; `pad_id = num_items` is padding. Its embedding
    row exists but is multiplied by zero on lookup (no gradient, no effect)
    and is never scored.
  * Sequences are left-padded (right-aligned): the newest item sits in the
    last slot. Positions are counted from the right end, so a row padded to
    50 and the same row unpadded give the same states (padding invariance).
  * Padding keys are masked in attention, so pad slots never influence real
    positions; their own outputs are zeroed.

Two training losses (`sasrec_loss`): "bce" (the paper: one uniformly sampled
negative per position) and "ce" (full softmax over the catalogue).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from genrec_jax.models import layers

# Masked attention logits (finite: rows that are all padding stay NaN-free).
NEG_INF = -1e9


def _dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
  """Inverted dropout with a fresh key of the "dropout" stream (layers.dropout:
  16 bits an element); identity when rngs is None (evaluation)."""
  if rngs is None or rate == 0.0:
    return x
  return layers.dropout(x, rate, rngs.dropout())


class PointWiseFFN(nnx.Module):
  """Two D -> D linear layers with ReLU and dropout (pmixer's Conv1d pair)."""

  def __init__(self, d: int, rate: float, *, rngs: nnx.Rngs):
    init = nnx.initializers.xavier_normal()
    self.fc1 = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
    self.fc2 = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
    self.rate = rate

  def __call__(self, x, rngs: nnx.Rngs | None):
    h = jax.nn.relu(_dropout(self.fc1(x), self.rate, rngs))
    return _dropout(self.fc2(h), self.rate, rngs)  # [B, T, D]


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with a key padding mask."""

  def __init__(self, d: int, num_heads: int, rate: float, *, rngs: nnx.Rngs):
    if d % num_heads:
      raise ValueError(f"hidden dim {d} not divisible by {num_heads} heads")
    self.num_heads = num_heads
    init = nnx.initializers.xavier_normal()
    self.q = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
    self.k = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
    self.v = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
    self.out = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
    self.rate = rate

  def __call__(self, xq, xkv, mask, rngs: nnx.Rngs | None):
    """xq, xkv: [B, T, D]; mask: bool [B, T, T] (query, key) -> [B, T, D]."""
    b, t, d = xq.shape
    n = self.num_heads
    h = d // n
    q = self.q(xq).reshape(b, t, n, h)  # [B, T, N, H]
    k = self.k(xkv).reshape(b, t, n, h)  # [B, S, N, H]
    v = self.v(xkv).reshape(b, t, n, h)  # [B, S, N, H]
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) / jnp.sqrt(h).astype(q.dtype)
    logits = jnp.where(mask[:, None], logits, NEG_INF)  # [B, N, T, S]
    probs = jax.nn.softmax(logits, axis=-1)
    probs = _dropout(probs, self.rate, rngs)
    ctx = jnp.einsum("BNTS,BSNH->BTNH", probs, v).reshape(b, t, d)
    return self.out(ctx)  # [B, T, D]


class Block(nnx.Module):
  """Attention + FFN with residuals; Pre-LN or Post-LN."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d = cfg.hidden_dim
    self.norm_first = cfg.norm_first
    self.attn_norm = nnx.LayerNorm(d, epsilon=1e-8, rngs=rngs)
    self.attn = CausalSelfAttention(d, cfg.num_heads, cfg.dropout, rngs=rngs)
    self.rate = cfg.dropout
    self.ffn_norm = nnx.LayerNorm(d, epsilon=1e-8, rngs=rngs)
    self.ffn = PointWiseFFN(d, cfg.dropout, rngs=rngs)

  def __call__(self, x, mask, rngs: nnx.Rngs | None):
    if self.norm_first:  # x + MHA(LN(x)); x + FFN(LN(x))
      y = self.attn_norm(x)
      x = x + _dropout(self.attn(y, y, mask, rngs), self.rate, rngs)
      return x + self.ffn(self.ffn_norm(x), rngs)
    # Post-LN: LN(x + MHA(x)); LN(x + FFN(x)).
    x = self.attn_norm(
        x + _dropout(self.attn(x, x, mask, rngs), self.rate, rngs))
    return self.ffn_norm(x + self.ffn(x, rngs))


class SASRec(nnx.Module):
  """Self-attentive sequential recommender.

  Args:
    num_items: catalogue size; `num_items` itself is the padding id.
    cfg: `hidden_dim`, `num_blocks`, `num_heads`, `dropout`, `max_len`,
      `norm_first` (see configs/sasrec.py).
    rngs: parameter initialisation.
  """

  def __init__(self, num_items: int, cfg: ml_collections.ConfigDict, *,
               rngs: nnx.Rngs):
    d = cfg.hidden_dim
    self.num_items = num_items
    self.pad_id = num_items
    self.max_len = cfg.max_len
    init = nnx.initializers.xavier_normal()
    self.item_emb = nnx.Embed(num_items + 1, d, embedding_init=init, rngs=rngs)
    self.pos_emb = nnx.Embed(cfg.max_len, d, embedding_init=init, rngs=rngs)
    self.dropout_rate = cfg.dropout
    self.blocks = nnx.List([Block(cfg, rngs=rngs)
                            for _ in range(cfg.num_blocks)])
    self.final_norm = nnx.LayerNorm(d, epsilon=1e-8, rngs=rngs)

  def __call__(self, seq: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """States of a left-padded int [B, T] sequence (T <= max_len) -> [B, T, D].

    `rngs` (with a "dropout" stream) turns dropout on; None = evaluation.
    """
    b, t = seq.shape
    if t > self.max_len:
      raise ValueError(f"sequence length {t} > max_len {self.max_len}")
    d = self.item_emb.features
    valid = seq != self.pad_id  # [B, T]
    x = self.item_emb(seq) * (d ** 0.5)  # [B, T, D]
    # Right-aligned positions: the last slot always gets row max_len - 1.
    pos = self.pos_emb.embedding[...][self.max_len - t:]  # [T, D]
    x = (x + pos[None]) * valid[..., None]
    x = _dropout(x, self.dropout_rate, rngs)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))  # [T, S]
    mask = causal[None] & valid[:, None, :]  # [B, T, S]
    for block in self.blocks:
      x = block(x, mask, rngs) * valid[..., None]
    return self.final_norm(x) * valid[..., None]  # [B, T, D]

  def item_table(self) -> jax.Array:
    """float [num_items, D]: the output item embeddings (padding excluded)."""
    return self.item_emb.embedding[...][: self.num_items]

  def score_last(self, history: jax.Array) -> jax.Array:
    """Scores of every item after a left-padded int [B, T] history -> [B, V]."""
    h = self(history)[:, -1]  # [B, D]
    return h @ self.item_table().T  # [B, V]


def sasrec_loss(model: SASRec, inputs: jax.Array, targets: jax.Array,
                key: jax.Array, *, loss: str = "ce", max_positions: int = 0,
                train: bool = True):
  """Next-item loss at every non-padding target position.

  Args:
    model: the SASRec module.
    inputs: int32 [B, T] left-padded input sequences (seq[:-1]).
    targets: int32 [B, T] the next item at each slot (seq[1:]); pad = no loss.
    key: PRNG key for dropout and negative sampling.
    loss: "ce" (full softmax) or "bce" (one sampled negative per position).
    max_positions: when > 0, only the first `max_positions` non-padding
      positions of the batch are scored (a static budget that skips the
      padding slots' output layer); 0 = score every slot.
    train: dropout on.

  Returns:
    (scalar mean loss, aux dict with "positions" and "dropped").
  """
  k_drop, k_neg = jax.random.split(key)
  rngs = nnx.Rngs(dropout=k_drop) if train else None
  h = model(inputs, rngs)  # [B, T, D]
  d = h.shape[-1]
  h = h.reshape(-1, d)  # [B*T, D]
  tgt = targets.reshape(-1)  # [B*T]
  valid = tgt != model.pad_id
  count = valid.sum()
  if max_positions and max_positions < tgt.shape[0]:
    (idx,) = jnp.nonzero(valid, size=max_positions, fill_value=0)  # [P]
    h, tgt = h[idx], tgt[idx]
    valid = jnp.arange(max_positions) < count  # [P]
  safe_tgt = jnp.where(valid, tgt, 0)
  table = model.item_table()  # [V, D]
  if loss == "ce":
    logits = h @ table.T  # [P, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    pos = jnp.take_along_axis(logits, safe_tgt[:, None], axis=1)[:, 0]
    per = lse - pos  # [P]
  elif loss == "bce":
    neg = jax.random.randint(k_neg, safe_tgt.shape, 0, model.num_items - 1)
    neg = neg + (neg >= safe_tgt)  # uniform over items != target
    pos_logit = jnp.sum(h * table[safe_tgt], -1)  # [P]
    neg_logit = jnp.sum(h * table[neg], -1)  # [P]
    per = -jax.nn.log_sigmoid(pos_logit) - jax.nn.log_sigmoid(-neg_logit)
  else:
    raise ValueError(f"unknown SASRec loss {loss!r} (use 'ce' or 'bce')")
  n = jnp.maximum(valid.sum(), 1)
  mean = jnp.sum(jnp.where(valid, per, 0.0)) / n
  return mean, {"positions": valid.sum(), "dropped": count - valid.sum()}
