"""tools/front_page.py: the README front page from results files."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "front_page.py"
REFERENCE = REPO.parent / "shared" / "reference" / "RESULTS.md"
# 2026-12-01 12:00 UTC.
MTIME = 1796126400

_spec = importlib.util.spec_from_file_location("front_page", TOOL)
front_page = importlib.util.module_from_spec(_spec)
sys.modules["front_page"] = front_page
_spec.loader.exec_module(front_page)

README = """# project

Hand-written intro, kept as is.

<!-- front-page:systems:start -->
stale systems
<!-- front-page:systems:end -->

## Results by hand? no

<!-- front-page:results:start -->
stale results
<!-- front-page:results:end -->

Between sections.
<!-- front-page:benchmarks:start -->
<!-- front-page:benchmarks:end -->
<!-- front-page:pictures:start -->
old picture
<!-- front-page:pictures:end -->

## Two commands

```bash
make demo
```

<!-- front-page:cite:start -->
<!-- front-page:cite:end -->
Tail text\twith a tab and no final newline"""


def _metrics(hr5, ndcg5, hr10, ndcg10, mrr, **extra):
  return {"test/hr@5": hr5, "test/ndcg@5": ndcg5, "test/hr@10": hr10,
          "test/ndcg@10": ndcg10, "test/mrr": mrr, "valid/hr@10": 0.5,
          **extra}


def _write(path: pathlib.Path, obj) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
  os.utime(path, (MTIME, MTIME))
  return path


@pytest.fixture
def files(tmp_path):
  wd = tmp_path / "runs" / "beauty"
  _write(wd / "dataset" / "meta.json",
         {"name": "beauty", "split": "leave_one_out", "user_ids": ["1"]})
  _write(wd / "dataset" / "stats.json",
         {"users": 22363, "items": 12101, "interactions": 198502,
          "test_rows": 22363})
  results = {
      "stages": {},
      "results": {
          "sasrec": _metrics(0.04567, 0.03012, 0.06891, 0.03789, 0.02941,
                             seconds=35.6),
          "tiger": _metrics(0.04213, 0.02999, 0.06123, 0.03501, 0.02504,
                            invalid_rate=0.0021, num_params=493696,
                            seconds=31.3),
          "minigr_cf": _metrics(0.08, 0.05, 0.1, 0.06, 0.04),
      },
      "seeds": {"minigr_cf": {
          "runs": ["minigr_cf_s0", "minigr_cf_s1", "minigr_cf_s2"],
          "per_seed": {}, "mean": {},
          "std": {"test/hr@5": 0.005, "test/ndcg@5": 0.00123,
                  "test/hr@10": 0.01, "test/ndcg@10": 0.002,
                  "test/mrr": 0.001},
          "num_seeds": 3}},
      "seconds": 1.0,
  }
  res = _write(wd / "pipeline" / "results.json", results)
  _write(wd / "tiger" / "train_log.json",
         {"curve": [{"step": s, "loss": 4.0 / s} for s in (1, 2, 3)],
          "evals": []})
  bench = _write(tmp_path / "runs" / "bench" / "rl" / "results.json", {
      "benchmark": "rl",
      "command": f"{tmp_path}/.venv/bin/python binaries/benchmark.py "
                 "--config=configs/benchmarks.py:rl",
      "machine": {"cpu": "Test CPU", "cores": 2, "backend": "cpu",
                  "jax": "0.10.2", "python": "3.11.7"},
      "config": {"hidden": 128, "layers": 2},
      "results": {"prompts_per_update": 16, "G": 16,
                  "ours_seconds_per_update": 0.4435,
                  "ours_prompts_per_s": 36.08, "torch_version": "2.13.0",
                  "torch_seconds_per_update": 14.6309,
                  "torch_prompts_per_s": 1.09, "speedup": 32.99}})
  readme = tmp_path / "README.md"
  readme.write_text(README)
  return {"tmp": tmp_path, "results": res, "bench": bench, "readme": readme,
          "docs": tmp_path / "docs" / "front_page"}


def _args(f, results=None):
  return ["--results", str(results or f["results"]), "--bench",
          str(f["bench"]), "--command",
          f"{f['results']}=make demo WORKDIR=runs/beauty", "--readme",
          str(f["readme"]), "--docs_dir", str(f["docs"])]


def _outside(text):
  """The text outside every marker pair."""
  return re.sub(r"(<!-- front-page:(\w+):start -->).*?"
                r"(<!-- front-page:\2:end -->)", r"\1\3", text, flags=re.S)


def test_tables_equal_inputs_outside_untouched_idempotent(files):
  assert front_page.main(_args(files)) == 0
  text = files["readme"].read_text()
  assert _outside(text) == _outside(README)
  assert "stale" not in text and "old picture" not in text
  assert text.endswith("Tail text\twith a tab and no final newline")
  # Measured rows: the input numbers, formatted.
  assert ("| `tiger` | TIGER | 0.0421 | 0.0300 | 0.0612 | 0.0350 | 0.0250 "
          "| 0.002 | 494K | 31 |") in text
  assert ("| `sasrec` | SASRec | 0.0457 | 0.0301 | 0.0689 | 0.0379 | 0.0294 "
          "| - | - | 36 |") in text
  assert ("| `minigr_cf` | miniGR-CF, SFT | 0.0800 +- 0.0050 (3) | "
          "0.0500 +- 0.0012 (3) | 0.1000 +- 0.0100 (3) | "
          "0.0600 +- 0.0020 (3) | 0.0400 +- 0.0010 (3) |") in text
  # Provenance: file, date (mtime, UTC), command.
  assert "(2026-12-01); command: `make demo WORKDIR=runs/beauty`" in text
  assert "Amazon Beauty (P5 split) (`beauty`); 22,363 users" in text
  # Published figures beside ours: the same protocol, copied with a source.
  assert ("| `tiger` | HR@5 / NDCG@5 / HR@10 / NDCG@10 | 0.0421 / 0.0300 / "
          "0.0612 / 0.0350 | 0.0454 / 0.0321 / 0.0648 / 0.0384 | TIGER "
          "paper, Table 1 | same protocol") in text
  assert "| 0.4854 / 0.3219 |" in text  # sampled figure: flagged as differing
  assert re.search(r"0\.4854 / 0\.3219 \| SASRec paper[^|]*\| protocol "
                   r"differs, not comparable", text)
  # Benchmark ratio with its command (made relative) and machine.
  assert ("| `rl` | one GRPO update: 16 prompts x G 16 constrained beams, "
          "rewards, policy update (decoder hidden 128, 2 layers) | 0.4435 s "
          "(36.08 prompts/s) | 14.6309 s (1.09 prompts/s)") in text
  assert "| 32.99x |" in text
  assert ("command `.venv/bin/python binaries/benchmark.py "
          "--config=configs/benchmarks.py:rl`; machine: Test CPU, 2 cores"
          ) in text
  # Pictures and citations.
  assert "```mermaid\nflowchart LR" in text
  png = files["docs"] / "training_curves.png"
  assert png.is_file() and png.stat().st_size < front_page.MAX_IMAGE_BYTES
  assert "![training curves](docs/front_page/training_curves.png)" in text
  assert "@inproceedings{rajput2023tiger," in text
  assert "| **TIGER** |" in text
  # Idempotent.
  assert front_page.main(_args(files)) == 0
  assert files["readme"].read_text() == text


def test_identical_results_share_one_table(files):
  again = files["tmp"] / "runs" / "again"
  copy = _write(again / "pipeline" / "results.json",
                files["results"].read_text())
  for name in ("meta", "stats"):
    src = files["results"].parents[1] / "dataset" / f"{name}.json"
    _write(again / "dataset" / f"{name}.json", src.read_text())
  args = _args(files)
  args[2:2] = [str(copy)]
  assert front_page.main(args) == 0
  text = files["readme"].read_text()
  assert text.count("| `tiger` | TIGER |") == 1
  assert re.search(r"The same values .* are in `[^`]*runs/again/pipeline/"
                   r"results\.json` \(2026-12-01\)", text)


@pytest.mark.parametrize("content, message", [
    ('{"results": {"tiger": ', "not valid JSON"),
    ('{"stages": {}}', "not a pipeline results file"),
    ('{"results": {"tiger": {"test/hr@10": "high"}}}', "is not a number"),
    ('{"results": {"t": {}}, "seeds": {"t": {"std": {}}}}', "num_seeds"),
])
def test_malformed_results_exit_nonzero_naming_the_file(files, content,
                                                       message):
  bad = _write(files["tmp"] / "bad" / "results.json", content)
  before = files["readme"].read_bytes()
  proc = subprocess.run([sys.executable, str(TOOL), *_args(files, bad)],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and str(bad) in lines[0] and message in lines[0]
  assert files["readme"].read_bytes() == before


def test_bad_bench_missing_file_and_broken_markers(files, capsys):
  _write(files["bench"], {"command": "x", "results": {}})
  assert front_page.main(_args(files)) == 1
  assert f"{files['bench']}: not a benchmark results file (no 'machine'" in (
      capsys.readouterr().err)
  missing = files["tmp"] / "nope" / "results.json"
  assert front_page.main(_args(files, missing)) == 1
  assert f"{missing}: no such file" in capsys.readouterr().err
  _write(files["bench"], {"command": "x", "machine": {}, "results": {}})
  files["readme"].write_text("<!-- front-page:results:start -->\nno end\n")
  assert front_page.main(_args(files)) == 1
  err = capsys.readouterr().err
  assert str(files["readme"]) in err and "no matching" in err


def test_published_figures_are_copied_from_the_reference():
  if not REFERENCE.is_file():
    pytest.skip(f"reference notes not found: {REFERENCE}")
  lines = REFERENCE.read_text().splitlines()
  for p in (*front_page.PUBLISHED, *front_page.PUBLISHED_SIDS):
    values = [v for _, v in p.values]
    assert any(all(re.search(rf"(?<![\d.]){re.escape(v)}(?!\d)", line)
                   for v in values) for line in lines), p


def _set_metrics(r10, n10, r20, n20, r50, n50, mrr, **extra):
  return {"test/recall@10": r10, "test/ndcg@10": n10, "test/recall@20": r20,
          "test/ndcg@20": n20, "test/recall@50": r50, "test/ndcg@50": n50,
          "test/mrr": mrr, "valid/recall@20": 0.5, "valid/ndcg@20": 0.4,
          **extra}


@pytest.fixture
def lastfm_files(tmp_path):
  """A fake lastfm workdir: set retrieval rows, lastfm/stats.json, the
  prepare_lastfm config and a SID report; no dataset/ folder."""
  wd = tmp_path / "runs" / "lastfm"
  _write(wd / "lastfm" / "stats.json", {
      "name": "lastfm", "artists": 17632, "items": 2828, "users": 1881,
      "queries": {
          "train": {"queries": 3277, "texts": 757, "mean_items": 27.68},
          "valid": {"queries": 363, "texts": 95, "mean_items": 27.34},
          "test": {"queries": 547, "texts": 94, "tag_queries": 94,
                   "user_tag_queries": 453, "mean_items": 29.45}},
      "filtered": {"tag_rows_unknown_artist": 1538}})
  _write(wd / "pipeline" / "prepare_lastfm.json", {"config": json.dumps(
      {"data": {"min_listeners": 5, "split_fractions": [0.8, 0.1, 0.1],
                "seed": 0}}), "seconds": 5.2})
  _write(wd / "sids" / "report.json", {
      "num_items": 2828, "codebook_sizes": [16, 16, 32],
      "coverage_before": 0.8741159830268741, "max_items_per_path_before": 3,
      "full/calinski_harabasz": 2.1482877850200444,
      "full/davies_bouldin": 0.7242439925046856,
      "full/silhouette": -0.02485857903957367,
      "level1/calinski_harabasz": 34.53680231532302,
      "level1/davies_bouldin": 3.8121209352068672,
      "level1/silhouette": 0.0035470426082611084})
  pool = {"test/pool_recall": 0.3125, "test/pool_size": 301.5}
  std = {"test/recall@10": 0.002, "test/ndcg@10": 0.003,
         "test/recall@20": 0.004, "test/ndcg@20": 0.005,
         "test/recall@50": 0.006, "test/ndcg@50": 0.007, "test/mrr": 0.008,
         "test/pool_recall": 0.0101, "test/pool_size": 3.0}
  seeds = lambda row: {"runs": [f"{row}_s{i}" for i in range(3)],
                       "per_seed": {}, "mean": {}, "std": std,
                       "num_seeds": 3}
  results = {
      "results": {
          "popularity": _set_metrics(0.0396, 0.0927, 0.0647, 0.0907, 0.1163,
                                     0.1066, 0.1984, num_test_queries=547,
                                     seconds=0.207),
          "text_similarity": _set_metrics(0.01, 0.02, 0.03, 0.04, 0.05,
                                          0.06, 0.07),
          "text_knn": _set_metrics(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
          "item2vec_centroid": _set_metrics(0.05, 0.06, 0.07, 0.08, 0.09,
                                            0.1, 0.11),
          "generator": _set_metrics(0.0812, 0.1421, 0.1203, 0.1388, 0.1911,
                                    0.1512, 0.2456, num_params=1234567,
                                    seconds=412.0, **pool),
          "generate_rank": _set_metrics(0.0905, 0.1533, 0.1301, 0.1467,
                                        0.2002, 0.1598, 0.2601,
                                        **{"valid/f1": 0.61},
                                        num_params=22700000, seconds=95.4,
                                        **pool),
      },
      "seeds": {"generator": seeds("generator"),
                "generate_rank": seeds("generate_rank")},
      "command": "python -m binaries.run_pipeline "
                 "--config=configs/pipeline.py:lastfm --workdir=runs/lastfm",
      "date": "2026-12-02",
  }
  res = _write(wd / "pipeline" / "results.json", results)
  readme = tmp_path / "README.md"
  readme.write_text(README)
  return {"tmp": tmp_path, "results": res, "readme": readme,
          "docs": tmp_path / "docs" / "front_page"}


def _section(text, name):
  return re.search(rf"<!-- front-page:{name}:start -->\n(.*?)"
                   rf"<!-- front-page:{name}:end -->", text, re.S).group(1)


def test_lastfm_set_retrieval_table(lastfm_files):
  f = lastfm_files
  assert front_page.main(["--results", str(f["results"]), "--readme",
                          str(f["readme"]), "--docs_dir",
                          str(f["docs"])]) == 0
  results = _section(f["readme"].read_text(), "results")
  lines = results.splitlines()
  # Recall/NDCG@10,20,50 (no HR: sets), pool recall (some rows have it), no
  # invalid column (no row has an invalid rate).
  head = ("| model | system | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | "
          "Recall@50 | NDCG@50 | MRR | pool recall | params | seconds |")
  i = lines.index(head)
  assert lines[i + 2:i + 8] == [
      "| `popularity` | baseline | 0.0396 | 0.0927 | 0.0647 | 0.0907 | "
      "0.1163 | 0.1066 | 0.1984 | - | - | 0 |",
      "| `text_similarity` | baseline | 0.0100 | 0.0200 | 0.0300 | 0.0400 | "
      "0.0500 | 0.0600 | 0.0700 | - | - | - |",
      "| `text_knn` | baseline | 0.1000 | 0.2000 | 0.3000 | 0.4000 | "
      "0.5000 | 0.6000 | 0.7000 | - | - | - |",
      "| `item2vec_centroid` | baseline | 0.0500 | 0.0600 | 0.0700 | "
      "0.0800 | 0.0900 | 0.1000 | 0.1100 | - | - | - |",
      "| `generator` | generate-and-rank: generator (MiniLM + T5 decoder, "
      "repeating-trie sampling) | 0.0812 +- 0.0020 (3) | "
      "0.1421 +- 0.0030 (3) | 0.1203 +- 0.0040 (3) | 0.1388 +- 0.0050 (3) | "
      "0.1911 +- 0.0060 (3) | 0.1512 +- 0.0070 (3) | 0.2456 +- 0.0080 (3) | "
      "0.3125 +- 0.0101 (3) | 1.2M | 412 |",
      "| `generate_rank` | generate-and-rank: generator + cross-encoder "
      "ranker | 0.0905 +- 0.0020 (3) | 0.1533 +- 0.0030 (3) | "
      "0.1301 +- 0.0040 (3) | 0.1467 +- 0.0050 (3) | 0.2002 +- 0.0060 (3) | "
      "0.1598 +- 0.0070 (3) | 0.2601 +- 0.0080 (3) | 0.3125 +- 0.0101 (3) | "
      "22.7M | 95 |",
  ]
  assert "#### Last.fm 2K (HetRec 2011), `runs/lastfm`" in results
  assert ("File `runs/lastfm/pipeline/results.json` (2026-12-02); command: "
          "`python -m binaries.run_pipeline --config=configs/pipeline.py:"
          "lastfm --workdir=runs/lastfm`.") in results
  assert ("Dataset: Last.fm 2K (HetRec 2011) (`lastfm`); 1,881 users, 2,828 "
          "items (artists with >= 5 listeners); tags as queries (a tag's "
          "text -> the artists tagged with it, by anyone or by one user), "
          "split by query text 80/10/10: 547 test "
          "queries over 94 texts unseen in training, 29.45 items each on "
          "average; set retrieval: Recall/NDCG@K of the query's item set "
          "over all items, means over queries.") in lines
  # No published ranking figures: said once, no row called unmatched.
  assert ("No published ranking figures on this dataset: the music "
          "generate-and-rank repository (zeehu/generative_ranking_"
          "recommender, `Note.md`; RESULTS.md section 6) reports no ranking "
          "metrics, only SID clustering diagnostics.") in lines
  assert "No published figure on this dataset for" not in results
  # The SID diagnostics beside the published ones.
  i = lines.index("| SID build | labels | CH | DB | silhouette | coverage | "
                  "max items per SID | source |")
  assert lines[i + 2:i + 5] == [
      "| ours, [16, 16, 32] | full SID | 2.1483 | 0.7242 | -0.0249 | "
      "87.41 % | 3 | `runs/lastfm/sids/report.json` |",
      "| ours, [16, 16, 32] | first code | 34.5368 | 3.8121 | 0.0035 | - | "
      "- | `runs/lastfm/sids/report.json` |",
      "| refactored `train_semantic_ids.py`, [128, 128, 256] | full SID | "
      "2.9885 | 0.5215 | 0.0013 | 83.62 % | 45 | "
      "zeehu/generative_ranking_recommender `Note.md` (theirs: songs and "
      "512-d skip-gram vectors, a different catalogue from ours, so "
      "indicative only; the only figures published for this system) |",
  ]
  # The generate-and-rank system is implemented (generator and ranker
  # modules exist).
  systems = _section(f["readme"].read_text(), "systems")
  row = next(l for l in systems.splitlines()
             if l.startswith("| **generate-and-rank (music)** |"))
  assert "| implemented |" in row
  assert "`genrec_jax/gar/*generat*.py`, `genrec_jax/gar/*rank*.py`" in row


def test_columns_rule():
  hr = {"m": {"test/hr@10": 0.1, "test/recall@20": 0.2}}
  sets = {"m": {"test/recall@20": 0.2, "test/ndcg@20": 0.1}}
  assert front_page.columns(hr) == front_page.COLUMNS
  assert front_page.columns(sets) == front_page.SET_COLUMNS
  assert front_page.columns({"m": {"seconds": 1}}) == front_page.COLUMNS


def test_train_step_rows_show_ratio_and_profile():
  r = {"format": "tiger", "params": 1.5e6, "batch_size": 256,
       "speedup_step": 1.25, "speedup_forward": 2.0,
       "speedup_forward_backward": 1.5, "jax_examples_per_s": 500.0,
       "torch_examples_per_s": 400.0, "torch_version": "2.x",
       "transformers_version": "5.x", "torch_threads": 2,
       "jax_profile": {"forward": 0.25, "backward": 0.7}}
  b = front_page.BenchResults(
      path=pathlib.Path("x"), shown="x", date="d", name="train_step",
      command="c", machine={}, config={},
      results={"workdir": "w", "tiger_beauty_cpu": r})
  (row,) = front_page._bench_rows(b)  # pylint: disable=protected-access
  assert row[-1] == "1.25x" and "forward + backward 1.50x" in row[0]
  assert "25% forward, 70% backward" in row[0]
  assert "eager" not in row[0]
  r["speedup_forward_backward_vs_eager"] = 1.1
  (row,) = front_page._bench_rows(b)  # pylint: disable=protected-access
  assert row[0].endswith("(matmul + softmax, as ours) 1.10x")
  r["jax_step_s"] = 3.0
  r["bfloat16"] = {"speedup_step": 0.9, "jax_step_s": 2.4,
                   "jax_examples_per_s": 625.0,
                   "torch_examples_per_s": 694.4}
  _, bf16 = front_page._bench_rows(b)  # pylint: disable=protected-access
  assert bf16[-1] == "0.90x" and "1.25x our float32 step" in bf16[0]
  assert bf16[1] == "625 examples/s"


def test_archive_regenerates_the_page_alone(files):
  wd = files["results"].parents[1]
  _write(wd / "dataset" / "meta.json",
         {"name": "beauty", "split": "leave_one_out",
          "user_ids": [str(i) for i in range(500)]})
  archive = files["tmp"] / "docs" / "results"
  assert front_page.main(_args(files) + ["--archive", str(archive)]) == 0
  first = files["readme"].read_text()
  # The copies: command and date recorded, what the page reads and no more.
  rec = json.loads((archive / "beauty/pipeline/results.json").read_text())
  assert rec["command"] == "make demo WORKDIR=runs/beauty"
  assert rec["date"] == "2026-12-01"
  assert rec["results"]["tiger"]["test/hr@10"] == 0.06123
  meta = json.loads((archive / "beauty/dataset/meta.json").read_text())
  assert meta == {"name": "beauty", "split": "leave_one_out"}
  log = json.loads((archive / "beauty/tiger/train_log.json").read_text())
  assert log["curve"][2] == {"step": 3, "loss": 4.0 / 3}
  assert json.loads((archive / "front_page.json").read_text()) == {
      "results": ["beauty/pipeline/results.json"],
      "bench": ["bench/rl/results.json"]}
  assert "File `docs/results/beauty/pipeline/results.json` (2026-12-01); " \
         "command: `make demo WORKDIR=runs/beauty`" in first
  assert "Generated by `.venv/bin/python tools/front_page.py --archive " \
         "docs/results`" in first
  # The runs are gone: the archive alone gives the same page.
  import shutil
  shutil.rmtree(files["tmp"] / "runs")
  files["readme"].write_text(README)
  args = ["--archive", str(archive), "--readme", str(files["readme"]),
          "--docs_dir", str(files["docs"])]
  assert front_page.main(args) == 0
  assert files["readme"].read_text() == first
  # A new run of another workdir is added after it; the first keeps its
  # place (and gives the pictures).
  other = files["tmp"] / "runs" / "ml"
  _write(other / "dataset" / "meta.json", {"name": "ml100k"})
  res = _write(other / "pipeline" / "results.json", {"results": {
      "sasrec": _metrics(0.1, 0.05, 0.2, 0.1, 0.05)}})
  assert front_page.main(args + ["--results", str(res)]) == 0
  assert json.loads((archive / "front_page.json").read_text())["results"] == [
      "beauty/pipeline/results.json", "ml/pipeline/results.json"]
  text = files["readme"].read_text()
  assert text.index("`docs/results/beauty`") < text.index("`docs/results/ml`")
  assert "| `sasrec` | SASRec | 0.1000 | 0.0500 | 0.2000 | 0.1000 |" in text
  # A manifest naming a file the archive lacks: an error naming both.
  shutil.rmtree(archive / "ml")
  before = files["readme"].read_bytes()
  assert front_page.main(args) == 1
  assert files["readme"].read_bytes() == before


def test_readme_is_the_archive_regenerated(tmp_path):
  """The committed README's generated sections equal `make front-page`."""
  archive = REPO / "docs" / "results"
  if not (archive / front_page.MANIFEST).is_file():
    pytest.skip("no docs/results archive")
  import shutil
  # A copy of the repository's README and archive (paths print relative
  # to the README).
  shutil.copytree(archive, tmp_path / "docs" / "results")
  readme = tmp_path / "README.md"
  readme.write_text((REPO / "README.md").read_text())
  assert front_page.main(["--archive", str(tmp_path / "docs" / "results"),
                          "--readme", str(readme),
                          "--docs_dir", str(tmp_path / "docs" / "front_page")
                          ]) == 0
  strip = lambda t: re.sub(r"Generated by `[^`]*`", "", t)
  assert strip(readme.read_text()) == strip((REPO / "README.md").read_text())
