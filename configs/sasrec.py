"""SASRec next-item model, trained on WORKDIR/dataset (leave-one-out split).

python -m binaries.train_sasrec --config=configs/sasrec.py:beauty --workdir=runs/beauty

Variants: default (paper settings, BCE), beauty (CE loss, tuned for Amazon
Beauty full ranking), beauty_bce (the paper's BCE loss on Beauty), demo
(MovieLens-100K in a few minutes), tiny (tests).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Random seed for init, data order, dropout and negative sampling.
  config.seed = 0
  # Output folder WORKDIR/<name>.
  config.name = "sasrec"

  config.model = ml_collections.ConfigDict()
  # Hidden (= item embedding) dimension D.
  config.model.hidden_dim = 50
  # Self-attention blocks.
  config.model.num_blocks = 2
  # Attention heads (hidden_dim must divide).
  config.model.num_heads = 1
  # Dropout on embeddings, attention weights, attention output and FFN.
  config.model.dropout = 0.5
  # Longest history window (positions learned up to this length).
  config.model.max_len = 50
  # True = Pre-LN (x + f(LN(x))); False = Post-LN (LN(x + f(x))).
  config.model.norm_first = True

  # The trainer's fields (configs/common.py) plus this stage's. SASRec
  # counts eval_every, log_every and checkpoint_every in EPOCHS (an epoch =
  # every training user once); the stage converts them to steps.
  config.train = common.train()
  # "bce": one sampled negative per position (paper); "ce": full softmax.
  config.train.loss = "bce"
  # Users (sequences) per step.
  config.train.batch_size = 128
  # Adam learning rate (constant: no warm-up, no decay), betas and
  # decoupled weight decay (on matrices only; 0 = plain Adam).
  config.train.learning_rate = 1e-3
  config.train.schedule = "constant"
  config.train.warmup_steps = 0
  config.train.b1 = 0.9
  config.train.b2 = 0.98
  config.train.weight_decay = 0.0
  # Gradient clipping by global norm (0 = off).
  config.train.grad_clip = 0.0
  # Maximum epochs.
  config.train.num_epochs = 200
  # Evaluate on the full validation split every this many epochs.
  config.train.eval_every = 1
  # Stop after this many evaluations without a better valid NDCG@10.
  config.train.patience = 10
  # Log a training line every this many epochs.
  config.train.log_every = 1
  # Save the resumable checkpoint every this many epochs (and at the end).
  config.train.checkpoint_every = 1
  # Wall-clock budget in minutes for the training loop (0 = none).
  config.train.max_minutes = 0.0
  # Length buckets: batch widths for users with short sequences (exact:
  # outputs do not depend on padding); () = every batch at max_len.
  config.train.buckets = (4, 8, 16)
  # Without buckets: non-padding positions scored per step, as a fraction of
  # batch * max_len (skips padding in the output layer; 1.0 = every slot).
  config.train.position_budget = 0.25
  # Resume from WORKDIR/sasrec/checkpoints/latest when it exists.
  config.train.resume = True

  # Devices: SASRec is small, one device (num_devices 0 = data parallel
  # over all; batch_size must then divide).
  config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1),
                                               num_devices=1))

  config.eval = ml_collections.ConfigDict()
  # Users scored per evaluation call.
  config.eval.batch_size = 256
  # Also report metrics on the validation split of the best model.
  config.eval.report_valid = True

  if variant == "default":
    pass
  elif variant in ("beauty", "beauty_bce"):
    # CE variant (phonism/genrec: d 64, 2 blocks, 2 heads, length 50).
    config.model.hidden_dim = 64
    config.model.num_heads = 2
    config.model.dropout = 0.3
    config.train.loss = "ce" if variant == "beauty" else "bce"
    config.train.batch_size = 256
    config.train.learning_rate = 2e-3
    config.train.num_epochs = 200
    config.train.eval_every = 2
    config.train.patience = 5
    config.train.max_minutes = 27.0
  elif variant == "demo":  # make demo on MovieLens-100K: a few minutes
    config.model.hidden_dim = 64
    config.model.num_heads = 2
    config.model.dropout = 0.2
    config.train.loss = "ce"
    config.train.batch_size = 128
    config.train.num_epochs = 30
    config.train.eval_every = 2
    # A progress line every 6 epochs (evaluations print their own).
    config.train.log_every = 6
    config.train.patience = 3
    config.train.max_minutes = 3.0
  elif variant == "tiny":  # used by tests: seconds on 2 CPU cores
    config.model.hidden_dim = 12
    config.model.num_heads = 3
    config.model.num_blocks = 1
    config.model.max_len = 7
    config.model.dropout = 0.1
    config.train.loss = "ce"
    config.train.batch_size = 5
    config.train.num_epochs = 3
    config.train.position_budget = 1.0
    config.eval.batch_size = 8
  else:
    raise ValueError(f"configs/sasrec.py: unknown variant {variant!r}")
  return config
