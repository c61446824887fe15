"""GRPO update throughput: our rollouts + update vs the original's torch path.

python -m binaries.benchmark --config=configs/benchmarks.py:rl --workdir=runs/bench

One GRPO update on P prompts (prompts/s, higher is better), both sides on
the same random Qwen2-like decoder (weights saved as an HF folder), the
same prompts, catalogue and targets:

  ours   the jitted trie beam search with G beams (rl/grpo.py's rollouts),
         rewards and group advantages (rl/rewards.py, numpy), the
         reference log-probs (one jitted forward) and the jitted train step
         (training/loop.make_train_step: the GRPO loss, AdamW); both
         forwards pack each prompt once with its G completions
         (losses.grouped_completion_log_probs);
  torch  what MiniOneRec runs (transformers `generate` with num_beams = G,
         num_return_sequences = G and a prefix_allowed_tokens_fn over the
         item trie; the same rewards; a no-grad reference forward; the
         policy forward/backward of the same loss; torch AdamW), in the
         separate torch venv (`make bench-venv`; skipped when absent).

Both compute the full-vocabulary log-probs of every completion in one
teacher-forced forward (torch: G rows [prompt; completion] per prompt, as
the original). The torch side's group rewards are checked against
ours on its own beams (the same reward code), and the top beams of the two
searches are compared (same weights: they should agree).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import textwrap
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genrec_jax.benchmarks import common
from genrec_jax.benchmarks.beam_search import synthetic_codes
from genrec_jax.data.dataset import EvalExamples, Ragged
from genrec_jax.decoding import beam_search as bs
from genrec_jax.decoding import trie as trie_lib
from genrec_jax.generative import losses
from genrec_jax.models import decoder as decoder_lib
from genrec_jax.rl import grpo
from genrec_jax.rl import rewards as rewards_lib
from genrec_jax.training import loop
from genrec_jax.training import optimizer as optimizer_lib
from genrec_jax.weights import hf

TORCH_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    folder = sys.argv[1]
    spec = json.load(open(f"{folder}/bench.json"))
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref.eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=spec["lr"],
                            weight_decay=0.0)
    prompts = np.load(f"{folder}/prompts.npy")
    tokens = np.load(f"{folder}/tokens.npy")  # [items, L]
    targets = np.load(f"{folder}/targets.npy")  # [P] item ids
    L, G, T = tokens.shape[1], spec["G"], prompts.shape[1]
    path_to_item = {tuple(r): i for i, r in enumerate(tokens.tolist())}
    allowed = {}
    for row in tokens.tolist():
      for l in range(L):
        allowed.setdefault(tuple(row[:l]), set()).add(row[l])
    allowed = {k: sorted(v) for k, v in allowed.items()}

    def allowed_fn(batch_id, sent):
      return allowed.get(tuple(sent[T:].tolist()), [0])

    w = 1.0 / np.log2(np.arange(G) + 2.0)
    penalty = -w / w.sum()

    def rewards(items):  # the "ranking" reward, as rl/rewards.py
      hits = items == targets[:, None]
      r = hits.astype(np.float32)
      r += np.where(hits.any(1, keepdims=True) & ~hits, penalty, 0.0)
      return r

    def update():
      ids = torch.from_numpy(prompts).long()
      policy.eval()
      with torch.no_grad():
        out = policy.generate(
            ids, attention_mask=torch.ones_like(ids), num_beams=G,
            num_return_sequences=G, max_new_tokens=L, min_new_tokens=L,
            do_sample=False, length_penalty=0.0, early_stopping=False,
            prefix_allowed_tokens_fn=allowed_fn, pad_token_id=0,
            eos_token_id=None)
      seq = out[:, T:]
      items = np.array([path_to_item.get(tuple(s), -1)
                        for s in seq.tolist()]).reshape(-1, G)
      r = rewards(items)
      adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1,
                                                     keepdims=True) + 1e-4)
      adv = torch.from_numpy(adv.reshape(-1)).float()
      full = out  # [P G, T + L]
      with torch.no_grad():
        ref_logp = torch.log_softmax(ref(full).logits[:, T - 1:-1].float(),
                                     -1).gather(-1, seq[..., None])[..., 0]
      policy.train()
      logits = policy(full).logits[:, T - 1:-1].float()
      logp = torch.log_softmax(logits, -1).gather(-1, seq[..., None])[..., 0]
      d = ref_logp - logp
      k3 = torch.exp(d) - d - 1
      per_tok = -(torch.exp(logp - logp.detach()) * adv[:, None]
                  - spec["beta"] * k3)
      loss = per_tok.mean(1).mean()
      opt.zero_grad()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(policy.parameters(), spec["clip"])
      opt.step()
      return items, float(loss)

    first_items, _ = update()  # warm-up, from the initial weights
    times = []
    for _ in range(spec["repeats"]):
      t0 = time.perf_counter()
      items, loss = update()
      times.append(time.perf_counter() - t0)
    json.dump({"torch": torch.__version__, "seconds": min(times),
               "first_items": first_items.tolist(), "loss": loss},
              open(f"{folder}/torch_result.json", "w"))
''')


def _model(config) -> decoder_lib.Decoder:
  cfg = decoder_lib.DecoderConfig(
      vocab_size=config.vocab, hidden_size=config.hidden,
      intermediate_size=config.intermediate, num_layers=config.layers,
      num_heads=config.heads, num_kv_heads=config.kv_heads,
      attention_bias=True, rope_theta=1e6, tie_word_embeddings=True)
  return decoder_lib.Decoder(cfg, rngs=nnx.Rngs(config.seed))


class _Ours:
  """One GRPO update of our stack (rollout, rewards, ref forward, step)."""

  def __init__(self, config, model, prompts, trie, sid, targets):
    self.config, self.prompts, self.trie, self.sid = (config, prompts, trie,
                                                      sid)
    self.examples = EvalExamples(
        users=np.arange(len(targets), dtype=np.int32),
        history=Ragged.from_lists([[0]] * len(targets)),
        targets=Ragged.from_lists([[int(t)] for t in targets]))
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    self.ref = jax.tree.map(jnp.copy, self.params)
    self.scorer = bs.DecoderScorer(self.graphdef, vocab_size=config.vocab)
    tcfg = ml_collections.ConfigDict(dict(
        learning_rate=config.lr, warmup_steps=0, schedule="constant",
        end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
        grad_clip=config.clip, compute_dtype="float32"))
    tx = optimizer_lib.make_optimizer(tcfg, 1000)
    self.opt_state = tx.init(self.params)
    graphdef = self.graphdef
    self.step_fn = loop.make_train_step(
        graphdef, tx, grpo.make_grpo_loss(beta=config.beta, epsilon=0.2,
                                          mu=1))

    def logp(params, rest, batch):
      return losses.grouped_completion_log_probs(
          nnx.merge(graphdef, params, rest), batch["prompt_ids"],
          batch["prompt_mask"], batch["completions"])

    self.logp = jax.jit(logp)
    self.key = jax.random.key(0)
    self.step = 0

  def update(self):
    res = bs.beam_search(self.scorer, (self.params, self.rest), self.prompts,
                         self.trie,
                         beam_size=self.config.G, sid_tokens=self.sid)
    items, codes = np.asarray(res.items), np.asarray(res.codes)
    roll = rewards_lib.Rollouts(items=items, examples=self.examples)
    reward, _ = rewards_lib.compute("ranking", roll, {})
    adv = rewards_lib.group_advantages(reward, items >= 0)
    batch = {"prompt_ids": self.prompts["input_ids"],
             "prompt_mask": self.prompts["attention_mask"],
             "completions": self.sid.tokens(np.maximum(codes, 0)),
             "weight": (items >= 0).astype(np.float32), "advantages": adv}
    batch["ref_logp"] = np.asarray(self.logp(self.ref, self.rest, batch))
    self.params, self.opt_state, metrics = self.step_fn(
        self.params, self.opt_state, self.rest, batch, self.key,
        np.asarray(self.step, np.int32))
    self.step += 1
    jax.block_until_ready(metrics["loss"])
    return items


def _run_torch(folder: pathlib.Path, python: str, spec: dict[str, Any]):
  if not python or not os.path.exists(python):
    logging.warning("torch comparison skipped: %r not found (%s)", python,
                    common.TORCH_VENV_HINT)
    return None
  (folder / "bench.json").write_text(json.dumps(spec))
  (folder / "torch_bench.py").write_text(TORCH_SCRIPT)
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             OMP_NUM_THREADS=str(spec["threads"]))
  proc = subprocess.run([python, str(folder / "torch_bench.py"),
                         str(folder)], capture_output=True, text=True,
                        env=env, check=False)
  if proc.returncode != 0:
    logging.warning("torch comparison failed:\n%s", proc.stderr[-3000:])
    return None
  return json.loads((folder / "torch_result.json").read_text())


def run(config, out_dir) -> dict[str, Any]:
  """Times one GRPO update both ways; returns flat figures."""
  del out_dir
  rng = np.random.default_rng(config.seed)
  model = _model(config)
  sid = bs.SidTokens.contiguous((config.codebook,) * config.levels,
                                base=config.sid_base)
  codes = synthetic_codes(rng, config.num_items, config.levels,
                          config.codebook)
  trie = trie_lib.build_trie(codes, sid.sizes)
  ids = rng.integers(1, config.sid_base, size=(config.prompts,
                                               config.prompt_len))
  prompts = {"input_ids": ids.astype(np.int32),
             "attention_mask": np.ones(ids.shape, bool)}
  targets = rng.integers(0, config.num_items, size=config.prompts)
  with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
    folder = pathlib.Path(tmp)
    hf.save_pretrained(model, folder)  # before ours updates the params
    np.save(folder / "prompts.npy", ids)
    np.save(folder / "tokens.npy", sid.tokens(codes))
    np.save(folder / "targets.npy", targets)
    ours = _Ours(config, model, prompts, trie, sid, targets)
    first_items = ours.update()  # compile + warm-up (the initial weights)
    t_ours = []
    for _ in range(config.repeats):
      t0 = time.perf_counter()
      ours.update()
      t_ours.append(time.perf_counter() - t0)
    python = (common.torch_python() if config.torch_python is None
              else config.torch_python)
    torch_out = _run_torch(folder, python, {
        "G": config.G, "lr": config.lr, "beta": config.beta,
        "clip": config.clip, "threads": config.torch_threads,
        "repeats": config.repeats})
  # Ours again after torch (shared machine: the best of both rounds).
  for _ in range(config.repeats):
    t0 = time.perf_counter()
    ours.update()
    t_ours.append(time.perf_counter() - t0)
  sec = min(t_ours)
  out: dict[str, Any] = {
      "prompts_per_update": config.prompts, "G": config.G,
      "ours_seconds_per_update": round(sec, 4),
      "ours_prompts_per_s": round(config.prompts / sec, 2),
  }
  if torch_out is None:
    out["torch"] = "skipped (no torch venv or it failed; see the log)"
    return out
  tsec = torch_out["seconds"]
  out.update({
      "torch_version": torch_out["torch"],
      "torch_seconds_per_update": round(tsec, 4),
      "torch_prompts_per_s": round(config.prompts / tsec, 2),
      "speedup": round(tsec / sec, 2),
  })
  # Both first updates searched with the initial weights: the beams agree.
  torch_items = np.asarray(torch_out["first_items"])
  out["valid_torch_beams"] = float((torch_items >= 0).mean())
  out["valid_our_beams"] = float((first_items >= 0).mean())
  out["top1_agreement"] = float(np.mean(torch_items[:, 0] ==
                                        first_items[:, 0]))
  out["beam_set_overlap"] = round(float(np.mean(
      [len(set(a) & set(b)) / config.G for a, b in
       zip(torch_items.tolist(), first_items.tolist())])), 4)
  logging.info("GRPO update: ours %.3fs, torch %.3fs (%.1fx)", sec, tsec,
               tsec / sec)
  return out
