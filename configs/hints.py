"""Collaborative hints: top-K item neighbours by LightGCN embedding cosine.

python -m binaries.build_hints --config=configs/hints.py --workdir=runs/beauty

Variants: default (K = 3, as miniGR-CF), tiny (tests).
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Neighbours kept per item (the item itself is never one).
  config.k = 3
  # Item embeddings to search, relative to the workdir.
  config.embeddings = "lightgcn/item_emb.npy"
  if variant == "tiny":  # used by tests
    config.k = 2
  elif variant != "default":
    raise ValueError(f"configs/hints.py: unknown variant {variant!r}")
  return config
