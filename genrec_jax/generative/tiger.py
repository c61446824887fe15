"""The "tiger" format: a T5 encoder-decoder on history SID tokens (TIGER).

Vocabulary: 0 pad (= decoder start), 1 eos, the SID blocks level by level,
then `num_user_tokens` hashed user tokens. Encoder input = [user token] +
the SID tokens of the last `max_history` items (left-padded); decoder = the
target's SID tokens, teacher forced (`losses.t5_loss`); search with
`T5Scorer` (cross-attention K/V projected once per prompt).
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax.numpy as jnp
import numpy as np

from genrec_jax.decoding import beam_search as bs
from genrec_jax.generative import formats
from genrec_jax.generative import losses
from genrec_jax.generative.sid_data import PAD, history_tokens, sid_train_data
from genrec_jax.models import t5

EOS = 1
# First SID token (after pad and eos).
SID_BASE = 2


def user_tokens(users: np.ndarray, base: int, num: int) -> np.ndarray:
  """Hashed user token ids: base + user % num."""
  return (base + np.asarray(users) % num).astype(np.int32)


def encoder_inputs(users, history: np.ndarray, item_tokens: np.ndarray, *,
                   max_history: int, user_base: int,
                   num_user_tokens: int) -> dict[str, np.ndarray]:
  """Encoder ids/mask: [user] + left-padded history SID tokens.

  Args:
    users: int [B] user ids (hashed to a user token when num_user_tokens).
    history: int [B, H] left-padded item histories (-1 = padding).
    item_tokens: int [items, L] SID token ids (-1 rows: no SID).
    max_history: the most recent items kept.
    user_base: id of the first user token.
    num_user_tokens: hashed user tokens (0: none).
  """
  toks, mask = history_tokens(history, item_tokens, max_history)
  if num_user_tokens:
    u = user_tokens(users, user_base, num_user_tokens)[:, None]
    toks = np.concatenate([u, toks], 1)
    mask = np.concatenate([np.ones_like(u, bool), mask], 1)
  return {"input_ids": toks, "attention_mask": mask}


class TigerBatch:
  """Next-item batch -> T5 encoder/decoder arrays (labels -1: padding)."""

  def __init__(self, item_tokens, max_history, user_base, num_user_tokens):
    self.item_tokens = item_tokens
    self.max_history = max_history
    self.user_base = user_base
    self.num_user_tokens = num_user_tokens

  def __call__(self, element, draws: np.ndarray):
    del draws  # no random choices
    enc = encoder_inputs(
        element["user"], element["history"], self.item_tokens,
        max_history=self.max_history, user_base=self.user_base,
        num_user_tokens=self.num_user_tokens)
    target = self.item_tokens[element["target"]]  # [B, L]
    start = np.full((len(target), 1), PAD, np.int32)
    return {"encoder_ids": enc["input_ids"],
            "encoder_mask": enc["attention_mask"],
            "decoder_ids": np.concatenate([start, target[:, :-1]], 1),
            "labels": target.astype(np.int32)}


def _t5_config(m, vocab: int) -> t5.T5Config:
  return t5.T5Config(
      vocab_size=vocab, d_model=m.d_model, d_kv=m.d_kv, d_ff=m.d_ff,
      num_layers=m.num_layers, num_decoder_layers=m.num_decoder_layers,
      num_heads=m.num_heads, feed_forward_proj=m.feed_forward_proj,
      relative_attention_num_buckets=m.relative_attention_num_buckets,
      relative_attention_max_distance=m.relative_attention_max_distance,
      scan_layers=m.get("scan_layers", True),
      dropout_rate=float(m.get("dropout_rate", 0.0)),
      embed_init_std=float(m.get("embed_init_std", 1.0)),
      tie_word_embeddings=True, decoder_start_token_id=PAD, pad_token_id=PAD,
      eos_token_id=EOS)


@formats.register
class TigerFormat(formats.PromptFormat):
  """TIGER: [user] + history SID tokens -> the next item's SID tokens."""

  name = "tiger"
  model_kind = "t5"
  loss = staticmethod(losses.t5_loss)

  def __init__(self, ds, sids, workdir, *, model_config: t5.T5Config,
               layout: bs.SidTokens, settings: dict[str, Any]):
    super().__init__(ds, sids, workdir)
    self.model_config, self.layout, self.settings = (model_config, layout,
                                                     settings)

  @classmethod
  def for_training(cls, config, ds, sids, workdir):
    layout = bs.SidTokens.contiguous(sids.codebook_sizes, base=SID_BASE)
    num_users = int(config.data.num_user_tokens)
    settings = {"format": cls.name, "max_history": int(config.data.max_history),
                "user_base": layout.end, "num_user_tokens": num_users}
    fmt = cls(ds, sids, workdir, layout=layout, settings=settings,
              model_config=_t5_config(config.model, layout.end + num_users))
    fmt.training = config
    return fmt, fmt.build_model(nnx.Rngs(config.seed))

  @classmethod
  def from_spec(cls, spec, ds, sids, workdir):
    kw = dict(spec["model_config"])
    kw["dtype"] = jnp.dtype(kw.get("dtype", "float32"))
    try:
      cfg = t5.T5Config(**kw)
    except TypeError as e:
      raise ValueError(f"field 'model_config': {e}") from None
    return cls(ds, sids, workdir, model_config=cfg,
               layout=formats.layout_from_spec(spec),
               settings=dict(spec["prompt"]))

  def build_model(self, rngs):
    return t5.T5Model(self.model_config, rngs=rngs)

  def train_batches(self, *, batch_size, num_epochs, seed, shard_index=0,
                    shard_count=1):
    s = self.settings
    transform = TigerBatch(self.item_tokens, self.max_history,
                           int(s["user_base"]), int(s["num_user_tokens"]))
    return sid_train_data(
        self.ds, transform, self.item_tokens, max_history=self.max_history,
        buckets=tuple(self.training.data.history_buckets),
        batch_size=batch_size, seed=seed,
        num_epochs=num_epochs, shard_index=shard_index,
        shard_count=shard_count)

  def eval_prompts(self, batch):
    hist = batch.history.padded(self.max_history, -1, left=True)
    return encoder_inputs(
        batch.users, hist, self.item_tokens, max_history=self.max_history,
        user_base=int(self.settings["user_base"]),
        num_user_tokens=int(self.settings.get("num_user_tokens", 0)))

  def scorer(self, graphdef):
    return bs.T5Scorer(graphdef, start_token=PAD,
                       vocab_size=self.model_config.vocab_size)
