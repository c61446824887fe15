"""Item vectors by word2vec on item sentences (item2vec stage).

python -m binaries.item2vec --config=configs/item2vec.py --workdir=runs/lastfm
python -m binaries.item2vec --config=configs/item2vec.py:dataset --workdir=runs/games

Reads WORKDIR/lastfm/corpus.npz (binaries.prepare_lastfm; build_sids then
runs with --config.require_dataset=False: there is no WORKDIR/dataset) or,
with source "dataset", the train sequences of WORKDIR/dataset
(binaries.prepare_data: semantic IDs for datasets without item text); writes
WORKDIR/embeddings/{items.npy, metrics.json, meta.json} (build_sids reads
them). Variants: default (skip-gram), cbow, method (the original's settings:
sample 1e-5), dataset (source "dataset"), tiny (for tests: seconds on 2
cores); combine them with commas ("dataset,tiny").
"""
import ml_collections


def word2vec() -> ml_collections.ConfigDict:
  """The word2vec fields (also the benchmark's)."""
  c = ml_collections.ConfigDict()
  # "skipgram" or "cbow".
  c.model = "skipgram"
  # Vector size (METHODS.md §7: 512).
  c.dim = 512
  # Largest window; each centre draws its own in [1, window] (METHODS: 50).
  c.window = 50
  # Noise items per positive (gensim default 5).
  c.negative = 5
  # Noise distribution exponent: p(i) ~ count(i)^ns_exponent.
  c.ns_exponent = 0.75
  # Subsampling threshold t (word2vec.c formula). The original's 1e-5 is for
  # millions of playlists; on ~107k tokens it keeps ~18% of them and the
  # held-out HR@10 halves, so 1e-4 here.
  c.sample = 1e-4
  # Items with fewer occurrences get no training (the catalogue is already
  # cut by listeners in prepare_lastfm).
  c.min_count = 1
  # Passes over the sentences (METHODS: 20).
  c.epochs = 20
  # Learning rate, decayed linearly to min_alpha over the run (gensim's).
  c.alpha = 0.025
  c.min_alpha = 1e-4
  # Examples (skip-gram: groups; CBOW: centres) per SGD step. All of a
  # step's updates use the same parameters: on 2,828 items 16 x 64 pairs a
  # step cost ~15% of held-out HR@10 against sequential SGD (batch_size=1,
  # group=1: ~10x slower); see semantic_ids/word2vec.py.
  c.batch_size = 16
  # Skip-gram: contexts of one centre item sharing one noise draw (1 = the
  # (centre, context, negatives) pairs of word2vec.c; > 1 pWord2Vec-style).
  c.group = 64
  # SGD steps per jitted call (a lax.scan).
  c.steps_per_call = 64
  # CBOW: mean (True) or sum of the context vectors.
  c.cbow_mean = True
  # Seed of the initial vectors and of every epoch's examples.
  c.seed = 0
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # The sentences: "lastfm" (WORKDIR/lastfm/corpus.npz) or "dataset" (the
  # train sequences of WORKDIR/dataset, held out: the validation targets).
  config.source = "lastfm"
  config.word2vec = word2vec()
  # Nearest-neighbour hit rates reported for these K.
  config.ks = (1, 5, 10, 20)
  # Seconds between progress lines.
  config.log_every = 10.0
  for variant in (arg or "default").split(","):
    _apply(config, variant)
  return config


def _apply(config, variant: str) -> None:
  if variant == "dataset":
    config.source = "dataset"
  elif variant == "cbow":
    config.word2vec.model = "cbow"
    config.word2vec.batch_size = 64
  elif variant == "method":
    config.word2vec.sample = 1e-5
  elif variant == "tiny":
    config.word2vec.dim = 16
    config.word2vec.window = 5
    config.word2vec.epochs = 3
    config.word2vec.sample = 0.0
    config.word2vec.batch_size = 8
    config.word2vec.group = 4
    config.word2vec.steps_per_call = 4
    config.log_every = 0.0
  elif variant != "default":
    raise ValueError(f"configs/item2vec.py: unknown variant {variant!r} "
                     "(default, cbow, method, dataset, tiny)")
