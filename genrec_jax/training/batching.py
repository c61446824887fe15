"""Length-bucketed epoch plans and grain batch pipelines (every trainer).

An example goes to one of a few length buckets; `EpochPlanner` turns the
bucket of every example into global batches of one bucket each (fixed
shapes: one compile per bucket), a seeded permutation per epoch.
`batch_pipeline` wraps a `make_batch(global index, rng)` into a grain
IterDataset: range(batches per epoch) -> repeat -> random_map (seeded by
grain per global batch index, so draws are re-made every epoch and
reproducible) -> to_iter_dataset, whose get_state/set_state (or
grain.checkpoint) restores it exactly. `batch_size` is global; process
`shard_index` of `shard_count` keeps rows [i * B / n, (i + 1) * B / n) of
every global batch (`check_shards`), random draws made for the whole global
batch, so the shards partition exactly the batch one process would see;
`shard_batches` does the same to a dataset of whole global batches.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from typing import Any, Callable, Sequence

import grain
import numpy as np

from genrec_jax.data.dataset import Ragged


class EpochPlanner:
  """Per epoch: global batches of example ids, one length bucket per batch.

  Each epoch draws a permutation per bucket; what does not fill a whole
  batch moves up to the next bucket (it fits there); the remainder of the
  largest bucket (< batch_size examples) is left out of that epoch (a
  different random subset each epoch). Batch order is shuffled.
  """

  def __init__(self, bucket_of: np.ndarray, num_buckets: int,
               batch_size: int, seed: int):
    self._members = [np.flatnonzero(bucket_of == b) for b in
                     range(num_buckets)]
    if seed < 0:
      raise ValueError(f"seed {seed} must be >= 0")
    self._batch = batch_size
    self._seed = int(seed)
    self.batches_per_bucket = []
    carry = 0
    for m in self._members:
      n = len(m) + carry
      self.batches_per_bucket.append(n // batch_size)
      carry = n % batch_size
    self.dropped_per_epoch = carry
    self.num_batches = int(sum(self.batches_per_bucket))
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._lock = threading.Lock()

  def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [batches, B] example ids, bucket int32 [batches])."""
    plan = self._cache.get(e)
    if plan is not None:
      return plan
    rng = np.random.default_rng([self._seed, int(e)])
    rows, buckets = [], []
    carry = np.zeros(0, np.int64)
    for b, m in enumerate(self._members):
      pool = rng.permutation(np.concatenate([carry, m]))
      k = self.batches_per_bucket[b] * self._batch
      rows.append(pool[:k].reshape(-1, self._batch))
      buckets.append(np.full(self.batches_per_bucket[b], b, np.int32))
      carry = pool[k:]
    rows = np.concatenate(rows) if rows else np.zeros((0, self._batch))
    buckets = np.concatenate(buckets) if buckets else np.zeros(0, np.int32)
    order = rng.permutation(len(rows))
    plan = (rows[order].astype(np.int64), buckets[order])
    with self._lock:
      if len(self._cache) > 2:
        self._cache.clear()
      self._cache[e] = plan
    return plan

  def batch(self, index: int) -> tuple[np.ndarray, int, int]:
    """(example ids [B], bucket, epoch) of global batch `index`."""
    e, j = divmod(int(index), self.num_batches)
    rows, buckets = self.epoch(e)
    return rows[j], int(buckets[j]), e


def check_shards(batch_size: int, shard_index: int, shard_count: int) -> int:
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if batch_size % shard_count:
    raise ValueError(f"batch_size {batch_size} not divisible by "
                     f"{shard_count} shards")
  return batch_size // shard_count


@dataclasses.dataclass
class Batches:
  """A training pipeline of local batches and its bookkeeping.

  Attributes:
    dataset: the grain IterDataset of local batches (iter() it).
    batches_per_epoch: global batches (= steps) per epoch.
    num_examples: examples in one epoch's pool (before the per-epoch
      remainder is left out).
    stats: counts (per task, per bucket, truncated, dropped) for logs.
  """

  dataset: grain.IterDataset
  batches_per_epoch: int
  num_examples: int
  stats: dict[str, Any]


def batch_pipeline(planner: EpochPlanner, make_batch: Callable, *, seed: int,
                   num_epochs: int | None, num_threads: int = 1,
                   prefetch: int = 4) -> grain.IterDataset:
  """Global batch index -> make_batch(index, rng) as a grain IterDataset."""
  ds = grain.MapDataset.range(planner.num_batches).repeat(num_epochs)
  ds = ds.map_with_index(lambda i, _: i)  # the global batch index
  ds = ds.random_map(make_batch, seed=seed)
  return ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch))


class ProcessRows:
  """Rows [i * B / n, (i + 1) * B / n) of every field of a global batch."""

  def __init__(self, shard_index: int, shard_count: int):
    if shard_count < 1 or not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    self.index, self.count = shard_index, shard_count

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sizes = {k: np.shape(v)[0] for k, v in batch.items()}
    size = next(iter(sizes.values()), 0)
    if any(b != size for b in sizes.values()) or size % self.count:
      raise ValueError(f"global batch of {sizes} rows: not divisible into "
                       f"{self.count} process shards")
    per = size // self.count
    return {k: v[self.index * per:(self.index + 1) * per]
            for k, v in batch.items()}


def shard_batches(ds, shard_index: int, shard_count: int):
  """A grain dataset of global batches -> process `shard_index`'s rows.

  For pipelines that build whole global batches (SASRec's): every process
  makes the same global batch and keeps its slice, so `shard_count`
  processes see together exactly the batch one process would (the loop
  reassembles it with `sharding.global_batch`). Grain state is unchanged
  (checkpoints resume as before).
  """
  if shard_count == 1:
    return ds
  return ds.map(ProcessRows(shard_index, shard_count))


def prefixes(train: Ragged, min_history: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
  """(user int32 [E], target position int32 [E]) of every train prefix."""
  lengths = train.lengths()
  per_user = np.maximum(lengths - min_history, 0)
  users = np.repeat(np.arange(len(train), dtype=np.int32), per_user)
  starts = np.concatenate([[0], np.cumsum(per_user)[:-1]]).astype(np.int64)
  pos = (np.arange(per_user.sum()) - np.repeat(starts, per_user)
         + min_history).astype(np.int32)
  return users, pos




def bucket_index(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (len(buckets) when none)."""
  return bisect.bisect_left(buckets, length)
