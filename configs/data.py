"""The prepare_data stage: a dataset source and its split.

python -m binaries.prepare_data --config=configs/data.py:beauty --workdir=runs/beauty

Variants: ml100k (default), beauty, gowalla, games, wikipedia, industrial,
office, amazon2018, ml100k_sampled. Paths override with --config.data.path=...
"""
import os
import pathlib

import ml_collections

# Shared data folder beside the repository (override with GENREC_SHARED_DATA).
SHARED = pathlib.Path(os.environ.get(
    "GENREC_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_config(variant: str) -> ml_collections.ConfigDict:
  """The `data` sub-config of a variant (also used by configs/pipeline.py)."""
  d = ml_collections.ConfigDict()
  # Dataset name, used in logs and stats.json.
  d.name = variant
  # Source format: ml100k, seq_txt, sasrec_txt, lightgcn_txt, minionerec, amazon2018.
  d.source = "ml100k"
  # Split: leave_one_out, sliding_window, given, sampled_candidates.
  d.split = "leave_one_out"
  # Main data path (folder or file, by source); "" = the source's default.
  d.path = ""
  # seq_txt: the sequence file and the item TSV (item_id, title, ...).
  d.sequence_file = ""
  d.items_file = ""
  # lightgcn_txt: file names inside `path`; valid_file "" = no validation rows.
  d.train_file = "train.txt"
  d.test_file = "test.txt"
  d.valid_file = ""
  # amazon2018: reviews and meta JSON lines (.json or .json.gz).
  d.reviews_file = ""
  d.meta_file = ""
  # amazon2018: user/item k-core and the inclusive YYYY-MM window.
  d.k_core = 5
  d.start_month = ""
  d.end_month = ""
  # ml100k: keep ratings >= this (0 = every rating is an interaction).
  d.min_rating = 0.0
  # leave_one_out: users shorter than this are train-only.
  d.min_len = 3
  # leave_one_out: mask the user's history items when ranking.
  d.mask_history = True
  # sliding_window: history window and the train:valid:test ratios.
  d.window = 10
  d.ratios = (8, 1, 1)
  # sampled_candidates: negatives per row and the sampling seed.
  d.num_negatives = 99
  d.seed = 0
  # Collapse consecutive repeats of an item (counted in stats.filtered).
  d.collapse_repeats = False
  # Item text for encoders: a string.Template over the item fields.
  d.text_template = "$title"

  if variant == "ml100k":
    d.text_template = "$title. Genres: $genres"
  elif variant == "ml100k_sampled":
    d.split = "sampled_candidates"
    d.text_template = "$title. Genres: $genres"
  elif variant == "beauty":
    d.source = "seq_txt"
    d.sequence_file = str(SHARED / "amazon-beauty" / "p5" / "sequential_data.txt")
    d.items_file = str(SHARED / "amazon-beauty" / "items.tsv")
  elif variant == "gowalla":
    d.source = "lightgcn_txt"
    d.split = "given"
    d.path = str(SHARED / "lightgcn" / "gowalla")
  elif variant in ("games", "wikipedia"):
    d.source = "sasrec_txt"
    d.path = str(SHARED / "sasrec" / ("Video.txt" if variant == "games" else "wikipedia.txt"))
  elif variant in ("industrial", "office"):
    d.source = "minionerec"
    d.split = "given"
    name = "Industrial_and_Scientific" if variant == "industrial" else "Office_Products"
    d.path = str(SHARED / "minionerec" / name)
    d.text_template = "$title $description"
  elif variant == "amazon2018":
    d.source = "amazon2018"
    d.split = "sliding_window"
    d.start_month = "2016-10"
    d.end_month = "2018-11"
    d.text_template = "$title $description"
  elif variant != "default":
    raise ValueError(f"configs/data.py: unknown variant {variant!r}")
  return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "ml100k"
  config = ml_collections.ConfigDict()
  # The dataset source and split.
  config.data = data_config(variant)
  return config
