"""Low-level file readers that turn malformed input into one-line DataErrors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pathlib
import zlib
from typing import Iterator

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
