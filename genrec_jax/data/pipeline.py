"""Grain input pipelines for next-item training.

`NextItemSource` turns each user's train sequence into one example per
position (history window -> next item). `train_iterator` shuffles with a
seed, repeats, shards by process index, pads to fixed length and batches;
the iterator it returns is checkpointable (`get_state` / `set_state`, or
`grain.checkpoint.CheckpointSave` inside an Orbax Composite).
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from genrec_jax.data.dataset import Ragged


class NextItemSource(grain.sources.RandomAccessDataSource):
  """Example j = (user, position p): history = train[u][:p], target = train[u][p].

  Args:
    train: per-user train sequences.
    min_history: positions p < min_history are skipped (1 = every prefix).
  """

  def __init__(self, train: Ragged, min_history: int = 1):
    lengths = train.lengths()
    per_user = np.maximum(lengths - min_history, 0)
    self._users = np.repeat(np.arange(len(train), dtype=np.int32), per_user)
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    # Position within the user's sequence of each example's target.
    self._pos = (np.arange(per_user.sum()) - np.repeat(starts, per_user)
                 + min_history).astype(np.int32)
    self._train = train

  def __len__(self) -> int:
    return len(self._users)

  def __getitem__(self, j: int) -> dict[str, np.ndarray]:
    u, p = self._users[j], self._pos[j]
    seq = self._train[u]
    return {"user": u, "history": seq[:p], "target": seq[p]}

  def __repr__(self) -> str:
    return f"NextItemSource({len(self)} examples)"


@dataclasses.dataclass
class PadHistory(grain.transforms.Map):
  """Keeps the last `max_len` history items, left-padded with `pad_id`."""

  max_len: int
  pad_id: int

  def map(self, element):
    hist = element["history"][-self.max_len :]
    out = np.full(self.max_len, self.pad_id, dtype=np.int32)
    if len(hist):
      out[self.max_len - len(hist) :] = hist
    return {"user": np.int32(element["user"]), "history": out,
            "target": np.int32(element["target"])}


def train_dataset(train: Ragged, *, max_len: int, pad_id: int, batch_size: int,
                  seed: int, num_epochs: int | None = None, min_history: int = 1,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """Shuffled, repeated, process-sharded, padded, batched next-item examples.

  `batch_size` is the global batch; each process gets batch_size /
  process_count rows. A new shuffle order is drawn every epoch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
  source = NextItemSource(train, min_history)
  if len(source) == 0:
    raise ValueError("no training examples: every train sequence is shorter than "
                     f"min_history + 1 = {min_history + 1}")
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  ds = ds[process_index::process_count]
  return (ds.map(PadHistory(max_len, pad_id))
          .batch(batch_size // process_count, drop_remainder=True))


def train_iterator(ds: grain.MapDataset, num_threads: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator (threads only: fine on small CPU machines)."""
  if num_threads:
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=4)))
  return iter(ds)
