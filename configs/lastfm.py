"""Last.fm 2K -> items, (query text -> items) splits, item2vec sentences.

python -m binaries.prepare_lastfm --config=configs/lastfm.py --workdir=runs/lastfm

Variants: default (../shared/data/lastfm-2k), tiny (smaller thresholds, for
the small files tests write). Paths override with --config.data.path=...
"""
import os
import pathlib

import ml_collections

# Shared data folder beside the repository (override with GENREC_SHARED_DATA).
SHARED = pathlib.Path(os.environ.get(
    "GENREC_SHARED_DATA",
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  config.data = d = ml_collections.ConfigDict()
  # Folder with artists.dat, tags.dat, user_artists.dat, user_taggedartists.dat.
  d.path = str(SHARED / "lastfm-2k")
  # Seed of the query split and of the held-out users.
  d.seed = 0
  # An artist becomes an item when at least this many users listen to it
  # (user_artists.dat); 5 keeps 2,828 of 17,632 artists.
  d.min_listeners = 5
  # Queries (tags, (user, tag) lists) with fewer items are dropped (DATA.md: 10).
  d.min_query_items = 10
  # Train / valid / test fractions of the distinct query texts.
  d.split_fractions = (0.8, 0.1, 0.1)
  # Artists of user_taggedartists.dat missing from artists.dat: "drop" (and
  # count them in stats.json) or "error".
  d.unknown_tagged_artists = "drop"
  # Fraction of the users (with >= 3 items) whose last item is held out of
  # their item2vec sentence for the next-item check.
  d.holdout_fraction = 0.5
  d.sentences = ml_collections.ConfigDict()
  # Item2vec sentences besides the users' lists: train-split tag lists...
  d.sentences.tags = True
  # ... and train-split (user, tag) lists.
  d.sentences.user_tags = False
  if variant == "tiny":
    d.min_listeners = 1
    d.min_query_items = 2
  elif variant != "default":
    raise ValueError(f"configs/lastfm.py: unknown variant {variant!r} "
                     "(default, tiny)")
  return config
