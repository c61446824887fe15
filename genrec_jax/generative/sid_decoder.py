"""The "sid" format: a from-scratch decoder LM on bare SID-token prompts.

Two layouts, chosen by how the model is trained (`examples` in model.json):

  prefix  [bos] history SID tokens ([hint] SID tokens of the K hint items)
          [sep] -> the target's SID tokens; one example per history prefix.
  causal  [bos] per history item: its SID tokens ([hint] its K hints) [sep]
          -> the target's SID tokens. Training reads a window of
          max_history + 1 items once, the loss on every item but the first
          (SASRec / HSTU style); the hint block after an item never holds
          the next item (clean target per position) and is dropped per
          position. Evaluation prompts are the same layout with the last
          item's full hints, so a one-target window is exactly a prefix
          example (tested). `hint_positions` > 0 shows hint blocks after
          the last that many items only (of a window or a prompt; the
          config's default is 1, model folders without the field have
          them after every item, 0): a block of K hints makes an item's
          span ~(1 + K) x longer, so hints on every item cost most of a
          window's tokens.

Own vocabulary: 0 pad, 1 eos, 2 bos, 3 sep, 4 hint, then the SID blocks.
The hints are miniGR-CF's collaborative hints without the text (the
neighbours of the last history item, generative/hints.py): dropped per
example with probability `hints.dropout` in training (re-drawn every
epoch), the target never among them in training, all K at test.
Training batches are right-padded (loss on the target tokens), evaluation
prompts left-padded; search with `SharedPrefixDecoderScorer` (the prompt's
KV cache shared by the beams).
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax.numpy as jnp
import numpy as np

from genrec_jax.decoding import beam_search as bs
from genrec_jax.generative import formats
from genrec_jax.generative import losses
from genrec_jax.generative.hints import Hints
from genrec_jax.generative.sid_data import PAD, history_tokens
from genrec_jax.generative.sid_data import sid_train_data, window_train_data
from genrec_jax.models import decoder

EOS, BOS, SEP, HINT = 1, 2, 3, 4
# First SID token.
SID_BASE = HINT + 1


def hint_tokens(hints: Hints | None, last_item: int, item_tokens: np.ndarray,
                target: int | None = None) -> np.ndarray | None:
  """SID tokens of the hint items of `last_item` (None: no hint).

  Training passes `target`: it is removed before the list is cut to K.
  """
  if hints is None or last_item < 0:
    return None
  hs = hints.for_item(int(last_item), target)
  return item_tokens[hs].reshape(-1) if hs else None


def sid_prompt(history: np.ndarray, hint: np.ndarray | None) -> np.ndarray:
  """[BOS] history SID tokens ([HINT] hint SID tokens) [SEP]."""
  parts = [[BOS], history]
  if hint is not None:
    parts += [[HINT], hint]
  parts.append([SEP])
  return np.concatenate(parts).astype(np.int32)


def prompt_width(max_history: int, levels: int, hint_k: int,
                 with_hints: bool, causal: bool = False,
                 hint_positions: int = 0) -> int:
  hint = (1 + hint_k * levels) * with_hints
  if causal:
    hinted = hint_positions_shown(max_history, hint_positions).sum()
    return 1 + max_history * (levels + 1) + int(hinted) * hint
  return 2 + max_history * levels + hint


def hint_positions_shown(n: int, hint_positions: int) -> np.ndarray:
  """bool [n]: which of n items may carry a hint block (the last
  `hint_positions` of them; 0: every item)."""
  show = np.ones(n, bool)
  if hint_positions:
    show[:max(n - hint_positions, 0)] = False
  return show


def causal_prompt(items: np.ndarray, item_tokens: np.ndarray,
                  hints: Hints | None, show: np.ndarray,
                  last_target: int | None) -> tuple[np.ndarray, np.ndarray]:
  """[BOS] then per item: its SID tokens ([HINT] hint tokens) [SEP].

  Args:
    items: int [n] item ids (each with an SID), oldest first.
    item_tokens: int [items, L] SID tokens.
    hints: the hints (None: no hint blocks).
    show: bool [n] whether item i's hint block is shown.
    last_target: the item after the last one when known (training and
      rollouts: its hint block is cleaned of it), else None (full hints).

  Returns:
    (int32 tokens, int64 [n] position of each item's first SID token).
  """
  parts, starts, pos = [[BOS]], [], 1
  for i, item in enumerate(items):
    tok = item_tokens[item]
    parts.append(tok)
    starts.append(pos)
    pos += len(tok)
    nxt = int(items[i + 1]) if i + 1 < len(items) else last_target
    hint = hint_tokens(hints, item, item_tokens, nxt) if show[i] else None
    if hint is not None:
      parts += [[HINT], hint]
      pos += 1 + len(hint)
    parts.append([SEP])
    pos += 1
  return (np.concatenate(parts).astype(np.int32),
          np.asarray(starts, np.int64))


def eval_prompts(history, item_tokens, *, max_history: int,
                 hints: Hints | None, targets: np.ndarray | None = None,
                 causal: bool = False,
                 hint_positions: int = 0) -> dict[str, np.ndarray]:
  """Left-padded prompts of evaluation histories (full hints).

  `targets` (one item per row): each row's hint is cleaned of its target
  (training prompts, e.g. reinforcement-learning rollouts). `causal`: the
  causal layout (a hint block after every item, or after the last
  `hint_positions` items).
  """
  hist = history.padded(max_history, -1, left=True)  # [B, H]
  toks, mask = history_tokens(hist, item_tokens, max_history)
  levels = item_tokens.shape[1]
  width = prompt_width(max_history, levels, hints.k if hints else 0,
                       hints is not None, causal, hint_positions)
  b = len(hist)
  ids = np.full((b, width), PAD, np.int32)
  amask = np.zeros((b, width), bool)
  for i in range(b):
    target = None if targets is None else int(targets[i])
    if causal:
      items = hist[i][mask[i][::levels]]
      row, _ = causal_prompt(
          items, item_tokens, hints,
          hint_positions_shown(len(items), hint_positions), target)
    else:
      row = sid_prompt(toks[i][mask[i]],
                       hint_tokens(hints, hist[i, -1], item_tokens, target))
    ids[i, width - len(row):] = row
    amask[i, width - len(row):] = True
  return {"input_ids": ids, "attention_mask": amask}


class SidDecoderBatch:
  """Next-item batch -> right-padded [bos] history ([hint] hint) [sep] target.

  `draws` are uniform [0, 1) numbers, one per row (from grain's per-batch
  rng: re-drawn every epoch, reproducible on resume): a row's hint is
  dropped when its draw < hint_dropout.
  """

  def __init__(self, item_tokens, max_history, hints: Hints | None = None,
               hint_dropout: float = 0.0):
    self.item_tokens = item_tokens
    self.max_history = max_history
    self.hints, self.hint_dropout = hints, hint_dropout

  def __call__(self, element, draws: np.ndarray):
    history = element["history"]  # [B, H], H <= max_history
    toks, mask = history_tokens(history, self.item_tokens, self.max_history)
    targets = element["target"]
    target = self.item_tokens[targets]  # [B, L]
    b, levels = target.shape
    k = self.hints.k if self.hints is not None else 0
    width = prompt_width(min(history.shape[1], self.max_history), levels, k,
                         self.hints is not None) + levels
    ids = np.full((b, width), PAD, np.int32)
    amask = np.zeros((b, width), bool)
    lmask = np.zeros((b, width), np.float32)
    drop = np.asarray(draws) < self.hint_dropout
    for i in range(b):  # right padding
      hint = None if drop[i] else hint_tokens(
          self.hints, history[i, -1], self.item_tokens, target=targets[i])
      row = np.concatenate([sid_prompt(toks[i][mask[i]], hint), target[i]])
      ids[i, :len(row)] = row
      amask[i, :len(row)] = True
      lmask[i, len(row) - levels:len(row)] = 1.0
    return {"input_ids": ids, "attention_mask": amask, "loss_mask": lmask}


class CausalSidBatch:
  """Window batch -> right-padded causal sequences, loss on every target.

  element {"items": int [B, n + 1]} (-1 right-padded) -> the causal layout
  of the window's first n items followed by the last item's SID tokens;
  `loss_mask` covers the SID tokens of every item but the first. `draws`
  [B, n + 1] uniform [0, 1): item i's hint block is dropped when
  draws[b, i] < hint_dropout (per position, re-drawn every epoch).
  `hint_positions` > 0: only the last that many context items of a window
  carry hint blocks (as the evaluation prompts).
  """

  def __init__(self, item_tokens, hints: Hints | None = None,
               hint_dropout: float = 0.0, hint_positions: int = 0):
    self.item_tokens = item_tokens
    self.hints, self.hint_dropout = hints, hint_dropout
    self.hint_positions = hint_positions

  def __call__(self, element, draws: np.ndarray):
    items = element["items"]  # [B, n + 1]
    b, n1 = items.shape
    levels = self.item_tokens.shape[1]
    k = self.hints.k if self.hints is not None else 0
    width = prompt_width(n1 - 1, levels, k, self.hints is not None,
                         True, self.hint_positions) + levels
    ids = np.full((b, width), PAD, np.int32)
    amask = np.zeros((b, width), bool)
    lmask = np.zeros((b, width), np.float32)
    show = np.asarray(draws) >= self.hint_dropout  # [B, n + 1]
    for i in range(b):
      row_items = items[i][items[i] >= 0]
      n = len(row_items) - 1
      shown = show[i, :n] & hint_positions_shown(n, self.hint_positions)
      ctx, starts = causal_prompt(row_items[:-1], self.item_tokens,
                                  self.hints, shown, int(row_items[-1]))
      row = np.concatenate([ctx, self.item_tokens[row_items[-1]]])
      ids[i, :len(row)] = row
      amask[i, :len(row)] = True
      for s in list(starts[1:]) + [len(ctx)]:  # every item but the first
        lmask[i, s:s + levels] = 1.0
    return {"input_ids": ids, "attention_mask": amask, "loss_mask": lmask}


def scratch_config(m, vocab: int, *, bos: int, eos: int,
                   pad: int) -> decoder.DecoderConfig:
  """A from-scratch Llama-style decoder of the config's model sizes."""
  return decoder.DecoderConfig(
      vocab_size=vocab, hidden_size=m.hidden_size,
      intermediate_size=m.intermediate_size, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
      rope_theta=m.rope_theta, tie_word_embeddings=True,
      attention_bias=False, model_type="llama",
      max_position_embeddings=m.max_position_embeddings,
      scan_layers=m.get("scan_layers", True),
      dropout_rate=float(m.get("dropout_rate", 0.0)), bos_token_id=bos,
      eos_token_id=eos, pad_token_id=pad)


def decoder_config_from_spec(spec: dict[str, Any]) -> decoder.DecoderConfig:
  kw = dict(spec["model_config"])
  kw["dtype"] = jnp.dtype(kw.get("dtype", "float32"))
  try:
    return decoder.DecoderConfig(**kw)
  except TypeError as e:
    raise ValueError(f"field 'model_config': {e}") from None


@formats.register
class SidFormat(formats.PromptFormat):
  """Decoder on [bos] history SIDs ([hint] hint SIDs) [sep] -> target SID."""

  name = "sid"
  model_kind = "decoder"

  def __init__(self, ds, sids, workdir, *, model_config, layout,
               settings: dict[str, Any], answer_budget: int = 0):
    super().__init__(ds, sids, workdir)
    self.model_config, self.layout, self.settings = (model_config, layout,
                                                     settings)
    self.hints = formats.load_hints(settings, sids, self.workdir)
    self.loss = losses.make_decoder_loss(answer_budget)

  @classmethod
  def for_training(cls, config, ds, sids, workdir):
    if config.model.source != "scratch":
      raise ValueError("config field 'prompt.format' = 'sid' needs "
                       "model.source = 'scratch'")
    layout = bs.SidTokens.contiguous(sids.codebook_sizes, base=SID_BASE)
    max_history = int(config.data.max_history)
    settings = {"format": cls.name, "max_history": max_history,
                "hints": bool(config.hints.enabled),
                "hint_k": int(config.hints.k),
                "hint_positions": int(config.hints.positions),
                "examples": config.data.examples}
    cfg = scratch_config(config.model, layout.end, bos=BOS, eos=EOS, pad=PAD)
    budget = int(config.train.answer_budget)
    if config.data.examples == "causal" and budget:
      # Every target of a window carries loss: never drop one.
      budget = max(budget, max_history * len(layout.sizes))
    fmt = cls(ds, sids, workdir, model_config=cfg, layout=layout,
              settings=settings, answer_budget=budget)
    fmt.training = config
    return fmt, fmt.build_model(nnx.Rngs(config.seed))

  @classmethod
  def from_spec(cls, spec, ds, sids, workdir):
    return cls(ds, sids, workdir, model_config=decoder_config_from_spec(spec),
               layout=formats.layout_from_spec(spec),
               settings=dict(spec["prompt"]))

  def build_model(self, rngs):
    return decoder.Decoder(self.model_config, rngs=rngs)

  @property
  def causal(self) -> bool:
    return self.settings.get("examples", "prefix") == "causal"

  @property
  def hint_positions(self) -> int:
    return int(self.settings.get("hint_positions", 0))

  def train_batches(self, *, batch_size, num_epochs, seed, shard_index=0,
                    shard_count=1):
    c = self.training
    dropout = float(c.hints.dropout)
    if self.causal:
      transform = CausalSidBatch(self.item_tokens, self.hints, dropout,
                                 self.hint_positions)
      make = window_train_data
    else:
      transform = SidDecoderBatch(self.item_tokens, self.max_history,
                                  self.hints, dropout)
      make = sid_train_data
    return make(
        self.ds, transform, self.item_tokens, max_history=self.max_history,
        buckets=tuple(c.data.history_buckets), batch_size=batch_size,
        seed=seed, num_epochs=num_epochs, shard_index=shard_index,
        shard_count=shard_count)

  def eval_prompts(self, batch):
    return eval_prompts(batch.history, self.item_tokens,
                        max_history=self.max_history, hints=self.hints,
                        causal=self.causal,
                        hint_positions=self.hint_positions)

  def rollout_prompts(self, batch, title_rows=None):
    if title_rows is not None and np.any(title_rows):
      raise ValueError("the 'sid' format has no title prompts (config field "
                       "'rollout.title_fraction' must be 0)")
    return eval_prompts(batch.history, self.item_tokens,
                        max_history=self.max_history, hints=self.hints,
                        targets=batch.targets.values, causal=self.causal,
                        hint_positions=self.hint_positions)

  def scorer(self, graphdef):
    # Every prompt ends in SEP (checked before the search starts).
    return bs.SharedPrefixDecoderScorer(
        graphdef, vocab_size=self.model_config.vocab_size,
        required_suffix=(SEP,))
