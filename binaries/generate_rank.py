"""Generate-and-rank demo: type a query, get the top items.

python -m binaries.generate_rank --workdir=runs/lastfm
python -m binaries.generate_rank --workdir=runs/lastfm --query="songs for a rainy day"

Loads WORKDIR/<generator> and WORKDIR/<ranker> (run_pipeline
--config=configs/pipeline.py:lastfm builds them) once. Interactive without
--query: one query per line, `exit` or `quit` (or end of input) ends it.
Each answer: rank, artist name and score (the generator's and the ranker's
ranks fused with the ranker folder's weight; `*` marks a popular item added
when the generated SIDs held too few).
"""
import sys

from absl import app
from absl import flags

from binaries import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)
_GENERATOR = flags.DEFINE_string("generator", "generator_s0", "Generator model folder in the workdir.")
_RANKER = flags.DEFINE_string("ranker", "generate_rank_s0", "Ranker model folder in the workdir ('' = generator only).")
_QUERY = flags.DEFINE_string("query", None, "One query, answered once (else interactive).")
_TOP_N = flags.DEFINE_integer("top_n", 10, "Items per answer.")


def _answer(system, text):
  from genrec_jax.gar import system as system_lib  # pylint: disable=g-import-not-at-top
  hits = system.query(text, _TOP_N.value)
  return [f"query: {text}", *system_lib.format_hits(hits)]


def _run(_, workdir):
  from genrec_jax.gar import system as system_lib  # pylint: disable=g-import-not-at-top
  system = system_lib.GenerateAndRank(workdir, _GENERATOR.value,
                                      _RANKER.value or None)
  if _QUERY.value is not None:
    print("\n".join(_answer(system, _QUERY.value)), flush=True)
    return
  print("type a query (exit or quit to leave)", flush=True)
  while True:
    print("query> ", end="", flush=True)
    line = sys.stdin.readline()
    if not line or line.strip().lower() in ("exit", "quit"):
      break
    if not line.strip():
      continue
    print("\n".join(_answer(system, line.strip())), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.run_stage(_run, None, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
