"""Training losses of the generative models and sequence log-probs.

* `t5_loss`: TIGER, teacher-forced cross-entropy on the target's SID tokens.
* `decoder_loss` / `make_decoder_loss(answer_budget)`: next-token CE on the
  answer tokens (`loss_mask`), the budgeted one computing logits only at the
  loss positions (the output projection over a large vocabulary dominates
  otherwise); answer tokens beyond the budget are counted in aux "dropped"
  (the trainer logs and warns about it).
* `sequence_log_probs`: per-token log-probs of completions after prompts in
  one teacher-forced forward (reinforcement learning's policy and reference
  terms).

Every loss is `(model, batch, key) -> (loss, aux)`, as training/loop.py
takes it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrec_jax.models import layers



def _masked_ce(logits, targets, weights):
  """Mean cross-entropy over weighted positions; (loss, aux)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets)  # [B, T]
  total = jnp.sum(weights)
  loss = jnp.sum(ce * weights) / jnp.maximum(total, 1.0)
  return loss, {"tokens": total}


def t5_loss(model, batch, key):
  """Teacher-forced CE on `labels` (-1 = ignored); dropout (when the model
  has a rate) drawn from `key`."""
  logits = model(batch["encoder_ids"], batch["decoder_ids"],
                 batch["encoder_mask"], dropout_key=key)  # [B, T, V]
  labels = batch["labels"]
  return _masked_ce(logits, jnp.maximum(labels, 0),
                    (labels >= 0).astype(jnp.float32))


def decoder_loss(model, batch, key):
  """Next-token CE where loss_mask[b, t] = 1 (token t predicted from < t);
  dropout (when the model has a rate) drawn from `key`."""
  ids = batch["input_ids"]  # [B, T]
  h = model.hidden(ids, batch["attention_mask"], dropout_key=key)
  return _masked_ce(model.project(h)[:, :-1], ids[:, 1:],
                    batch["loss_mask"][:, 1:].astype(jnp.float32))


def make_decoder_loss(answer_budget: int):
  """Decoder CE computing logits only at <= answer_budget * B positions.

  The output projection over a large vocabulary dominates the cost when
  only answer tokens carry loss; the hidden states of the loss positions
  are gathered first (positions beyond the budget are dropped and counted
  in the aux "dropped"). answer_budget 0: the full-logits `decoder_loss`.
  """
  if not answer_budget:
    return decoder_loss

  def loss_fn(model, batch, key):
    ids = batch["input_ids"]  # [B, T]
    b, t = ids.shape
    h = model.hidden(ids, batch["attention_mask"],
                     dropout_key=key)[:, :-1]  # [B, T-1, D]
    w = batch["loss_mask"][:, 1:].astype(jnp.float32).reshape(-1)  # [P']
    k = min(b * answer_budget, b * (t - 1))
    # Loss positions first, in order.
    _, pos = jax.lax.top_k(w, k)  # [P] (equal values: lower index first)
    logits = model.project(h.reshape(b * (t - 1), -1)[pos])  # [P, V]
    loss, aux = _masked_ce(logits, ids[:, 1:].reshape(-1)[pos], w[pos])
    aux["dropped"] = jnp.sum(w) - aux["tokens"]
    return loss, aux

  return loss_fn


def sequence_log_probs(model, input_ids: jax.Array, attention_mask: jax.Array,
                       completion_mask: jax.Array) -> jax.Array:
  """log p(token t | tokens < t) at completion positions of a decoder.

  Args:
    model: a decoder LM (`model(ids, mask) -> logits [B, T, V]`).
    input_ids: int [B, T] prompt + completion tokens.
    attention_mask: bool [B, T].
    completion_mask: [B, T], 1 at the completion tokens (never at t = 0).

  Returns:
    float32 [B, T]: log-probs at completion positions, 0 elsewhere.
  """
  logits = model(input_ids, attention_mask).astype(jnp.float32)  # [B, T, V]
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)  # [B, T-1, V]
  tok = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
  tok = jnp.pad(tok, ((0, 0), (1, 0)))  # [B, T]: position t predicts t
  return jnp.where(completion_mask > 0, tok, 0.0)


def completion_log_probs(model, input_ids: jax.Array,
                         attention_mask: jax.Array,
                         num_completion: int) -> jax.Array:
  """log p of the last `num_completion` tokens of each row of a decoder.

  Rows are [left-padded prompt; completion], so the completion sits at the
  end of every row: only the hidden states that predict it are projected
  onto the vocabulary (the projection dominates the cost otherwise). Equals
  `sequence_log_probs(...)[:, -num_completion:]` (tested).

  Args:
    model: a models.decoder.Decoder.
    input_ids: int [B, T] prompt + completion tokens.
    attention_mask: bool [B, T].
    num_completion: completion tokens at the end of every row (< T).

  Returns:
    float32 [B, num_completion] full-vocabulary log-probs.
  """
  c = num_completion
  h = model.hidden(input_ids, attention_mask)[:, -c - 1:-1]  # [B, C, D]
  logp = jax.nn.log_softmax(model.project(h), axis=-1)  # [B, C, V]
  return jnp.take_along_axis(logp, input_ids[:, -c:, None], axis=-1)[..., 0]


def grouped_completion_log_probs(model, prompt_ids: jax.Array,
                                 prompt_mask: jax.Array,
                                 completions: jax.Array) -> jax.Array:
  """log p of G completions per prompt, the prompt computed ONCE.

  Equals `completion_log_probs` on the G rows [prompt; completion g]
  (tested) at ~G times fewer prompt tokens: each row packs its prompt and
  its G completions, [prompt (T); c_0 (C); ...; c_{G-1} (C)], where a
  completion token attends to the prompt (its padding masked) and causally
  to its own completion, at RoPE positions continuing the prompt's.

  Args:
    model: a models.decoder.Decoder.
    prompt_ids: int [P, T] left-padded prompts.
    prompt_mask: bool [P, T].
    completions: int [P, G, C] completion tokens.

  Returns:
    float32 [P, G, C] full-vocabulary log-probs.
  """
  p, t = prompt_ids.shape
  _, g, c = completions.shape
  pmask = prompt_mask.astype(bool)
  ids = jnp.concatenate([prompt_ids, completions.reshape(p, g * c)], axis=1)
  # Positions: the prompt's from its mask; completion token j continues it.
  ppos = layers.positions_from_mask(pmask)  # [P, T]
  start = jnp.sum(pmask, axis=1, keepdims=True)  # [P, 1]
  cpos = start + jnp.tile(jnp.arange(c), g)[None]  # [P, G C]
  positions = jnp.concatenate([ppos, cpos], axis=1).astype(jnp.int32)
  # Who sees whom: group id (-1 = prompt) and index within the group.
  grp = np.concatenate([np.full(t, -1), np.repeat(np.arange(g), c)])
  idx = np.concatenate([np.arange(t), np.tile(np.arange(c), g)])
  q_prompt = grp[:, None] < 0
  static = np.where(
      q_prompt, (grp[None, :] < 0) & (idx[None, :] <= idx[:, None]),
      (grp[None, :] < 0)
      | ((grp[None, :] == grp[:, None]) & (idx[None, :] <= idx[:, None])))
  key_ok = jnp.concatenate([pmask, jnp.ones((p, g * c), bool)], axis=1)
  attn = jnp.asarray(static)[None] & key_ok[:, None, :]  # [P, S, S]
  h = model.hidden(ids, key_ok, positions=positions, attn_mask=attn)
  # Token (g, j) is predicted by the last prompt token (j = 0) or by (g, j-1).
  pred = np.where(np.arange(c)[None] == 0, t - 1,
                  t + np.arange(g)[:, None] * c + np.arange(c)[None] - 1)
  hp = h[:, pred.reshape(-1)]  # [P, G C, D]
  logp = jax.nn.log_softmax(model.project(hp), axis=-1)
  tok = jnp.take_along_axis(logp, completions.reshape(p, g * c)[..., None],
                            axis=-1)[..., 0]
  return tok.reshape(p, g, c)
