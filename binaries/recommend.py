"""Top-N items with titles for a user or a history, from a trained workdir.

python -m binaries.recommend --workdir=runs/ml100k --model=tiger --user=196
python -m binaries.recommend --workdir=runs/ml100k --model=minigr_cf --history=50,181,100
python -m binaries.recommend --workdir=runs/ml100k --model=tiger     # interactive

Ids are the dataset's raw ids (MovieLens user / item ids). Interactive mode
reads one line at a time: a user id, `h:<item>,<item>,...` for a history, or
`q` to quit.
"""
import sys

from absl import app
from absl import flags
from absl import logging

from binaries import common
from genrec_jax.data.dataset import DataError
from genrec_jax.recommend import Recommender

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
_MODEL = flags.DEFINE_string("model", "tiger", "Model folder in the workdir (model.json): sasrec, lightgcn, tiger, ...")
_USER = flags.DEFINE_string("user", None, "Raw user id: recommend after their whole history.")
_HISTORY = flags.DEFINE_list("history", None, "Raw item ids, oldest first.")
_TOP_N = flags.DEFINE_integer("top_n", 10, "Items to list.")
_BEAM = flags.DEFINE_integer("beam_size", 0, "Beam width of a generative model (0: the width it was evaluated with).")


def _show(rec: Recommender, history: list[int], user: int = -1) -> None:
  sys.stdout.write("history (last 10):\n")
  for line in rec.describe(history[-10:]):
    sys.stdout.write(f"  {line}\n")
  why = rec.explain(user)
  if why:
    sys.stdout.write(f"preference text (what the retriever read):\n  {why}\n")
  sys.stdout.write(f"top {_TOP_N.value}:\n")
  for rank, line in enumerate(rec.describe(rec.recommend(history, user=user, top_n=_TOP_N.value)), 1):
    sys.stdout.write(f"  {rank:2d}. {line}\n")
  sys.stdout.flush()


def _answer(rec: Recommender, line: str) -> None:
  if line.startswith("h:"):
    _show(rec, rec.items([x.strip() for x in line[2:].split(",") if x.strip()]))
  else:
    user, history = rec.user_history(line)
    _show(rec, history, user)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  common.setup_logging()
  try:
    rec = Recommender(_WORKDIR.value, _MODEL.value, beam_size=_BEAM.value)
    if _USER.value is not None:
      _answer(rec, _USER.value)
    elif _HISTORY.value:
      _answer(rec, "h:" + ",".join(_HISTORY.value))
    else:
      sys.stdout.write("user id, h:<item>,<item>,... or q\n> ")
      sys.stdout.flush()
      for line in sys.stdin:
        line = line.strip()
        if line in ("q", "quit", "exit"):
          break
        if line:
          try:
            _answer(rec, line)
          except (DataError, ValueError) as e:
            sys.stdout.write(f"error: {e}\n")
        sys.stdout.write("> ")
        sys.stdout.flush()
  except (DataError, ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
