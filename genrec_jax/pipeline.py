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
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
import ml_collections

from genrec_jax.data.dataset import Dataset, atomic_write_json

PIPELINE_DIR = "pipeline"
RESULTS_FILE = "pipeline/results.json"
# Columns of the results table (test split, full ranking).
TABLE_KEYS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")
# Rows that come first in the results table, in this order; the other
# (generative) models follow in stage order.
BASELINES = ("most_popular", "item_knn", "lightgcn", "sasrec")


@dataclasses.dataclass(frozen=True)
class StageKind:
  """A stage: its library entry point and its done-files."""

  # "module:function" with signature run(config, workdir) -> dict.
  run: str
  # Stage config -> files (relative to the workdir) that exist once the
  # stage completed; each stage writes its last one last.
  outputs: Callable[[ml_collections.ConfigDict], list[str]]

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
                            lambda c: ["sids/report.json"]),
    "train_lightgcn": StageKind("genrec_jax.graph.lightgcn_train:run",
                                lambda c: ["lightgcn/metrics.json"]),
    "build_hints": StageKind("genrec_jax.graph.hints:run",
                             lambda c: ["hints/report.json"]),
    "train_sasrec": StageKind("genrec_jax.training.sasrec_train:run",
                              lambda c: ["sasrec/metrics.json"]),
    "train_generative": StageKind("genrec_jax.generative.stage:run",
                                  lambda c: [f"{c.name}/metrics.json"]),
}


def stage_kind(config: ml_collections.ConfigDict, name: str) -> StageKind:
  kinds = config.get("stage_kinds") or {}
  kind = kinds.get(name, name)
  if kind not in KINDS:
    raise ValueError(f"config field 'stages': stage {name!r} has no kind "
                     f"(known: {sorted(KINDS)}; map other names in "
                     "'stage_kinds')")
  return KINDS[kind]


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
  """Runs the pipeline's stages; returns {"stages": ..., "results": ...}.

  Args:
    config: a configs/pipeline.py config.
    workdir: the workdir every stage reads and writes.
    force: stage names to re-run even when complete ("all": every stage).
  """
  workdir = pathlib.Path(workdir).resolve()
  names = list(config.stages)
  for name in names:
    if name not in config:
      raise ValueError(f"config field {name!r}: stage {name!r} is listed in "
                       "'stages' but has no config")
    stage_kind(config, name)
  unknown = set(force) - set(names) - {"all"}
  if unknown:
    raise ValueError(f"--force: unknown stages {sorted(unknown)} (this "
                     f"pipeline has {names})")
  t_start = time.time()
  rerun = "all" in force
  timings = {}
  for i, name in enumerate(names):
    kind, cfg = stage_kind(config, name), config[name]
    rerun = rerun or name in force
    if not rerun and _is_done(workdir, name, kind, cfg):
      logging.info("[%d/%d] %s: complete, skipped", i + 1, len(names), name)
      timings[name] = {"status": "skipped"}
      continue
    rerun = True  # later stages read what this one writes
    logging.info("[%d/%d] %s: running (%s) | %.0fs elapsed", i + 1,
                 len(names), name, kind.run, time.time() - t_start)
    t0 = time.time()
    kind.function()(cfg, workdir)
    secs = time.time() - t0
    atomic_write_json(workdir / PIPELINE_DIR / f"{name}.json",
                      {"config": _config_json(cfg), "seconds": secs})
    timings[name] = {"status": "ran", "seconds": round(secs, 2)}
    logging.info("[%d/%d] %s: done in %.1fs", i + 1, len(names), name, secs)
  results = order_results(collect_results(workdir), names)
  summary = {"stages": timings, "results": results,
             "seconds": round(time.time() - t_start, 2)}
  atomic_write_json(workdir / RESULTS_FILE, summary)
  logging.info("results (test split): %s", workdir / RESULTS_FILE)
  lines = ["", format_table(results)]
  examples = format_examples(workdir, config.get("num_examples", 3))
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


def _value(m: dict[str, float], key: str) -> float | None:
  """test/<key>, falling back to recall@K for hr@K (equal for 1 target)."""
  for k in (f"test/{key}", f"test/{key.replace('hr@', 'recall@')}"):
    if k in m:
      return m[k]
  return None


def format_table(results: dict[str, dict[str, float]]) -> str:
  """The results table: test HR/NDCG@5,10, invalid rate and seconds."""
  head = ["model", *(f"test/{k}" for k in TABLE_KEYS), "invalid", "seconds"]
  rows = []
  for model, m in results.items():
    vals = [_value(m, k) for k in TABLE_KEYS]
    rows.append([model, *("-" if v is None else f"{v:.4f}" for v in vals),
                 ("-" if "invalid_rate" not in m
                  else f"{m['invalid_rate']:.3f}"),
                 ("-" if "seconds" not in m else f"{m['seconds']:.0f}")])
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
  lines = [fmt(head), "  ".join("-" * w for w in widths)]
  return "\n".join(lines + [fmt(r) for r in rows])


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
  lines = []
  for user in users[:num_users]:
    first = next(iter(recs.values()))[user]
    hist = [ds.title(i) for i in first["history"][-5:]]
    lines.append(f"user {ds.user_ids[user]}: last history {hist}")
    target = [ds.title(i) for i in first["target"]]
    lines.append(f"  held-out next item: {target}")
    for model, r in recs.items():
      lines.append(f"  {model} top-5: {[ds.title(i) for i in r[user]['top10'][:5]]}")
  return lines
