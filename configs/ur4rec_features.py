"""Item feature matrices for UR4Rec's modalities (the features stage).

python -m binaries.build_features --config=configs/ur4rec_features.py \
    --workdir=runs/ml100k

Writes WORKDIR/features/{genre,lightgcn,title_minilm}.npy + meta.json (row i
= dataset item i; see genrec_jax/ur4rec/features.py, which also says how to
plug in CLIP features). Variants: default, tiny (short encoder buckets, for
tests).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Modalities to build, from "genre", "lightgcn", "title_minilm"; one whose
  # source is missing is skipped and recorded as skipped in meta.json.
  config.modalities = ("genre", "lightgcn", "title_minilm")

  config.genre = ml_collections.ConfigDict()
  # The dataset's item text field holding each item's genres.
  config.genre.field = "genres"
  # Separator between genre names in that field; None = any whitespace
  # (data/sources.py joins ML-100K genres with spaces).
  config.genre.separator = ml_collections.config_dict.placeholder(str)

  config.lightgcn = ml_collections.ConfigDict()
  # LightGCN item vectors (train_lightgcn), relative to the workdir.
  config.lightgcn.path = "lightgcn/item_emb.npy"

  config.title = ml_collections.ConfigDict()
  # embed_items' vectors, relative to the workdir; copied when present and
  # reuse_embeddings is True (their texts follow the dataset's template).
  config.title.embeddings = "embeddings/items.npy"
  # Copy embeddings/items.npy when present instead of encoding titles here.
  config.title.reuse_embeddings = True
  # The item text field encoded when the embeddings are not reused.
  config.title.field = "title"
  # Text encoded for an item whose title is empty (counted in meta.json).
  config.title.empty_text = ""
  # The sentence encoder for titles (all-MiniLM-L6-v2 by default).
  config.title.encoder = common.text_encoder()

  if variant == "tiny":  # used by tests: seconds on 2 CPU cores
    config.title.encoder.max_length = 32
    config.title.encoder.buckets = (8, 32)
    config.title.encoder.tokens_per_batch = 64
    config.title.encoder.log_every = 0.0
  elif variant != "default":
    raise ValueError(f"configs/ur4rec_features.py: unknown variant "
                     f"{variant!r}")
  return config
