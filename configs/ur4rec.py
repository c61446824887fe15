"""UR4Rec: a preference-text retriever fused with SASRec (train_ur4rec).

python -m binaries.train_ur4rec --config=configs/ur4rec.py --workdir=runs/ml100k

Reads WORKDIR/dataset, WORKDIR/sasrec (train_sasrec), WORKDIR/<texts>
(generate_texts) and, multimodal, WORKDIR/<features.path> (build_features);
writes WORKDIR/<name> (genrec_jax/ur4rec/stage.py).
Variants (comma-combinable): default (text retriever, template texts),
smollm2 (SmolLM2-written texts), multimodal (+ genre features and
cross-modal attention over the history), uncertainty (multimodal losses
weighted by learned uncertainty instead of the fixed 1 / 0.1 / 0.2 / 0.05),
tiny (tests: seconds).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Random seed of init and batches (the sampled candidates have their own).
  config.seed = 0
  # Output folder WORKDIR/<name>.
  config.name = "ur4rec"
  # Folder of users.jsonl / items.jsonl (generate_texts' output name).
  config.texts = "texts_template"
  # SASRec model folder (stage 1: train_sasrec) and its training loss in the
  # joint stages ("ce" or "bce", as configs/sasrec.py).
  config.sasrec = "sasrec"
  config.sasrec_loss = "ce"
  # Most recent history items the retriever sees (cross-modal attention).
  config.history_len = 30
  # The frozen sentence encoder of the texts (configs/common.py).
  config.encoder = common.text_encoder()
  # Device mesh.
  config.mesh = ml_collections.ConfigDict(
      dict(shape=(-1, 1, 1), axes=("data", "fsdp", "tensor")))

  config.retriever = ml_collections.ConfigDict()
  # Projection 384 -> hidden -> out_dim (+ LayerNorm, L2), dropout after ReLU.
  config.retriever.hidden = 512
  config.retriever.out_dim = 256
  config.retriever.dropout = 0.1
  # Score = cosine / temperature.
  config.retriever.temperature = 0.1
  # Top MiniLM blocks trained with the retriever (0: MiniLM frozen, the
  # pooled vectors cached; n: the token states below the top n cached, the
  # n blocks run every step at train.encoder_lr).
  config.retriever.trainable_layers = 0

  config.features = ml_collections.ConfigDict()
  # Item features [num_items, D] (.npy, relative to WORKDIR); None = text
  # only. build_features writes features/{genre,lightgcn,title_minilm}.npy;
  # any CLIP .npy with row i = item i plugs in here.
  config.features.path = ml_collections.config_dict.placeholder(str)
  config.features.model = ml_collections.ConfigDict()
  # Feature projection width, cross-modal attention heads, dropout.
  config.features.model.hidden = 512
  config.features.model.num_heads = 4
  config.features.model.dropout = 0.1
  # Fused score = cosine / temperature.
  config.features.model.temperature = 0.1

  t = config.train = common.train()
  t.update(weight_decay=1e-5, warmup_steps=100, schedule="cosine",
           grad_clip=1.0, log_every=100, eval_every=500, patience=3,
           checkpoint_every=500)
  # Nominal peak (the log's schedule); the parts use their own below.
  t.learning_rate = 1e-4
  # Learning rate of the SASRec part and of the retriever part.
  t.sasrec_lr = 1e-4
  t.retriever_lr = 1e-3
  # ... and of the trainable MiniLM blocks (retriever.trainable_layers).
  t.encoder_lr = 2e-5
  # Training interactions per step and uniform negatives per interaction.
  t.batch_size = 128
  t.num_negatives = 31
  # Retriever loss: "bce" (UR4Rec: BCE over the candidates) or "infonce".
  t.retriever_loss = "bce"
  # Multimodal loss terms: "fixed" (1 / 0.1 / 0.2 / 0.05) or "uncertainty".
  t.loss_weighting = "fixed"
  # SASRec / retriever loss weights in the joint stage.
  t.joint_weights = (0.5, 0.5)
  # ... and added to the fused-score loss in the end-to-end stage. SASRec's
  # own full-catalogue CE is 0 here: it learns through the fused loss only
  # (with 0.5 a step costs 1.7x; ML-100K seed 0, 400 steps: full-ranking
  # NDCG@10 of the weighted fusion 0.0777 with it, 0.0771 without).
  t.end_to_end_weights = (0.0, 0.5)
  # Steps of each training stage (0 = skipped): retriever alone, joint
  # (alternating parts), end to end (+ the fused-score loss). The 2-core
  # budget goes to the end-to-end stage (joint 100 + end-to-end 150 left
  # the fusion at SASRec's level on ML-100K; end-to-end 400 gained 3-4 %).
  t.steps = ml_collections.ConfigDict(
      dict(retriever=1500, joint=0, end_to_end=600))

  config.eval = ml_collections.ConfigDict()
  # Sampled protocol: negatives per row and their seed (fixed across
  # models and seeds: the same candidate lists for everyone).
  config.eval.num_negatives = 99
  config.eval.candidate_seed = 12345

  for v in (arg or "default").split(","):
    _apply(config, v)
  return config


def _apply(config, v: str) -> None:
  if v == "default":
    pass
  elif v == "smollm2":
    config.texts = "texts_smollm2"
    config.name = config.name.replace("ur4rec", "ur4rec_smollm2", 1)
  elif v == "multimodal":
    config.features.path = "features/genre.npy"
    config.name = config.name + "_mm"
    # The text retriever's steps. On 2 cores a multimodal retriever step
    # takes ~0.1 s (0.21 s before the per-item projections ran on the item
    # table), ~17x a text one (the feature branch, attention over 30 history
    # items, four losses), an end-to-end step ~3x: ~5 minutes a seed.
  elif v == "uncertainty":
    config.train.loss_weighting = "uncertainty"
    config.name = config.name + "_uw"
  elif v == "tiny":  # tests: seconds on 2 cores
    config.retriever.update(hidden=12, out_dim=10)
    config.features.model.update(hidden=9, num_heads=2)
    config.history_len = 5
    config.train.update(batch_size=8, num_negatives=5, log_every=5,
                        eval_every=6, checkpoint_every=6, warmup_steps=2)
    config.train.steps = ml_collections.ConfigDict(
        dict(retriever=12, joint=6, end_to_end=6))
    config.eval.num_negatives = 9
  else:
    raise ValueError(f"configs/ur4rec.py: unknown variant {v!r}")
