"""Non-neural baselines (most-popular, item-item cosine kNN and its sequential
variant tuned on the validation split) on WORKDIR/dataset.

python -m binaries.train_baselines --config=configs/baselines.py --workdir=runs/ml100k
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.baselines = ml_collections.ConfigDict()
  # Which baselines to evaluate (each writes <name>/metrics.json): most_popular,
  # item_knn (unweighted sum over the history), seq_item_knn (recency-weighted
  # sum over the last n items, n and the decay chosen on valid).
  config.baselines.models = ("most_popular", "item_knn", "seq_item_knn")
  # Neighbours kept per item by item_knn (0 = all).
  config.baselines.knn_neighbors = 100
  # History items used to score by most_popular and item_knn (the most recent).
  config.baselines.max_history = 50
  config.baselines.seq_knn = ml_collections.ConfigDict()
  # History lengths n tried on the validation split (the last n items score).
  config.baselines.seq_knn.lengths = (1, 2, 3, 5, 10, 20, 50)
  # Recency decays tried: the item of age a (0 = the last) weighs decay**a;
  # 1.0 weighs the n items equally.
  config.baselines.seq_knn.decays = (1.0, 0.8, 0.5, 0.3)
  # Neighbours kept per item in the cosine similarity (0 = all).
  config.baselines.seq_knn.neighbors = 0
  # (n, decay) used when the dataset has no validation split.
  config.baselines.seq_knn.fallback = (3, 0.5)
  return config
