"""Non-neural baselines (most-popular, item-item cosine kNN) on WORKDIR/dataset.

python -m binaries.train_baselines --config=configs/baselines.py --workdir=runs/ml100k
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.baselines = ml_collections.ConfigDict()
  # Which baselines to evaluate (each writes <name>/metrics.json).
  config.baselines.models = ("most_popular", "item_knn")
  # Neighbours kept per item by item_knn (0 = all).
  config.baselines.knn_neighbors = 100
  # History items used to score (the most recent ones).
  config.baselines.max_history = 50
  return config
