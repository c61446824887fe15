"""Low-level file readers that turn malformed input into one-line DataErrors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pathlib
import re
import zlib
from typing import Any, Hashable, Iterator

from genrec_jax.data.dataset import DataError


def require_file(path: str | os.PathLike, what: str = "file") -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: {what} not found")
  if not path.is_file():
    raise DataError(f"{path}: not a file")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: empty file")
  return path


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
  """Whole file as text; .gz is decompressed; truncation is an error."""
  path = require_file(path)
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      data = path.read_bytes()
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(f"{path}: truncated or corrupt file ({e})") from None
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not {encoding} text ({e})") from None


def int_rows(path: str | os.PathLike, min_fields: int = 1) -> Iterator[tuple[int, list[int]]]:
  """(line number, ints) for each non-empty whitespace-separated line."""
  text = read_text(path)
  for lineno, line in enumerate(text.splitlines(), start=1):
    fields = line.split()  # also strips CRLF
    if not fields:
      continue
    if len(fields) < min_fields:
      raise DataError(f"{path}:{lineno}: expected at least {min_fields} fields, got {len(fields)}")
    try:
      yield lineno, [int(x) for x in fields]
    except ValueError:
      bad = next(x for x in fields if not _is_int(x))
      raise DataError(f"{path}:{lineno}: non-integer id {bad!r}") from None


def _is_int(x: str) -> bool:
  try:
    int(x)
    return True
  except ValueError:
    return False


def parse_int(value: str, path, lineno: int, field: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise DataError(f"{path}:{lineno}: field {field!r}: non-integer id {value!r}") from None


def read_tsv(path: str | os.PathLike, required: tuple[str, ...], delimiter: str = "\t",
             encoding: str = "utf-8") -> list[dict[str, str]]:
  """Rows of a delimited file with a header holding `required` columns."""
  text = read_text(path, encoding)
  reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, quoting=csv.QUOTE_NONE)
  header = reader.fieldnames or []
  for col in required:
    if col not in header:
      raise DataError(f"{path}: header has no {col!r} column (found {header})")
  rows = list(reader)
  if not rows:
    raise DataError(f"{path}: no data rows")
  return rows


def tsv_rows(path: str | os.PathLike, columns: tuple[str, ...],
             encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of a tab-separated file with a fixed header.

  Stricter than read_tsv: line 1 must be exactly `columns`, every other
  non-empty line must have exactly len(columns) fields, and bytes that do
  not decode in `encoding` are reported with their line (a trailing CR is
  dropped).
  """
  path = require_file(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise DataError(f"{path}: unreadable ({e})") from None
  n = len(columns)
  for lineno, raw in enumerate(data.split(b"\n"), start=1):
    try:
      line = raw.decode(encoding).rstrip("\r")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{lineno}: not {encoding} text (byte "
                      f"0x{raw[e.start]:02x} at column {e.start + 1})") from None
    if lineno == 1:
      header = tuple(line.split("\t"))
      if header != tuple(columns):
        raise DataError(f"{path}:1: expected the header {list(columns)}, "
                        f"got {list(header)}")
      continue
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != n:
      raise DataError(f"{path}:{lineno}: expected {n} tab-separated fields "
                      f"({', '.join(columns)}), got {len(fields)}")
    yield lineno, fields


def read_csv(path: str | os.PathLike, required: tuple[str, ...]) -> list[dict[str, str]]:
  text = read_text(path)
  reader = csv.DictReader(io.StringIO(text))
  header = reader.fieldnames or []
  for col in required:
    if col not in header:
      raise DataError(f"{path}: header has no {col!r} column (found {header})")
  rows = list(reader)
  if not rows:
    raise DataError(f"{path}: no data rows")
  return rows


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
  """(line number, object) for each line of a JSON-lines file (.gz ok)."""
  text = read_text(path)
  for lineno, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line:
      continue
    try:
      yield lineno, json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None


def read_json(path: str | os.PathLike):
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


class UniqueKeys:
  """Remembers where each key of a file was seen; a repeat is a DataError.

    ids = UniqueKeys(path, "item_id")
    for lineno, row in ...:
      ids.add(row_id, lineno)   # raises on the second occurrence
  """

  def __init__(self, path: str | os.PathLike, field: str):
    self.path, self.field = path, field
    self.first_line: dict[Hashable, int] = {}

  def add(self, key: Hashable, lineno: int) -> None:
    """Records `key` at `lineno`; DataError if it was seen before."""
    first = self.first_line.get(key)
    if first is not None:
      raise DataError(f"{self.path}:{lineno}: {self.field} {key} appears "
                      f"twice (first on line {first})")
    self.first_line[key] = lineno

  def __contains__(self, key: Hashable) -> bool:
    return key in self.first_line


_WS = re.compile(r"\s*")


def json_object_items(
    path: str | os.PathLike) -> Iterator[tuple[int, str, Any]]:
  """(line number, key, value) of each member of a file's top-level JSON
  object, in file order, duplicates included (json.loads keeps only the
  last value of a repeated key)."""
  text = read_text(path)
  decoder = json.JSONDecoder()
  line, line_pos = 1, 0

  def lineno(pos: int) -> int:
    nonlocal line, line_pos
    line += text.count("\n", line_pos, pos)
    line_pos = pos
    return line

  def expect(pos: int, chars: str) -> tuple[int, str]:
    pos = _WS.match(text, pos).end()
    if pos >= len(text) or text[pos] not in chars:
      found = repr(text[pos]) if pos < len(text) else "end of file"
      raise DataError(f"{path}:{lineno(pos)}: invalid JSON (expected "
                      f"{' or '.join(map(repr, chars))}, found {found})")
    return pos + 1, text[pos]

  def decode(pos: int) -> tuple[Any, int]:
    try:
      return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None

  pos, _ = expect(0, "{")
  if text[_WS.match(text, pos).end():].startswith("}"):
    pos, _ = expect(pos, "}")
  else:
    while True:
      pos = _WS.match(text, pos).end()
      at = lineno(pos)
      if not text.startswith('"', pos):
        raise DataError(f"{path}:{at}: invalid JSON (expected a key)")
      key, pos = decode(pos)
      pos, _ = expect(pos, ":")
      value, pos = decode(_WS.match(text, pos).end())
      yield at, key, value
      pos, sep = expect(pos, ",}")
      if sep == "}":
        break
  pos = _WS.match(text, pos).end()
  if pos != len(text):
    raise DataError(f"{path}:{lineno(pos)}: invalid JSON (extra data after "
                    "the object)")
