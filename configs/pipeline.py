"""Named pipelines for binaries/run_pipeline.py.

python -m binaries.run_pipeline --config=configs/pipeline.py:ml100k --workdir=runs/ml100k
python -m binaries.run_pipeline --config=configs/pipeline.py:beauty_cpu --workdir=runs/beauty
python -m binaries.run_pipeline --config=configs/pipeline.py:beauty_paper --workdir=runs/beauty_paper
python -m binaries.run_pipeline --config=configs/pipeline.py:games_cpu --workdir=runs/games
python -m binaries.run_pipeline --config=configs/pipeline.py:hints_ablation --workdir=runs/hints_ablation
python -m binaries.run_pipeline --config=configs/pipeline.py:examples_ablation --workdir=runs/ml100k
python -m binaries.run_pipeline --config=configs/pipeline.py:tiger_ablation --workdir=runs/ml100k
python -m binaries.run_pipeline --config=configs/pipeline.py:rl_ablation --workdir=runs/rl_ablation
python -m binaries.run_pipeline --config=configs/pipeline.py:lastfm --workdir=runs/lastfm
python -m binaries.run_pipeline --config=configs/pipeline.py:ur4rec_ml100k --workdir=runs/ur4rec

`stages` lists the stages in order; each has its own config under the same
name (the config its binary takes, e.g. `--config.train_sasrec.train.
num_epochs=5`). Names that are not stage kinds map to one in `stage_kinds`.
The stages in `seeded_stages` run once per seed in `seeds` (output folders
WORKDIR/<name>_s<seed>, one table row `mean +- std (seeds)`), e.g.
`--config.seeds="(0,1,2)" --config.seeded_stages="('minigr_cf',)"`.

Variants: ml100k (what `make demo` runs), hints_ablation (ml100k without
TIGER, MiniOneRec with hints off and on over 3 seeds), examples_ablation
(the SID decoder trained on causal windows vs per-prefix examples, 3
seeds), tiger_ablation (TIGER with 4-token IDs, 3-token IDs through
`reassign` (the demo's), 4-token with embeddings initialised at std 0.1;
3 seeds), rl_ablation (ml100k
MiniOneRec SFT, then the same extra time as more SFT or as GRPO, 3 seeds),
beauty_cpu (Amazon
Beauty with budgets for a 2-core machine), games_cpu (Amazon Video Games,
SASRec's "Games" sequences, with the beauty_cpu configs unchanged; the items
have no text, so their vectors are item2vec on the train sequences:
baselines, SASRec, TIGER and the SID decoder), beauty_paper (Amazon Beauty,
TIGER's paper configuration and the MiniOneRec text-prompt SFT, for an
accelerator), tiny (tests; set prepare_data.data.sequence_file and
items_file), lastfm (generate-and-rank on Last.fm 2K tags: item2vec,
hierarchical SIDs, baselines, the text -> SIDs generator and the
cross-encoder ranker over 3 seeds), lastfm_tiny (tests; set
prepare_lastfm.data.path), ur4rec_ml100k (UR4Rec on ML-100K: SASRec,
template and SmolLM2 texts, genre / LightGCN / title features, the text
retriever with each text backend and the multimodal one fused with SASRec,
3 seeds, both evaluation protocols).
"""
import ml_collections

from configs import baselines
from configs import data
from configs import embed
from configs import gar_baselines
from configs import gar_generator
from configs import gar_ranker
from configs import generative
from configs import hints
from configs import item2vec
from configs import lastfm
from configs import lightgcn
from configs import rl
from configs import sasrec
from configs import sids
from configs import ur4rec
from configs import ur4rec_features
from configs import ur4rec_texts


def _lastfm(variant: str) -> ml_collections.ConfigDict:
  """Generate-and-rank on Last.fm 2K: tags as queries (METHODS.md section 7)."""
  tiny = variant == "lastfm_tiny"
  config = ml_collections.ConfigDict()
  # Test queries whose top-5 items are printed after the table.
  config.num_examples = 3
  # Columns of the results table: set retrieval of the query's items.
  config.table_keys = ("recall@10", "ndcg@10", "recall@20", "ndcg@20",
                       "recall@50", "ndcg@50")
  config.stage_kinds = ml_collections.ConfigDict(
      {"generator": "train_generator", "generate_rank": "train_ranker"})
  config.prepare_lastfm = lastfm.get_config("tiny" if tiny else None)
  config.item2vec = item2vec.get_config("tiny" if tiny else None)
  config.build_sids = sids.get_config("lastfm,tiny" if tiny else "lastfm")
  config.build_sids.require_dataset = False
  config.gar_baselines = gar_baselines.get_config("tiny" if tiny else None)
  config.generator = gar_generator.get_config("tiny" if tiny else None)
  config.generate_rank = gar_ranker.get_config("tiny" if tiny else None)
  config.generate_rank.generator = config.generator.name
  config.stages = ("prepare_lastfm", "item2vec", "build_sids",
                   "gar_baselines", "generator", "generate_rank")
  # Generator and ranker over 3 seeds (mean +- std in the table).
  config.seeds = (0,) if tiny else (0, 1, 2)
  config.seeded_stages = ("generator", "generate_rank")
  return config


def _ur4rec(variant: str) -> ml_collections.ConfigDict:
  """UR4Rec on ML-100K: texts, features, SASRec + retriever fusions."""
  del variant
  config = ml_collections.ConfigDict()
  config.num_examples = 0
  # Columns: test split, full ranking (the sampled protocol is in the
  # breakdown table, printed with `breakdown`).
  config.table_keys = ("hr@10", "ndcg@10", "ndcg@20", "mrr")
  # A second table: each scorer and fusion under each protocol.
  config.breakdown = True
  config.stage_kinds = ml_collections.ConfigDict(
      {"texts_template": "generate_texts", "texts_smollm2": "generate_texts",
       "ur4rec": "train_ur4rec", "ur4rec_smollm2": "train_ur4rec",
       "ur4rec_mm": "train_ur4rec"})
  config.prepare_data = data.get_config("ml100k")
  config.train_lightgcn = lightgcn.get_config("demo")
  config.train_sasrec = sasrec.get_config("demo")
  config.texts_template = ur4rec_texts.get_config("template")
  config.texts_smollm2 = ur4rec_texts.get_config("smollm2")
  config.build_features = ur4rec_features.get_config()
  # The text retriever on each text backend, and the multimodal one: they
  # differ only in texts / features (and their folder names).
  config.ur4rec = ur4rec.get_config("default")
  config.ur4rec_smollm2 = ur4rec.get_config("smollm2")
  config.ur4rec_mm = ur4rec.get_config("multimodal")
  config.stages = ("prepare_data", "train_lightgcn", "train_sasrec",
                   "texts_template", "texts_smollm2", "build_features",
                   "ur4rec", "ur4rec_smollm2", "ur4rec_mm")
  config.seeds = (0, 1, 2)
  # SASRec repeats too: each seed's fusions read that seed's SASRec folder
  # (sasrec_s<seed>), so "fusion beats SASRec" holds over SASRec's own
  # seed spread, not against one SASRec run.
  config.seeded_stages = ("train_sasrec", "ur4rec", "ur4rec_smollm2",
                          "ur4rec_mm")
  return config


def _after(stages: tuple[str, ...], stage: str, new: str) -> tuple[str, ...]:
  """stages with `new` inserted right after `stage`."""
  i = stages.index(stage) + 1
  return stages[:i] + (new,) + stages[i:]


def _reassigned_sids(config: ml_collections.ConfigDict, output: str) -> None:
  """The build_sids_reassign stage: the same RQ-k-means codes with
  colliding items moved to free last-level codes (3-token IDs, no dedup
  token) in WORKDIR/<output>/."""
  config.build_sids_reassign = sids.get_config("reassign")
  config.build_sids_reassign.output = output
  config.stage_kinds.build_sids_reassign = "build_sids"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "ml100k"
  if variant in ("lastfm", "lastfm_tiny"):
    return _lastfm(variant)
  if variant == "ur4rec_ml100k":
    return _ur4rec(variant)
  config = ml_collections.ConfigDict()
  # Users whose history and top-5 titles are printed after the table.
  config.num_examples = 3
  # Stage name -> stage kind, for names that are not kinds themselves.
  config.stage_kinds = ml_collections.ConfigDict()
  # Seeds over which the `seeded_stages` repeat: each run sets its stage
  # config's `seed` and writes WORKDIR/<name>_s<seed>/.
  config.seeds = ()
  # Stages run once per seed in `seeds` (kinds with an output name:
  # train_sasrec, train_generative, train_rl, train_ur4rec, the last.fm
  # generator and ranker; the others write fixed folders). The table shows
  # their mean +- std.
  config.seeded_stages = ()

  # The dataset, and the variant of the stages tuned per dataset.
  if variant in ("ml100k", "tiny", "hints_ablation", "rl_ablation",
                 "examples_ablation", "tiger_ablation"):
    dataset, tuned = "ml100k", "demo"
  elif variant in ("beauty_cpu", "beauty_paper"):
    dataset, tuned = "beauty", "beauty"
  elif variant == "games_cpu":
    dataset, tuned = "games", "beauty"
  else:
    raise ValueError(f"configs/pipeline.py: unknown variant {variant!r}")
  config.prepare_data = data.get_config(dataset)
  config.train_baselines = baselines.get_config()
  config.train_lightgcn = lightgcn.get_config(tuned)
  config.build_hints = hints.get_config()
  config.train_sasrec = sasrec.get_config(tuned)
  config.embed_items = embed.get_config()
  config.build_sids = sids.get_config()
  # Stages in the order they run.
  config.stages = ("prepare_data", "train_baselines", "train_lightgcn",
                   "build_hints", "train_sasrec", "embed_items", "build_sids",
                   "tiger", "minionerec", "minionerec_rl", "minigr_cf",
                   "minigr_cf_rl")
  # The generative models: TIGER, the decoder LM without (MiniOneRec) and
  # with (miniGR-CF) collaborative hints; only hints.enabled differs.
  suffix = {"ml100k": "_demo", "hints_ablation": "_demo", "rl_ablation": "_demo",
            "examples_ablation": "_demo", "tiger_ablation": "_demo",
            "beauty_cpu": "_beauty_cpu", "games_cpu": "_beauty_cpu",
            "tiny": ",tiny", "beauty_paper": ""}
  for name, model in (("tiger", "tiger"), ("minionerec", "decoder"),
                      ("minigr_cf", "decoder_hints")):
    if variant == "tiny":
      model = {"tiger": "tiger", "decoder": "decoder_sid",
               "decoder_hints": "decoder_sid_hints"}[model]
    elif variant == "beauty_paper" and model == "tiger":
      model = "tiger_paper"
    config[name] = generative.get_config(model + suffix[variant])
    config[name].name = name
    config.stage_kinds[name] = "train_generative"
  # GRPO after each decoder's SFT (configs/rl.py).
  rl_variant = {"ml100k": "demo", "hints_ablation": "demo",
                "examples_ablation": "demo", "tiger_ablation": "demo",
                "rl_ablation": "demo", "beauty_cpu": "beauty_cpu",
                "games_cpu": "beauty_cpu",
                "tiny": "tiny", "beauty_paper": "default"}[variant]
  for sft in ("minionerec", "minigr_cf"):
    config[f"{sft}_rl"] = rl.get_config(rl_variant)
    config[f"{sft}_rl"].update(init=sft, name=f"{sft}_rl")
    config.stage_kinds[f"{sft}_rl"] = "train_rl"

  if config.tiger.sids_dir != config.build_sids.output:
    # TIGER on 3-token IDs (configs/generative.py tiger_demo and
    # tiger_beauty_cpu read sids_reassign/), built right after sids/; the
    # decoders keep sids/.
    config.stages = _after(config.stages, "build_sids", "build_sids_reassign")
    _reassigned_sids(config, config.tiger.sids_dir)

  if variant == "hints_ablation":  # hints off vs on, over 3 seeds
    config.stages = tuple(s for s in config.stages
                          if s not in ("build_sids_reassign", "tiger",
                                       "minionerec_rl", "minigr_cf_rl"))
    config.seeds = (0, 1, 2)
    config.seeded_stages = ("minionerec", "minigr_cf")

  if variant == "examples_ablation":
    # The SID decoder (hints off) on causal windows vs per-prefix examples,
    # each at its demo budget, over 3 seeds.
    config.stages = ("prepare_data", "train_baselines", "embed_items",
                     "build_sids", "minionerec", "minionerec_prefix")
    config.minionerec_prefix = generative.get_config("decoder_demo,prefix")
    config.minionerec_prefix.name = "minionerec_prefix"
    config.stage_kinds["minionerec_prefix"] = "train_generative"
    config.seeds = (0, 1, 2)
    config.seeded_stages = ("minionerec", "minionerec_prefix")

  if variant == "tiger_ablation":
    # TIGER as the demo trains it, with 3-token IDs (collisions re-assigned
    # to free last-level codes instead of a 4th dedup code), and with
    # embeddings initialised at std 0.1 instead of T5's 1.0; 3 seeds.
    config.stages = ("prepare_data", "train_baselines", "embed_items",
                     "build_sids", "build_sids_reassign", "tiger",
                     "tiger_reassign", "tiger_embed")
    # `tiger_reassign` as the demo trains it now (on the build_sids_reassign
    # output above); `tiger` and `tiger_embed` on the 4-token IDs of sids/
    # (the demo's until 2026-12-04).
    config.tiger_reassign = config.tiger.copy_and_resolve_references()
    config.tiger_reassign.name = "tiger_reassign"
    config.tiger.sids_dir = config.build_sids.output
    config.tiger_embed = config.tiger.copy_and_resolve_references()
    config.tiger_embed.name = "tiger_embed"
    config.tiger_embed.model.embed_init_std = 0.1
    config.stage_kinds.update({"tiger_reassign": "train_generative",
                               "tiger_embed": "train_generative"})
    config.seeds = (0, 1, 2)
    config.seeded_stages = ("tiger", "tiger_reassign", "tiger_embed")

  if variant == "rl_ablation":
    # MiniOneRec SFT, then the same extra training time given to more SFT
    # (the control: the SFT recipe again from the SFT parameters) or to
    # GRPO; 3 seeds each.
    config.stages = ("prepare_data", "train_baselines", "train_lightgcn",
                     "train_sasrec", "embed_items", "build_sids",
                     "minionerec", "minionerec_rl", "minionerec_more_sft")
    more = config.minionerec.copy_and_resolve_references()
    more.update(name="minionerec_more_sft", init="minionerec")
    rl_cfg = config.minionerec_rl
    more.train.update(num_steps=rl.CONTROL_SFT_STEPS,
                      learning_rate=rl.CONTROL_SFT_LR,
                      max_minutes=rl_cfg.train.max_minutes)
    config.minionerec_more_sft = more
    config.stage_kinds["minionerec_more_sft"] = "train_generative"
    config.seeds = (0, 1, 2)
    config.seeded_stages = ("minionerec", "minionerec_rl",
                            "minionerec_more_sft")

  if variant == "games_cpu":
    # The Beauty configs on a second Amazon category of the same shape
    # (leave-one-out sequences, ~9 items a user) without retuning. The items
    # have no text: their vectors (and so their semantic IDs) come from
    # item2vec on the train sequences instead of MiniLM on titles.
    config.stages = ("prepare_data", "train_baselines", "train_sasrec",
                     "item2vec", "build_sids", "build_sids_reassign", "tiger",
                     "minionerec")
    config.item2vec = item2vec.get_config("dataset")

  if variant == "tiny":  # tests: a seq_txt file they write, seconds
    config.prepare_data = data.get_config("ml100k")
    config.prepare_data.data.name = "tiny"
    config.prepare_data.data.source = "seq_txt"
    config.prepare_data.data.text_template = "$title"
    config.train_lightgcn = lightgcn.get_config("tiny")
    config.build_hints = hints.get_config("tiny")
    config.train_sasrec = sasrec.get_config("tiny")
    config.train_baselines.baselines.models = ("most_popular",)
    config.embed_items = embed.get_config("tiny")
    config.build_sids = sids.get_config("tiny")
  return config
