"""Regenerates the generated parts of README.md (the front page).

  .venv/bin/python tools/front_page.py \
      --results runs/ml100k_final/pipeline/results.json \
                runs/ml100k_last/pipeline/results.json \
      --command 'runs/ml100k_final/pipeline/results.json=make demo WORKDIR=runs/ml100k_final' \
      --bench runs/bench/rl/results.json runs/bench/serving/results.json \
      --readme README.md

The README holds pairs of marker comments,
`<!-- front-page:<section>:start -->` ... `<!-- front-page:<section>:end -->`,
for the sections `systems` (the systems implemented, with their papers and
original repositories; the status is read from the code: a system is
implemented when the modules that make it exist), `results` (our measured
tables, one per distinct `pipeline/results.json`, with the file, command and
date, and the published figures for the same dataset beside them, saying when
the protocols differ; next-item results show HR/NDCG@5,10, set retrieval
results (no `test/hr@K`, e.g. the lastfm pipeline's) Recall/NDCG@10,20,50;
the dataset is read from `<workdir>/dataset/` or `<workdir>/lastfm/stats.json`,
and a workdir's `sids/report.json` stands beside published SID diagnostics
where there are some), `benchmarks` (the ratios against the reference in the
same run, with command and machine), `pictures` (the stage graph as a mermaid
block, the training curves and the SID code usage of the first results
file's workdir, written under --docs_dir) and `cite`. Everything between a
pair is replaced; everything outside is left byte for byte. A section whose
markers are absent is not generated. The README is written to a temporary
file and renamed; running twice on the same inputs gives the same README.

Published figures are copied from `../shared/reference/RESULTS.md` (each
with its source) into PUBLISHED and PUBLISHED_SIDS below: never type a
number there that is not in that file. A pipeline results file does not
record the command that made it: pass it with `--command FILE=COMMAND` (a
`command` field in the file is used when present); the date is the file's
`date` field, else its modification time (UTC).

Input formats: genrec_jax/pipeline.py (`results`: model -> metrics; optional
`seeds`: model -> per_seed / mean / std / num_seeds) and
genrec_jax/benchmarks/common.py (`benchmark`, `command`, `machine`,
`results`). A missing or malformed file, a README without markers or with
broken ones: one line on stderr naming the file, exit status 1.

The archive (`--archive docs/results`): run directories are not kept in
git, so the inputs are copied into the repository, each results file with
its command and date and what the page reads from its workdir (see
`archive_inputs`), listed in order in `docs/results/front_page.json`.
`make front-page` regenerates the page from the archive alone; adding a new
run replaces its workdir's entry (by folder name) and keeps the rest:

  .venv/bin/python tools/front_page.py --archive docs/results \
      --results runs/demo_final/pipeline/results.json \
      --command 'runs/demo_final/pipeline/results.json=make demo WORKDIR=runs/demo_final'

Standard library only, plus matplotlib for the training-curve plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
from typing import Any, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("systems", "results", "benchmarks", "pictures", "cite")
MARKER = re.compile(r"<!-- front-page:([A-Za-z_]+):(start|end) -->")
# Images above this size are not copied or kept (the README stays light).
MAX_IMAGE_BYTES = 200_000
# Columns of the measured tables: (metric key, header). Next-item results
# (one target per test row, so HR@K, the hit rate, equals Recall@K):
COLUMNS = (("hr@5", "HR@5"), ("ndcg@5", "NDCG@5"), ("hr@10", "HR@10"),
           ("ndcg@10", "NDCG@10"), ("mrr", "MRR"))
# Set retrieval results (a query's item set: Recall@K is the fraction of the
# set in the top K; HR@K, any hit, says little and is not reported). A table
# gets these when no row has a `test/hr@K` and some row has a
# `test/recall@K` (see `columns`).
SET_COLUMNS = (("recall@10", "Recall@10"), ("ndcg@10", "NDCG@10"),
               ("recall@20", "Recall@20"), ("ndcg@20", "NDCG@20"),
               ("recall@50", "Recall@50"), ("ndcg@50", "NDCG@50"),
               ("mrr", "MRR"))
# Columns shown only when some row has the key: (key, header). invalid: the
# share of generated IDs that name no item; pool recall: the mean share of a
# query's items in the generator's candidate pool (the ranker's ceiling).
EXTRA_COLUMNS = (("invalid_rate", "invalid"),
                 ("test/pool_recall", "pool recall"))
METRIC_NAMES = {"hr@3": "HR@3", "ndcg@3": "NDCG@3", "hr@5": "HR@5",
                "ndcg@5": "NDCG@5", "hr@10": "HR@10", "ndcg@10": "NDCG@10",
                "hr@20": "HR@20", "ndcg@20": "NDCG@20", "mrr": "MRR",
                "recall@20": "Recall@20", "ndcg@50": "NDCG@50",
                "recall@10": "Recall@10", "recall@50": "Recall@50"}


class FrontPageError(Exception):
  """A bad input; the message names the file."""


# --------------------------------------------------------------------------
# What is compared with what: systems, protocols, published figures.


@dataclasses.dataclass(frozen=True)
class System:
  """A system of the field, its sources, and the code that implements it."""

  name: str
  paper: str
  code: str
  what: str
  # (component, glob relative to the repository): implemented when every
  # glob matches a file, planned when none does.
  evidence: tuple[tuple[str, str], ...]


SYSTEMS = (
    System(
        "TIGER",
        'Rajput et al., "Recommender Systems with Generative Retrieval", '
        "NeurIPS 2023, arXiv 2305.05065",
        "none listed in our references (the paper used T5X); "
        "reproductions: "
        "[phonism/genrec](https://github.com/phonism/genrec), "
        "[EdoardoBotta/RQ-VAE-Recommender]"
        "(https://github.com/EdoardoBotta/RQ-VAE-Recommender)",
        "semantic IDs (RQ-KMeans / RQ-VAE + dedup code), T5 "
        "encoder-decoder over SID tokens, trie-constrained beam search",
        (("SIDs", "genrec_jax/semantic_ids/build.py"),
         ("RQ-VAE", "genrec_jax/semantic_ids/rq_vae.py"),
         ("T5 format", "genrec_jax/generative/tiger.py"),
         ("beam search", "genrec_jax/decoding/beam_search.py"))),
    System(
        "MiniOneRec",
        'Kong et al., "MiniOneRec: An Open-Source Framework for Scaling '
        'Generative Recommendation", 2025, arXiv 2510.24431',
        "[AkaliKong/MiniOneRec](https://github.com/AkaliKong/MiniOneRec)",
        "Qwen2-style decoder with SID tokens, five SFT tasks on text "
        "prompts, constrained beam search, GRPO",
        (("decoder", "genrec_jax/models/decoder.py"),
         ("text prompts", "genrec_jax/generative/text_decoder.py"),
         ("SFT tasks", "genrec_jax/generative/prompts.py"),
         ("GRPO", "genrec_jax/rl/grpo.py"))),
    System(
        "miniGR-CF",
        "none (a repository README)",
        "[Isheng-Z/miniGR-CF](https://github.com/Isheng-Z/miniGR-CF)",
        "MiniOneRec SFT plus LightGCN neighbour hints in the prompt "
        "(hint dropout, clean target)",
        (("hints stage", "genrec_jax/graph/hints.py"),
         ("hints in prompts", "genrec_jax/generative/hints.py"))),
    System(
        "SASRec",
        'Kang & McAuley, "Self-Attentive Sequential Recommendation", '
        "ICDM 2018",
        "[kang205/SASRec](https://github.com/kang205/SASRec) (TF), "
        "[pmixer/SASRec.pytorch](https://github.com/pmixer/SASRec.pytorch)",
        "causal self-attention over the item sequence; BCE or full-softmax "
        "CE loss",
        (("model", "genrec_jax/models/sasrec.py"),
         ("stage", "genrec_jax/training/sasrec_train.py"))),
    System(
        "LightGCN",
        'He et al., "LightGCN: Simplifying and Powering Graph Convolution '
        'Network for Recommendation", SIGIR 2020',
        "[kuandeng/LightGCN](https://github.com/kuandeng/LightGCN) (TF), "
        "[gusye1234/LightGCN-PyTorch]"
        "(https://github.com/gusye1234/LightGCN-PyTorch)",
        "linear propagation on the user-item graph, BPR",
        (("model", "genrec_jax/graph/lightgcn.py"),
         ("stage", "genrec_jax/graph/lightgcn_train.py"))),
    System(
        "UR4Rec",
        '"Enhancing Reranking for Recommendation with LLMs through User '
        'Preference Retrieval", COLING 2025',
        "[ww93/MLLM](https://github.com/ww93/MLLM) (`UR4Rec/`)",
        "LLM-written user preference texts, a retriever fused with SASRec "
        "over candidates",
        (("preference retriever", "genrec_jax/**/ur4rec*"),)),
    System(
        "generate-and-rank (music)",
        "none (a repository note)",
        "[zeehu/generative_ranking_recommender]"
        "(https://github.com/zeehu/generative_ranking_recommender)",
        "item2vec song vectors, balanced RQ-KMeans SIDs, a T5 text -> SID "
        "generator, a cross-encoder ranker",
        (("Last.fm data", "genrec_jax/gar/lastfm.py"),
         ("item2vec", "genrec_jax/gar/item2vec.py"),
         ("generator", "genrec_jax/gar/*generat*.py"),
         ("ranker", "genrec_jax/gar/*rank*.py"))),
)

# Our result rows (model folder names, seed suffix removed) -> system shown.
# Longest prefix first.
ROW_SYSTEMS = (
    ("minionerec_more_sft", "MiniOneRec, more SFT (control)"),
    ("minionerec_rl", "MiniOneRec, SFT + GRPO"),
    ("minionerec", "MiniOneRec, SFT"),
    ("minigr_cf_rl", "miniGR-CF, SFT + GRPO"),
    ("minigr_cf", "miniGR-CF, SFT"),
    ("tiger", "TIGER"),
    # The ur4rec_ml100k pipeline (the fusion chosen on valid).
    ("ur4rec_smollm2", "UR4Rec: SmolLM2-135M preference texts, fused with "
                       "SASRec"),
    ("ur4rec_mm", "UR4Rec multimodal: template texts + genre features, "
                  "fused with SASRec"),
    ("ur4rec", "UR4Rec: template preference texts, fused with SASRec"),
    ("sasrec", "SASRec"),
    ("lightgcn", "LightGCN"),
    ("most_popular", "baseline"),
    ("seq_item_knn", "baseline"),
    ("item_knn", "baseline"),
    # The lastfm pipeline (set retrieval).
    ("generate_rank", "generate-and-rank: generator + cross-encoder ranker"),
    ("generator", "generate-and-rank: generator (MiniLM + T5 decoder, "
                  "repeating-trie sampling)"),
    ("popularity", "baseline"),
    ("text_similarity", "baseline"),
    ("text_knn", "baseline"),
    ("item2vec_centroid", "baseline"),
)

# Protocol ids -> what they mean.
PROTOCOLS = {
    "loo_full": "leave-one-out (last item test, second-last valid), full "
                "ranking over all items",
    "loo_sampled100": "leave-one-out, the target ranked among 100 sampled "
                      "negatives",
    "given_full": "the dataset's own train / test files, full ranking",
    "window_full": "sliding window, temporal 8:1:1, full ranking",
    "ur4rec": "ratings >= 4, each user's last 5 interactions held out, up to "
              "5 positives + 80 negatives as candidates, random 80/10/10 user "
              "split",
    "set_full": "set retrieval: Recall/NDCG@K of the query's item set over "
                "all items, means over queries",
}

DATASET_NAMES = {
    "ml100k": "MovieLens-100K",
    "ml100k_sampled": "MovieLens-100K",
    "beauty": "Amazon Beauty (P5 split)",
    "gowalla": "Gowalla",
    "games": "Amazon Video Games (SASRec's Video.txt)",
    "wikipedia": "Wikipedia (SASRec's file)",
    "industrial": "Amazon Industrial_and_Scientific (MiniOneRec's files)",
    "office": "Amazon Office_Products (MiniOneRec's files)",
    "amazon2018": "Amazon 2018 (window)",
    "lastfm": "Last.fm 2K (HetRec 2011)",
}

# Datasets on which the reference notes publish no ranking figure -> why.
NOT_PUBLISHED = {
    "lastfm": "the music generate-and-rank repository "
              "(zeehu/generative_ranking_recommender, `Note.md`; "
              "RESULTS.md section 6) reports no ranking metrics, only SID "
              "clustering diagnostics",
}


@dataclasses.dataclass(frozen=True)
class Published:
  """A published figure, copied from RESULTS.md with its source."""

  # Our dataset name (dataset/meta.json "name").
  dataset: str
  # A PROTOCOLS key.
  protocol: str
  # The ROW_SYSTEMS prefix of our rows it stands beside.
  row: str
  # What the figure is and where it comes from.
  source: str
  # Metric -> the figure exactly as published.
  values: tuple[tuple[str, str], ...]
  note: str = ""


_P5 = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")
_MINI = ("hr@3", "ndcg@3", "hr@5", "ndcg@5", "hr@10", "ndcg@10")


def _vals(keys: Sequence[str], text: str) -> tuple[tuple[str, str], ...]:
  values = text.split()
  assert len(values) == len(keys), (keys, text)
  return tuple(zip(keys, values))


_MINI_NOTE = ("the published row is SFT + GRPO; the table names no backbone "
              "(the released checkpoints are 7B)")
PUBLISHED = (
    Published("beauty", "loo_full", "tiger",
              "TIGER paper, Table 1", _vals(_P5, "0.0454 0.0321 0.0648 0.0384"),
              "R@K = HR@K with one target"),
    Published("beauty", "loo_full", "tiger",
              "phonism/genrec README (reproduction)",
              _vals(_P5, "0.0465 0.0297 0.0721 0.0378")),
    Published("beauty", "loo_full", "sasrec",
              "TIGER paper, Table 1 (SASRec, BCE loss)",
              _vals(_P5, "0.0387 0.0249 0.0605 0.0318")),
    Published("beauty", "loo_full", "sasrec",
              "phonism/genrec README (SASRec, CE loss, d 64, 2 blocks, "
              "2 heads, len 50)",
              _vals(_P5, "0.0469 0.0305 0.0688 0.0375")),
    Published("beauty", "loo_sampled100", "sasrec",
              "SASRec paper (Kang & McAuley, ICDM 2018)",
              _vals(("hr@10", "ndcg@10"), "0.4854 0.3219"),
              "marked (re-check) in our reference notes"),
    Published("games", "loo_sampled100", "sasrec",
              "SASRec paper (Kang & McAuley, ICDM 2018)",
              _vals(("hr@10", "ndcg@10"), "0.7410 0.5360"),
              "marked (re-check) in our reference notes"),
    Published("gowalla", "given_full", "lightgcn",
              "LightGCN paper (He et al., SIGIR 2020)",
              _vals(("recall@20", "ndcg@20"), "0.1830 0.1554")),
    Published("ml100k", "ur4rec", "sasrec",
              "ww93/MLLM UR4Rec README (SASRec baseline)",
              _vals(("hr@10", "ndcg@10", "mrr"), "0.412 0.228 0.176"),
              "no seeds, logs or command given for that table"),
    Published("ml100k", "ur4rec", "ur4rec",
              "ww93/MLLM UR4Rec README (UR4Rec, text)",
              _vals(("hr@10", "ndcg@10", "mrr"), "0.438 0.251 0.192"),
              "no seeds, logs or command given for that table"),
    Published("ml100k", "ur4rec", "ur4rec_mm",
              "ww93/MLLM UR4Rec README (UR4Rec, multimodal: text + image)",
              _vals(("hr@10", "ndcg@10", "mrr"), "0.461 0.269 0.205"),
              "no seeds, logs or command given for that table; its "
              "multimodal path is not in the repository"),
    Published("industrial", "given_full", "minionerec",
              "MiniOneRec paper, Table 1 (MiniOneRec)",
              _vals(_MINI, "0.1143 0.1011 0.1321 0.1084 0.1586 0.1167"),
              _MINI_NOTE),
    Published("industrial", "given_full", "tiger",
              "MiniOneRec paper, Table 1 (TIGER)",
              _vals(_MINI, "0.0852 0.0742 0.1010 0.0807 0.1321 0.0908")),
    Published("industrial", "given_full", "sasrec",
              "MiniOneRec paper, Table 1 (SASRec)",
              _vals(_MINI, "0.0790 0.0700 0.0909 0.0748 0.1088 0.0806")),
    Published("office", "given_full", "minionerec",
              "MiniOneRec paper, Table 1 (MiniOneRec)",
              _vals(_MINI, "0.1217 0.1088 0.1420 0.1172 0.1634 0.1242"),
              _MINI_NOTE),
    Published("office", "given_full", "tiger",
              "MiniOneRec paper, Table 1 (TIGER)",
              _vals(_MINI, "0.0986 0.0852 0.1163 0.0960 0.1408 0.1002")),
    Published("office", "given_full", "sasrec",
              "MiniOneRec paper, Table 1 (SASRec)",
              _vals(_MINI, "0.0861 0.0769 0.0949 0.0805 0.1120 0.0858")),
)


@dataclasses.dataclass(frozen=True)
class PublishedSids:
  """Published SID clustering diagnostics, copied from RESULTS.md."""

  # Our dataset name whose `<workdir>/sids/report.json` they stand beside.
  dataset: str
  # The SID build, as published.
  build: str
  # Where the figures come from.
  source: str
  # sids/report.json key -> the figure exactly as published.
  values: tuple[tuple[str, str], ...]
  note: str = ""


# SID diagnostics columns: (sids/report.json key, header).
SID_COLUMNS = (("full/calinski_harabasz", "CH"),
               ("full/davies_bouldin", "DB"), ("full/silhouette", "silhouette"),
               ("coverage_before", "coverage"),
               ("max_items_per_path_before", "max items per SID"))
PUBLISHED_SIDS = (
    PublishedSids(
        "lastfm", "refactored `train_semantic_ids.py`, [128, 128, 256]",
        "zeehu/generative_ranking_recommender `Note.md`",
        (("full/calinski_harabasz", "2.9885"),
         ("full/davies_bouldin", "0.5215"), ("full/silhouette", "0.0013"),
         ("coverage_before", "83.62 %"),
         ("max_items_per_path_before", "45")),
        "theirs: songs and 512-d skip-gram vectors, a different catalogue "
        "from ours, so indicative only; the only figures published for "
        "this system"),
)

CITATIONS = (
    ("rajput2023tiger", "inproceedings", (
        ("title", "Recommender Systems with Generative Retrieval"),
        ("author", "Rajput, Shashank and Mehta, Nikhil and Singh, Anima and "
                   "Keshavan, Raghunandan H. and Vu, Trung and Heldt, Lukasz "
                   "and Hong, Lichan and Tay, Yi and Tran, Vinh Q. and "
                   "Samost, Jonah and Kula, Maciej and Chi, Ed H. and "
                   "Sathiamoorthy, Maheswaran"),
        ("booktitle", "NeurIPS"),
        ("year", "2023"),
        ("note", "arXiv:2305.05065"))),
    ("kong2025minionerec", "misc", (
        ("title", "MiniOneRec: An Open-Source Framework for Scaling "
                  "Generative Recommendation"),
        ("author", "Kong, Xiaoyu and Sheng, Leheng and Tan, Junfei and Chen, "
                   "Yuxin and Wu, Jiancan and Zhang, An and Wang, Xiang and "
                   "He, Xiangnan"),
        ("year", "2025"),
        ("note", "arXiv:2510.24431; code: github.com/AkaliKong/MiniOneRec"))),
    ("minigrcf", "misc", (
        ("title", "miniGR-CF"),
        ("howpublished", "github.com/Isheng-Z/miniGR-CF"),
        ("note", "collaborative hints for MiniOneRec; README, no paper"))),
    ("kang2018sasrec", "inproceedings", (
        ("title", "Self-Attentive Sequential Recommendation"),
        ("author", "Kang, Wang-Cheng and McAuley, Julian"),
        ("booktitle", "ICDM"),
        ("year", "2018"))),
    ("he2020lightgcn", "inproceedings", (
        ("title", "LightGCN: Simplifying and Powering Graph Convolution "
                  "Network for Recommendation"),
        ("author", "He, Xiangnan and Deng, Kuan and Wang, Xiang and Li, Yan "
                   "and Zhang, Yongdong and Wang, Meng"),
        ("booktitle", "SIGIR"),
        ("year", "2020"))),
    ("ur4rec2025", "inproceedings", (
        ("title", "Enhancing Reranking for Recommendation with LLMs through "
                  "User Preference Retrieval"),
        ("booktitle", "COLING"),
        ("year", "2025"),
        ("note", "code: github.com/ww93/MLLM (UR4Rec/); authors: see the "
                 "paper"))),
    ("generative_ranking_recommender", "misc", (
        ("title", "generative_ranking_recommender"),
        ("howpublished", "github.com/zeehu/generative_ranking_recommender"),
        ("note", "music generate-and-rank; repository notes, no paper"))),
)

# Stages of the graph: (binary, inputs, outputs); a stage is drawn when
# binaries/<binary>.py exists.
STAGES = (
    ("prepare_data", ("source files",), ("dataset/",)),
    ("train_baselines", ("dataset/",), ("baselines/",)),
    ("train_lightgcn", ("dataset/",), ("lightgcn/",)),
    ("build_hints", ("lightgcn/",), ("hints/",)),
    ("train_sasrec", ("dataset/",), ("sasrec/",)),
    ("embed_items", ("dataset/",), ("embeddings/",)),
    ("prepare_lastfm", ("Last.fm 2K files",), ("lastfm/",)),
    ("item2vec", ("lastfm/", "dataset/"), ("embeddings/",)),
    ("build_sids", ("embeddings/",), ("sids/",)),
    ("train_generative", ("dataset/", "sids/", "hints/"),
     ("tiger/, minionerec/, minigr_cf/",)),
    ("train_rl", ("tiger/, minionerec/, minigr_cf/",), ("*_rl/",)),
    ("gar_baselines", ("lastfm/", "embeddings/"), ("popularity/, text_knn/, ...",)),
    ("train_generator", ("lastfm/", "sids/"), ("generator/",)),
    ("train_ranker", ("generator/", "embeddings/"), ("generate_rank/",)),
    ("generate_rank", ("generator/", "generate_rank/"), ("top-10 artists",)),
    ("evaluate", ("a model folder",), ("metrics.json",)),
    ("run_pipeline", ("metrics.json",), ("pipeline/results.json",)),
    ("serve", ("a model folder",), ("POST /recommend",)),
    ("batch_recommend", ("a model folder",), ("batch_topN.jsonl",)),
)
# Dotted links between artifacts: (from, to, label).
LINKS = (
    ("sasrec/", "a model folder", ""),
    ("lightgcn/", "a model folder", ""),
    ("tiger/, minionerec/, minigr_cf/", "a model folder", ""),
    ("*_rl/", "a model folder", ""),
    ("pipeline/results.json", "README.md", "tools/front_page.py"),
)


# --------------------------------------------------------------------------
# Reading inputs.


def _load_json(path: pathlib.Path) -> Any:
  if not path.is_file():
    raise FrontPageError(f"{path}: no such file")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise FrontPageError(f"{path}: not valid JSON ({e})") from None


def _is_number(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def _number(v: Any) -> float | None:
  return v if _is_number(v) else None


def _date(path: pathlib.Path, record: dict[str, Any]) -> str:
  if isinstance(record.get("date"), str) and record["date"]:
    return record["date"]
  mtime = path.stat().st_mtime
  return datetime.datetime.fromtimestamp(
      mtime, datetime.timezone.utc).strftime("%Y-%m-%d")


def _display_path(path: pathlib.Path, base: pathlib.Path) -> str:
  """path relative to base when under it, else as given."""
  try:
    return str(path.resolve().relative_to(base.resolve()))
  except ValueError:
    return str(path)


def _relative_command(command: str, base: pathlib.Path) -> str:
  """Absolute paths under base made relative (the README is portable)."""
  return command.replace(str(base.resolve()) + os.sep, "")


@dataclasses.dataclass
class PipelineResults:
  path: pathlib.Path
  shown: str
  date: str
  command: str
  results: dict[str, dict[str, Any]]
  seeds: dict[str, dict[str, Any]]
  dataset: dict[str, Any]


def read_pipeline_results(path: pathlib.Path, command: str | None,
                          base: pathlib.Path) -> PipelineResults:
  """Reads and checks one pipeline/results.json."""
  record = _load_json(path)
  if not isinstance(record, dict) or not isinstance(record.get("results"),
                                                    dict):
    raise FrontPageError(f"{path}: not a pipeline results file (no "
                         "'results' object of model -> metrics)")
  results = record["results"]
  if not results:
    raise FrontPageError(f"{path}: 'results' is empty")
  for model, metrics in results.items():
    if not isinstance(metrics, dict):
      raise FrontPageError(f"{path}: results[{model!r}] is not an object")
    bad = [k for k, v in metrics.items()
           if k.startswith(("test/", "valid/"))
           and (not isinstance(v, (int, float)) or isinstance(v, bool))]
    if bad:
      raise FrontPageError(f"{path}: results[{model!r}][{bad[0]!r}] is not "
                           "a number")
  seeds = record.get("seeds") or {}
  if not isinstance(seeds, dict):
    raise FrontPageError(f"{path}: 'seeds' is not an object")
  for model, s in seeds.items():
    if (not isinstance(s, dict) or not isinstance(s.get("std"), dict)
        or not isinstance(s.get("num_seeds"), int)):
      raise FrontPageError(f"{path}: seeds[{model!r}] lacks 'std' (object) "
                           "or 'num_seeds' (integer)")
  command = command or record.get("command") or ""
  return PipelineResults(
      path=path, shown=_display_path(path, base), date=_date(path, record),
      command=_relative_command(command, base) if command else "",
      results=results, seeds=seeds, dataset=_dataset_info(path, record))


def _scalar_fields(data: dict[str, Any]) -> dict[str, Any]:
  """What the page reads of dataset/meta.json and stats.json: the scalars
  and the `filtered` counts (not the id lists)."""
  return {k: v for k, v in data.items()
          if not isinstance(v, (list, dict)) or k == "filtered"}


def _dataset_info(path: pathlib.Path, record: dict[str, Any]
                  ) -> dict[str, Any]:
  """The workdir's dataset/meta.json + stats.json (+ the prepare_data
  config), when they sit beside the pipeline folder."""
  workdir = path.resolve().parent.parent
  info: dict[str, Any] = {"workdir": workdir}
  for name in ("meta", "stats"):
    f = workdir / "dataset" / f"{name}.json"
    if f.is_file():
      try:
        data = json.loads(f.read_text(encoding="utf-8"))
      except json.JSONDecodeError:
        continue
      if isinstance(data, dict):
        info.update(_scalar_fields(data))
  f = workdir / "lastfm" / "stats.json"
  if "name" not in info and f.is_file():
    # prepare_lastfm: items, users and query split sizes; the queries are
    # split by their text.
    try:
      data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
      data = None
    if isinstance(data, dict):
      info.update({k: data[k] for k in ("name", "items", "users", "queries")
                   if k in data})
      info["split"] = "query_text"
  for f, keys in (("prepare_data.json", ("num_negatives", "mask_history")),
                  ("prepare_lastfm.json", ("split_fractions",
                                           "min_listeners"))):
    f = workdir / "pipeline" / f
    if f.is_file():
      try:
        cfg = json.loads(json.loads(f.read_text())["config"])["data"]
        info.update({k: cfg.get(k) for k in keys})
      except (json.JSONDecodeError, KeyError, TypeError):
        pass
  if isinstance(record.get("dataset"), str):
    info.setdefault("name", record["dataset"])
  return info


@dataclasses.dataclass
class BenchResults:
  path: pathlib.Path
  shown: str
  date: str
  name: str
  command: str
  machine: dict[str, Any]
  config: dict[str, Any]
  results: dict[str, Any]


def read_bench_results(path: pathlib.Path, base: pathlib.Path
                       ) -> BenchResults:
  """Reads and checks one runs/bench/<name>/results.json."""
  record = _load_json(path)
  if not isinstance(record, dict):
    raise FrontPageError(f"{path}: not a benchmark results file")
  for key, kind in (("command", str), ("machine", dict), ("results", dict)):
    if not isinstance(record.get(key), kind):
      raise FrontPageError(f"{path}: not a benchmark results file (no "
                           f"{key!r} {kind.__name__})")
  return BenchResults(
      path=path, shown=_display_path(path, base), date=_date(path, record),
      name=str(record.get("benchmark") or path.parent.name),
      command=_relative_command(record["command"], base),
      machine=record["machine"], config=record.get("config") or {},
      results=record["results"])


# --------------------------------------------------------------------------
# Formatting helpers.


def _metric(m: dict[str, Any], key: str, sampled: bool = False
            ) -> float | None:
  """test/<key> (hr@K falls back to recall@K: equal for one target)."""
  prefix = "test/sampled_" if sampled else "test/"
  for k in (prefix + key, prefix + key.replace("hr@", "recall@"),
            prefix + key.replace("recall@", "hr@")):
    if _is_number(m.get(k)):
      return m[k]
  return None


def cell(mean: float | None, std: float | None = None,
         n: int | None = None) -> str:
  """"0.0742", or "0.0742 +- 0.0031 (3)" for a mean over n seeds."""
  if mean is None:
    return "-"
  if n is None:
    return f"{mean:.4f}"
  return (f"{mean:.4f} ({n})" if std is None
          else f"{mean:.4f} +- {std:.4f} ({n})")


def _params(n: Any) -> str:
  if not _is_number(n):
    return "-"
  if n >= 1e9:
    return f"{n / 1e9:.1f}B"
  if n >= 1e6:
    return f"{n / 1e6:.1f}M"
  if n >= 1e3:
    return f"{n / 1e3:.0f}K"
  return str(int(n))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
  return lines


def row_system(model: str) -> tuple[str, str]:
  """(ROW_SYSTEMS prefix, shown system) of a result row ('' if unknown)."""
  base = re.sub(r"_s\d+$", "", model)
  for prefix, shown in ROW_SYSTEMS:
    if base == prefix or base.startswith(prefix + "_"):
      return prefix, shown
  return "", "-"


def our_protocols(info: dict[str, Any]) -> dict[str, bool]:
  """{protocol id: sampled keys?} our metrics were computed under."""
  split = info.get("split")
  if split == "leave_one_out":
    return {"loo_full": False}
  if split == "sampled_candidates":
    n = info.get("num_negatives")
    return {"loo_full": False, f"loo_sampled{n}": True}
  if split == "given":
    return {"given_full": False}
  if split == "sliding_window":
    return {"window_full": False}
  if split == "query_text":
    return {"set_full": False}
  return {}


def _protocol_text(pid: str) -> str:
  m = re.fullmatch(r"loo_sampled(\w+)", pid)
  if pid not in PROTOCOLS and m:
    return (f"leave-one-out, the target ranked among {m.group(1)} sampled "
            "negatives")
  return PROTOCOLS.get(pid, pid)


# --------------------------------------------------------------------------
# Sections.


def systems_section() -> str:
  rows = []
  for s in SYSTEMS:
    have = [(c, g) for c, g in s.evidence
            if glob.glob(str(REPO / g), recursive=True)]
    missing = [c for c, g in s.evidence if (c, g) not in have]
    if not missing:
      status = "implemented"
    elif not have:
      status = "planned"
    else:
      status = (f"partial: {', '.join(c for c, _ in have)}; not yet: "
                f"{', '.join(missing)}")
    where = ", ".join(f"`{g}`" for _, g in have) or "-"
    rows.append([f"**{s.name}**", s.paper, s.code, s.what, status, where])
  lines = _table(["system", "paper", "original code", "what", "here",
                  "where"], rows)
  lines += ["", "The status is read from the code: a system is implemented "
            "when every module it needs exists. Besides these: most-popular, "
            "item kNN and sequential item kNN baselines (`genrec_jax/"
            "baselines/simple.py`)."]
  return "\n".join(lines)


def _dataset_line(info: dict[str, Any]) -> str:
  name = info.get("name")
  if not name:
    return ("Dataset unknown (no `dataset/meta.json` or `lastfm/stats.json` "
            "beside the pipeline folder): no published figures compared.")
  parts = [f"{DATASET_NAMES.get(name, name)} (`{name}`)"]
  counts = [f"{info[k]:,} {k}" for k in ("users", "items", "interactions")
            if _is_number(info.get(k))]
  if _is_number(info.get("items")) and _is_number(info.get("min_listeners")):
    counts = [c + (f" (artists with >= {info['min_listeners']} listeners)"
                   if c.endswith(" items") else "") for c in counts]
  if counts:
    parts.append(", ".join(counts))
  if isinstance(info.get("queries"), dict):
    parts.append(_queries_text(info))
  protocols = our_protocols(info)
  if protocols:
    parts.append("; ".join(_protocol_text(p) for p in protocols))
  elif info.get("split"):
    parts.append(f"split `{info['split']}`")
  if info.get("mask_history"):
    parts.append("history items masked")
  if _is_number(info.get("test_rows")):
    parts.append(f"{info['test_rows']:,} test rows")
  return "Dataset: " + "; ".join(parts) + "."


def _queries_text(info: dict[str, Any]) -> str:
  """How a query dataset (lastfm/stats.json) is split, and its test size."""
  q = info["queries"]
  test = q.get("test") if isinstance(q.get("test"), dict) else {}
  fractions = info.get("split_fractions")
  split = "split by query text"
  if (isinstance(fractions, list) and fractions
      and all(_is_number(x) for x in fractions)):
    split += " " + "/".join(f"{100 * x:.0f}" for x in fractions)
  text = ("tags as queries (a tag's text -> the artists tagged with it, by "
          f"anyone or by one user), {split}")
  if _is_number(test.get("queries")) and _is_number(test.get("texts")):
    text += (f": {test['queries']:,} test queries over {test['texts']:,} "
             "texts unseen in training")
    if _is_number(test.get("mean_items")):
      text += f", {_fmt(test['mean_items'], 2)} items each on average"
  return text


def columns(results: dict[str, dict[str, Any]]
            ) -> tuple[tuple[str, str], ...]:
  """The metric columns: COLUMNS, or SET_COLUMNS for set retrieval results
  (no row with a `test/hr@K`, some row with a `test/recall@K`)."""
  keys = {k for m in results.values() for k in m}
  if (not any(k.startswith("test/hr@") for k in keys)
      and any(k.startswith("test/recall@") for k in keys)):
    return SET_COLUMNS
  return COLUMNS


def _measured_table(r: PipelineResults) -> list[str]:
  metric_columns = columns(r.results)
  extra = [(k, h) for k, h in EXTRA_COLUMNS
           if any(_is_number(m.get(k)) for m in r.results.values())]
  head = ["model", "system", *(h for _, h in metric_columns),
          *(h for _, h in extra), "params", "seconds"]
  rows = []
  for model, m in r.results.items():
    s = r.seeds.get(model)
    cells = [cell(_metric(m, k), s and _metric(s["std"], k),
                  s and s["num_seeds"]) for k, _ in metric_columns]
    for k, _ in extra:
      if k == "invalid_rate":
        cells.append(f"{m[k]:.3f}" if _is_number(m.get(k)) else "-")
      else:
        cells.append(cell(_number(m.get(k)),
                          s and _number(s["std"].get(k)),
                          s and s["num_seeds"]))
    rows.append([f"`{model}`", row_system(model)[1], *cells,
                 _params(m.get("num_params")),
                 (f"{m['seconds']:.0f}" if _is_number(m.get("seconds"))
                  else "-")])
  return _table(head, rows)


def _published_table(r: PipelineResults) -> list[str]:
  name = r.dataset.get("name")
  if not name:
    return []
  if not any(p.dataset == name for p in PUBLISHED):
    why = NOT_PUBLISHED.get(name, "our reference notes hold none")
    return ["", f"No published ranking figures on this dataset: {why}."]
  protocols = our_protocols(r.dataset)
  rows, unmatched = [], []
  for model, m in r.results.items():
    prefix, shown = row_system(model)
    pubs = [p for p in PUBLISHED if p.dataset == name and p.row == prefix]
    if not pubs:
      if prefix and shown != "baseline":
        unmatched.append(model)
      continue
    s = r.seeds.get(model)
    for p in pubs:
      same = p.protocol in protocols
      # A sampled figure stands beside our sampled metrics when we have any.
      sampled = (p.protocol.startswith("loo_sampled")
                 and any(protocols.values()))
      ours = " / ".join(
          cell(_metric(m, k, sampled), s and _metric(s["std"], k, sampled),
               s and s["num_seeds"]) for k, _ in p.values)
      theirs = " / ".join(v for _, v in p.values)
      metrics = " / ".join(METRIC_NAMES.get(k, k) for k, _ in p.values)
      if same:
        verdict = "same protocol"
      else:
        verdict = ("protocol differs, not comparable: theirs "
                   f"{_protocol_text(p.protocol)}")
      note = "; ".join(x for x in (verdict, p.note) if x)
      rows.append([f"`{model}`", metrics, ours, theirs, p.source, note])
  lines = []
  if rows:
    lines += ["", "Beside the published figures on this dataset (copied with "
              "their source, never re-typed):", ""]
    lines += _table(["model", "metrics", "ours", "published", "source",
                     "protocol"], rows)
  if unmatched:
    lines += ["", "No published figure on this dataset for: "
              + ", ".join(f"`{m}`" for m in unmatched) + "."]
  return lines


def _sid_table(r: PipelineResults, readme_dir: pathlib.Path) -> list[str]:
  """Our SID diagnostics (<workdir>/sids/report.json) beside the published
  ones for the dataset; [] when either is missing."""
  pubs = [p for p in PUBLISHED_SIDS if p.dataset == r.dataset.get("name")]
  f = r.dataset["workdir"] / "sids" / "report.json"
  if not pubs or not f.is_file():
    return []
  try:
    rep = json.loads(f.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError):
    return []
  if not isinstance(rep, dict):
    return []

  def ours(key: str) -> str:
    v = rep.get(key)
    if not _is_number(v):
      return "-"
    if key.startswith("coverage"):
      return f"{100 * v:.2f} %"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4f}"

  sizes = rep.get("codebook_sizes")
  build = "ours" + (f", {sizes}" if isinstance(sizes, list) else "")
  source = f"`{_display_path(f, readme_dir)}`"
  rows = [
      [build, "full SID", *(ours(k) for k, _ in SID_COLUMNS), source],
      # The cluster scores again with the first code as the label.
      [build, "first code",
       *(ours("level1/" + k[len("full/"):]) if k.startswith("full/") else "-"
         for k, _ in SID_COLUMNS), source]]
  for p in pubs:
    values = dict(p.values)
    rows.append([p.build, "full SID", *(values.get(k, "-")
                                        for k, _ in SID_COLUMNS),
                 p.source + (f" ({p.note})" if p.note else "")])
  lines = ["", "Semantic-ID clustering diagnostics beside the published ones "
           "(CH: Calinski-Harabasz, higher is better; DB: Davies-Bouldin, "
           "lower is better; points labelled by their full SID or its first "
           "code; coverage: distinct SIDs / items, and the most items "
           "sharing one SID, both before collision handling):", ""]
  lines += _table(["SID build", "labels", *(h for _, h in SID_COLUMNS),
                   "source"], rows)
  return lines


def _same_values(a: PipelineResults, b: PipelineResults) -> bool:
  strip = lambda rs: {m: {k: v for k, v in ms.items()
                          if k.startswith(("test/", "valid/"))}
                      for m, ms in rs.items()}
  return (strip(a.results) == strip(b.results)
          and a.dataset.get("name") == b.dataset.get("name"))


def results_section(results: Sequence[PipelineResults],
                    regenerate: str, readme_dir: pathlib.Path = REPO) -> str:
  if not results:
    return "No pipeline results files given (`--results`)."
  groups: list[list[PipelineResults]] = []
  for r in results:
    for g in groups:
      if _same_values(g[0], r):
        g.append(r)
        break
    else:
      groups.append([r])
  lines = [f"Generated by `{regenerate}` from the files named below; edit "
           "the files or the tool, not this text. Test split; cells are "
           "`mean +- std (seeds)` for rows repeated over seeds.", ""]
  for g in groups:
    first = g[0]
    name = first.dataset.get("name")
    title = DATASET_NAMES.get(name, name) if name else "unknown dataset"
    workdir = str(pathlib.Path(first.shown).parent.parent)
    lines += [f"#### {title}, `{workdir}`", ""]
    command = (f"`{first.command}`" if first.command
               else "not recorded in the file")
    lines += [f"File `{first.shown}` ({first.date}); command: {command}."]
    for other in g[1:]:
      also = (f", command `{other.command}`" if other.command else "")
      lines += [f"The same values (every test and valid metric) are in "
                f"`{other.shown}` ({other.date}{also})."]
    lines += ["", _dataset_line(first.dataset), ""]
    lines += _measured_table(first)
    lines += _published_table(first)
    lines += _sid_table(first, readme_dir)
    lines += [""]
  return "\n".join(lines).rstrip()


def _fmt(v: Any, digits: int = 4) -> str:
  """A number as the file has it (rounded to `digits` decimals)."""
  if not _is_number(v):
    return str(v)
  return str(int(v)) if v == int(v) else f"{v:.{digits}f}"


def _serving_cell(r: dict[str, Any]) -> str:
  return (f"{r['requests_per_s']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, "
          f"p99 {r['p99_ms']:.1f} ms")


def _serving_table(b: BenchResults) -> list[str]:
  """Latency and throughput of every serving run."""
  rows = []
  for name, r in b.results["runs"].items():
    m = re.fullmatch(r"http(_unbatched)?_c(\d+)", name)
    if name == "direct":
      what = "sequential in-process calls, no HTTP (1 at a time)"
    elif m:
      n = int(m.group(2))
      what = (f"HTTP, {n} client{'s' if n != 1 else ''}, "
              + ("unbatched" if m.group(1) else "micro-batched"))
    else:
      what = name
    rows.append([what, f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.1f}",
                 f"{r['p99_ms']:.1f}",
                 (f"{r['mean_batch']:.1f}" if _is_number(r.get("mean_batch"))
                  else "-"),
                 f"{r.get('ok', '-')} / {r.get('requests', '-')}"])
  lines = ["", f"Serving `{b.results.get('model', '?')}` on loopback "
           f"(`{b.shown}`; each run {_fmt(b.results.get('seconds_per_run'))} "
           "s; clients and server share one process):", ""]
  lines += _table(["run", "req/s", "p50 ms", "p99 ms", "mean batch",
                   "ok / sent"], rows)
  return lines


def _bench_rows(b: BenchResults) -> list[list[str]]:
  """[what, ours, reference, ratio] rows of one benchmark."""
  res, cfg = b.results, b.config
  rows = []
  if b.name == "rl" and _is_number(res.get("speedup")):
    what = (f"one GRPO update: {res.get('prompts_per_update')} prompts x "
            f"G {res.get('G')} constrained beams, rewards, policy update "
            f"(decoder hidden {cfg.get('hidden', '?')}, "
            f"{cfg.get('layers', '?')} layers)")
    rows.append([
        what,
        f"{_fmt(res['ours_seconds_per_update'])} s "
        f"({_fmt(res['ours_prompts_per_s'], 2)} prompts/s)",
        f"{_fmt(res['torch_seconds_per_update'])} s "
        f"({_fmt(res['torch_prompts_per_s'], 2)} prompts/s), torch "
        f"{res.get('torch_version', '?')}: transformers generate + torch "
        "update",
        f"{res['speedup']:.2f}x"])
    return rows
  if b.name == "serving" and isinstance(res.get("runs"), dict):
    runs = res["runs"]
    for name, r in runs.items():
      m = re.fullmatch(r"http_unbatched_c(\d+)", name)
      batched = runs.get(f"http_c{m.group(1)}") if m else None
      if batched:
        rows.append([
            f"HTTP `{res.get('model', '?')}` at {m.group(1)} concurrent "
            "clients: micro-batched server vs the same server unbatched "
            "(max_batch 1)",
            _serving_cell(batched), _serving_cell(r),
            f"{batched['requests_per_s'] / r['requests_per_s']:.2f}x"])
    return rows
  if b.name == "decoder" and _is_number(
      res.get("prefill_ratio_jax_over_torch")):
    rows.append([f"prefill, {res.get('model', 'decoder')}",
                 f"{_fmt(res['jax_prefill_s'])} s",
                 f"{_fmt(res['torch_prefill_s'])} s (torch)",
                 f"{res['prefill_ratio_jax_over_torch']:.2f}x"])
    rows.append([f"decode step, {res.get('model', 'decoder')}",
                 f"{res['jax_decode_ms_per_step']:.1f} ms",
                 f"{res['torch_decode_ms_per_step']:.1f} ms (torch)",
                 f"{res['decode_ratio_jax_over_torch']:.2f}x"])
    return rows
  if b.name == "train_step":
    for variant, r in res.items():
      if not (isinstance(r, dict) and _is_number(r.get("speedup_step"))):
        continue
      prof = r.get("jax_profile", {})
      rows.append([
          f"one training step of `{variant}` ({r.get('format')}, "
          f"{r.get('params', 0) / 1e6:.1f}M params, batch "
          f"{r.get('batch_size')}, Beauty); forward "
          f"{r['speedup_forward']:.2f}x, forward + backward "
          f"{r['speedup_forward_backward']:.2f}x; our step: "
          f"{100 * prof.get('forward', 0):.0f}% forward, "
          f"{100 * prof.get('backward', 0):.0f}% backward"
          + (f"; forward + backward against torch with eager attention "
             f"(matmul + softmax, as ours) "
             f"{r['speedup_forward_backward_vs_eager']:.2f}x"
             if _is_number(r.get("speedup_forward_backward_vs_eager"))
             else ""),
          f"{_fmt(r['jax_examples_per_s'], 1)} examples/s",
          f"{_fmt(r['torch_examples_per_s'], 1)} examples/s, torch "
          f"{r.get('torch_version', '?')} + transformers "
          f"{r.get('transformers_version', '?')}, AdamW, "
          f"{r.get('torch_threads', '?')} threads",
          f"{r['speedup_step']:.2f}x"])
      m = r.get("bfloat16")
      if isinstance(m, dict) and _is_number(m.get("speedup_step")):
        rows.append([
            f"the same step of `{variant}` in bfloat16 (`train.compute_dtype`"
            f"; float32 params) against torch's autocast(bfloat16); ours "
            f"{r['jax_step_s'] / m['jax_step_s']:.2f}x our float32 step",
            f"{_fmt(m['jax_examples_per_s'], 1)} examples/s",
            f"{_fmt(m['torch_examples_per_s'], 1)} examples/s (autocast)",
            f"{m['speedup_step']:.2f}x"])
    return rows
  # Any other benchmark: its own ratio fields, named as it names them.
  for k, v in res.items():
    if _is_number(v) and re.search(r"speedup|ratio|_vs_", k):
      rows.append([f"`{k}`", "-", "-", _fmt(v, 3)])
  return rows


def benchmarks_section(benches: Sequence[BenchResults]) -> str:
  if not benches:
    return "No benchmark results files given (`--bench`)."
  rows = []
  for b in benches:
    for what, ours, ref, ratio in _bench_rows(b):
      rows.append([f"`{b.name}`", what, ours, ref, ratio])
  lines = ["Each benchmark times genrec_jax against its reference in the same "
           "run on the same machine (ratio > 1: genrec_jax is faster; a "
           "benchmark's own `*_ratio_*` field is printed as it names it).", ""]
  lines += _table(["benchmark", "what", "genrec_jax", "reference (same run)",
                   "ratio"], rows)
  for b in benches:
    if b.name == "serving" and isinstance(b.results.get("runs"), dict):
      lines += _serving_table(b)
  lines += [""]
  for b in benches:
    mc = b.machine
    machine = (f"{mc.get('cpu', '?')}, {mc.get('cores', '?')} cores, "
               f"{mc.get('backend', '?')} backend, jax {mc.get('jax', '?')}, "
               f"python {mc.get('python', '?')}")
    lines.append(f"* `{b.name}`: `{b.shown}` ({b.date}); command "
                 f"`{b.command}`; machine: {machine}.")
  return "\n".join(lines)


def _node(label: str) -> str:
  return "n_" + re.sub(r"[^A-Za-z0-9]", "_", label).strip("_")


def stage_graph() -> str:
  """A mermaid flowchart of the stages whose binaries exist."""
  lines = ["```mermaid", "flowchart LR"]
  declared = set()

  def artifact(a: str) -> str:
    if a not in declared:
      declared.add(a)
      lines.append(f'  {_node(a)}["{a}"]')
    return _node(a)

  drawn = set()
  for stage, inputs, outputs in STAGES:
    if not (REPO / "binaries" / f"{stage}.py").is_file():
      continue
    s = _node("stage " + stage)
    lines.append(f'  {s}(["{stage}"])')
    lines += [f"  {artifact(a)} --> {s}" for a in inputs]
    lines += [f"  {s} --> {artifact(a)}" for a in outputs]
    drawn.update((*inputs, *outputs))
  for a, b, label in LINKS:
    if a in drawn:
      arrow = f'-.->|"{label}"|' if label else "-.->"
      lines.append(f"  {artifact(a)} {arrow} {artifact(b)}")
  lines.append("```")
  return "\n".join(lines)


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _curves(workdir: pathlib.Path, models: Sequence[str]
            ) -> tuple[dict[str, list], dict[str, list]]:
  """({model: [(step, loss)]} of generative models, {model: [(step,
  valid ndcg@10)]}) from <model>/train_log.json."""
  losses, valid = {}, {}
  for model in models:
    f = workdir / model / "train_log.json"
    if not f.is_file():
      continue
    try:
      log = json.loads(f.read_text())
    except json.JSONDecodeError:
      continue
    if not isinstance(log, dict):
      continue
    pts = [(c["step"], c["loss"]) for c in log.get("curve") or []
           if _is_number(c.get("step")) and _is_number(c.get("loss"))]
    if pts and row_system(model)[0] not in ("sasrec", "lightgcn"):
      losses[model] = pts
    ev = [(e["step"], e["valid/ndcg@10"]) for e in log.get("evals") or []
          if _is_number(e.get("step")) and _is_number(e.get("valid/ndcg@10"))]
    if len(ev) > 1:
      valid[model] = ev
  return losses, valid


def plot_curves(workdir: pathlib.Path, models: Sequence[str],
                out: pathlib.Path) -> bool:
  """Writes the training-curve PNG; False when there is nothing to plot."""
  losses, valid = _curves(workdir, models)
  if not losses and not valid:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [p for p in ((losses, "training loss, generative models", "loss"),
                        (valid, "validation NDCG@10 while training",
                         "NDCG@10")) if p[0]]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.0),
                           squeeze=False)
  for ax, (data, title, ylabel) in zip(axes[0], panels):
    for model, pts in data.items():
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
              label=model)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  tmp = out.with_name(f".{out.name}.tmp.png")
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(tmp, dpi=80, metadata={"Software": None})
  plt.close(fig)
  os.replace(tmp, out)
  return True


def pictures_section(results: Sequence[PipelineResults],
                     docs_dir: pathlib.Path, readme_dir: pathlib.Path
                     ) -> str:
  lines = ["The stages (each a binary in `binaries/`, reading what earlier "
           "stages wrote in the workdir):", "", stage_graph()]
  if not results:
    return "\n".join(lines)
  first = results[0]
  workdir = first.dataset["workdir"]
  shown_workdir = _display_path(workdir, readme_dir)
  rel = lambda p: os.path.relpath(p, readme_dir).replace(os.sep, "/")
  curves = docs_dir / "training_curves.png"
  if plot_curves(workdir, list(first.results), curves):
    if curves.stat().st_size > MAX_IMAGE_BYTES:
      curves.unlink()
    else:
      lines += ["", f"![training curves]({rel(curves)})", "",
                f"Training curves of `{shown_workdir}` (from "
                "`<model>/train_log.json`: the generative models' SFT loss, "
                "and validation NDCG@10 where the trainer evaluated during "
                "training)."]
  usage = workdir / "sids" / "code_usage.png"
  if usage.is_file() and usage.stat().st_size <= MAX_IMAGE_BYTES:
    dest = docs_dir / "sid_code_usage.png"
    if not dest.is_file() or dest.read_bytes() != usage.read_bytes():
      _write_atomic(dest, usage.read_bytes())
    caption = (f"Items per code at each semantic-ID level, sorted "
               f"(`{shown_workdir}/sids/code_usage.png`, written by "
               "`build_sids`; the dashed line is a uniform spread)")
    report = workdir / "sids" / "report.json"
    try:
      rep = json.loads(report.read_text())
      shared, items = rep.get("colliding_items_before"), rep.get("num_items")
      if _is_number(shared) and _is_number(items) and items:
        caption += (f"; {shared:,} of {items:,} items shared their code path "
                    "with another item before collision handling")
    except (OSError, json.JSONDecodeError, AttributeError):
      pass
    lines += ["", f"![SID code usage]({rel(dest)})", "", caption + "."]
  return "\n".join(lines)


# --------------------------------------------------------------------------
# The archive: the inputs kept in the repository (docs/results), so that the
# page regenerates on any checkout (`make front-page`).

# What the page reads from a results file's workdir (besides the file itself
# and each of its models' <model>/train_log.json).
ARCHIVED_FILES = ("pipeline/prepare_data.json", "pipeline/prepare_lastfm.json",
                  "dataset/meta.json", "dataset/stats.json",
                  "lastfm/stats.json", "sids/report.json",
                  "sids/code_usage.png")
MANIFEST = "front_page.json"


def _json_bytes(obj: Any) -> bytes:
  # Key order kept: the tables list models in the order of the file.
  return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


def _archived_copy(rel: str, src: pathlib.Path) -> bytes | None:
  """The bytes kept for one workdir file: what the page reads of it."""
  if rel.endswith(".png"):
    data = src.read_bytes()
    return data if len(data) <= MAX_IMAGE_BYTES else None
  try:
    obj = json.loads(src.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None
  if rel == "dataset/meta.json" and isinstance(obj, dict):
    obj = _scalar_fields(obj)  # the id lists (thousands of users): not read
  elif rel.endswith("train_log.json") and isinstance(obj, dict):
    obj = {"curve": [{k: c.get(k) for k in ("step", "loss")}
                     for c in obj.get("curve") or [] if isinstance(c, dict)],
           "evals": [{k: e.get(k) for k in ("step", "valid/ndcg@10")}
                     for e in obj.get("evals") or [] if isinstance(e, dict)]}
  return _json_bytes(obj)


def _read_manifest(archive_dir: pathlib.Path) -> dict[str, list[str]]:
  f = archive_dir / MANIFEST
  if not f.is_file():
    return {"results": [], "bench": []}
  m = _load_json(f)
  if (not isinstance(m, dict) or any(
      not isinstance(m.get(k), list)
      or not all(isinstance(x, str) for x in m[k])
      for k in ("results", "bench"))):
    raise FrontPageError(f"{f}: not a front-page manifest (lists 'results' "
                         "and 'bench' of paths relative to it)")
  return {"results": list(m["results"]), "bench": list(m["bench"])}


def archive_inputs(archive_dir: pathlib.Path,
                   results: Sequence[PipelineResults],
                   benches: Sequence[BenchResults]
                   ) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """Copies the inputs into archive_dir and returns the archive's files.

  A results file goes to <archive_dir>/<its workdir's name>/pipeline/
  results.json with its command and date recorded in it, beside what the
  page reads from its workdir (ARCHIVED_FILES, each model's train_log.json
  reduced to its curve and evals, dataset/meta.json without its id lists);
  a benchmark file to <archive_dir>/bench/<name>/results.json. A workdir or
  benchmark archived before is replaced in place (the manifest keeps the
  order: the first results file's workdir gives the pictures); the others
  stay. Every folder is written beside its place and renamed.

  Returns:
    (results files, benchmark files) of the whole archive, in order.
  """
  manifest = _read_manifest(archive_dir)
  staged: dict[str, dict[str, bytes]] = {}
  entries: set[str] = set()  # the manifest entries this call writes
  for r in results:
    workdir = r.path.resolve().parent.parent
    files: dict[str, bytes] = {}
    record = json.loads(r.path.read_text(encoding="utf-8"))
    record["date"] = r.date
    if r.command:
      record["command"] = r.command
    files["pipeline/results.json"] = _json_bytes(record)
    rels = list(ARCHIVED_FILES) + [f"{m}/train_log.json" for m in r.results]
    for rel in rels:
      src = workdir / rel
      if src.is_file():
        data = _archived_copy(rel, src)
        if data is not None:
          files[rel] = data
    staged[workdir.name] = files
    entry = f"{workdir.name}/pipeline/results.json"
    entries.add(entry)
    if entry not in manifest["results"]:
      manifest["results"].append(entry)
  for b in benches:
    record = json.loads(b.path.read_text(encoding="utf-8"))
    record["date"] = b.date
    record["command"] = b.command  # paths under the README's folder relative
    staged[f"bench/{b.name}"] = {"results.json": _json_bytes(record)}
    entry = f"bench/{b.name}/results.json"
    entries.add(entry)
    if entry not in manifest["bench"]:
      manifest["bench"].append(entry)
  missing = [e for e in manifest["results"] + manifest["bench"]
             if e not in entries and not (archive_dir / e).is_file()]
  if missing:
    raise FrontPageError(f"{archive_dir / MANIFEST}: lists {missing[0]}, "
                         "which is not in the archive")
  for folder, files in staged.items():
    dest = archive_dir / folder
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
      shutil.rmtree(tmp)
    for rel, data in files.items():
      (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
      (tmp / rel).write_bytes(data)
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
      os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
      shutil.rmtree(old)
  _write_atomic(archive_dir / MANIFEST, _json_bytes(manifest))
  return ([archive_dir / e for e in manifest["results"]],
          [archive_dir / e for e in manifest["bench"]])


def cite_section() -> str:
  lines = ["The original works (titles and authors as published; DOIs "
           "omitted):", "", "```bibtex"]
  for key, kind, fields in CITATIONS:
    lines.append(f"@{kind}{{{key},")
    width = max(len(k) for k, _ in fields)
    lines += [f"  {k.ljust(width)} = {{{v}}}," for k, v in fields]
    lines.append("}")
  lines.append("```")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# The README.


def fill(text: str, sections: dict[str, str], readme: pathlib.Path) -> str:
  """text with the content between each section's markers replaced."""
  found = [(m.group(1), m.group(2), m.start(), m.end())
           for m in MARKER.finditer(text)]
  names = [n for n, _, _, _ in found]
  for n in names:
    if n not in SECTIONS:
      raise FrontPageError(f"{readme}: unknown front-page section {n!r} "
                           f"(known: {', '.join(SECTIONS)})")
  if not found:
    raise FrontPageError(f"{readme}: no <!-- front-page:<section>:start --> "
                         "markers")
  out, pos = [], 0
  i = 0
  while i < len(found):
    name, kind, start, end = found[i]
    if (kind != "start" or i + 1 >= len(found)
        or found[i + 1][:2] != (name, "end")):
      raise FrontPageError(f"{readme}: marker front-page:{name}:{kind} has "
                           "no matching start/end pair")
    if names.count(name) != 2:
      raise FrontPageError(f"{readme}: section {name!r} appears more than "
                           "once")
    close_start = found[i + 1][2]
    out += [text[pos:end], "\n", sections[name].rstrip("\n"), "\n"]
    pos = close_start
    i += 2
  out.append(text[pos:])
  return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--results", nargs="*", default=[], type=pathlib.Path,
                  help="pipeline/results.json files")
  ap.add_argument("--bench", nargs="*", default=[], type=pathlib.Path,
                  help="runs/bench/<name>/results.json files")
  ap.add_argument("--command", action="append", default=[],
                  metavar="FILE=COMMAND",
                  help="the command that wrote a results file")
  ap.add_argument("--readme", type=pathlib.Path, default=REPO / "README.md")
  ap.add_argument("--docs_dir", type=pathlib.Path, default=None,
                  help="where images go (default: docs/front_page beside "
                       "the README)")
  ap.add_argument("--archive", type=pathlib.Path, default=None,
                  help="copy the --results / --bench inputs into this "
                       "folder (docs/results: `make front-page`) and "
                       "generate the page from everything in it")
  args = ap.parse_args(argv)
  try:
    readme = args.readme
    if not readme.is_file():
      raise FrontPageError(f"{readme}: no such file")
    base = readme.resolve().parent
    docs_dir = args.docs_dir or base / "docs" / "front_page"
    commands = {}
    for c in args.command:
      path, sep, command = c.partition("=")
      if not sep or not command:
        raise FrontPageError(f"--command {c!r}: expected FILE=COMMAND")
      commands[pathlib.Path(path).resolve()] = command
    results = [read_pipeline_results(p, commands.get(p.resolve()), base)
               for p in args.results]
    benches = [read_bench_results(p, base) for p in args.bench]
    regenerate = ".venv/bin/python tools/front_page.py " + shlex.join(argv)
    if args.archive is not None:
      files, bench_files = archive_inputs(args.archive, results, benches)
      results = [read_pipeline_results(p, None, base) for p in files]
      benches = [read_bench_results(p, base) for p in bench_files]
      regenerate = ("make front-page" if
                    (args.archive.resolve() == REPO / "docs" / "results"
                     and readme.resolve() == REPO / "README.md"
                     and args.docs_dir is None) else
                    ".venv/bin/python tools/front_page.py " + shlex.join(
                        ["--archive", _display_path(args.archive, base)]))
    text = readme.read_bytes().decode("utf-8")
    present = {m.group(1) for m in MARKER.finditer(text)}
    builders = {
        "systems": systems_section,
        "results": lambda: results_section(results, regenerate, base),
        "benchmarks": lambda: benchmarks_section(benches),
        "pictures": lambda: pictures_section(results, docs_dir, base),
        "cite": cite_section,
    }
    sections = {n: f() for n, f in builders.items() if n in present}
    new = fill(text, sections, readme)
    if new != text:
      mode = readme.stat().st_mode & 0o777
      _write_atomic(readme, new.encode("utf-8"))
      os.chmod(readme, mode)
  except FrontPageError as e:
    print(f"front_page.py: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
