"""Named pipelines: stages run in order, in-process, on one workdir.

A pipeline config (configs/pipeline.py) lists stage names in `stages`; for
each name it holds that stage's own config (what `configs/<file>.py` of the
stage binary returns) under the same name, and `stage_kinds` maps names
that are not themselves stage kinds (e.g. "minigr_cf") to one
("train_generative"). Each stage kind is the library `run(config, workdir)`
its binary calls, plus the files that mark it complete.

A stage is skipped when its done-files exist, the config it last ran with
(`pipeline/<name>.json`) equals the current one, and no stage before it ran
in this invocation; `force` re-runs the named stages (and so everything
after them). After the stages, every `<model>/metrics.json` in the workdir
goes into one results table (`pipeline/results.json`), printed on stdout as
plain text (baselines first, then the generative models), followed by a few
example users; progress goes to the log.

Seeds: the stages in `seeded_stages` run once per seed in `seeds`, with
`seed` set in their config and their output folder named `<name>_s<seed>`
(only kinds with an output-name field can: train_generative; SASRec and
LightGCN write fixed folders and are refused). Each (stage, seed) run is
skipped or re-run on its own, with the record `pipeline/<stage>_s<seed>.json`;
`force` takes a stage (all its seeds) or one `<stage>_s<seed>`. The table
shows one row per seeded stage, `mean +- std (number of seeds)` with the
sample std (ddof=1); `results.json` holds the mean under `results` and the
per-seed values, mean and std under `seeds`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import shlex
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
import ml_collections
import numpy as np

from genrec_jax.data.dataset import Dataset, atomic_write_json

PIPELINE_DIR = "pipeline"
RESULTS_FILE = "pipeline/results.json"
# Columns of the results table (test split, full ranking).
TABLE_KEYS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")
# Rows that come first in the results table, in this order; the other
# (generative) models follow in stage order.
BASELINES = ("most_popular", "item_knn", "seq_item_knn", "lightgcn",
             "sasrec", "popularity", "text_similarity", "text_knn",
             "item2vec_centroid")


@dataclasses.dataclass(frozen=True)
class StageKind:
  """A stage: its library entry point and its done-files."""

  # "module:function" with signature run(config, workdir) -> dict.
  run: str
  # Stage config -> files (relative to the workdir) that exist once the
  # stage completed; each stage writes its last one last.
  outputs: Callable[[ml_collections.ConfigDict], list[str]]
  # The config field naming the stage's output folder WORKDIR/<value>, or
  # None when the folder is fixed; only stages with one repeat over seeds.
  name_field: str | None = None
  # The config fields naming model folders the stage reads (the SFT model
  # an RL run starts from, the generator a ranker re-scores). In a seeded
  # run, a field naming the output of a seeded stage points at the same
  # seed's folder.
  input_fields: tuple[str, ...] = ()

  def function(self) -> Callable[..., Any]:
    module, name = self.run.split(":")
    return getattr(importlib.import_module(module), name)


KINDS: dict[str, StageKind] = {
    "prepare_data": StageKind("genrec_jax.data.prepare:run",
                              lambda c: ["dataset/stats.json"]),
    "train_baselines": StageKind(
        "genrec_jax.baselines.simple:run",
        lambda c: [f"{m}/metrics.json" for m in c.baselines.models]),
    "embed_items": StageKind("genrec_jax.semantic_ids.embed:run",
                             lambda c: ["embeddings/meta.json"]),
    "build_sids": StageKind("genrec_jax.semantic_ids.build:run",
                            lambda c: [f"{c.get('output', 'sids')}/report.json"]),
    "train_lightgcn": StageKind("genrec_jax.graph.lightgcn_train:run",
                                lambda c: ["lightgcn/metrics.json"]),
    "build_hints": StageKind("genrec_jax.graph.hints:run",
                             lambda c: ["hints/report.json"]),
    "train_sasrec": StageKind("genrec_jax.training.sasrec_train:run",
                              lambda c: [f"{c.name}/metrics.json"],
                              name_field="name"),
    "train_generative": StageKind("genrec_jax.generative.stage:run",
                                  lambda c: [f"{c.name}/metrics.json"],
                                  name_field="name", input_fields=("init",)),
    "train_rl": StageKind("genrec_jax.rl.stage:run",
                          lambda c: [f"{c.name}/metrics.json"],
                          name_field="name", input_fields=("init",)),
    "prepare_lastfm": StageKind("genrec_jax.gar.lastfm:run",
                                lambda c: ["lastfm/stats.json"]),
    "item2vec": StageKind("genrec_jax.gar.item2vec:run",
                          lambda c: ["embeddings/meta.json"]),
    "gar_baselines": StageKind(
        "genrec_jax.gar.baselines:run",
        lambda c: [f"{m}/metrics.json" for m in c.models]),
    "train_generator": StageKind("genrec_jax.gar.generator:run",
                                 lambda c: [f"{c.name}/metrics.json"],
                                 name_field="name"),
    "train_ranker": StageKind("genrec_jax.gar.ranker:run",
                              lambda c: [f"{c.name}/metrics.json"],
                              name_field="name",
                              input_fields=("generator",)),
    "generate_texts": StageKind("genrec_jax.ur4rec.texts:run",
                                lambda c: [f"{c.name}/report.json"]),
    "build_features": StageKind("genrec_jax.ur4rec.features:run",
                                lambda c: ["features/meta.json"]),
    "train_ur4rec": StageKind("genrec_jax.ur4rec.stage:run",
                              lambda c: [f"{c.name}/metrics.json"],
                              name_field="name", input_fields=("sasrec",)),
}
# The stage config field a seeded run sets (every stage kind calls it so).
SEED_FIELD = "seed"


def stage_kind(config: ml_collections.ConfigDict, name: str) -> StageKind:
  kinds = config.get("stage_kinds") or {}
  kind = kinds.get(name, name)
  if kind not in KINDS:
    raise ValueError(f"config field 'stages': stage {name!r} has no kind "
                     f"(known: {sorted(KINDS)}; map other names in "
                     "'stage_kinds')")
  return KINDS[kind]


@dataclasses.dataclass(frozen=True)
class StageRun:
  """One run of a stage: the stage itself, or one seed of a seeded stage."""

  # The stage's name in `config.stages`.
  stage: str
  # Its record pipeline/<record>.json: the stage name, or <stage>_s<seed>.
  record: str
  # The seed it sets, or None for an unseeded stage.
  seed: int | None
  # The stage config it runs with.
  config: ml_collections.ConfigDict


def seeded_name(name: str, seed: int) -> str:
  """The output folder (and record) of one seed of a seeded stage."""
  return f"{name}_s{seed}"


def check_seeds(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless `seeds` / `seeded_stages` can be run."""
  seeded = list(config.get("seeded_stages") or ())
  seeds = list(config.get("seeds") or ())
  if not seeded:
    return
  if not seeds:
    raise ValueError(f"config field 'seeds': empty, but 'seeded_stages' "
                     f"lists {seeded}")
  if (len(set(seeds)) != len(seeds)
      or not all(isinstance(s, int) and s >= 0 for s in seeds)):
    raise ValueError(f"config field 'seeds': {seeds} must be distinct "
                     "non-negative ints")
  names = list(config.stages)
  for name in seeded:
    if name not in names:
      raise ValueError(f"config field 'seeded_stages': {name!r} is not in "
                       f"'stages' ({names})")
    kind = stage_kind(config, name)
    if kind.name_field is None:
      kind_name = (config.get("stage_kinds") or {}).get(name, name)
      seedable = sorted(k for k, v in KINDS.items() if v.name_field)
      folders = sorted({f.split("/")[0] + "/"
                        for f in kind.outputs(config[name])})
      raise ValueError(
          f"config field 'seeded_stages': stage {name!r} (kind {kind_name}) "
          f"writes a fixed folder ({', '.join(folders)}) "
          "and cannot repeat over seeds, every seed would overwrite it; "
          f"only kinds with an output name can: {seedable}")
    if SEED_FIELD not in config[name]:
      raise ValueError(f"config field '{name}': no '{SEED_FIELD}' field to "
                       "set per seed")
    for seed in seeds:
      if seeded_name(name, seed) in names:
        raise ValueError(f"config field 'seeded_stages': run "
                         f"{seeded_name(name, seed)!r} of {name!r} clashes "
                         "with a stage of that name")


def stage_runs(config: ml_collections.ConfigDict, name: str) -> list[StageRun]:
  """The runs of stage `name`: one, or one per seed if it is seeded."""
  if name not in (config.get("seeded_stages") or ()):
    return [StageRun(name, name, None, config[name])]
  kind = stage_kind(config, name)
  field = kind.name_field
  seeded_outputs = {config[s][stage_kind(config, s).name_field]
                    for s in config.seeded_stages}
  runs = []
  for seed in config.seeds:
    cfg = config[name].copy_and_resolve_references()
    cfg[SEED_FIELD] = seed
    cfg[field] = seeded_name(config[name][field], seed)
    for f in kind.input_fields:
      if cfg[f] in seeded_outputs:
        cfg[f] = seeded_name(cfg[f], seed)
    runs.append(StageRun(name, seeded_name(name, seed), seed, cfg))
  return runs


def seed_groups(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """{table row: its per-seed output folders} of the seeded stages; the row
  is the stage's unseeded output name (its config's name field)."""
  groups = {}
  for name in config.get("seeded_stages") or ():
    field = stage_kind(config, name).name_field
    groups[config[name][field]] = [r.config[field]
                                   for r in stage_runs(config, name)]
  return groups


def _command_line() -> str:
  """This process's command line, a binary's path as `python -m <module>`."""
  argv = list(sys.argv)
  path = pathlib.Path(argv[0]) if argv else None
  if path is not None and path.suffix == ".py" and path.parent.name == (
      "binaries"):
    argv[0:1] = ["python", "-m", f"binaries.{path.stem}"]
  return " ".join(shlex.quote(a) for a in argv)


def _config_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), sort_keys=True, default=str)


def _is_done(workdir: pathlib.Path, name: str, kind: StageKind,
             cfg: ml_collections.ConfigDict) -> bool:
  if not all((workdir / f).exists() for f in kind.outputs(cfg)):
    return False
  record = workdir / PIPELINE_DIR / f"{name}.json"
  if not record.exists():
    return False
  return json.loads(record.read_text()).get("config") == _config_json(cfg)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        force: Sequence[str] = ()) -> dict[str, Any]:
  """Runs the pipeline's stages; returns {"stages", "results", "seeds", ...}.

  Args:
    config: a configs/pipeline.py config.
    workdir: the workdir every stage reads and writes.
    force: stage names to re-run even when complete ("all": every stage;
      "<stage>_s<seed>": one seed of a seeded stage).

  Returns:
    {"stages": {record: status}, "results": {model: metrics (the mean over
    seeds for a seeded stage)}, "seeds": {model: per-seed metrics, mean,
    std}, "seconds": ...}, also written to pipeline/results.json.
  """
  workdir = pathlib.Path(workdir).resolve()
  names = list(config.stages)
  for name in names:
    if name not in config:
      raise ValueError(f"config field {name!r}: stage {name!r} is listed in "
                       "'stages' but has no config")
    stage_kind(config, name)
  check_seeds(config)
  runs = {name: stage_runs(config, name) for name in names}
  records = {r.record for rs in runs.values() for r in rs}
  unknown = set(force) - set(names) - records - {"all"}
  if unknown:
    raise ValueError(f"--force: unknown stages {sorted(unknown)} (this "
                     f"pipeline has {names})")
  t_start = time.time()
  rerun = "all" in force
  timings = {}
  for i, name in enumerate(names):
    kind = stage_kind(config, name)
    rerun = rerun or name in force
    ran = False
    for run_ in runs[name]:
      label = f"[{i + 1}/{len(names)}] {name}"
      if run_.seed is not None:
        label += f" seed {run_.seed}"
      status = {} if run_.seed is None else {"stage": name,
                                             "seed": run_.seed}
      if (not rerun and run_.record not in force
          and _is_done(workdir, run_.record, kind, run_.config)):
        logging.info("%s: complete, skipped", label)
        timings[run_.record] = {"status": "skipped", **status}
        continue
      logging.info("%s: running (%s) | %.0fs elapsed", label, kind.run,
                   time.time() - t_start)
      t0 = time.time()
      kind.function()(run_.config, workdir)
      secs = time.time() - t0
      atomic_write_json(workdir / PIPELINE_DIR / f"{run_.record}.json",
                        {"config": _config_json(run_.config), "seconds": secs})
      timings[run_.record] = {"status": "ran", "seconds": round(secs, 2),
                              **status}
      logging.info("%s: done in %.1fs", label, secs)
      ran = True
    # Later stages read what this one writes; the seeds of one stage do not
    # read each other's output, so each is skipped on its own.
    rerun = rerun or ran
  results, seeds = aggregate_seeds(collect_results(workdir),
                                   seed_groups(config))
  results = order_results(results, names)
  summary = {"stages": timings, "results": results, "seeds": seeds,
             "seconds": round(time.time() - t_start, 2),
             # Where the figures come from (tools/front_page.py shows them).
             "command": _command_line(),
             "date": time.strftime("%Y-%m-%d", time.gmtime())}
  atomic_write_json(workdir / RESULTS_FILE, summary)
  logging.info("results (test split): %s", workdir / RESULTS_FILE)
  keys = tuple(config.get("table_keys") or TABLE_KEYS)
  lines = ["", format_table(results, seeds, keys)]
  if config.get("breakdown"):
    lines += ["", format_breakdown(results, seeds, keys)]
  examples = format_examples(workdir, config.get("num_examples", 3))
  examples += format_query_examples(workdir, config.get("num_examples", 3))
  if examples:
    lines += ["", *examples]
  sys.stdout.write("\n".join(lines) + "\n")
  sys.stdout.flush()
  return summary


def collect_results(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """{model: metrics} of every WORKDIR/<model>/metrics.json with test keys."""
  out = {}
  for path in sorted(pathlib.Path(workdir).glob("*/metrics.json")):
    m = json.loads(path.read_text())
    if any(k.startswith("test/") for k in m):
      out[path.parent.name] = m
  return out


def order_results(results: dict[str, dict[str, float]],
                  stages: Sequence[str] = ()) -> dict[str, dict[str, float]]:
  """Baselines (BASELINES order) first, then models in `stages` order, then
  any others by name."""
  rank = {m: i for i, m in enumerate([*BASELINES, *stages])}
  return dict(sorted(results.items(),
                     key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def aggregate_seeds(
    results: dict[str, dict[str, float]], groups: dict[str, Sequence[str]]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
  """Replaces each seeded stage's per-seed rows by one row of their means.

  Args:
    results: {model folder: metrics} (collect_results).
    groups: {row: its per-seed folders} (seed_groups).

  Returns:
    (results, seeds): results with, for each row that has a per-seed folder
    with metrics, the per-seed folders replaced by `row` -> the mean of
    every numeric metric the seeds share; seeds = {row: {"runs": [folder],
    "per_seed": {folder: metrics}, "mean": {...}, "std": {...} (sample std,
    ddof=1; None for one seed), "num_seeds": n}}.
  """
  results, seeds = dict(results), {}
  for row, folders in groups.items():
    present = [f for f in folders if f in results]
    if not present:
      continue
    per_seed = {f: results.pop(f) for f in present}
    if row in results:
      logging.warning("%s/metrics.json is an unseeded run of seeded stage "
                      "%s; the table shows the mean over %s instead", row,
                      row, present)
    keys = [k for k in per_seed[present[0]]
            if all(_is_number(m.get(k)) for m in per_seed.values())]
    # [seeds, keys]
    values = np.array([[m[k] for k in keys] for m in per_seed.values()],
                      dtype=np.float64)
    mean = values.mean(axis=0)
    std = (values.std(axis=0, ddof=1) if len(present) > 1
           else [None] * len(keys))
    results[row] = {k: float(v) for k, v in zip(keys, mean)}
    seeds[row] = {
        "runs": present, "per_seed": per_seed, "mean": dict(results[row]),
        "std": {k: None if v is None else float(v)
                for k, v in zip(keys, std)},
        "num_seeds": len(present)}
  return results, seeds


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(m: dict[str, float], key: str) -> float | None:
  """test/<key>, falling back to recall@K for hr@K (equal for 1 target)."""
  for k in (f"test/{key}", f"test/{key.replace('hr@', 'recall@')}"):
    if k in m:
      return m[k]
  return None


def _cell(mean: float | None, std: float | None, n: int | None) -> str:
  """"0.0742", or "0.0742 +- 0.0031 (3)" for a mean over n seeds."""
  if mean is None:
    return "-"
  if n is None:
    return f"{mean:.4f}"
  return (f"{mean:.4f} ({n})" if std is None
          else f"{mean:.4f} +- {std:.4f} ({n})")


def format_table(results: dict[str, dict[str, float]],
                 seeds: dict[str, dict[str, Any]] | None = None,
                 keys: Sequence[str] = TABLE_KEYS) -> str:
  """The results table: test metrics, invalid rate and seconds.

  Args:
    results: {model: metrics}, in row order.
    seeds: {model: {"std", "num_seeds", ...}} of the rows that are means
      over seeds (aggregate_seeds); their metric cells read
      "mean +- std (number of seeds)", invalid rate and seconds the mean.
    keys: the metric columns (test/<key>; default HR/NDCG@5,10).

  Returns:
    The table as plain text.
  """
  seeds = seeds or {}
  head = ["model", *(f"test/{k}" for k in keys), "invalid", "seconds"]
  rows = []
  for model, m in results.items():
    s = seeds.get(model)
    cells = [_cell(_value(m, k), s and _value(s["std"], k),
                   s and s["num_seeds"]) for k in keys]
    rows.append([model, *cells,
                 ("-" if "invalid_rate" not in m
                  else f"{m['invalid_rate']:.3f}"),
                 ("-" if "seconds" not in m else f"{m['seconds']:.0f}")])
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
  lines = [fmt(head), "  ".join("-" * w for w in widths)]
  return "\n".join(lines + [fmt(r) for r in rows])


def format_breakdown(results: dict[str, dict[str, float]],
                     seeds: dict[str, dict[str, Any]] | None = None,
                     keys: Sequence[str] = TABLE_KEYS) -> str:
  """One row per `<prefix>/test/<key>` group of each model's metrics.

  E.g. UR4Rec's `full/rank/test/ndcg@10` -> row "ur4rec full/rank" (each
  scorer and fusion under each protocol); cells as in `format_table`.
  """
  seeds = seeds or {}
  sub: dict[str, dict[str, float]] = {}
  sub_seeds: dict[str, dict[str, Any]] = {}
  for model, m in results.items():
    # In the order they first appear.
    prefixes = dict.fromkeys(k.split("/test/")[0] for k in m
                             if "/test/" in k and not k.startswith("test/"))
    for p in prefixes:
      row = f"{model} {p}"
      sub[row] = {f"test/{k.split('/test/')[1]}": v for k, v in m.items()
                  if k.startswith(f"{p}/test/")}
      s = seeds.get(model)
      if s:
        sub_seeds[row] = {"num_seeds": s["num_seeds"], "std": {
            f"test/{k.split('/test/')[1]}": v for k, v in s["std"].items()
            if k.startswith(f"{p}/test/")}}
  return format_table(sub, sub_seeds, keys)


def format_examples(workdir: pathlib.Path, num_users: int) -> list[str]:
  """History and top-5 titles of a few test users, for every model that wrote
  `<model>/recommendations.json` (a list of {"user", "history", "target",
  "top10"} records; internal ids)."""
  files = sorted(pathlib.Path(workdir).glob("*/recommendations.json"))
  if not files or num_users <= 0:
    return []
  ds = Dataset.load(pathlib.Path(workdir) / "dataset")
  recs = {f.parent.name: {r["user"]: r for r in json.loads(f.read_text())}
          for f in files}
  users = sorted(set.intersection(*(set(r) for r in recs.values())))

  def name(i: int) -> str:  # the title, else (items without text) the raw id
    return ds.title(i) or f"item {ds.item_ids[i]}"

  lines = []
  for user in users[:num_users]:
    first = next(iter(recs.values()))[user]
    hist = [name(i) for i in first["history"][-5:]]
    lines.append(f"user {ds.user_ids[user]}: last history {hist}")
    target = [name(i) for i in first["target"]]
    lines.append(f"  held-out next item: {target}")
    for model, r in recs.items():
      lines.append(f"  {model} top-5: {[name(i) for i in r[user]['top10'][:5]]}")
  return lines


def format_query_examples(workdir: pathlib.Path, num: int) -> list[str]:
  """A few test queries and their top-5 items, for every model that wrote
  `<model>/examples.json` (a list of {"query", "top10": [[name, score]],
  "generator_top10": [name]} records; generate-and-rank); of a seeded
  stage, only the first seed's."""
  files = sorted(pathlib.Path(workdir).glob("*/examples.json"))[:1]
  lines = []
  for f in files:  # one model: the reranker's file also has the generator's
    for ex in json.loads(f.read_text())[:max(num, 0)]:
      lines.append(f"query {ex['query']!r} ({f.parent.name}):")
      if ex.get("generator_top10"):
        lines.append(f"  generator top-5: {ex['generator_top10'][:5]}")
      lines.append(f"  reranked top-5: {[n for n, _ in ex['top10'][:5]]}")
  return lines
