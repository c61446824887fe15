"""Text query -> list of semantic IDs: the generate-and-rank generator.

python -m binaries.train_generator --config=configs/gar_generator.py --workdir=runs/lastfm

Reads WORKDIR/lastfm/ (prepare_lastfm) and WORKDIR/<sids_dir>/ (build_sids
with configs/sids.py:lastfm, collisions kept); writes WORKDIR/<name>/ (model
folder, metrics.json, candidates.json, train_log.json, checkpoints/, tb/).
Variants: default, tiny (tests: seconds on 2 cores).
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Output folder WORKDIR/<name>.
  config.name = "generator"
  # Seed of the parameters and of the batch order.
  config.seed = 0
  # jax.distributed.initialize() first (multi-host).
  config.distributed = False
  # The semantic IDs (several items may share one).
  config.sids_dir = "sids"
  # The frozen text encoder whose token states the generator reads.
  config.encoder = common.text_encoder()
  # Query tokens kept ([CLS] ... [SEP]); tags are short.
  config.encoder.max_length = 16

  config.data = ml_collections.ConfigDict()
  # Most SIDs in a target (the text's most relevant items first).
  config.data.max_sids = 20
  # SID order in a target: "relevance" (taggers), "item_id" (the original's
  # song-id order) or "sid" (lexicographic).
  config.data.target_order = "relevance"
  # Training queries: "tag" (all taggers' artists) and/or "user_tag" (one
  # user's artists for the tag). Both: at the same number of steps the
  # user-tag subsets of the same texts raised valid NDCG@20 from ~0.13 to
  # 0.14 (Last.fm 2K, one seed).
  config.data.kinds = ("tag", "user_tag")

  config.model = ml_collections.ConfigDict()
  # T5 width, per-head width, FFN width, heads.
  config.model.d_model = 128
  config.model.d_kv = 32
  config.model.d_ff = 512
  config.model.num_heads = 4
  # T5 encoder blocks over the mapped text states; decoder blocks.
  config.model.num_layers = 1
  config.model.num_decoder_layers = 2
  # "relu" (T5 v1.0) or "gated-gelu" (v1.1).
  config.model.feed_forward_proj = "gated-gelu"
  # Relative position buckets and the distance where they saturate.
  config.model.relative_attention_num_buckets = 32
  config.model.relative_attention_max_distance = 128

  config.decode = ml_collections.ConfigDict()
  # "sample" (constrained sampling, SIDs voted by how many samples hold
  # them; the original's current inference) or "beam" (beam search, SIDs
  # voted by beam probability). On Last.fm 2K, 8 or 16 beams give near-
  # identical lists (a pool of ~30 items, test NDCG@20 0.061) where 32
  # samples give ~320 items and 0.113.
  config.decode.method = "sample"
  # Beams (method beam) / samples (method sample) per query.
  config.decode.beam_size = 8
  config.decode.num_samples = 32
  # Sampling temperature (method sample).
  config.decode.temperature = 1.0
  # An SID's vote: the beam probability (beam) or count (sample) of the
  # lists holding it, each occurrence weighed by 1 / log2(position + 2)
  # when True (the targets list the surest SIDs first).
  config.decode.discount = True
  # Most SIDs in one generated list.
  config.decode.max_sids = 20
  # Candidates per query (the pool the ranker re-scores): the generated
  # SIDs' items, best vote first, filled up with popular items to this many.
  config.decode.top_n = 100

  config.train = common.train()
  # Valid NDCG@20 rises late, as the cosine schedule decays: no early stop,
  # the best evaluation is kept.
  config.train.update(learning_rate=1e-3, warmup_steps=50, weight_decay=0.01,
                      log_every=50, checkpoint_every=200, eval_every=120,
                      patience=0)
  # Queries per step.
  config.train.batch_size = 64
  # Total steps (0: num_epochs epochs of the training queries); 480 x 64 =
  # ~9 epochs of the 3,277 Last.fm 2K training queries.
  config.train.num_steps = 480
  config.train.num_epochs = 10
  # Device mesh (data, fsdp, tensor); one -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
  if variant == "tiny":
    config.data.max_sids = 5
    config.decode.update(max_sids=5, beam_size=3, num_samples=4, top_n=7)
    config.model.update(d_model=24, d_kv=6, d_ff=40, num_heads=2)
    config.train.update(batch_size=8, num_steps=0, num_epochs=2, eval_every=0,
                        log_every=5, checkpoint_every=10, warmup_steps=2,
                        patience=0)
    config.encoder.update(tokens_per_batch=64, log_every=0.0)
  elif variant != "default":
    raise ValueError(f"configs/gar_generator.py: unknown variant {variant!r} "
                     "(default, tiny)")
  return config
