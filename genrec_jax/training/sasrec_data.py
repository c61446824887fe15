"""Grain pipeline for SASRec: one example per user, every position a target.

A user's train sequence s (time order) becomes inputs = s[:-1] and
targets = s[1:], the last `max_len` of each, left-padded with `pad_id`
(right-aligned, as SASRec expects). Users with fewer than two train items have
no target and are skipped.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from genrec_jax.data.dataset import DataError, Ragged


class UserSequenceSource(grain.sources.RandomAccessDataSource):
  """Example i = the i-th user with >= 2 train items: (inputs, targets).

  Args:
    train: per-user train sequences (internal item ids).
    num_items: catalogue size; ids must lie in [0, num_items).
    max_len: window length; older items are cut off.
  """

  def __init__(self, train: Ragged, num_items: int, max_len: int):
    if len(train.values) and (train.values.min() < 0
                              or train.values.max() >= num_items):
      bad = train.values[(train.values < 0) | (train.values >= num_items)][0]
      raise DataError(f"dataset/train: item id {bad} outside [0, {num_items})")
    self._train = train
    self._users = np.flatnonzero(train.lengths() >= 2).astype(np.int32)
    if not len(self._users):
      raise DataError("dataset/train: no user has two or more train items; "
                      "nothing to train SASRec on")
    self._pad = num_items
    self._max_len = max_len

  def __len__(self) -> int:
    return len(self._users)

  @property
  def num_positions(self) -> int:
    """Target positions per epoch (after the max_len cut)."""
    lengths = self._train.lengths()[self._users] - 1
    return int(np.minimum(lengths, self._max_len).sum())

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    u = int(self._users[i])
    seq = self._train[u]
    inp = seq[:-1][-self._max_len :]
    tgt = seq[1:][-self._max_len :]
    inputs = np.full(self._max_len, self._pad, dtype=np.int32)
    targets = np.full(self._max_len, self._pad, dtype=np.int32)
    inputs[self._max_len - len(inp) :] = inp
    targets[self._max_len - len(tgt) :] = tgt
    return {"user": np.int32(u), "inputs": inputs, "targets": targets}

  def __repr__(self) -> str:
    return f"UserSequenceSource({len(self)} users, max_len={self._max_len})"


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """The batched dataset and its epoch size."""

  dataset: grain.MapDataset
  source: UserSequenceSource
  steps_per_epoch: int


def train_pipeline(train: Ragged, num_items: int, *, max_len: int,
                   batch_size: int, seed: int) -> Pipeline:
  """Seeded shuffle (a new order every epoch), repeat forever, batch.

  An epoch is ceil(users / batch_size) steps; batches run across epoch
  boundaries (drop_remainder keeps one shape for the jitted step).
  """
  source = UserSequenceSource(train, num_items, max_len)
  ds = (grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
        .batch(batch_size, drop_remainder=True))
  steps = -(-len(source) // batch_size)
  return Pipeline(ds, source, steps)


class BucketedBatches(grain.sources.RandomAccessDataSource):
  """Length-bucketed batches: element i is batch i of an endless epoch stream.

  SASRec states are right-aligned and padding keys are masked, so a user's
  window can be cut to any width >= its length without changing the model's
  output. Most Beauty users have < 8 train items: batching users of similar
  length at widths `buckets` (instead of always `max_len`) skips most of the
  padding. Every epoch, users are shuffled within each bucket with a
  numpy Generator seeded by (seed, epoch), cut into batches of `batch_size`
  (the last one of a bucket padded with all-padding rows, which carry no
  loss), and the batch order is shuffled. The stream is a pure function of the
  index, so a grain iterator over it checkpoints as one integer.

  Args:
    train: per-user train sequences.
    num_items: catalogue size (= padding id).
    max_len: longest window.
    batch_size: rows per batch.
    seed: shuffling seed.
    buckets: batch widths (capped at max_len; max_len is always added).
    num_epochs: epochs in the stream (its length).
  """

  def __init__(self, train: Ragged, num_items: int, max_len: int,
               batch_size: int, seed: int, buckets=(4, 8, 16),
               num_epochs: int = 1000):
    self._source = UserSequenceSource(train, num_items, max_len)
    users = self._source._users
    in_len = np.minimum(train.lengths()[users] - 1, max_len)
    self._widths = sorted({min(int(b), max_len) for b in buckets} | {max_len})
    which = np.searchsorted(self._widths, in_len)  # first width >= length
    self._members = [np.flatnonzero(which == b).astype(np.int32)
                     for b in range(len(self._widths))]
    self._batch = batch_size
    self._seed = seed
    self._pad = num_items
    self.steps_per_epoch = int(sum(-(-len(m) // batch_size)
                                   for m in self._members))
    self._num_epochs = num_epochs
    self._plan_cache: tuple[int, list] | None = None

  def __len__(self) -> int:
    return self.steps_per_epoch * self._num_epochs

  def _plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    if self._plan_cache is not None and self._plan_cache[0] == epoch:
      return self._plan_cache[1]
    rng = np.random.default_rng([self._seed, epoch])
    chunks = []
    for width, members in zip(self._widths, self._members):
      members = rng.permutation(members)
      for start in range(0, len(members), self._batch):
        chunks.append((width, members[start : start + self._batch]))
    plan = [chunks[j] for j in rng.permutation(len(chunks))]
    self._plan_cache = (epoch, plan)
    return plan

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    epoch, j = divmod(int(i), self.steps_per_epoch)
    width, rows = self._plan(epoch)[j]
    inputs = np.full((self._batch, width), self._pad, dtype=np.int32)
    targets = np.full((self._batch, width), self._pad, dtype=np.int32)
    users = np.full(self._batch, -1, dtype=np.int32)
    for r, row in enumerate(rows):
      ex = self._source[int(row)]
      inputs[r] = ex["inputs"][-width:]
      targets[r] = ex["targets"][-width:]
      users[r] = ex["user"]
    return {"user": users, "inputs": inputs, "targets": targets}

  def __repr__(self) -> str:
    return (f"BucketedBatches({len(self._source)} users, widths "
            f"{self._widths}, {self.steps_per_epoch} steps/epoch)")


def bucketed_pipeline(train: Ragged, num_items: int, *, max_len: int,
                      batch_size: int, seed: int, buckets,
                      num_epochs: int = 1000) -> Pipeline:
  """A grain MapDataset of length-bucketed batches (see BucketedBatches)."""
  batches = BucketedBatches(train, num_items, max_len, batch_size, seed,
                            buckets, num_epochs)
  return Pipeline(grain.MapDataset.source(batches), batches._source,
                  batches.steps_per_epoch)
