"""Batch inference: the top-N of every user of a workdir, as jsonl.

python -m binaries.batch_recommend --config=configs/serve.py --workdir=runs/ml100k --config.model=sasrec

Writes one line a user, in the dataset's user order,

  {"user": "196", "items": [{"item": "50", "title": "...", "score": 7.1}, ...]}

(the answer `POST /recommend {"user": "196"}` gives; no "score" for
generative models) to WORKDIR/<model>/batch_top<N>.jsonl or
config.batch.output, atomically: a temp file in the same folder, renamed
when complete. Users run through `Engine.rank` in chunks of the largest
batch bucket, so the batches have the shapes the server compiles.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from typing import Any, Iterable

from absl import logging

from genrec_jax.serving.engine import Engine


def write_jsonl(engine: Engine, path: str | os.PathLike, *,
                users: Iterable[int] | None = None, top_n: int | None = None,
                exclude_history: bool | None = None) -> dict[str, int]:
  """Writes the top-N of `users` (internal ids; None: all) to `path`.

  Users without interactions are skipped (counted). Returns {"users":
  lines written, "skipped": users skipped}.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  users = list(range(engine.ds.num_users) if users is None else users)
  users_with_history = [u for u in users if len(engine.ds.sequences[u])]
  step = engine.buckets[-1]
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp",
                             dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for start in range(0, len(users_with_history), step):
        chunk = users_with_history[start:start + step]
        queries = [engine.user_query(u, top_n=top_n,
                                     exclude_history=exclude_history)
                   for u in chunk]
        for u, items in zip(chunk, engine.rank(queries)):
          f.write(json.dumps({"user": engine.ds.user_ids[u], "items": items},
                             ensure_ascii=False) + "\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return {"users": len(users_with_history),
          "skipped": len(users) - len(users_with_history)}


def run(config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Loads WORKDIR/<config.model> and writes every user's top-N."""
  workdir = pathlib.Path(workdir)
  engine = Engine.load(workdir, config.model, beam_size=config.beam_size,
                       buckets=config.buckets, top_n=config.top_n,
                       max_top_n=config.max_top_n,
                       exclude_history=config.exclude_history)
  path = (pathlib.Path(config.batch.output) if config.batch.output else
          workdir / config.model / f"batch_top{config.top_n}.jsonl")
  t0 = time.perf_counter()
  counts = write_jsonl(engine, path)
  seconds = time.perf_counter() - t0
  out = {"path": str(path), **counts, "seconds": seconds,
         "users_per_s": counts["users"] / max(seconds, 1e-9),
         "scored": engine.scored}
  logging.info("wrote the top %d of %d users to %s in %.1fs (%.0f users/s)",
               config.top_n, counts["users"], path, seconds,
               out["users_per_s"])
  return out
