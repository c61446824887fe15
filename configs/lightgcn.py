"""LightGCN on the train user-item graph of WORKDIR/dataset.

python -m binaries.train_lightgcn --config=configs/lightgcn.py:gowalla --workdir=runs/gowalla

Variants: default (paper settings: d 64, 3 layers, lr 1e-3, batch 2048),
gowalla (large batch + higher lr to converge within ~30 min on 2 CPU cores),
beauty (hint source for Amazon Beauty), demo (MovieLens-100K, ~1 min),
tiny (tests).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Random seed for init and BPR sampling.
  config.seed = 2020

  config.model = ml_collections.ConfigDict()
  # Embedding dimension.
  config.model.dim = 64
  # Propagation layers K (the output is the mean of layers 0..K).
  config.model.num_layers = 3
  # Std of the normal init of the layer-0 embeddings.
  config.model.init_std = 0.1
  # Â E as "csr" (BCSR matmul, symmetric VJP; fast) or "segment_sum".
  config.model.propagation = "csr"

  # The trainer's fields (configs/common.py) plus this stage's. LightGCN
  # counts eval_every, log_every and checkpoint_every in EPOCHS (an epoch =
  # ceil(num_train_pairs / batch_size) steps); the stage converts them.
  config.train = common.train()
  # (user, positive, negative) triples per step, sampled on device.
  config.train.batch_size = 2048
  # Adam (weight_decay 0, no clipping, no warm-up) learning rate.
  config.train.learning_rate = 1e-3
  config.train.weight_decay = 0.0
  config.train.grad_clip = 0.0
  config.train.warmup_steps = 0
  # "constant" or "cosine" (decay over num_epochs to end_lr_ratio * lr).
  config.train.schedule = "constant"
  config.train.end_lr_ratio = 0.1
  # L2 weight on the batch's layer-0 embeddings (1/2 sum of squares / batch).
  config.train.decay = 1e-4
  # Maximum epochs.
  config.train.num_epochs = 1000
  # Evaluate every this many epochs.
  config.train.eval_every = 5
  # Early stopping patience in evaluations (only with a validation split).
  config.train.patience = 10
  # Log a training line every this many epochs (one per evaluation).
  config.train.log_every = 5
  # Save the resumable checkpoint every this many epochs (and at the end).
  config.train.checkpoint_every = 5
  # Wall-clock budget in minutes for the training loop (0 = none).
  config.train.max_minutes = 0.0
  # Resume from WORKDIR/lightgcn/checkpoints when it exists.
  config.train.resume = True

  # Devices: one (every step propagates the whole graph; num_devices 0 =
  # replicate over all devices, no speed-up).
  config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1),
                                               num_devices=1))

  config.eval = ml_collections.ConfigDict()
  # Cut-off of the ranked list (metrics at K <= k).
  config.eval.k = 20
  # Users scored per call.
  config.eval.batch_size = 1024
  # Also log test metrics at each evaluation (monitoring; never selects).
  config.eval.monitor_test = True

  if variant == "default":
    pass
  elif variant == "gowalla":
    # One step's cost is dominated by full-graph propagation, so a large
    # batch is nearly free; a higher lr makes up for fewer steps.
    config.train.batch_size = 32768
    config.train.learning_rate = 1e-2
    config.train.schedule = "cosine"
    # 300 epochs: test recall@20 0.1787 / ndcg@20 0.1526 in 77 min on a
    # loaded 2-core machine (150 epochs cut at 25 min by the budget: 0.1718).
    config.train.num_epochs = 300
    config.train.eval_every = 50
    config.train.max_minutes = 0.0
  elif variant == "beauty":
    # Hints source on Amazon Beauty (leave-one-out train graph; early
    # stopping on valid recall@20).
    config.train.batch_size = 8192
    config.train.learning_rate = 5e-3
    config.train.num_epochs = 200
    config.train.eval_every = 5
    config.train.patience = 4
    config.train.max_minutes = 10.0
    config.eval.monitor_test = False
  elif variant == "demo":  # make demo on MovieLens-100K: about a minute
    config.train.batch_size = 4096
    config.train.learning_rate = 5e-3
    config.train.num_epochs = 30
    config.train.eval_every = 5
    config.train.max_minutes = 2.0
    config.eval.monitor_test = False
  elif variant == "tiny":  # used by tests: seconds on 2 CPU cores
    config.model.dim = 7
    config.model.num_layers = 2
    config.train.batch_size = 16
    config.train.learning_rate = 1e-2
    config.train.num_epochs = 2
    config.train.eval_every = 1
    config.train.log_every = 1
    config.eval.batch_size = 8
  else:
    raise ValueError(f"configs/lightgcn.py: unknown variant {variant!r}")
  return config
