"""Next-item examples on SID tokens (the TIGER and "sid" formats).

Every train prefix of a user is one example: history train[u][:p] -> the
item train[u][p]. `sid_train_data` groups the examples into a few history
widths (`buckets`, in items; max_history always one) and makes batches of
one width each, left-padded with -1 (one compile per width; most histories
are far shorter than the longest), on training/batching's epoch plans
(process sharding, exact resume). A format's `transform(element, draws)`
turns a batch of (user, history, target) into its model's arrays;
`history_tokens` turns item histories into SID tokens.
"""

from __future__ import annotations

import numpy as np

from genrec_jax.data.dataset import DataError, Dataset
from genrec_jax.training import batching

# Padding token of the from-scratch SID vocabularies (TIGER's decoder start).
PAD = 0


def history_tokens(history: np.ndarray, item_tokens: np.ndarray,
                   max_history: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded SID tokens of [B, H] left-padded item histories (-1 pad).

  Returns:
    (tokens int32 [B, max_history * L] (PAD where masked), mask bool).
  """
  hist = history[:, -max_history:]  # [B, H]
  ok = hist >= 0
  toks = item_tokens[np.maximum(hist, 0)]  # [B, H, L]
  ok = ok & (toks >= 0).all(-1)
  b, h, levels = toks.shape
  toks = np.where(ok[..., None], toks, PAD).reshape(b, h * levels)
  mask = np.repeat(ok, levels, axis=1)
  return toks.astype(np.int32), mask


def sid_train_data(ds: Dataset, transform, item_tokens: np.ndarray, *,
                   max_history: int, buckets, batch_size: int, seed: int,
                   num_epochs: int | None, shard_index: int = 0,
                   shard_count: int = 1) -> batching.Batches:
  """Length-bucketed next-item batches of every train prefix (SID formats).

  An example (user, position p) is the history train[u][:p] -> train[u][p];
  it goes to the smallest width in `buckets` (history items; max_history is
  always added) that holds its last max_history items, and a batch holds one
  width, left-padded with -1 (one compile per width; most Beauty histories
  are far shorter than 20). Epoch plans, process sharding (rows of the
  global batch) and exact resume as batching.EpochPlanner / batch_pipeline;
  `transform(element, draws)` makes the model's arrays. Examples whose
  target has no SID are left out (counted in stats).
  """
  local = batching.check_shards(batch_size, shard_index, shard_count)
  users, pos = batching.prefixes(ds.train)
  targets = ds.train.values[ds.train.offsets[users] + pos]
  keep = (item_tokens[targets] >= 0).all(1)
  users, pos, targets = users[keep], pos[keep], targets[keep]
  if not len(users):
    raise DataError("dataset/train: no next-item example has a target with "
                    "an SID")
  widths = sorted({min(int(w), max_history) for w in buckets} | {max_history})
  length = np.minimum(pos, max_history)  # history items used
  bucket_of = np.searchsorted(widths, length)  # first width >= length
  planner = batching.EpochPlanner(bucket_of, len(widths), batch_size, seed)
  if planner.num_batches == 0:
    raise DataError(f"dataset/train: {len(users)} next-item examples make no "
                    f"batch of {batch_size}")
  lo = shard_index * local
  offsets, values = ds.train.offsets, ds.train.values

  def make_batch(index, rng):
    rows, bucket, _ = planner.batch(index)
    draws = rng.random(batch_size)[lo:lo + local]  # whole global batch
    rows = rows[lo:lo + local]
    width = widths[bucket]
    hist = np.full((local, width), -1, np.int32)  # [B, W] left-padded
    for i, e in enumerate(rows):
      start = offsets[users[e]]
      h = values[start + max(0, pos[e] - width):start + pos[e]]
      hist[i, width - len(h):] = h
    element = {"user": users[rows], "history": hist,
               "target": targets[rows]}
    return transform(element, draws)

  dataset = batching.batch_pipeline(planner, make_batch, seed=seed,
                                    num_epochs=num_epochs, num_threads=1,
                                    prefetch=4)
  counts = np.bincount(bucket_of, minlength=len(widths))
  stats = {"examples": int(len(users)),
           "no_sid_target": int((~keep).sum()),
           "widths": {int(w): int(c) for w, c in zip(widths, counts)},
           "left_out_per_epoch": planner.dropped_per_epoch}
  return batching.Batches(dataset, planner.num_batches, int(len(users)), stats)
