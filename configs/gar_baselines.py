"""Generate-and-rank baselines on held-out Last.fm queries (gar_baselines stage).

python -m binaries.gar_baselines --config=configs/gar_baselines.py --workdir=runs/lastfm

Reads WORKDIR/lastfm/ (binaries.prepare_lastfm) and, for item2vec_centroid,
WORKDIR/embeddings/ (binaries.item2vec); writes <model>/metrics.json.
Variants: default, tiny (short encoder buckets, for tests).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Which baselines (genrec_jax.gar.baselines.MODELS): popularity,
  # text_similarity (MiniLM query text vs item name), text_knn (the items of
  # the nearest training texts), item2vec_centroid.
  config.models = ("popularity", "text_similarity", "text_knn",
                   "item2vec_centroid")
  # text_knn: training texts whose items vote (5/10/20/50 gave valid
  # NDCG@20 0.165/0.161/0.151/0.134 on Last.fm 2K).
  config.knn_texts = 10
  # item2vec_centroid: a (user, tag) query's seed items are its user's this
  # many most played artists.
  config.seed_items = 10
  # The sentence encoder of text_similarity (MiniLM by default).
  config.encoder = common.text_encoder()
  config.encoder.max_length = 32
  config.encoder.buckets = (16, 32)
  if variant == "tiny":
    config.encoder.tokens_per_batch = 64
    config.encoder.log_every = 0.0
  elif variant != "default":
    raise ValueError(f"configs/gar_baselines.py: unknown variant {variant!r} "
                     "(default, tiny)")
  return config
