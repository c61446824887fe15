"""word2vec with negative sampling in JAX (skip-gram or CBOW), for item2vec.

The recipe of word2vec.c and gensim, on integer "sentences" (item ids):

* noise distribution p(i) ~ count(i)^ns_exponent (0.75), items below
  `min_count` never drawn (`noise_distribution`, `noise_table`);
* frequent-item subsampling with word2vec.c's formula (also gensim's, not the
  paper's 1 - sqrt(t/f)): an occurrence of item i is kept with probability
  min(1, (sqrt(c_i / (t N)) + 1) t N / c_i), t = `sample`, N = the number of
  tokens (`keep_probabilities`); subsampled tokens are removed before the
  windows are drawn, as there;
* dynamic window: each centre draws b uniform in [1, window] and sees the b
  tokens on either side inside its sentence;
* skip-gram: the context token's input vector predicts the centre through the
  centre's output vector against `negative` noise items (word2vec.c's and
  gensim's orientation); a noise draw equal to the centre is skipped, as
  there; CBOW: the mean (or sum) of the context input vectors predicts the
  centre, and every context vector receives the whole error, as there;
* learning rate decayed linearly from `alpha` to `min_alpha` over the run;
  input vectors start uniform in [-0.5, 0.5) / dim (word2vec.c; gensim 4
  uses [-1, 1) / dim, which measured no better here), output vectors at zero;
  the input vectors are the embeddings.

Batching. Each epoch's examples are built with numpy from a generator seeded
by (seed, epoch), in a thread while the previous epoch trains, shuffled, and
fed to one jitted `lax.scan` of plain SGD steps: gather the rows a step
touches, compute the closed-form SGNS gradients, scatter-add them back
(`.at[].add`, so rows repeated in a step sum their updates, as Hogwild
threads would). A skip-gram example is a group: one centre item (its output
row), up to `group` context tokens of its occurrences and `negative` noise
items shared by the group. group=1 is word2vec's (centre, context,
negatives) pair; group > 1 shares the noise draws among contexts of the same
centre (pWord2Vec, Ji et al. 2016, "Parallelizing Word2Vec in Shared and
Distributed Memory"), which gathers and scatters far fewer rows for the same
arithmetic. The stream of groups runs across epoch borders in fixed-size
calls, so there is one compilation and padding only at the end. Everything
is deterministic given the seed.

Measured on Last.fm 2K (2,828 items, 512-d, window 50, sample 1e-4): the
noise sharing (group 1 vs 64) does not change the held-out next-item HR@10,
but updating ~1,000 pairs at once does: a vocabulary this small sees the
same rows many times per step, and HR@10 is ~15% below gensim's sequential
SGD (0.033 vs 0.039 over 3 seeds). One pair per step in word2vec's order (an
experiment: batch_size=1, group=1, unshuffled; ~10x slower) reached 0.038
on 2 seeds; a larger or smaller learning rate, or damping the summed output
row updates, did not help.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.data.dataset import Ragged

MODELS = ("skipgram", "cbow")


# ---------------------------------------------------------------------------
# Tables


def item_counts(sentences: Ragged, num_items: int) -> np.ndarray:
  """int64 [V]: occurrences of each item in the sentences."""
  return np.bincount(sentences.values, minlength=num_items).astype(np.int64)


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
  """float64 [V]: probability that one occurrence survives subsampling.

  word2vec.c / gensim: with threshold t*N (N = total count),
  p_keep(i) = (sqrt(c_i / (t N)) + 1) * t N / c_i, capped at 1; sample <= 0
  keeps everything. Items with count 0 get 1 (they never occur).
  """
  counts = np.asarray(counts, np.float64)
  if sample <= 0:
    return np.ones_like(counts)
  threshold = sample * counts.sum()
  safe = np.maximum(counts, 1e-300)
  p = (np.sqrt(safe / threshold) + 1.0) * threshold / safe
  return np.where(counts > 0, np.minimum(p, 1.0), 1.0)


def noise_distribution(counts: np.ndarray,
                       exponent: float = 0.75) -> np.ndarray:
  """float64 [V]: p(i) = c_i^exponent / sum_j c_j^exponent (0 where c_i = 0)."""
  counts = np.asarray(counts, np.float64)
  w = np.where(counts > 0, np.power(np.maximum(counts, 1e-300), exponent), 0.0)
  total = w.sum()
  if total <= 0:
    raise ValueError("word2vec: no item occurs in the sentences")
  return w / total


def noise_table(counts: np.ndarray, exponent: float = 0.75) -> np.ndarray:
  """float64 [V]: the cumulative noise distribution (last entry exactly 1).

  A draw is searchsorted(table, u, side="right") for u uniform in [0, 1), as
  gensim's cum_table with bisect (item i covers [table[i-1], table[i]).
  """
  table = np.cumsum(noise_distribution(counts, exponent))
  table[-1] = 1.0
  return table


def draw_noise(table: np.ndarray, shape,
               rng: np.random.Generator) -> np.ndarray:
  """int32 noise items of `shape` drawn from a noise_table."""
  u = rng.random(shape)
  return np.minimum(np.searchsorted(table, u, side="right"),
                    len(table) - 1).astype(np.int32)


# ---------------------------------------------------------------------------
# Examples (numpy, one epoch at a time)


def subsample(sentences: Ragged, keep: np.ndarray,
              rng: np.random.Generator) -> Ragged:
  """Drops each token with probability 1 - keep[item] (items with keep 0,
  e.g. below min_count, always go)."""
  mask = rng.random(len(sentences.values)) < keep[sentences.values]
  lengths = np.bincount(sentences.row_ids()[mask], minlength=len(sentences))
  return Ragged.from_lengths(lengths, sentences.values[mask])


def _windows(sentences: Ragged, window: int, rng: np.random.Generator):
  """Per token: first context position, context count (centre excluded)."""
  n = len(sentences.values)
  pos = np.arange(n, dtype=np.int64)
  rows = sentences.row_ids()
  start = sentences.offsets[:-1][rows]
  end = sentences.offsets[1:][rows]  # exclusive
  b = rng.integers(1, window + 1, size=n)  # word2vec.c: window - rand % window
  lo = np.maximum(start, pos - b)
  hi = np.minimum(end - 1, pos + b)
  return lo, hi - lo


def _context_positions(centre, lo, k):
  """Position of the k-th context token (k >= 0) of `centre` whose window
  starts at lo: positions lo.. skipping the centre itself."""
  p = lo + k
  return p + (p >= centre)


def skipgram_pairs(sentences: Ragged, window: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(centres, contexts) int32 [P]: every (centre token, context token) pair
  of the dynamic windows inside each sentence, as word2vec.c visits them."""
  lo, n_ctx = _windows(sentences, window, rng)
  centre = np.repeat(np.arange(len(n_ctx), dtype=np.int64), n_ctx)
  first = np.repeat(np.cumsum(n_ctx) - n_ctx, n_ctx)
  k = np.arange(len(centre), dtype=np.int64) - first  # context ordinal
  p = _context_positions(centre, lo[centre], k)
  return (sentences.values[centre].astype(np.int32),
          sentences.values[p].astype(np.int32))


def group_pairs(centres: np.ndarray, contexts: np.ndarray, group: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Packs pairs with the same centre item into groups of `group` contexts.

  Pairs are shuffled, then sorted by centre item (stable), and each item's
  run is cut into ceil(n / group) groups; padding (-1) only ends a run.

  Returns:
    (centre item int32 [G], contexts int32 [G, group], -1 = padding).
  """
  order = rng.permutation(len(centres))
  order = order[np.argsort(centres[order], kind="stable")]
  centres, contexts = centres[order], contexts[order]
  if group == 1:
    return centres, contexts[:, None]
  items, starts, n = np.unique(centres, return_index=True, return_counts=True)
  per = -(-n // group)  # groups per item
  slot_start = np.repeat(np.cumsum(per) - per, n) * group  # first slot
  rank = np.arange(len(centres)) - np.repeat(starts, n)  # index in run
  slots = np.full(int(per.sum()) * group, -1, np.int32)
  slots[slot_start + rank] = contexts
  return np.repeat(items, per).astype(np.int32), slots.reshape(-1, group)


def cbow_rows(sentences: Ragged, window: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(centres int32 [R], contexts int32 [R, 2 window], -1 = padding) for
  every token with at least one context token."""
  lo, n_ctx = _windows(sentences, window, rng)
  centre = np.flatnonzero(n_ctx > 0)
  k = np.arange(2 * window)[None, :]
  valid = k < n_ctx[centre][:, None]
  p = _context_positions(centre[:, None], lo[centre][:, None],
                         np.where(valid, k, 0))
  contexts = np.where(valid, sentences.values[np.where(valid, p, 0)], -1)
  return sentences.values[centre].astype(np.int32), contexts.astype(np.int32)


@dataclasses.dataclass
class Epoch:
  """One epoch's shuffled examples: output rows [E, 1 + K] (centre, then
  noise), context rows [E, C] (-1 = padding) and the pairs they hold."""

  outputs: np.ndarray
  contexts: np.ndarray
  pairs: int
  tokens: int


def epoch_examples(sentences: Ragged, keep: np.ndarray, table: np.ndarray,
                   config, epoch: int) -> Epoch:
  """The examples of one epoch, from a generator seeded by (seed, epoch)."""
  rng = np.random.default_rng([int(config.seed), int(epoch)])
  kept = subsample(sentences, keep, rng)
  if config.model == "skipgram":
    centres, contexts = group_pairs(
        *skipgram_pairs(kept, config.window, rng), config.group, rng)
  else:
    centres, contexts = cbow_rows(kept, config.window, rng)
  order = rng.permutation(len(centres))
  centres, contexts = centres[order], contexts[order]
  noise = draw_noise(table, (len(centres), config.negative), rng)
  outputs = np.concatenate([centres[:, None], noise], axis=1)
  pairs = int((contexts >= 0).sum())
  return Epoch(outputs, contexts, pairs, int(len(kept.values)))


# ---------------------------------------------------------------------------
# The jitted SGD steps


def _output_weights(outputs):
  """float32 [B, 1+K]: 1 for the centre and for noise items != centre."""
  is_centre = jnp.arange(outputs.shape[1]) == 0
  return (is_centre | (outputs != outputs[:, :1])).astype(jnp.float32)


def _labels(k1: int):
  return (jnp.arange(k1) == 0).astype(jnp.float32)  # [1+K]


def sgns_group_updates(x_in, x_out, in_mask, out_weight, lr):
  """SGD updates of one batch of skip-gram groups (closed form).

  For each context c of a group and each output o (centre with label 1, noise
  with label 0): s = x_c . x_o, g = lr (label - sigmoid(s)) (the gradient of
  log sigmoid(s) or log sigmoid(-s), times lr); x_c gains sum_o g x_o, x_o
  gains sum_c g x_c. Updates come from the parameters before the step.

  Args:
    x_in: float32 [B, G, D] context (input) vectors.
    x_out: float32 [B, 1+K, D] centre then noise (output) vectors.
    in_mask: float32 [B, G], 0 for padded contexts.
    out_weight: float32 [B, 1+K], 0 for skipped noise draws.
    lr: learning rate, scalar or [B].

  Returns:
    (d_in [B, G, D], d_out [B, 1+K, D], loss [B]: the negative log-likelihood
    summed over the group's valid (context, output) pairs).
  """
  s = jnp.einsum("BGD,BKD->BGK", x_in, x_out)  # [B, G, 1+K]
  label = _labels(x_out.shape[1])
  w = in_mask[:, :, None] * out_weight[:, None, :]  # [B, G, 1+K]
  lr = jnp.reshape(jnp.asarray(lr, jnp.float32), (-1, 1, 1))
  g = (label - jax.nn.sigmoid(s)) * w * lr  # [B, G, 1+K]
  d_in = jnp.einsum("BGK,BKD->BGD", g, x_out)
  d_out = jnp.einsum("BGK,BGD->BKD", g, x_in)
  sign = 2.0 * label - 1.0
  loss = -(jax.nn.log_sigmoid(sign * s) * w).sum(axis=(1, 2))  # [B]
  return d_in, d_out, loss


def cbow_updates(x_ctx, x_out, ctx_mask, out_weight, lr, mean: bool = True):
  """SGD updates of one batch of CBOW rows (closed form, word2vec.c's).

  h = mean (or sum) of the valid context vectors; s = h . x_o;
  g = lr (label - sigmoid(s)); x_o gains g h, and every valid context vector
  gains sum_o g x_o (the whole error, not divided by the count, as
  word2vec.c and gensim with cbow_mean=1; with the sum it is the same).

  Returns:
    (d_ctx [B, C, D], d_out [B, 1+K, D], loss [B]).
  """
  count = ctx_mask.sum(axis=1, keepdims=True)  # [B, 1]
  h = jnp.einsum("BC,BCD->BD", ctx_mask, x_ctx)
  if mean:
    h = h / jnp.maximum(count, 1.0)
  s = jnp.einsum("BD,BKD->BK", h, x_out)  # [B, 1+K]
  label = _labels(x_out.shape[1])
  w = out_weight * (count > 0)
  lr = jnp.reshape(jnp.asarray(lr, jnp.float32), (-1, 1))
  g = (label - jax.nn.sigmoid(s)) * w * lr  # [B, 1+K]
  work = jnp.einsum("BK,BKD->BD", g, x_out)
  d_ctx = ctx_mask[:, :, None] * work[:, None, :]
  d_out = g[:, :, None] * h[:, None, :]
  sign = 2.0 * label - 1.0
  loss = -(jax.nn.log_sigmoid(sign * s) * w).sum(axis=1)
  return d_ctx, d_out, loss


def _step(table, batch, *, model: str, cbow_mean: bool):
  """One SGD step on a batch; returns the new table and the summed loss.

  `table` is [2V, D]: input vectors, then output vectors. One gather and one
  scatter-add on one array keep the update in place: with two arrays, each
  updated from rows of the other, XLA copies both every step (O(V D)).
  """
  contexts, outputs, lr = batch  # [B, C], [B, 1+K], scalar
  num_items = table.shape[0] // 2
  c = contexts.shape[1]
  mask = (contexts >= 0).astype(jnp.float32)
  rows = jnp.concatenate([jnp.maximum(contexts, 0), outputs + num_items],
                         axis=1)  # [B, C + 1 + K]
  x = table[rows]  # [B, C + 1 + K, D]
  x_in, x_out = x[:, :c], x[:, c:]
  out_weight = _output_weights(outputs)
  if model == "skipgram":
    d_in, d_out, loss = sgns_group_updates(x_in, x_out, mask, out_weight, lr)
  else:
    d_in, d_out, loss = cbow_updates(x_in, x_out, mask, out_weight, lr,
                                     cbow_mean)
  table = table.at[rows].add(jnp.concatenate([d_in, d_out], axis=1))
  return table, loss.sum()


@functools.partial(jax.jit, static_argnames=("model", "cbow_mean"),
                   donate_argnums=(0,))
def train_chunk(table, contexts, outputs, lr, *, model: str = "skipgram",
                cbow_mean: bool = True):
  """`lax.scan` of SGD steps over [S, B, ...] batches.

  Args:
    table: float32 [2V, D] input vectors then output vectors, donated.
    contexts: int32 [S, B, C] (-1 = padding).
    outputs: int32 [S, B, 1+K] centre then noise.
    lr: float32 [S] learning rate of each step.

  Returns:
    (table, loss float32 [S] summed over each step's pairs).
  """
  step = functools.partial(_step, model=model, cbow_mean=cbow_mean)
  return jax.lax.scan(step, table, (contexts, outputs, lr))


# ---------------------------------------------------------------------------
# Training


def check_config(config) -> None:
  """ValueError naming the field for an unusable setting."""
  def need(ok, field, msg):
    if not ok:
      raise ValueError(f"config field {field!r}: {msg} "
                       f"(got {config.get(field)!r})")
  need(config.model in MODELS, "model", f"one of {MODELS}")
  for field in ("dim", "window", "epochs", "batch_size", "steps_per_call",
                "group"):
    need(int(config[field]) >= 1, field, "must be >= 1")
  need(int(config.negative) >= 0, "negative", "must be >= 0")
  need(int(config.min_count) >= 1, "min_count", "must be >= 1")
  need(0 < float(config.alpha), "alpha", "must be > 0")
  need(0 <= float(config.min_alpha) <= float(config.alpha), "min_alpha",
       "must be in [0, alpha]")
  need(float(config.sample) >= 0, "sample", "must be >= 0")


def init_params(num_items: int, dim: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
  """word2vec.c's init: input uniform in [-0.5, 0.5) / dim, output zeros."""
  rng = np.random.default_rng([int(seed), 1 << 20])
  w_in = ((rng.random((num_items, dim)) - 0.5) / dim).astype(np.float32)
  return w_in, np.zeros((num_items, dim), np.float32)


def train(sentences: Ragged, num_items: int, config, log_every: float = 10.0
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Trains word2vec on integer sentences.

  Args:
    sentences: Ragged rows of item ids in 0..num_items-1.
    num_items: V, the vocabulary (rows of the returned matrices).
    config: fields model ("skipgram"/"cbow"), dim, window, negative,
      ns_exponent, sample, min_count, epochs, alpha, min_alpha, batch_size
      (examples per SGD step), group (skip-gram contexts sharing one noise
      draw), steps_per_call (steps per jitted call), cbow_mean, seed.
    log_every: seconds between progress lines (0 = after every call).

  Returns:
    (input vectors float32 [V, D] (the embeddings), output vectors, info:
    counts, pairs, pairs per second, seconds, the mean loss per epoch...).
  """
  check_config(config)
  t0 = time.perf_counter()
  values = np.asarray(sentences.values)
  if len(values) and (values.min() < 0 or values.max() >= num_items):
    raise ValueError(f"word2vec: item ids outside 0..{num_items - 1}")
  counts = item_counts(sentences, num_items)
  counts = np.where(counts >= config.min_count, counts, 0)
  table = noise_table(counts, config.ns_exponent)
  keep = keep_probabilities(counts, config.sample) * (counts > 0)
  weights = jnp.asarray(np.concatenate(
      init_params(num_items, config.dim, config.seed)))  # [2V, D]
  b, spc = int(config.batch_size), int(config.steps_per_call)
  epochs = int(config.epochs)
  per_call = b * spc
  width = config.group if config.model == "skipgram" else 2 * config.window
  k1 = 1 + int(config.negative)
  kwargs = dict(model=config.model, cbow_mean=bool(config.cbow_mean))
  alpha, min_alpha = float(config.alpha), float(config.min_alpha)
  # Per call: the epoch it ends in, its loss units (skip-gram: pairs, CBOW:
  # centres) and its summed loss (a device array).
  calls: list[tuple[int, int, Any]] = []
  epoch_pairs, epoch_examples_n, tokens_kept = [], [], 0
  done_pairs, last_log = 0, time.perf_counter()
  t_train = time.perf_counter()

  def call(ctx, out, prog, epoch):
    nonlocal weights, done_pairs
    n = len(out)
    if n < per_call:  # the last call: pad with empty examples
      ctx = np.concatenate([ctx, np.full((per_call - n, width), -1, np.int32)])
      out = np.concatenate([out, np.zeros((per_call - n, k1), np.int32)])
      prog = np.concatenate([prog, np.full(per_call - n, prog[-1])])
    lr = alpha - (alpha - min_alpha) * prog.reshape(spc, b)[:, 0]
    weights, loss = train_chunk(
        weights, jnp.asarray(ctx.reshape(spc, b, width)),
        jnp.asarray(out.reshape(spc, b, k1)),
        jnp.asarray(lr, jnp.float32), **kwargs)
    valid = ctx >= 0
    pairs = int(valid.sum())
    units = pairs if config.model == "skipgram" else int(valid.any(1).sum())
    calls.append((epoch, units, loss))
    done_pairs += pairs

  ctx = np.zeros((0, width), np.int32)
  out = np.zeros((0, k1), np.int32)
  prog = np.zeros(0)
  # The CPU runs jitted calls inline: build epoch e + 1's examples in a
  # thread (numpy releases the GIL) while epoch e trains. Each epoch has its
  # own generator, so the result does not depend on the timing.
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  make = functools.partial(epoch_examples, sentences, keep, table, config)
  pending = pool.submit(make, 0)
  for epoch in range(epochs):
    ex = pending.result()
    if epoch + 1 < epochs:
      pending = pool.submit(make, epoch + 1)
    epoch_pairs.append(ex.pairs)
    epoch_examples_n.append(len(ex.outputs))
    tokens_kept += ex.tokens
    n = max(len(ex.outputs), 1)
    ctx = np.concatenate([ctx, ex.contexts])
    out = np.concatenate([out, ex.outputs])
    prog = np.concatenate(
        [prog, (epoch + np.arange(len(ex.outputs)) / n) / epochs])
    start = 0
    while len(out) - start >= per_call:
      end = start + per_call
      call(ctx[start:end], out[start:end], prog[start:end], epoch)
      start = end
      now = time.perf_counter()
      if now - last_log >= log_every:
        jax.block_until_ready(weights)
        now = time.perf_counter()
        rate = done_pairs / max(now - t_train, 1e-9)
        total = np.mean(epoch_pairs) * epochs
        logging.info("word2vec %s: epoch %d/%d, %d pairs, %.0f pairs/s, "
                     "ETA %.1fs", config.model, epoch + 1, epochs, done_pairs,
                     rate, max(total - done_pairs, 0) / max(rate, 1e-9))
        last_log = now
    ctx, out, prog = ctx[start:], out[start:], prog[start:]
  pool.shutdown()
  if len(out):
    call(ctx, out, prog, epochs - 1)
  weights = np.asarray(jax.block_until_ready(weights))
  w_in, w_out = weights[:num_items], weights[num_items:]
  train_seconds = time.perf_counter() - t_train
  if not np.isfinite(w_in).all():
    raise FloatingPointError("word2vec: non-finite vectors (learning rate too "
                             "high for this batch size?)")
  loss_sum, unit_sum = np.zeros(epochs), np.zeros(epochs)
  for e, units, loss in calls:
    loss_sum[e] += float(np.asarray(loss).sum())
    unit_sum[e] += units
  pairs = int(sum(epoch_pairs))
  info = {
      "model": config.model,
      "num_items": int(num_items),
      "items_trained": int((counts > 0).sum()),
      "tokens": int(len(values)),
      "tokens_kept_per_epoch": round(tokens_kept / epochs, 1),
      "pairs": pairs,
      "examples": int(sum(epoch_examples_n)),
      "jit_calls": len(calls),
      # Skip-gram: per (context, centre) pair; CBOW: per centre.
      "mean_loss_per_epoch": [
          round(float(x), 4) for x in loss_sum / np.maximum(unit_sum, 1)],
      "train_seconds": round(train_seconds, 3),
      "pairs_per_second": round(pairs / max(train_seconds, 1e-9), 1),
      "seconds": round(time.perf_counter() - t0, 3),
  }
  return w_in, w_out, info


# ---------------------------------------------------------------------------
# Quality check


@jax.jit
def _target_ranks(vectors, queries, targets):
  """int32 [Q]: rank (1 = best, ties against the target) of each target among
  all items by cosine to its query item's vector, the query item excluded;
  the number of items when the target is the query (never retrieved)."""
  x = vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=1, keepdims=True),
                            1e-12)
  s = x[queries] @ x.T  # [Q, V]
  s = s.at[jnp.arange(len(queries)), queries].set(-jnp.inf)
  t = s[jnp.arange(len(queries)), targets]
  rank = (s >= t[:, None]).sum(axis=1, dtype=jnp.int32)
  return jnp.where(targets == queries, len(vectors), rank)


def neighbour_hits(vectors: np.ndarray, queries: np.ndarray,
                   targets: np.ndarray, ks=(1, 5, 10, 20),
                   chunk: int = 2048) -> dict[str, float]:
  """Next-item quality of item vectors: rank every item (but the query) by
  cosine to the query item's vector; hr@K = P(target in the top K),
  ndcg@10 and mrr (pessimistic ties) of the target's rank.

  Args:
    vectors: float [V, D] item vectors.
    queries: int [Q] the item before each held-out one.
    targets: int [Q] the held-out item.
    chunk: queries scored at once (a [chunk, V] score block; the last chunk
      is padded to the same shape, so one compilation).
  """
  if len(queries) == 0:
    return {}
  queries = np.asarray(queries, np.int32)
  targets = np.asarray(targets, np.int32)
  x = jnp.asarray(vectors, jnp.float32)
  n = len(queries)
  size = min(chunk, n)
  ranks = []
  for start in range(0, n, size):
    q, t = queries[start:start + size], targets[start:start + size]
    pad = size - len(q)
    r = _target_ranks(x, jnp.asarray(np.pad(q, (0, pad))),
                      jnp.asarray(np.pad(t, (0, pad))))
    ranks.append(np.asarray(r)[:len(q)])
  rank = np.concatenate(ranks)
  out = {f"hr@{k}": float(np.mean(rank <= k)) for k in ks}
  out["ndcg@10"] = float(
      np.mean(np.where(rank <= 10, 1 / np.log2(rank + 1), 0)))
  out["mrr"] = float(np.mean(1.0 / rank))
  return out
