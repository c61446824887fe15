"""Generate-and-rank end to end: a query text -> top items (the demo's core).

  system = GenerateAndRank(workdir, generator="generator",
                           ranker="generate_rank")
  system.query("songs for a rainy day", top_n=10)

Loads the generator and ranker model folders (and the MiniLM encoder the
generator reads through) once; each query is normalised as the training
tags were (lastfm.normalize_text), generated into candidates, re-scored.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import ml_collections
import numpy as np

from genrec_jax.gar import generator as generator_lib
from genrec_jax.gar import lastfm
from genrec_jax.gar import ranker as ranker_lib
from genrec_jax.semantic_ids import encoders


@dataclasses.dataclass
class Hit:
  """One recommended item."""

  rank: int
  item: int
  name: str
  # The fused score (the ranker's model.json fusion weight), or the
  # generator's SID vote without a ranker.
  score: float
  # The item came from a generated SID (False: popularity fill-up).
  generated: bool


class GenerateAndRank:
  """A generator folder (+ optionally a ranker folder) of one workdir."""

  def __init__(self, workdir, generator: str = "generator",
               ranker: str | None = "generate_rank"):
    workdir = pathlib.Path(workdir)
    self.names = lastfm.load_items(workdir)["names"]
    self.generator, spec = generator_lib.load(workdir, generator)
    enc_cfg = ml_collections.ConfigDict(spec["encoder"])
    self.encoder = encoders.make(enc_cfg)
    self.length = int(enc_cfg.max_length)
    self.ranker, self.fusion_weight = None, 1.0
    if ranker:
      self.ranker, rspec = ranker_lib.load(workdir, ranker)
      self.fusion_weight = float(rspec.get("fusion_weight", 0.0))

  def query(self, text: str, top_n: int = 10) -> list[Hit]:
    """The top_n items for a query text (ValueError for an empty one)."""
    norm = lastfm.normalize_text(text)
    if not norm:
      raise ValueError("empty query")
    states, mask = self.encoder.token_states([norm], self.length)
    items, scores, pools = self.generator.candidates(states, mask,
                                                     batch_size=1)
    items, scores, pool = items[0], scores[0], pools[0]
    generated = set(items[:pool].tolist())
    if self.ranker is not None:
      logits = self.ranker.logits([norm], [items])
      ranked, fused = ranker_lib.fuse([items], logits, self.fusion_weight)
      items, scores = ranked[0], fused[0]
    return [Hit(r + 1, int(i), self.names[int(i)], float(s),
                int(i) in generated)
            for r, (i, s) in enumerate(zip(items[:top_n], scores[:top_n]))]


def format_hits(hits: list[Hit]) -> list[str]:
  """Lines "  1. name  (score 1.234)" (a * marks popularity fill-ups)."""
  return [f"{h.rank:3d}. {h.name}  (score {h.score:.3f})"
          + ("" if h.generated else " *") for h in hits]


def as_json(hits: list[Hit]) -> list[dict[str, Any]]:
  return [dataclasses.asdict(h) for h in hits]
