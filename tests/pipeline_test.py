"""run_pipeline: stages in order, skip when complete, force, results table."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import pipeline as pipeline_config
from genrec_jax import pipeline
from tests.conftest import REPO

USERS, ITEMS = 29, 19


def tiny_config(tmp_path):
  rng = np.random.default_rng(0)
  lines = []
  for u in range(USERS):  # cycles i -> i+1 with a random start and length
    start, n = rng.integers(ITEMS), rng.integers(4, 9)
    lines.append(f"{u} " + " ".join(str((start + k) % ITEMS)
                                    for k in range(n)))
  (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
  (tmp_path / "items.tsv").write_text("item_id\ttitle\n" + "".join(
      f"{i}\tItem number {i}\n" for i in range(ITEMS)))
  config = pipeline_config.get_config("tiny")
  config.prepare_data.data.sequence_file = str(tmp_path / "seq.txt")
  config.prepare_data.data.items_file = str(tmp_path / "items.tsv")
  return config


def test_pipeline_runs_skips_and_forces(tmp_path):
  config, w = tiny_config(tmp_path), tmp_path / "w"
  out = pipeline.run(config, w)
  assert all(s["status"] == "ran" for s in out["stages"].values())
  assert list(out["stages"]) == list(config.stages)
  for name in config.stages:  # every declared done-file was written
    kind = pipeline.stage_kind(config, name)
    assert all((w / f).exists() for f in kind.outputs(config[name])), name
  assert set(out["results"]) == {"most_popular", "lightgcn", "sasrec",
                                 "tiger", "minionerec", "minigr_cf",
                                 "minionerec_rl", "minigr_cf_rl"}
  assert out["results"]["minigr_cf"]["invalid_rate"] == 0.0
  assert pipeline.format_examples(w, 2)[0].startswith("user ")
  table = pipeline.format_table(out["results"])
  assert "sasrec" in table and "test/ndcg@10" in table
  saved = json.loads((w / pipeline.RESULTS_FILE).read_text())
  assert saved["results"]["sasrec"]["test/hr@10"] == (
      out["results"]["sasrec"]["test/hr@10"])

  # binaries.recommend: a user id and a history, interactively.
  from genrec_jax.data.dataset import Dataset
  ds = Dataset.load(w / "dataset")
  user = ds.user_ids[int(ds.test.users[0])]
  hist = ",".join(ds.item_ids[i] for i in ds.test.history[0][-3:])
  r = subprocess.run(
      [sys.executable, "-m", "binaries.recommend", f"--workdir={w}",
       "--model=minigr_cf", "--top_n=4", "--beam_size=6"],
      input=f"{user}\nh:{hist}\nnobody\nq\n", cwd=REPO,
      capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  tops = [l for l in r.stdout.splitlines() if l.strip()[:3] in (" 1.", "1. ")]
  assert len(tops) == 2 and "Item number" in tops[0]
  assert "error: user 'nobody'" in r.stdout
  ranked = re.findall(r"^ +\d+\. (\w+):", r.stdout.split("top 4:")[2],
                      re.MULTILINE)
  assert 0 < len(ranked) <= 4
  shown = set(ranked)
  assert not shown & set(hist.split(","))  # history items are not repeated

  # Every trained model reloads from its folder and ranks for a user.
  from genrec_jax import evaluate as evaluate_stage  # pylint: disable=g-import-not-at-top
  from genrec_jax import recommend  # pylint: disable=g-import-not-at-top
  from configs import evaluate as evaluate_config  # pylint: disable=g-import-not-at-top
  for name in ("sasrec", "lightgcn", "tiger", "minionerec"):
    rec = recommend.Recommender(w, name)
    u, history = rec.user_history(user)
    top = rec.recommend(history, user=u, top_n=4)
    assert not set(top) & set(history), name
    # Scoring models fill the list; a 6-beam search may keep fewer after
    # the history is masked.
    assert (len(top) == 4 if name in ("sasrec", "lightgcn")
            else 0 < len(top) <= 4), name
  # The evaluate stage on the reloaded SASRec gives its training metrics.
  trained = json.loads((w / "sasrec" / "metrics.json").read_text())
  ev = evaluate_config.get_config()
  ev.update(model="sasrec", top_n=10)
  again = evaluate_stage.run(ev, w)
  for k in ("test/hr@5", "test/ndcg@10"):
    assert again[k] == pytest.approx(trained[k]), k

  # Complete and unchanged: everything is skipped.
  again = pipeline.run(config, w)
  assert {s["status"] for s in again["stages"].values()} == {"skipped"}
  # A changed stage config re-runs that stage and the ones after it.
  # (The cheap first stages from here on.) A changed stage config re-runs
  # that stage and the ones after it; so does --force.
  config.stages = config.stages[:4]
  config.build_hints.num_neighbours = 5
  changed = pipeline.run(config, w)
  status = [v["status"] for v in changed["stages"].values()]
  assert status == ["skipped"] * 3 + ["ran"]
  forced = pipeline.run(config, w, force=["train_lightgcn"])
  status = [v["status"] for v in forced["stages"].values()]
  assert status == ["skipped"] * 2 + ["ran"] * 2
  with pytest.raises(ValueError, match="unknown stages"):
    pipeline.run(config, w, force=["nope"])


def _seeded_tiny_config(tmp_path):
  """The tiny pipeline up to MiniOneRec, which repeats over seeds 0 and 1."""
  config = tiny_config(tmp_path)
  config.stages = ("prepare_data", "embed_items", "build_sids", "minionerec")
  config.seeds = (0, 1)
  config.seeded_stages = ("minionerec",)
  config.minionerec.mesh.num_devices = 1
  return config


def test_seeded_stage_runs_per_seed_skips_and_forces(tmp_path, capsys):
  config, w = _seeded_tiny_config(tmp_path), tmp_path / "w"
  out = pipeline.run(config, w)
  runs = ["minionerec_s0", "minionerec_s1"]
  assert list(out["stages"]) == [*config.stages[:3], *runs]
  assert {s["status"] for s in out["stages"].values()} == {"ran"}
  assert out["stages"]["minionerec_s1"]["seed"] == 1
  for seed, run in enumerate(runs):  # its own folder, seed and record
    assert (w / run / "metrics.json").exists()
    record = json.loads((w / "pipeline" / f"{run}.json").read_text())
    ran = json.loads(record["config"])
    assert (ran["seed"], ran["name"]) == (seed, run)
  assert not (w / "minionerec").exists()
  # The seeds train differently.
  losses = [json.loads((w / r / "train_log.json").read_text())
            for r in runs]
  assert losses[0] != losses[1]

  # One row: mean +- sample std over the seeds, as numpy computes them.
  per_seed = [json.loads((w / r / "metrics.json").read_text()) for r in runs]
  agg = out["seeds"]["minionerec"]
  assert agg["num_seeds"] == 2 and agg["runs"] == runs
  assert agg["per_seed"] == dict(zip(runs, per_seed))
  table = capsys.readouterr().out.splitlines()
  row = next(l for l in table if l.startswith("minionerec"))
  assert not any(l.startswith("minionerec_s") for l in table)
  for k in ("hr@5", "ndcg@5"):  # the tiny config ranks the top 5
    vals = np.array([m[f"test/{k}"] for m in per_seed])
    mean, std = vals.mean(), vals.std(ddof=1)
    assert agg["mean"][f"test/{k}"] == pytest.approx(mean)
    assert agg["std"][f"test/{k}"] == pytest.approx(std)
    assert out["results"]["minionerec"][f"test/{k}"] == pytest.approx(mean)
    assert f"{mean:.4f} +- {std:.4f} (2)" in row, (k, row)
  saved = json.loads((w / pipeline.RESULTS_FILE).read_text())
  assert saved["seeds"]["minionerec"]["per_seed"] == agg["per_seed"]
  assert list(saved["results"]) == ["minionerec"]

  # Complete: every (stage, seed) is skipped; forcing the stage re-runs
  # both seeds, forcing one seed re-runs that one only.
  again = pipeline.run(config, w)
  assert {s["status"] for s in again["stages"].values()} == {"skipped"}
  status = lambda o: [v["status"] for v in o["stages"].values()]
  forced = pipeline.run(config, w, force=["minionerec"])
  assert status(forced) == ["skipped"] * 3 + ["ran"] * 2
  forced = pipeline.run(config, w, force=["minionerec_s1"])
  assert status(forced) == ["skipped"] * 4 + ["ran"]
  with pytest.raises(ValueError, match="unknown stages"):
    pipeline.run(config, w, force=["minionerec_s7"])


def test_seeding_a_stage_that_cannot_repeat_is_an_error(tmp_path):
  config, w = _seeded_tiny_config(tmp_path), tmp_path / "w"
  config.stages = ("prepare_data", "train_lightgcn", "minionerec")
  config.seeded_stages = ("train_lightgcn",)
  with pytest.raises(ValueError, match=r"stage 'train_lightgcn' \(kind "
                     r"train_lightgcn\) writes a fixed folder \(lightgcn/\) "
                     "and cannot repeat over seeds"):
    pipeline.run(config, w)
  config.seeded_stages = ("tiger",)
  with pytest.raises(ValueError, match="'tiger' is not in 'stages'"):
    pipeline.run(config, w)
  config.seeded_stages, config.seeds = ("minionerec",), ()
  with pytest.raises(ValueError, match="'seeds': empty"):
    pipeline.run(config, w)
  config.seeds = (1, 1)
  with pytest.raises(ValueError, match="distinct"):
    pipeline.run(config, w)
  assert not w.exists()  # refused before any stage ran
  r = subprocess.run(  # the binary: one line on stderr
      [sys.executable, "-m", "binaries.run_pipeline",
       "--config=configs/pipeline.py:tiny", f"--workdir={w}",
       "--config.seeds=(0,1)", "--config.seeded_stages=('train_lightgcn',)"],
      cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "fixed folder (lightgcn/)" in err[0], r.stderr


def test_seed_rows_mean_std_and_order(tmp_path):
  """Per-seed folders become one row of means; std has ddof=1; one seed
  shows no std; unseeded rows print as before."""
  rng = np.random.default_rng(3)
  keys = ["test/hr@5", "test/ndcg@5", "test/recall@10", "test/ndcg@10"]
  per_seed = {}
  for run in ("b_s0", "b_s1", "b_s2", "a_s4"):
    per_seed[run] = {**{k: float(v) for k, v in zip(keys, rng.random(4))},
                     "invalid_rate": 0.0, "seconds": 10.0, "note": "x"}
  per_seed["sasrec"] = {k: 0.5 for k in keys}
  results, seeds = pipeline.aggregate_seeds(
      per_seed, {"b": ["b_s0", "b_s1", "b_s2", "b_s3"], "a": ["a_s4"]})
  results = pipeline.order_results(results, ("a", "b"))
  assert list(results) == ["sasrec", "a", "b"]
  vals = np.array([[per_seed[f"b_s{i}"][k] for k in keys] for i in range(3)])
  assert [results["b"][k] for k in keys] == pytest.approx(vals.mean(0))
  assert [seeds["b"]["std"][k] for k in keys] == pytest.approx(
      vals.std(0, ddof=1))
  assert "note" not in results["b"] and seeds["b"]["num_seeds"] == 3
  assert seeds["a"]["std"]["test/hr@5"] is None
  rows = {l.split()[0]: l for l in
          pipeline.format_table(results, seeds).splitlines()[2:]}
  assert rows["sasrec"].split() == ["sasrec", *["0.5000"] * 4, "-", "-"]
  cells = [f"{m:.4f} +- {s:.4f} (3)" for m, s in
           zip(vals.mean(0), vals.std(0, ddof=1))]
  assert rows["b"].split("  ")[0] == "b"
  assert all(c in rows["b"] for c in cells), rows["b"]
  assert rows["b"].split()[-2:] == ["0.000", "10"]
  assert f"{per_seed['a_s4']['test/hr@5']:.4f} (1)" in rows["a"]


def test_format_table_and_examples(tmp_path):
  config, w = tiny_config(tmp_path), tmp_path / "w"
  config.stages = ("prepare_data",)
  pipeline.run(config, w)
  (w / "m").mkdir()
  (w / "m" / "metrics.json").write_text(json.dumps(
      {"test/hr@5": 0.5, "test/ndcg@5": 0.25, "test/recall@10": 0.75,
       "test/ndcg@10": 0.3, "invalid_rate": 0.0, "seconds": 3.2}))
  table = pipeline.format_table(pipeline.collect_results(w)).splitlines()
  assert table[2].split() == ["m", "0.5000", "0.2500", "0.7500", "0.3000",
                              "0.000", "3"]
  from genrec_jax.data.dataset import Dataset
  ds = Dataset.load(w / "dataset")
  user = int(ds.test.users[0])
  (w / "m" / "recommendations.json").write_text(json.dumps([
      {"user": user, "history": [1, 2], "target": [9],
       "top10": [3, 4, 5, 6, 7, 8]}]))
  lines = pipeline.format_examples(w, 3)
  assert lines[0].startswith(f"user {ds.user_ids[user]}: last history")
  assert "Item number 2" in lines[0] and "Item number 9" in lines[1]
  assert "Item number 3" in lines[2] and "Item number 8" not in lines[2]
  # An item without a title (a text-free dataset) shows its raw id.
  ds.item_fields["title"][3] = ""
  ds.save(w / "dataset")
  lines = pipeline.format_examples(w, 3)
  assert f"'item {ds.item_ids[3]}'" in lines[2], lines[2]
  assert "Item number 4" in lines[2]


def test_results_table_order(tmp_path):
  """Baselines first (most_popular, item_knn, seq_item_knn, lightgcn,
  sasrec), then the generative models in stage order, then anything else by
  name."""
  metrics = {"test/hr@5": 0.5, "test/ndcg@5": 0.25, "test/hr@10": 0.75,
             "test/ndcg@10": 0.3}
  for model in ("tiger", "sasrec", "zeta", "minigr_cf", "item_knn",
                "lightgcn", "most_popular", "minionerec", "seq_item_knn"):
    (tmp_path / model).mkdir()
    (tmp_path / model / "metrics.json").write_text(json.dumps(metrics))
  stages = ("prepare_data", "train_baselines", "tiger", "minionerec",
            "minigr_cf")
  results = pipeline.order_results(pipeline.collect_results(tmp_path),
                                   stages)
  expect = ["most_popular", "item_knn", "seq_item_knn", "lightgcn", "sasrec",
            "tiger", "minionerec", "minigr_cf", "zeta"]
  assert list(results) == expect
  rows = [l.split()[0] for l in
          pipeline.format_table(results).splitlines()[2:]]
  assert rows == expect


def test_run_prints_table_on_stdout_not_in_the_log(tmp_path, capsys, caplog):
  config, w = tiny_config(tmp_path), tmp_path / "w"
  config.stages = ("prepare_data",)
  for model in ("sasrec", "most_popular"):
    (w / model).mkdir(parents=True)
    (w / model / "metrics.json").write_text(json.dumps({"test/hr@5": 0.5}))
  with caplog.at_level("INFO"):
    pipeline.run(config, w)
  out = capsys.readouterr().out.splitlines()
  table = [l for l in out if l.strip()]
  assert table[0].split()[:2] == ["model", "test/hr@5"]
  assert [l.split()[0] for l in table[2:4]] == ["most_popular", "sasrec"]
  assert all(l == l.rstrip() for l in out)
  assert not any("test/hr@5" in r.getMessage() for r in caplog.records)


def test_library_info_lines_are_quiet_by_default():
  """binaries.common keeps our INFO lines, every warning, and drops the
  libraries' INFO chatter (Orbax, grain through absl; faiss's loader)."""
  import logging  # pylint: disable=g-import-not-at-top
  from binaries import common  # pylint: disable=g-import-not-at-top
  f = common.OwnInfoFilter()
  site = "/venv/lib/python3.11/site-packages"

  def passes(name, level, path):
    return f.filter(logging.LogRecord(name, level, path, 1, "m", None, None))

  for own in ("genrec_jax/pipeline.py", "binaries/run_pipeline.py"):
    assert passes("absl", logging.INFO, str(REPO / own))
  assert not passes("absl", logging.INFO,
                    f"{site}/orbax/checkpoint/checkpoint_manager.py")
  assert not passes("absl", logging.INFO, f"{site}/grain/_src/x.py")
  assert passes("absl", logging.WARNING,
                f"{site}/orbax/checkpoint/checkpoint_manager.py")
  assert not passes("faiss.loader", logging.INFO, f"{site}/faiss/loader.py")
  assert passes("faiss.loader", logging.ERROR, f"{site}/faiss/loader.py")
  assert not passes("jax._src.compilation_cache", logging.INFO, "x.py")
  assert passes("genrec_jax.pipeline", logging.INFO, "x.py")


def test_binaries_hide_orbax_chatter_unless_log_all(tmp_path):
  """A binary's main with setup_logging: Orbax's INFO lines are gone, and
  --log_all brings them back."""
  script = tmp_path / "save.py"
  script.write_text(
      "import sys\n"
      "from absl import app, logging\n"
      "import numpy as np\n"
      "import orbax.checkpoint as ocp\n"
      "from binaries import common\n"
      "def main(argv):\n"
      "  common.setup_logging()\n"
      "  logging.warning('a warning stays')\n"
      "  with ocp.CheckpointManager(argv[1], options=ocp.\n"
      "      CheckpointManagerOptions(create=True)) as m:\n"
      "    m.save(0, args=ocp.args.StandardSave({'x': np.zeros(3)}))\n"
      "    m.wait_until_finished()\n"
      "  import faiss  # its loader logs INFO lines\n"
      "if __name__ == '__main__':\n"
      "  app.run(main)\n")
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  runs = {}
  for flag in ("", "--log_all"):
    r = subprocess.run([sys.executable, str(script), *filter(None, [flag]),
                        str(tmp_path / f"ckpt{flag}")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    runs[flag] = r.stderr.splitlines()
  assert [l for l in runs[""] if l.startswith("I")] == []
  assert any("a warning stays" in l for l in runs[""])
  assert sum("checkpoint" in l for l in runs["--log_all"]) > 10


def test_binary_bad_stage_is_one_line_error(tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "binaries.run_pipeline",
       "--config=configs/pipeline.py:tiny", f"--workdir={tmp_path}",
       "--config.stages=('prepare_data','train_everything')"],
      cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "train_everything" in err[0]


@pytest.mark.parametrize("variant", ["ml100k", "beauty_cpu", "beauty_paper",
                                     "hints_ablation"])
def test_hint_pair_differs_only_in_the_hint_switch(variant):
  config = pipeline_config.get_config(variant)
  if variant == "hints_ablation":  # ml100k minus TIGER, the pair over seeds
    ml100k = pipeline_config.get_config("ml100k")
    assert config.stages == tuple(
        s for s in ml100k.stages
        if s not in ("build_sids_reassign", "tiger", "minionerec_rl",
                     "minigr_cf_rl"))
    assert config.seeds == (0, 1, 2)
    assert config.seeded_stages == ("minionerec", "minigr_cf")
    assert config.minigr_cf.to_dict() == ml100k.minigr_cf.to_dict()
    pipeline.check_seeds(config)  # both can repeat over seeds
  off, on = config.minionerec.to_dict(), config.minigr_cf.to_dict()
  assert not off["hints"]["enabled"] and on["hints"]["enabled"]
  if off["data"]["examples"] == "causal":
    # Causal demos: the same time budget, so fewer steps with the longer
    # hint sequences.
    assert on["train"]["num_steps"] < off["train"]["num_steps"]
  for c in (off, on):
    c.pop("name")
    c["hints"].pop("enabled")
    if c["data"]["examples"] == "causal":
      c["train"].pop("num_steps")
  assert off == on
  if variant == "beauty_paper":  # TIGER's paper sizes
    m = config.tiger.model
    assert (m.num_layers, m.num_decoder_layers, m.num_heads, m.d_kv,
            m.d_ff) == (4, 4, 6, 64, 1024)


def test_games_cpu_runs_the_beauty_configs_unchanged():
  games = pipeline_config.get_config("games_cpu")
  beauty = pipeline_config.get_config("beauty_cpu")
  assert games.stages == ("prepare_data", "train_baselines", "train_sasrec",
                          "item2vec", "build_sids", "build_sids_reassign",
                          "tiger", "minionerec")
  for name in ("train_baselines", "train_sasrec", "build_sids",
               "build_sids_reassign", "tiger", "minionerec"):
    assert games[name].to_dict() == beauty[name].to_dict(), name
  assert games.prepare_data.data.source == "sasrec_txt"
  assert games.prepare_data.data.split == "leave_one_out"
  # No item text: the SIDs come from item2vec on the train sequences.
  assert games.item2vec.source == "dataset"
  assert pipeline.stage_kind(games, "item2vec").outputs(games.item2vec)


@pytest.mark.parametrize("variant", ["ml100k", "beauty_cpu", "games_cpu"])
def test_cpu_tiger_reads_the_reassigned_sids_built_before_it(variant):
  config = pipeline_config.get_config(variant)
  stages = list(config.stages)
  assert stages.index("build_sids") < stages.index("build_sids_reassign") < (
      stages.index("tiger"))
  outputs = pipeline.stage_kind(config, "build_sids_reassign").outputs(
      config.build_sids_reassign)
  assert all(o.startswith("sids_reassign/") for o in outputs), outputs
  assert config.build_sids_reassign.collisions.strategy == "reassign"
  assert config.tiger.sids_dir == config.build_sids_reassign.output
  assert config.build_sids.output == config.minionerec.sids_dir == "sids"
  # Apart from the collision strategy and the folder, the same SIDs.
  a, b = config.build_sids.to_dict(), config.build_sids_reassign.to_dict()
  for c in (a, b):
    c.pop("output")
    c["collisions"].pop("strategy")
  assert a == b


def test_examples_and_tiger_ablations_differ_only_in_what_they_test():
  config = pipeline_config.get_config("examples_ablation")
  pipeline.check_seeds(config)
  causal = config.minionerec.to_dict()
  prefix = config.minionerec_prefix.to_dict()
  assert (causal["data"]["examples"], prefix["data"]["examples"]) == (
      "causal", "prefix")
  for c in (causal, prefix):
    c.pop("name")
    c["train"].pop("num_steps")
    for k in ("examples", "max_history", "history_buckets"):
      c["data"].pop(k)
  assert causal == prefix
  config = pipeline_config.get_config("tiger_ablation")
  pipeline.check_seeds(config)
  assert config.build_sids_reassign.collisions.strategy == "reassign"
  assert config.build_sids_reassign.output == config.tiger_reassign.sids_dir
  # The 4-token arms read sids/; the 3-token arm is the demo's TIGER.
  assert config.tiger.sids_dir == config.tiger_embed.sids_dir == "sids"
  demo = pipeline_config.get_config("ml100k").tiger.to_dict()
  demo["name"] = "tiger_reassign"
  assert config.tiger_reassign.to_dict() == demo
  base = config.tiger.to_dict()
  for name, field, value in (("tiger_reassign", "sids_dir", None),
                             ("tiger_embed", "model", None)):
    other = config[name].to_dict()
    other["name"] = base["name"]
    other["sids_dir"] = base["sids_dir"]
    other["model"]["embed_init_std"] = base["model"]["embed_init_std"]
    assert other == base, name


def test_rl_ablation_control_differs_only_in_init_and_budget():
  config = pipeline_config.get_config("rl_ablation")
  pipeline.check_seeds(config)
  assert config.seeded_stages == ("minionerec", "minionerec_rl",
                                  "minionerec_more_sft")
  sft = config.minionerec.to_dict()
  more = config.minionerec_more_sft.to_dict()
  assert more["init"] == "minionerec" and sft["init"] is None
  assert (more["train"]["max_minutes"]
          == config.minionerec_rl.train.max_minutes)
  for c in (sft, more):
    for k in ("name", "init"):
      c.pop(k)
    for k in ("num_steps", "max_minutes", "learning_rate"):
      c["train"].pop(k)
  assert sft == more
  runs = pipeline.stage_runs(config, "minionerec_more_sft")
  assert [r.config.init for r in runs] == [
      "minionerec_s0", "minionerec_s1", "minionerec_s2"]


def test_ur4rec_rows_differ_only_in_texts_and_features():
  config = pipeline_config.get_config("ur4rec_ml100k")
  pipeline.check_seeds(config)
  for name in config.stages:
    pipeline.stage_kind(config, name)
  base = config.ur4rec.to_dict()
  for name, field, value in (("ur4rec_smollm2", "texts", "texts_smollm2"),
                             ("ur4rec_mm", "features", {
                                 "path": "features/genre.npy",
                                 "model": base["features"]["model"]})):
    other = config[name].to_dict()
    assert other.pop(field) == value and other.pop("name") == name
    want = {k: v for k, v in base.items() if k not in (field, "name")}
    assert other == want
  # Each seed's SASRec, and every fusion of that seed reads it.
  assert [r.config.name for r in pipeline.stage_runs(config, "train_sasrec")
         ] == ["sasrec_s0", "sasrec_s1", "sasrec_s2"]
  for name in ("ur4rec", "ur4rec_smollm2", "ur4rec_mm"):
    assert [(r.config.sasrec, r.config.seed)
            for r in pipeline.stage_runs(config, name)] == [
                ("sasrec_s0", 0), ("sasrec_s1", 1), ("sasrec_s2", 2)]


def test_breakdown_rows_per_prefix_with_seed_spread():
  results = {"ur4rec": {"test/ndcg@10": 0.5, "full/rank/test/ndcg@10": 0.25,
                        "full/rank/valid/ndcg@10": 0.9,
                        "sampled/gate/test/ndcg@10": 0.125}}
  seeds = {"ur4rec": {"num_seeds": 3, "std": {
      "full/rank/test/ndcg@10": 0.0625, "sampled/gate/test/ndcg@10": 0.5}}}
  lines = pipeline.format_breakdown(results, seeds, ("ndcg@10",)).splitlines()
  assert [l.split()[:2] for l in lines[2:]] == [["ur4rec", "full/rank"],
                                                 ["ur4rec", "sampled/gate"]]
  assert "0.2500 +- 0.0625 (3)" in lines[2]
  assert "0.1250 +- 0.5000 (3)" in lines[3]
