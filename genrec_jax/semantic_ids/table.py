"""The semantic IDs of a catalogue: the one reader of the build_sids output.

  sids = SemanticIds.load(workdir / "sids", num_items=ds.num_items)
  sids.codes            # int32 [items, L]; -1 rows: item without an SID
  sids.codebook_sizes   # codes per level, the dedup level included
  sids.dedup            # the last level is TIGER's dedup code
  sids.strings[i]       # "<a_3><b_17><c_0>" ("" without an SID)
  sids.token_strings()  # every SID token string, level by level
  sids.trie             # decoding.trie.Trie for constrained search
  sids.collision_strategy  # report.json's; "keep": items may share an SID
  sids.token_table(layout)  # int32 [items, L] token ids in a model vocab

Every consumer (trie, prompts, tokenizers, model folders) reads SIDs through
this class; nobody else parses `item_sids.json` or `report.json` or formats
`<a_3>` strings. Token strings use one letter per level (a, b, c, then the
dedup level's letter), as MiniOneRec's index files. SIDs built with
collisions kept (`collisions.strategy = "keep"`, generate-and-rank) load as
usual (codes, strings, token tables); only `trie`, which needs one item per
path, refuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import string
from typing import Any, Mapping, Sequence

import numpy as np

from genrec_jax.data.dataset import DataError
from genrec_jax.decoding import trie as trie_lib

ITEM_SIDS = "item_sids.json"
REPORT = "report.json"


def token_string(level: int, code: int) -> str:
  """'<a_3>' for (level 0, code 3); one letter per level."""
  if not 0 <= level < 26:
    raise ValueError(f"SID level {level}: at most 26 levels (letters a..z)")
  return f"<{string.ascii_lowercase[level]}_{int(code)}>"


def parse_item_sids(obj: Any, where: str = ITEM_SIDS
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Item ids and codes from a decoded `item_sids.json`.

  Accepts `{"<item id>": [c0, c1, ...], ...}` (string or int keys) or a list
  whose row i is the codes of item i.

  Returns:
    (item_ids int64 [n], codes int64 [n, L]).
  """
  if isinstance(obj, Mapping):
    items = list(obj.items())
  elif isinstance(obj, (list, tuple)):
    items = list(enumerate(obj))
  else:
    raise ValueError(f"{where}: expected an object or a list, got "
                     f"{type(obj).__name__}")
  if not items:
    raise ValueError(f"{where}: no items")
  ids, rows = [], []
  num_levels = None
  for key, row in items:
    try:
      item = int(key)
    except (TypeError, ValueError):
      raise ValueError(f"{where}: item key {key!r} is not an integer item "
                       "id") from None
    if not isinstance(row, (list, tuple)) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in row):
      raise ValueError(f"{where}: item {key}: codes must be a list of ints, "
                       f"got {row!r}")
    if num_levels is None:
      num_levels = len(row)
    if len(row) != num_levels or not row:
      raise ValueError(f"{where}: item {key}: {len(row)} codes, expected "
                       f"{num_levels} (every item needs the same number)")
    ids.append(item)
    rows.append(row)
  return np.asarray(ids, dtype=np.int64), np.asarray(rows, dtype=np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticIds:
  """Per item its SID codes, and the code layout.

  Attributes:
    codes: int32 [num_items, L] (dedup level last when `dedup`); rows of
      items without an SID hold -1.
    codebook_sizes: codes per level, all L levels.
    dedup: the last level is a dedup code (TIGER), not a quantizer level.
    source: where the codes came from (for error messages).
    collision_strategy: report.json's `collision_strategy` (None: unknown);
      "keep" means several items may share a code path.
  """

  codes: np.ndarray
  codebook_sizes: tuple[int, ...]
  dedup: bool = False
  source: str = "semantic ids"
  collision_strategy: str | None = None

  def __post_init__(self):
    codes = self.codes
    if codes.ndim != 2 or codes.shape[1] != len(self.codebook_sizes):
      raise ValueError(f"{self.source}: codes {codes.shape} do not match "
                       f"{len(self.codebook_sizes)} codebook sizes")
    ok = (codes >= 0).all(1)
    if (codes[ok] >= np.asarray(self.codebook_sizes)).any():
      raise ValueError(f"{self.source}: codes exceed the codebook sizes "
                       f"{self.codebook_sizes}")
    if len(self.codebook_sizes) > 26:
      raise ValueError(f"{self.source}: at most 26 levels")

  @classmethod
  def from_codes(cls, codes: np.ndarray,
                 codebook_sizes: Sequence[int] | None = None, *,
                 dedup: bool = False, source: str = "semantic ids",
                 collision_strategy: str | None = None) -> SemanticIds:
    """From codes [items, L] (-1 rows: no SID); sizes default to max + 1."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
      raise ValueError(f"{source}: codes {codes.shape} must be [items, L]")
    if codebook_sizes is None:
      codebook_sizes = np.maximum(codes.max(0), 0) + 1
    return cls(codes.astype(np.int32), tuple(int(s) for s in codebook_sizes),
               bool(dedup), source, collision_strategy)

  @classmethod
  def load(cls, sids_dir: str | os.PathLike, *,
           num_items: int) -> SemanticIds:
    """From SIDS_DIR/item_sids.json (+ report.json: sizes, dedup level).

    Raises:
      DataError: the files are missing or malformed (naming them).
    """
    sids_dir = pathlib.Path(sids_dir)
    path = sids_dir / ITEM_SIDS
    if not path.exists():
      raise DataError(
          f"{path}: missing; run binaries.build_sids first (--config."
          f"output={sids_dir.name}; configs/sids.py:reassign builds 3-token "
          "IDs)")
    try:
      obj = json.loads(path.read_text())
      ids, rows = parse_item_sids(obj, str(path))
    except (OSError, json.JSONDecodeError) as e:
      raise DataError(f"{path}: cannot read item SIDs: {e}") from None
    except ValueError as e:
      raise DataError(str(e)) from None
    if ids.min() < 0 or ids.max() >= num_items:
      raise DataError(f"{path}: item ids outside [0, {num_items}) (the "
                      "dataset's items)")
    codes = np.full((num_items, rows.shape[1]), -1, np.int32)
    codes[ids] = rows
    sizes, dedup, strategy = None, False, None
    report = sids_dir / REPORT
    if report.exists():
      try:
        rep = json.loads(report.read_text())
      except json.JSONDecodeError as e:
        raise DataError(f"{report}: {e}") from None
      sizes = rep.get("codebook_sizes")
      if sizes is not None and len(sizes) != rows.shape[1]:
        raise DataError(f"{report}: field 'codebook_sizes' has {len(sizes)} "
                        f"levels, {path} {rows.shape[1]}")
      dedup = "dedup_level_size" in rep
      strategy = rep.get("collision_strategy")
    try:
      return cls.from_codes(codes, sizes, dedup=dedup, source=str(path),
                            collision_strategy=strategy)
    except ValueError as e:
      raise DataError(str(e)) from None

  # -- layout ----------------------------------------------------------------

  @property
  def num_items(self) -> int:
    return int(self.codes.shape[0])

  @property
  def num_levels(self) -> int:
    return int(self.codes.shape[1])

  @functools.cached_property
  def has_sid(self) -> np.ndarray:
    """bool [num_items]."""
    return (self.codes >= 0).all(1)

  @property
  def base_sizes(self) -> tuple[int, ...]:
    """Codebook sizes of the quantizer levels (dedup level excluded)."""
    return self.codebook_sizes[:-1] if self.dedup else self.codebook_sizes

  @property
  def dedup_size(self) -> int:
    return self.codebook_sizes[-1] if self.dedup else 0

  # -- strings ---------------------------------------------------------------

  def level_tokens(self, level: int) -> list[str]:
    return [token_string(level, c)
            for c in range(self.codebook_sizes[level])]

  def token_strings(self) -> list[str]:
    """Every SID token string, level by level (dedup level last)."""
    return [t for level in range(self.num_levels)
            for t in self.level_tokens(level)]

  def format(self, codes: Sequence[int]) -> str:
    """'<a_3><b_17><c_0>' of one code path."""
    return "".join(token_string(l, c) for l, c in enumerate(codes))

  @functools.cached_property
  def strings(self) -> list[str]:
    """Per item its SID string ("" for an item without an SID)."""
    return [self.format(row) if ok else ""
            for row, ok in zip(self.codes, self.has_sid)]

  # -- search ----------------------------------------------------------------

  @functools.cached_property
  def trie(self) -> trie_lib.Trie:
    """The trie of every item's code path (a collision is an error)."""
    if self.collision_strategy == "keep":
      raise DataError(
          f"{pathlib.Path(self.source).parent / REPORT}: collision_strategy "
          "'keep' (items may share an SID) but a trie needs one item per "
          "path; rebuild the SIDs with collisions.strategy='dedup' or "
          "'reassign'")
    ids = np.flatnonzero(self.has_sid)
    try:
      return trie_lib.build_trie(self.codes[ids], self.codebook_sizes,
                                 item_ids=ids, num_items=self.num_items)
    except ValueError as e:
      raise DataError(f"{self.source}: {e}") from None

  def token_table(self, layout) -> np.ndarray:
    """int32 [num_items, L] token ids under a `SidTokens` layout (-1 rows)."""
    if len(layout.sizes) != self.num_levels:
      raise ValueError(f"{self.source}: {self.num_levels} code levels, the "
                       f"model's SID layout has {len(layout.sizes)}")
    if any(s < c for s, c in zip(layout.sizes, self.codebook_sizes)):
      raise ValueError(f"{self.source}: codebook sizes "
                       f"{self.codebook_sizes} exceed the model's SID blocks "
                       f"{tuple(layout.sizes)}")
    return np.where(self.codes >= 0,
                    layout.tokens(np.maximum(self.codes, 0)),
                    -1).astype(np.int32)
