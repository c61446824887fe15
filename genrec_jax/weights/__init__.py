"""Hugging Face / GGUF weights <-> our NNX models, and tokenizers."""

from genrec_jax.weights.hf import WeightsError
from genrec_jax.weights.hf import load_pretrained
from genrec_jax.weights.hf import save_pretrained

__all__ = ["WeightsError", "load_pretrained", "save_pretrained"]
