"""One training step of TIGER and of the SID decoder vs transformers + torch.

python -m binaries.benchmark --config=configs/benchmarks.py:train_step \
    --workdir=runs/bench --config.workdir=runs/beauty

Needs a workdir with dataset/ and sids/ (Amazon Beauty: prepare_data,
embed_items, build_sids). For each configs/generative.py variant in
`config.models` (TIGER at `tiger_beauty_cpu` and `tiger_paper` sizes, the
SID decoder at `decoder_beauty_cpu`):

  * the batches are the ones `train_generative` trains on (the format's
    length-bucketed grain pipeline, the variant's batch size), the same
    `config.steps` batches for both sides;
  * JAX: the trainer's own jitted step (`training/loop.make_train_step`:
    loss, value_and_grad, global-norm clipping, AdamW on the warm-up
    schedule, donated buffers), every batch shape compiled first;
  * torch: transformers `T5ForConditionalGeneration` / `LlamaForCausalLM`
    loaded from OUR initial weights (`weights/hf.save_pretrained`, so both
    sides are the same network: the first batch's losses are compared),
    eager, `torch.optim.AdamW` + `clip_grad_norm_`, labels -100 where ours
    are masked; it runs in `.venv-torch` (`make bench-venv`) with
    `config.torch_threads` threads.

Each side runs at each of `config.compute_dtypes`: "float32", and
"bfloat16" = our `train.compute_dtype` bfloat16 (float32 parameters cast in
the step; products of bf16 operands accumulated in float32) against torch's
`autocast(bfloat16)` (float32 weights, bf16 matmuls). float32 figures sit at
the top level of a model's results, the others under their dtype.

Figures: examples/s of each side over the timed steps, the ratio (> 1: JAX
faster), and a profile of each side's step: forward (loss only), forward +
backward, and the full step (the optimizer's share is the difference).
transformers' Llama attends through torch's fused `scaled_dot_product_attention`
kernel; the decoder's torch side also times forward and forward + backward
with `attn_implementation="eager"` (matmul + softmax, as ours), so
`speedup_forward_backward_vs_eager` shows how much of the gap is that kernel.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np

from genrec_jax.benchmarks import common
from genrec_jax.data.dataset import Dataset
from genrec_jax.generative import formats
from genrec_jax.generative import ranker  # noqa: F401  (registers formats)
from genrec_jax.semantic_ids.table import SemanticIds
from genrec_jax.training import loop
from genrec_jax.training import optimizer as optimizer_lib
from genrec_jax.weights import hf


# Run by config.torch_python; must not import genrec_jax (no jax there).
_TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch, transformers
transformers.logging.set_verbosity_error()
folder, batches_path, kind, threads, lr, wd, clip, repeats, amp = sys.argv[1:10]
threads, repeats = int(threads), int(repeats)
lr, wd, clip = float(lr), float(wd), float(clip)
torch.set_num_threads(threads)
torch.manual_seed(0)
data = np.load(batches_path)
n = len([k for k in data.files if k.startswith("labels_")])
batches = []
for i in range(n):
  if kind == "t5":
    labels = torch.tensor(data[f"labels_{i}"].astype(np.int64))
    batches.append(dict(
        input_ids=torch.tensor(data[f"encoder_ids_{i}"].astype(np.int64)),
        attention_mask=torch.tensor(data[f"encoder_mask_{i}"].astype(np.int64)),
        decoder_input_ids=torch.tensor(
            data[f"decoder_ids_{i}"].astype(np.int64)),
        labels=labels.masked_fill(labels < 0, -100)))
  else:
    ids = torch.tensor(data[f"input_ids_{i}"].astype(np.int64))
    loss_mask = torch.tensor(data[f"labels_{i}"].astype(bool))
    batches.append(dict(
        input_ids=ids,
        attention_mask=torch.tensor(
            data[f"attention_mask_{i}"].astype(np.int64)),
        labels=ids.masked_fill(~loss_mask, -100)))
cls = (transformers.T5ForConditionalGeneration if kind == "t5"
       else transformers.LlamaForCausalLM)
model = cls.from_pretrained(folder, dtype=torch.float32)
model.train()
# Weight decay on >= 2-d params only, as the JAX trainer.
decay = [p for p in model.parameters() if p.ndim >= 2]
no_decay = [p for p in model.parameters() if p.ndim < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                         {"params": no_decay, "weight_decay": 0.0}],
                        lr=lr, betas=(0.9, 0.98), eps=1e-8)

# amp "bfloat16": torch's mixed precision (autocast: bf16 matmuls, float32
# weights and optimizer), the counterpart of train.compute_dtype bfloat16.
def loss_of(b):
  if amp == "bfloat16":
    with torch.autocast("cpu", dtype=torch.bfloat16):
      return model(**b).loss
  return model(**b).loss

def forward(b):
  with torch.no_grad():
    return loss_of(b)

def forward_backward(b):
  model.zero_grad(set_to_none=True)
  loss = loss_of(b)
  loss.backward()
  return loss

def step(b):
  opt.zero_grad(set_to_none=True)
  loss = loss_of(b)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
  opt.step()
  return loss

first_loss = float(forward(batches[0]))
def timed(fn):
  best = None
  for _ in range(repeats):
    t0 = time.perf_counter()
    for b in batches:
      fn(b)
    t = time.perf_counter() - t0
    best = t if best is None else min(best, t)
  return best

step(batches[0])  # warm-up: allocator, optimizer state
out = {"first_loss": first_loss, "forward_s": timed(forward),
       "forward_backward_s": timed(forward_backward), "step_s": timed(step),
       "torch": torch.__version__, "transformers": transformers.__version__,
       "threads": torch.get_num_threads(),
       "attn_implementation": model.config._attn_implementation}
if kind != "t5" and amp != "bfloat16":  # Llama's default is a fused SDPA kernel; T5 is eager
  model.set_attn_implementation("eager")
  out["eager_forward_s"] = timed(forward)
  out["eager_forward_backward_s"] = timed(forward_backward)
print(json.dumps(out))
"""


def _jax_side(fmt, model, batches, tcfg, repeats: int,
              compute_dtype: str) -> dict[str, Any]:
  """Seconds of forward, forward + backward and the trainer's step."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  graphdef = loop.compute_graphdef(model, compute_dtype)
  loss_fn = fmt.loss
  key = jax.random.key(0)
  # The trainer's objective: float32 params cast in the step.
  objective = loop.make_objective(graphdef, loss_fn, compute_dtype)

  @jax.jit
  def forward(params, batch):
    return objective(params, rest, batch, key)[0]

  @jax.jit
  def forward_backward(params, batch):
    return jax.value_and_grad(objective, has_aux=True)(params, rest, batch,
                                                        key)

  tx = optimizer_lib.make_optimizer(tcfg, max(int(tcfg.num_steps), 1000))
  step = loop.make_train_step(graphdef, tx, loss_fn, compute_dtype)
  batches = [jax.device_put(b) for b in batches]
  first_loss = float(forward(params, batches[0]))
  shapes = {tuple(v.shape for v in b.values()): b for b in batches}
  t0 = time.perf_counter()
  opt_state = tx.init(params)
  # Compile every shape (the step donates params and optimizer state).
  state = [jax.tree.map(lambda x: x.copy(), params), opt_state]
  for b in shapes.values():
    jax.block_until_ready(forward(params, b))
    jax.block_until_ready(forward_backward(params, b))
    state[0], state[1], _ = jax.block_until_ready(
        step(state[0], state[1], rest, b, key, 0))
  compile_s = time.perf_counter() - t0

  def timed(fn):
    best = None
    for _ in range(repeats):
      t0 = time.perf_counter()
      for b in batches:
        out = fn(b)
      jax.block_until_ready(out)
      t = time.perf_counter() - t0
      best = t if best is None else min(best, t)
    return best

  def one_step(b):
    state[0], state[1], m = step(state[0], state[1], rest, b, key, 1)
    return m["loss"]

  return {"first_loss": first_loss, "compile_s": compile_s,
          "forward_s": timed(lambda b: forward(params, b)),
          "forward_backward_s": timed(lambda b: forward_backward(params, b)),
          "step_s": timed(one_step)}


def _save_batches(batches, path: pathlib.Path) -> None:
  """The batches as the torch script reads them (loss_mask as labels)."""
  arrays = {}
  for i, b in enumerate(batches):
    for k, v in b.items():
      arrays[f"{'labels' if k == 'loss_mask' else k}_{i}"] = v
  np.savez(path, **arrays)


def _torch_side(config, folder, kind, tcfg, tmp, amp: str):
  """The torch script's timings on tmp/batches.npz (None when skipped)."""
  py = pathlib.Path(common.torch_python() if config.torch_python is None
                    else config.torch_python)
  if config.torch_python == "":
    return None
  if not py.exists():
    logging.warning("torch side skipped: %s not found (%s)", py,
                    common.TORCH_VENV_HINT)
    return None
  script = tmp / "torch_train_step.py"
  script.write_text(_TORCH_SCRIPT)
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
  env.pop("PYTHONPATH", None)
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run(
      [str(py), str(script), str(folder), str(tmp / "batches.npz"), kind,
       str(config.torch_threads), str(tcfg.learning_rate),
       str(tcfg.weight_decay), str(tcfg.grad_clip or 1e9),
       str(config.repeats), amp],
      capture_output=True, text=True, env=env, timeout=3000)
  if proc.returncode != 0:
    if "No module named 'torch'" in proc.stderr:
      logging.warning("torch side skipped: torch not importable by %s", py)
      return None
    raise RuntimeError(f"torch side failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _one_model(config, variant: str, ds, sids, workdir) -> dict[str, Any]:
  gcfg = ml_collections.ConfigDict(config.generative[variant].to_dict())
  fmt, model = formats.for_training(gcfg, ds, sids, workdir)
  data = fmt.train_batches(batch_size=gcfg.train.batch_size, num_epochs=None,
                           seed=config.seed)
  it = iter(data.dataset)
  batches = [dict(next(it)) for _ in range(config.steps)]
  kind = "t5" if fmt.model_kind == "t5" else "llama"
  rows = sum(int(b["encoder_ids" if kind == "t5" else "input_ids"].shape[0])
             for b in batches)
  tokens = sum(int(b["encoder_mask" if kind == "t5" else "attention_mask"]
                   .sum()) for b in batches)
  widths = [int(b["encoder_ids" if kind == "t5" else "input_ids"].shape[1])
            for b in batches]
  n_params = int(sum(np.prod(v.shape) for v in
                     jax.tree.leaves(nnx.state(model, nnx.Param))))
  res: dict[str, Any] = {
      "variant": variant, "format": fmt.name, "params": n_params,
      "batch_size": int(gcfg.train.batch_size), "steps": config.steps,
      "mean_width": float(np.mean(widths)),
      "real_token_fraction": tokens / float(sum(
          w * b[next(iter(b))].shape[0] for w, b in zip(widths, batches))),
  }
  logging.info("%s: %d params, %d batches of %d, mean width %.1f", variant,
               n_params, config.steps, res["batch_size"], res["mean_width"])
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    hf.save_pretrained(model, tmp / "hf")
    _save_batches(batches, tmp / "batches.npz")
    for dtype in config.compute_dtypes:
      j = _jax_side(fmt, model, batches, gcfg.train, config.repeats, dtype)
      logging.info("%s %s jax: %s", variant, dtype, j)
      t = _torch_side(config, tmp / "hf", kind, gcfg.train, tmp, dtype)
      logging.info("%s %s torch: %s", variant, dtype, t)
      r = _compare(j, t, rows)
      logging.info("%s %s: JAX %.1f ex/s, %s", variant, dtype,
                   r["jax_examples_per_s"],
                   "torch skipped" if t is None else
                   f"torch {r['torch_examples_per_s']:.1f} ex/s, speedup "
                   f"{r['speedup_step']:.2f}x")
      # float32 at the top level (the front page's row), others nested.
      res.update(r) if dtype == "float32" else res.update({dtype: r})
  return res


def _compare(j: dict[str, Any], t: dict[str, Any] | None,
             rows: int) -> dict[str, Any]:
  """One precision's JAX and torch timings -> figures and ratios."""
  res: dict[str, Any] = {f"jax_{k}": v for k, v in j.items()}
  res["jax_examples_per_s"] = rows / j["step_s"]
  if t is None:
    res["torch"] = "skipped (no torch interpreter)"
    return res
  for k in ("first_loss", "forward_s", "forward_backward_s", "step_s",
            "attn_implementation", "eager_forward_s",
            "eager_forward_backward_s"):
    if k in t:
      res[f"torch_{k}"] = t[k]
  res.update({
      "torch_examples_per_s": rows / t["step_s"],
      "torch_threads": t["threads"], "torch_version": t["torch"],
      "transformers_version": t["transformers"],
      "first_loss_abs_diff": abs(j["first_loss"] - t["first_loss"]),
      "speedup_step": t["step_s"] / j["step_s"],
      "speedup_forward": t["forward_s"] / j["forward_s"],
      "speedup_forward_backward": (t["forward_backward_s"]
                                   / j["forward_backward_s"]),
  })
  if "eager_forward_backward_s" in t:
    # Against torch with matmul + softmax attention, as ours: how much of the
    # gap is its fused attention kernel.
    res["speedup_forward_backward_vs_eager"] = (
        t["eager_forward_backward_s"] / j["forward_backward_s"])
  for side in ("jax", "torch"):
    fwd, fb, st = (res[f"{side}_forward_s"], res[f"{side}_forward_backward_s"],
                   res[f"{side}_step_s"])
    res[f"{side}_profile"] = {
        "forward": fwd / st, "backward": (fb - fwd) / st,
        "optimizer_and_rest": (st - fb) / st}
  return res


def run(config, out_dir) -> dict[str, Any]:
  del out_dir
  workdir = pathlib.Path(config.workdir).resolve()
  if not (workdir / "dataset").is_dir() or not (workdir / "sids").is_dir():
    raise FileNotFoundError(f"{workdir}: needs dataset/ and sids/ "
                            "(run prepare_data, embed_items, build_sids)")
  ds = Dataset.load(workdir / "dataset")
  sids = SemanticIds.load(workdir / "sids", num_items=ds.num_items)
  results: dict[str, Any] = {"workdir": str(workdir)}
  for variant in config.models:
    results[variant] = _one_model(config, variant, ds, sids, workdir)
  return results

