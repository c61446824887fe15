"""Collaborative hints: item neighbours by LightGCN embedding cosine.

python -m binaries.build_hints --config=configs/hints.py --workdir=runs/beauty

Variants: default (10 neighbours stored), tiny (tests).

How many hints a prompt shows is the generative config's `hints.k` (the one
knob for K); this stage stores more, so that removing a training target from
the list still leaves K.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Neighbours stored per item (the item itself is never one); must exceed
  # the K hints a prompt shows (configs/generative.py hints.k).
  config.num_neighbours = 10
  # Item embeddings to search, relative to the workdir.
  config.embeddings = "lightgcn/item_emb.npy"
  if variant == "tiny":  # used by tests
    config.num_neighbours = 4
  elif variant != "default":
    raise ValueError(f"configs/hints.py: unknown variant {variant!r}")
  return config
