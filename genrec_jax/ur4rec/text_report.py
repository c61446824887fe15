"""The generate_texts report: cleaning LM output, garbage, genre mentions.

`clean_text` cuts an unfinished generation at its last full sentence;
`is_garbage` flags too-short, mostly non-letter or looping texts;
`genre_scores` measures how well texts name the genres of what they
describe (precision / recall against a truth set per text).
"""

from __future__ import annotations

import collections
import re
import statistics
from typing import Any, Iterable, Sequence

import numpy as np

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


def genre_patterns(genres: Iterable[str]) -> dict[str, re.Pattern]:
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
  patterns = genre_patterns(all_genres)
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
