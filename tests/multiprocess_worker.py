"""Helper of tests/multiprocess_test.py (run as a script, not collected).

  python tests/multiprocess_worker.py workdir DIR
      a tiny leave-one-out dataset + semantic IDs in DIR (train_sasrec and
      train_generative read them).
  GENREC_TEST_KILL=P:N python tests/multiprocess_worker.py MODULE ARGS...
      runs `python -m MODULE ARGS...` (a binary); process P (of a
      multi-process run) SIGKILLs itself once its N-th checkpoint is
      written: a crash mid-run, after a checkpoint exists.
"""
import json
import os
import pathlib
import runpy
import signal
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
USERS, ITEMS = 16, 17
SIZES = (3, 3, 2)  # 18 semantic-ID paths for 17 items


def write_workdir(root: pathlib.Path) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(3)
  seqs = [rng.choice(ITEMS, int(rng.integers(5, 10)), replace=False).tolist()
          for _ in range(USERS)]

  def examples(cut):
    return EvalExamples(
        users=np.arange(USERS, dtype=np.int32),
        history=Ragged.from_lists([s[:cut(s)] for s in seqs]),
        targets=Ragged.from_lists([[s[cut(s)]] for s in seqs]),
        exclude=Ragged.from_lists([s[:cut(s)] for s in seqs]))

  Dataset(name="toy", num_users=USERS, num_items=ITEMS,
          item_ids=[str(i) for i in range(ITEMS)],
          user_ids=[f"u{u}" for u in range(USERS)],
          item_fields={"title": [f"Toy {i}" for i in range(ITEMS)]},
          sequences=Ragged.from_lists(seqs), timestamps=None,
          train=Ragged.from_lists([s[:-2] for s in seqs]),
          valid=examples(lambda s: len(s) - 2),
          test=examples(lambda s: len(s) - 1),
          split="leave_one_out").save(root / "dataset")
  codes = np.stack(np.unravel_index(
      rng.choice(int(np.prod(SIZES)), ITEMS, replace=False), SIZES), 1)
  (root / "sids").mkdir()
  (root / "sids" / "item_sids.json").write_text(json.dumps(
      {str(i): c.tolist() for i, c in enumerate(codes)}))
  (root / "sids" / "report.json").write_text(json.dumps(
      {"codebook_sizes": list(SIZES)}))


def install_kill(process: int, nth: int) -> None:
  """Process `process` SIGKILLs itself after its `nth` checkpoint save (once
  the checkpoint is written)."""
  import jax  # pylint: disable=g-import-not-at-top
  from genrec_jax.training import loop  # pylint: disable=g-import-not-at-top

  save = loop._Trainer.save  # pylint: disable=protected-access
  saves = []

  def save_then_die(self):
    save(self)
    saves.append(self.p.step)
    if len(saves) == nth and jax.process_index() == process:
      self.latest.wait_until_finished()
      sys.stderr.write(f"multiprocess_worker: process {process} SIGKILLs "
                       f"itself after the checkpoint of step {self.p.step}\n")
      sys.stderr.flush()
      os.kill(os.getpid(), signal.SIGKILL)

  loop._Trainer.save = save_then_die  # pylint: disable=protected-access


def main(argv: list[str]) -> None:
  if argv[1] == "workdir":
    write_workdir(pathlib.Path(argv[2]))
    return
  sys.path.insert(0, str(REPO))
  kill = os.environ.get("GENREC_TEST_KILL")
  if kill:
    process, nth = (int(x) for x in kill.split(":"))
    install_kill(process, nth)
  sys.argv = [argv[1]] + argv[2:]
  runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main(sys.argv)
