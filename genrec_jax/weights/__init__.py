"""Hugging Face / GGUF weights <-> our NNX models, and tokenizers.

  model = load_pretrained("/path/to/hf_folder")     # or a .gguf file
  save_pretrained(model, "/tmp/out")                # transformers-loadable

Modules import one way: `tokenizers` -> `gguf` -> `hf` -> `keymaps`; this
package's `load_pretrained` is where a `.gguf` path is sent to `gguf`.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax.numpy as jnp

from genrec_jax.weights import gguf
from genrec_jax.weights import hf
from genrec_jax.weights.hf import WeightsError
from genrec_jax.weights.hf import save_pretrained

__all__ = ["WeightsError", "load_pretrained", "save_pretrained"]


def load_pretrained(path: hf.PathLike, dtype: Any = jnp.float32,
                    **overrides):
  """Loads a local HF folder or a llama `.gguf` file into our NNX model.

  Args:
    path: folder with config.json + model.safetensors (or a sharded index),
      or a `.gguf` file (SmolLM2/Llama GGUF, dequantised).
    dtype: parameter and compute dtype (jnp.float32 or jnp.bfloat16); None
      takes the checkpoint's `torch_dtype` (float32 for GGUF).
    **overrides: config fields to override (HF folders only).

  Returns:
    `BertModel`, `Decoder` or `T5Model` with weights loaded.

  Raises:
    WeightsError: bad folder or file, unknown architecture, shape mismatch,
      missing shard, unused or missing key.
  """
  if pathlib.Path(path).suffix == ".gguf":
    if overrides:
      raise WeightsError(f"{path}: config overrides {sorted(overrides)} are "
                         "not supported for GGUF files")
    return gguf.load_gguf(path, dtype=dtype or jnp.float32)
  return hf.load_pretrained(path, dtype, **overrides)
