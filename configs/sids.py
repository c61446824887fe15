"""Semantic IDs from item embeddings (build_sids stage).

python -m binaries.build_sids --config=configs/sids.py --workdir=runs/beauty
python -m binaries.build_sids --config=configs/sids.py:balanced --workdir=runs/beauty
python -m binaries.build_sids --config=configs/sids.py:rq_vae,reassign --workdir=DIR

Variants (comma-separated, combinable): rq_kmeans (default, 3 x 256),
balanced, hierarchical ([128, 128, 256]; with balanced: balanced groups),
rq_vae, faiss (faiss.Kmeans per level), faiss_rq (faiss.ResidualQuantizer),
dedup / reassign / keep (collision strategy), lastfm (hierarchical balanced
[16, 16, 32], shared last level, collisions kept: the Last.fm item2vec
vectors, see below) and tiny (small codebooks and few steps, for tests).

python -m binaries.build_sids --config=configs/sids.py:lastfm \
    --config.require_dataset=False --workdir=runs/lastfm
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set((arg or "rq_kmeans").split(","))
  config = ml_collections.ConfigDict()
  # Quantizer (genrec_jax.semantic_ids.quantizers registry): rq_kmeans,
  # balanced, hierarchical, rq_vae, faiss_kmeans, faiss_rq.
  config.method = "rq_kmeans"
  # Codes per level (L = len). Every level needs at least this many items.
  config.codebook_sizes = (256, 256, 256)
  # Seed of every random choice; the same seed gives the same codes.
  config.seed = 0
  # Fail when WORKDIR/dataset is missing (else rows are not checked).
  config.require_dataset = True

  config.kmeans = ml_collections.ConfigDict()
  # Most Lloyd iterations per level and restart.
  config.kmeans.iters = 20
  # Independent initialisations per level; the lowest error is kept.
  config.kmeans.restarts = 3
  # Initialisation: "kmeans++" (D^2 sampling) or "random" (k points).
  config.kmeans.init = "kmeans++"
  # Run k-means++ on this many random items (0 = all; it is sequential in K).
  config.kmeans.init_sample = 4096
  # Stop once at most tol * N items change cluster in one iteration.
  config.kmeans.tol = 0.0
  # Balanced mode: entropic regularisation relative to the score std.
  config.kmeans.epsilon = 0.05
  # Balanced mode: Sinkhorn iterations per assignment (warm-started from the
  # previous Lloyd iteration's potentials).
  config.kmeans.sinkhorn_iters = 10
  # Hierarchical method: balanced k-means inside every parent group (Sinkhorn,
  # then at most ceil(m / K) items per code in a group of m). The `balanced`
  # method is always balanced, `rq_kmeans` never.
  config.kmeans.balanced = False
  # Hierarchical method, last level: "per_group" (a k-means inside every
  # prefix; a prefix with at most K_L items gives each its own code) or
  # "global" (one k-means over all residuals, a last codebook shared by every
  # prefix, as the music original's level 3: items of one prefix may share
  # their last code).
  config.kmeans.last_level = "per_group"

  config.faiss = ml_collections.ConfigDict()
  # faiss_rq: beam size of the residual quantizer encoder (MiniOneRec: 1).
  config.faiss.max_beam_size = 1

  config.rq_vae = ml_collections.ConfigDict()
  # Encoder MLP widths (the decoder mirrors them).
  config.rq_vae.hidden = (512, 256, 128)
  # Latent (and code vector) dimension.
  config.rq_vae.latent_dim = 32
  # Commitment weight beta of ||r - sg[e]||^2.
  config.rq_vae.beta = 0.25
  # Gradient through quantization: "ste" or "rotation" (rotation trick).
  config.rq_vae.gradient = "ste"
  # Training steps and batch size (AdamW).
  config.rq_vae.steps = 3000
  config.rq_vae.batch_size = 1024
  # AdamW learning rate and weight decay.
  config.rq_vae.learning_rate = 1e-3
  config.rq_vae.weight_decay = 1e-4
  # Lloyd iterations of the k-means codebook init on the first batch.
  config.rq_vae.init_iters = 20
  # Re-seed codes unused for this many steps with batch residuals (0: never).
  config.rq_vae.reset_every = 100
  # ... only during this first fraction of the steps.
  config.rq_vae.reset_fraction = 0.8
  # Log the losses every this many steps.
  config.rq_vae.log_every = 500

  # Output folder WORKDIR/<output> (generative configs read it through
  # their `sids_dir`), e.g. sids_reassign for 3-token IDs beside the default.
  config.output = "sids"

  config.collisions = ml_collections.ConfigDict()
  # "dedup": TIGER extra code (L + 1 levels); "reassign": move colliding items
  # to free last-level codes (keeps L levels); "keep": leave shared SIDs as
  # they are (generate-and-rank maps an SID to its items; no trie decoding).
  config.collisions.strategy = "dedup"

  config.quality = ml_collections.ConfigDict()
  # Items sampled for silhouette / Calinski-Harabasz / Davies-Bouldin.
  config.quality.sample = 5000
  # Write sids/code_usage.png.
  config.quality.plot = True

  config.export = ml_collections.ConfigDict()
  # Name of the MiniOneRec `<name>.index.json` (default: the dataset name).
  config.export.index_name = ml_collections.config_dict.placeholder(str)

  if "balanced" in variants:
    config.method = "balanced"
    # Sinkhorn makes each restart ~3x a plain one; one is as good here.
    config.kmeans.restarts = 1
  if "hierarchical" in variants or "lastfm" in variants:
    config.method = "hierarchical"
    config.codebook_sizes = (128, 128, 256)
    # hierarchical,balanced: balanced k-means inside the groups.
    config.kmeans.balanced = "balanced" in variants or "lastfm" in variants
  if "rq_vae" in variants:
    config.method = "rq_vae"
  if "faiss" in variants:
    config.method = "faiss_kmeans"
    config.kmeans.restarts = 1
  if "faiss_rq" in variants:
    config.method = "faiss_rq"
  if "reassign" in variants:
    config.collisions.strategy = "reassign"
  if "dedup" in variants:
    config.collisions.strategy = "dedup"
  if "keep" in variants:
    config.collisions.strategy = "keep"
  if "lastfm" in variants:
    # Last.fm 2K item2vec vectors (2,828 items, 512-d), the music original's
    # hierarchical balanced RQ-KMeans scaled down: 128 x 128 prefixes would
    # outnumber the items. [16, 16, 32] keeps its [K, K, 2K] shape and, with
    # a shared last level as its level 3, its regime (original: 83.6 % unique
    # SIDs, <= 45 items per SID): 87 % unique SIDs, <= 3 items per SID.
    # Per-group last levels give 100 % ([16, 16, 16]) or pairs forced by the
    # capacities (coverage = product of the sizes / items).
    config.codebook_sizes = (16, 16, 32)
    config.kmeans.last_level = "global"
    config.collisions.strategy = "keep"
  if "tiny" in variants:
    config.codebook_sizes = (7, 7, 7) if config.method != "hierarchical" else (5, 3, 4)
    config.kmeans.iters = 5
    config.kmeans.restarts = 2
    config.kmeans.init_sample = 0
    config.kmeans.sinkhorn_iters = 5
    config.rq_vae.hidden = (16,)
    config.rq_vae.latent_dim = 4
    config.rq_vae.steps = 5
    config.rq_vae.batch_size = 16
    config.rq_vae.init_iters = 3
    config.rq_vae.log_every = 2
    config.rq_vae.reset_every = 2
    config.quality.sample = 50
    config.quality.plot = True
  if "faiss_rq" in variants and "tiny" in variants:
    config.codebook_sizes = (4, 4, 4)
  return config
