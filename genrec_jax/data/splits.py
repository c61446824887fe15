"""Splits: RawData -> (train per user, valid rows, test rows).

  leave_one_out       last item test, second-last valid, rest train; users with
                      fewer than `min_len` interactions are train-only.
  sliding_window      MiniOneRec: every prefix is a row (history <= window
                      items), rows sorted by target time, cut 8:1:1.
  given               the source's own split (LightGCN, MiniOneRec folders).
  sampled_candidates  leave_one_out + N sampled negatives per eval row.
"""

from __future__ import annotations

import numpy as np

from genrec_jax.data.dataset import DataError, EvalExamples, Ragged
from genrec_jax.data.sources import RawData


def leave_one_out(raw: RawData, min_len: int = 3, mask_history: bool = True):
  seqs = raw.sequences
  train, v_users, t_users = [], [], []
  for u, s in enumerate(seqs):
    if len(s) >= min_len:
      train.append(s[:-2])
      v_users.append(u)
      t_users.append(u)
    else:
      train.append(s)
  v_users = np.array(v_users, dtype=np.int32)
  t_users = np.array(t_users, dtype=np.int32)

  def rows(users, cut):
    hist = Ragged.from_lists([seqs[u][: len(seqs[u]) - cut] for u in users])
    tgt = Ragged.from_lists([[seqs[u][len(seqs[u]) - cut]] for u in users])
    return EvalExamples(users, hist, tgt, exclude=hist if mask_history else None)

  return Ragged.from_lists(train), rows(v_users, 2), rows(t_users, 1)


def sliding_window(raw: RawData, window: int = 10, ratios=(8, 1, 1)):
  """MiniOneRec's global temporal 8:1:1 cut of all (history -> next) rows."""
  if raw.timestamps is None:
    raise DataError(f"{raw.name}: sliding_window needs timestamps, the source has none")
  users, pos, times = [], [], []
  for u, (s, t) in enumerate(zip(raw.sequences, raw.timestamps)):
    for i in range(1, len(s)):
      users.append(u)
      pos.append(i)
      times.append(t[i])
  users, pos, times = map(np.asarray, (users, pos, times))
  order = np.lexsort((pos, users, times))  # by time, then user, then position
  users, pos = users[order], pos[order]
  n = len(users)
  n_train = n * ratios[0] // sum(ratios)
  n_valid = n * ratios[1] // sum(ratios)
  # Train sequence of a user: up to and including its last train-row target.
  last = np.zeros(len(raw.sequences), dtype=np.int64)
  np.maximum.at(last, users[:n_train], pos[:n_train] + 1)
  train = Ragged.from_lists([s[: last[u]] for u, s in enumerate(raw.sequences)])

  def rows(lo, hi):
    us, ps = users[lo:hi], pos[lo:hi]
    hist = Ragged.from_lists([raw.sequences[u][max(0, p - window) : p] for u, p in zip(us, ps)])
    tgt = Ragged.from_lists([[raw.sequences[u][p]] for u, p in zip(us, ps)])
    return EvalExamples(us.astype(np.int32), hist, tgt)

  return train, rows(n_train, n_train + n_valid), rows(n_train + n_valid, n)


def given(raw: RawData):
  if raw.given_test is None:
    raise DataError(f"{raw.name}: split 'given' needs a source with its own split "
                    "(lightgcn_txt, minionerec)")
  return Ragged.from_lists(raw.given_train), raw.given_valid, raw.given_test


def add_sampled_candidates(examples: EvalExamples, sequences: list[np.ndarray],
                           num_items: int, num_negatives: int, seed: int) -> EvalExamples:
  """Adds [E, 1 + N] candidates: the target, then N items the user never had."""
  if num_negatives >= num_items:
    raise DataError(f"sampled_candidates: num_negatives={num_negatives} >= items={num_items}")
  rng = np.random.default_rng(seed)
  cand = np.empty((len(examples), 1 + num_negatives), dtype=np.int32)
  for j, u in enumerate(examples.users):
    seen = set(sequences[u].tolist())
    if num_items - len(seen) < num_negatives:
      raise DataError(f"sampled_candidates: user {u} has too few unseen items")
    negs = []
    while len(negs) < num_negatives:
      draw = rng.integers(0, num_items, size=2 * num_negatives)
      for i in draw:
        if int(i) not in seen:
          seen.add(int(i))
          negs.append(int(i))
          if len(negs) == num_negatives:
            break
    cand[j, 0] = examples.targets[j][0]
    cand[j, 1:] = negs
  examples.candidates = cand
  return examples


SPLITS = ("leave_one_out", "sliding_window", "given", "sampled_candidates")


def split(raw: RawData, config):
  """Applies config.split (one of SPLITS) to raw data."""
  name = config.split
  if name == "leave_one_out":
    return leave_one_out(raw, config.get("min_len", 3), config.get("mask_history", True))
  if name == "sampled_candidates":
    train, valid, test = leave_one_out(raw, config.get("min_len", 3),
                                       config.get("mask_history", True))
    n_items = len(raw.item_ids)
    for i, ex in enumerate((valid, test)):
      add_sampled_candidates(ex, raw.sequences, n_items, config.get("num_negatives", 99),
                             config.get("seed", 0) + i)
    return train, valid, test
  if name == "sliding_window":
    return sliding_window(raw, config.get("window", 10), tuple(config.get("ratios", (8, 1, 1))))
  if name == "given":
    return given(raw)
  raise DataError(f"config field 'data.split': unknown split {name!r} (known: {', '.join(SPLITS)})")
