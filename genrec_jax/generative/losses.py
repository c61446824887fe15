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

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from genrec_jax.models import decoder
from genrec_jax.models import layers


def _masked_ce(logits, targets, weights):
  """Mean cross-entropy over weighted positions; (loss, aux)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets)  # [B, T]
  total = jnp.sum(weights)
  loss = jnp.sum(ce * weights) / jnp.maximum(total, 1.0)
  return loss, {"tokens": total}


def t5_loss(model, batch, key):
  """Teacher-forced CE on `labels` (-1 = ignored)."""
  del key  # the models have no dropout
  logits = model(batch["encoder_ids"], batch["decoder_ids"],
                 batch["encoder_mask"])  # [B, T, V]
  labels = batch["labels"]
  return _masked_ce(logits, jnp.maximum(labels, 0),
                    (labels >= 0).astype(jnp.float32))


def decoder_loss(model, batch, key):
  """Next-token CE where loss_mask[b, t] = 1 (token t predicted from < t)."""
  del key
  ids = batch["input_ids"]  # [B, T]
  logits = model(ids, batch["attention_mask"])  # [B, T, V]
  return _masked_ce(logits[:, :-1], ids[:, 1:],
                    batch["loss_mask"][:, 1:].astype(jnp.float32))


@functools.lru_cache(maxsize=None)
def _hidden_graphdef(cfg):
  """Graph of a Decoder whose forward returns normed hidden states."""
  class DecoderHidden(decoder.Decoder):

    def _head(self, h):  # [B, T, D] after the final norm, no projection
      return layers.rms_norm(h, self.final_norm[...], self.config.rms_norm_eps)

  return nnx.graphdef(nnx.eval_shape(lambda: DecoderHidden(
      cfg, rngs=nnx.Rngs(0))))


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
    del key
    ids = batch["input_ids"]  # [B, T]
    b, t = ids.shape
    hidden = nnx.merge(_hidden_graphdef(model.config), nnx.state(model))
    h = hidden(ids, batch["attention_mask"])[:, :-1]  # [B, T-1, D]
    w = batch["loss_mask"][:, 1:].astype(jnp.float32).reshape(-1)  # [P']
    k = min(b * answer_budget, b * (t - 1))
    # Loss positions first, in order.
    _, pos = jax.lax.top_k(w, k)  # [P] (equal values: lower index first)
    hs = h.reshape(b * (t - 1), -1)[pos]  # [P, D]
    if model.config.tie_word_embeddings:
      logits = jnp.einsum("PD,VD->PV", hs, model.embed[...].astype(hs.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum("PD,DV->PV", hs,
                          model.lm_head[...].astype(hs.dtype),
                          preferred_element_type=jnp.float32)
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
  hidden = nnx.merge(_hidden_graphdef(model.config), nnx.state(model))
  c = num_completion
  h = hidden(input_ids, attention_mask)[:, -c - 1:-1]  # [B, C, D]
  if model.config.tie_word_embeddings:
    logits = jnp.einsum("BCD,VD->BCV", h, model.embed[...].astype(h.dtype),
                        preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("BCD,DV->BCV", h, model.lm_head[...].astype(h.dtype),
                        preferred_element_type=jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, input_ids[:, -c:, None], axis=-1)[..., 0]
