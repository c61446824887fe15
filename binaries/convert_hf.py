"""Converts a GGUF Llama (default: SmolLM2-135M-Instruct) to an HF folder.

python -m binaries.convert_hf --out=runs/smollm2_hf [--src=model.gguf]

The folder (config.json, model.safetensors, tokenizer files) loads with
`genrec_jax.weights.load_pretrained` and with transformers.
"""
from absl import app
from absl import flags
import jax.numpy as jnp

from binaries import common
from genrec_jax.weights import gguf
from genrec_jax.weights import hf

_SRC = flags.DEFINE_string("src", None, "GGUF file (default: SmolLM2).")
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Weight dtype written.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.setup_logging()
  try:
    gguf.gguf_to_hf(_SRC.value, _OUT.value, dtype=getattr(jnp, _DTYPE.value))
  except (hf.WeightsError, ValueError) as e:
    raise app.UsageError(str(e))


if __name__ == "__main__":
  app.run(main)
