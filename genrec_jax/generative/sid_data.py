"""Next-item examples on SID tokens (the TIGER and "sid" formats).

Two ways to cut a user's training sequence into examples:

* `sid_train_data` (per prefix): every train prefix is one example,
  history train[u][:p] -> the item train[u][p], grouped into a few history
  widths (`buckets`, in items; max_history always one), batches of one
  width each, left-padded with -1;
* `window_train_data` (causal, SASRec / HSTU style): the sequence is cut
  into windows of up to max_history + 1 items, from the end (consecutive
  windows share one item), and a model reads a window once with the loss on
  every item but the first: each train item is a target exactly once, as
  in the per-prefix mode, at ~1/max_history of the tokens.

Both run on training/batching's epoch plans (one compile per width, process
sharding, exact resume). A format's `transform(element, draws)` turns a
batch into its model's arrays; `history_tokens` turns item histories into
SID tokens.
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


def windows(train, has_sid: np.ndarray, size: int
            ) -> tuple[np.ndarray, np.ndarray, int]:
  """Causal training windows of `size` items over the items with an SID.

  A user's train items that have an SID, s_0..s_{m-1}, are cut from the end
  into windows [m-size, m), [m-2 size+1, m-size+1), ...: consecutive
  windows share one item, so every item but s_0 is a target (a non-first
  window item) exactly once. The first window may be shorter (>= 2 items).

  Returns:
    (items int32 [N, size] right-padded with -1, users int32 [N], number
    of train items left out because they have no SID).
  """
  rows, users = [], []
  no_sid = 0
  for u in range(len(train)):
    seq = train[u]
    ok = has_sid[seq]
    no_sid += int((~ok).sum())
    seq = seq[ok]
    end = len(seq)
    while end >= 2:
      start = max(0, end - size)
      rows.append(seq[start:end])
      users.append(u)
      end = start + 1
  items = np.full((len(rows), size), -1, np.int32)
  for i, r in enumerate(rows):
    items[i, :len(r)] = r
  return items, np.asarray(users, np.int32), no_sid


def window_train_data(ds: Dataset, transform, item_tokens: np.ndarray, *,
                      max_history: int, buckets, batch_size: int, seed: int,
                      num_epochs: int | None, shard_index: int = 0,
                      shard_count: int = 1) -> batching.Batches:
  """Batches of causal windows (max_history + 1 items), bucketed by length.

  A batch holds windows of one width (`buckets` + max_history, in context
  items, i.e. window length - 1), right-padded with -1:
  element {"user": [B], "items": int32 [B, width + 1]}. Epoch plans,
  process sharding and exact resume as `sid_train_data`.
  """
  local = batching.check_shards(batch_size, shard_index, shard_count)
  has_sid = (item_tokens >= 0).all(1)
  items, users, no_sid = windows(ds.train, has_sid, max_history + 1)
  if not len(items):
    raise DataError("dataset/train: no user has two train items with an SID")
  widths = sorted({min(int(w), max_history) for w in buckets} | {max_history})
  context = (items >= 0).sum(1) - 1  # items before the last target
  bucket_of = np.searchsorted(widths, context)
  planner = batching.EpochPlanner(bucket_of, len(widths), batch_size, seed)
  if planner.num_batches == 0:
    raise DataError(f"dataset/train: {len(items)} training windows make no "
                    f"batch of {batch_size}")
  lo = shard_index * local

  def make_batch(index, rng):
    rows, bucket, _ = planner.batch(index)
    width = widths[bucket] + 1
    draws = rng.random((batch_size, width))[lo:lo + local]
    rows = rows[lo:lo + local]
    element = {"user": users[rows], "items": items[rows, :width]}
    return transform(element, draws)

  dataset = batching.batch_pipeline(planner, make_batch, seed=seed,
                                    num_epochs=num_epochs, num_threads=1,
                                    prefetch=4)
  counts = np.bincount(bucket_of, minlength=len(widths))
  targets = int(context.sum())
  stats = {"windows": int(len(items)), "targets": targets,
           "no_sid_items": no_sid,
           "widths": {int(w): int(c) for w, c in zip(widths, counts)},
           "left_out_per_epoch": planner.dropped_per_epoch}
  return batching.Batches(dataset, planner.num_batches, int(len(items)),
                          stats)
