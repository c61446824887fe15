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
  for p in front_page.PUBLISHED:
    values = [v for _, v in p.values]
    assert any(all(re.search(rf"(?<![\d.]){re.escape(v)}(?!\d)", line)
                   for v in values) for line in lines), p
