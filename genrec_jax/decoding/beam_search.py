"""Trie-constrained beam search over semantic-ID levels (jitted, vmapped).

The search is written for ONE example with a beam axis W, `lax.scan`s over
the L code levels, is `jax.vmap`ped over the batch and `jax.jit`ted once
(STYLE.md section 10; t5x `decoding.py`, youtube/static-constraint-decoding).
Per level:

  1. log_softmax of the model logits over the FULL vocabulary (no
     renormalisation over the allowed set, as MiniOneRec/HF do);
  2. gather the level's SID token range `sid_tokens.offsets[l] + [0, C)`;
  3. mask with the trie (`next_state >= 0`) using a finite NEG_INF = -1e9;
  4. `top_k` over the W x C (beam, code) candidates;
  5. gather the model state (KV cache), code sequences and trie states by
     beam, feed the chosen tokens to the model.

Beam scores are sums of full-vocabulary log-probabilities (length penalty 0).

Models plug in through a *scorer*: a hashable object with two pure
functions, `init(params, prompt) -> (state, logits[V])` (prefill one prompt;
state leaves have a leading axis of 1) and `step(params, state, tokens[W]) ->
(state, logits[W, V])` (one token per beam; leaves have a leading beam axis),
plus `gather(state, beam_idx)`, optionally `expand(state, W)` (batch-1
state -> W beams; default: repeat every leaf) and a host-side
`check_prompts(prompts, num_new)` (num_new = tokens that will follow the
prompt). Model parameters are jit *arguments* (`nnx.split` outside,
`nnx.merge` inside); the scorer object itself is a static argument (it holds
only hashable things such as an `nnx.GraphDef`).

Invalid beams and short catalogues. At level 0 only beam 0 is live (the
others start at NEG_INF), so the W beams are W distinct prefixes. A beam that
has no valid continuation -- because fewer than W valid prefixes exist --
carries exactly NEG_INF and can never outrank a valid one (valid scores are
sums of L finite log-probs, far above NEG_INF / 2). Returned rows whose
score is NEG_INF have item id -1: when fewer than `top_n` items can follow a
prompt, the tail of the result is `(-1, NEG_INF)`.

Excluded items. `exclude` (per row, e.g. the user's history) removes items
from that row's trie: the last level never emits them and a prefix whose
items are all excluded is never entered (per-row item counts below each
state, `trie.ExclusionTables`). The result equals the search over a trie
built without those items, so history masking never leaves a user with
fewer than top_n items while the catalogue has them (masking the W results
afterwards does).

No silent fallback to unconstrained decoding (MiniOneRec issue #50): a
malformed prompt (empty, all padding, not left-padded, longer than the
cache, not ending in the required marker tokens) raises ValueError on the
host, and an SID token range outside the model vocabulary raises at trace
time. The trie mask is applied at every level; there is no code path that
skips it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.decoding.trie import ExclusionTables, Trie, TrieTables

# Score of a masked candidate / dead beam. Finite on purpose (never -inf):
# NEG_INF + x stays comparable and NaN-free.
NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class SidTokens:
  """Where the SID tokens live in the model vocabulary.

  Token of (level l, code c) = offsets[l] + c, for c < sizes[l].
  `suffix`: tokens forced after the last level (e.g. the ids of "\n" and EOS
  for MiniOneRec checkpoints). Every surviving beam is fed them and their
  full-vocabulary log-probs are added to its score, which can reorder the
  results exactly as HF beam search does (METHODS.md 3.3, pitfall 4).
  """

  offsets: tuple[int, ...]
  sizes: tuple[int, ...]
  suffix: tuple[int, ...] = ()

  def __post_init__(self):
    if len(self.offsets) != len(self.sizes) or not self.offsets:
      raise ValueError(f"SidTokens: {len(self.offsets)} offsets for "
                       f"{len(self.sizes)} levels")
    if min(self.offsets) < 0 or min(self.sizes) < 1:
      raise ValueError(f"SidTokens: bad offsets {self.offsets} / sizes "
                       f"{self.sizes}")
    if self.suffix and min(self.suffix) < 0:
      raise ValueError(f"SidTokens: negative suffix token in {self.suffix}")

  @classmethod
  def contiguous(cls, sizes: Sequence[int], base: int,
                 suffix: Sequence[int] = ()) -> SidTokens:
    """Level blocks laid out back to back from token `base`."""
    sizes = tuple(int(s) for s in sizes)
    offsets = tuple(int(base + s) for s in np.cumsum((0,) + sizes[:-1]))
    return cls(offsets, sizes, tuple(int(t) for t in suffix))

  @property
  def end(self) -> int:
    """One past the largest SID (or suffix) token."""
    return max([o + s for o, s in zip(self.offsets, self.sizes)]
               + [t + 1 for t in self.suffix])

  @property
  def num_new_tokens(self) -> int:
    """Tokens fed to the model after the prompt (levels + suffix)."""
    return len(self.sizes) + len(self.suffix)

  def tokens(self, codes: np.ndarray) -> np.ndarray:
    """int [..., L] codes -> int32 [..., L] token ids."""
    codes = np.asarray(codes)
    return (codes + np.asarray(self.offsets)).astype(np.int32)


class SearchResult(NamedTuple):
  """Top-N results per example, best first.

  Attributes:
    items: int32 [B, N] item ids; -1 where fewer than N items exist.
    scores: float32 [B, N] sums of log-probs; NEG_INF where items == -1.
    codes: int32 [B, N, L] the decoded code paths (-1 rows for items == -1).
  """

  items: jax.Array
  scores: jax.Array
  codes: jax.Array


def expand_state(scorer, state, width: int):
  """A prefilled batch-1 scorer state -> `width` rows: the scorer's
  `expand` when it has one, else every leaf repeated."""
  if hasattr(scorer, "expand"):
    return scorer.expand(state, width)
  return jax.tree.map(lambda x: jnp.repeat(x, width, axis=0), state)


def gather_beams(state, beam):
  """Reorders every leaf's leading (beam) axis."""
  return jax.tree.map(lambda x: x[beam], state)


# ----------------------------------------------------------------------------
# Scorers.


def _merge(graphdef, params):
  if isinstance(params, (tuple, list)):
    return nnx.merge(graphdef, *params)
  return nnx.merge(graphdef, params)


def check_left_padded(input_ids, attention_mask, *, vocab_size=None,
                      max_len=None, num_new=0, required_suffix=()):
  """Host-side checks of a batch of left-padded prompts.

  Raises:
    ValueError: naming the first bad row.
  """
  ids = np.asarray(input_ids)
  mask = np.asarray(attention_mask)
  if ids.ndim != 2 or mask.shape != ids.shape:
    raise ValueError(f"prompts: input_ids {ids.shape} and attention_mask "
                     f"{mask.shape} must both be [batch, length]")
  if ids.shape[0] == 0 or ids.shape[1] == 0:
    raise ValueError(f"prompts: empty batch or empty prompts {ids.shape}")
  mask = mask.astype(bool)
  lengths = mask.sum(1)
  if (lengths == 0).any():
    raise ValueError(f"prompt row {int(np.argmin(lengths))} is empty (all "
                     "padding)")
  # Left padding: once a real token starts, the rest of the row is real.
  bad = np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(1))
  if len(bad):
    raise ValueError(f"prompt row {bad[0]} is not left-padded (padding after "
                     "a real token)")
  if max_len is not None and ids.shape[1] + num_new > max_len:
    raise ValueError(f"prompts of length {ids.shape[1]} + {num_new} new "
                     f"tokens exceed the cache length {max_len}")
  real = ids[mask]
  if (real < 0).any() or (vocab_size is not None and
                          (real >= vocab_size).any()):
    raise ValueError(f"prompt token ids outside [0, {vocab_size})")
  if required_suffix:
    suffix = np.asarray(required_suffix)
    k = len(suffix)
    rows = np.flatnonzero((lengths < k) |
                          (ids[:, -k:] != suffix[None]).any(1))
    if len(rows):
      raise ValueError(
          f"prompt row {rows[0]} does not end in the required marker tokens "
          f"{suffix.tolist()} (ends in {ids[rows[0], -k:].tolist()}); "
          "constrained decoding would start from the wrong state")


@dataclasses.dataclass(frozen=True)
class DecoderScorer:
  """A decoder-only LM (genrec_jax.models.decoder) with a KV cache.

  prompt: {"input_ids": int32 [T], "attention_mask": bool [T]}, left-padded
  (the vmapped search hands one row at a time). The prompt is prefilled once
  (batch 1), its cache copied to the W beams, then one token per step.

  Attributes:
    graphdef: from `nnx.split(model)`; params = the state(s).
    max_len: cache length; None -> prompt length + number of levels.
    cache_dtype: KV cache dtype name.
    vocab_size: for host-side prompt checks (None: not checked).
    required_suffix: token ids every prompt must end in (e.g. the tokens of
      "### Response:\\n"); empty -> not checked.
  """

  graphdef: Any
  max_len: int | None = None
  cache_dtype: str = "float32"
  vocab_size: int | None = None
  required_suffix: tuple[int, ...] = ()

  def init(self, params, prompt):
    model = _merge(self.graphdef, params)
    ids = prompt["input_ids"][None]  # [1, T]
    mask = prompt["attention_mask"][None].astype(bool)  # [1, T]
    max_len = self.max_len or ids.shape[1] + self._num_new
    cache = model.init_cache(1, max_len, jnp.dtype(self.cache_dtype))
    logits, cache = model.prefill(ids, mask, cache)  # [1, T, V]
    return cache, logits[0, -1]

  def step(self, params, cache, tokens):
    model = _merge(self.graphdef, params)
    logits, cache = model.decode_step(tokens, cache)  # [W, V]
    return cache, logits

  def gather(self, state, beam):
    return gather_beams(state, beam)

  def check_prompts(self, prompts, num_new):
    check_left_padded(prompts["input_ids"], prompts["attention_mask"],
                      vocab_size=self.vocab_size, max_len=self.max_len,
                      num_new=num_new,
                      required_suffix=self.required_suffix)

  # Set by `with_levels`; the default cache length needs it at trace time.
  _num_new: int = 0

  def with_levels(self, num_new: int) -> DecoderScorer:
    """Copy that knows how many tokens follow the prompt (cache length)."""
    return dataclasses.replace(self, _num_new=num_new)


@dataclasses.dataclass(frozen=True)
class SharedPrefixDecoderScorer(DecoderScorer):
  """A decoder whose prompt cache is shared by the beams (not copied).

  For models with `init_suffix(beams, max_new)` and
  `decode_step_shared(tokens, prefix, suffix)` (models.decoder.Decoder,
  benchmarks.reference_decoder): the
  prompt is prefilled once into a batch-1 cache of exactly the prompt length
  and only the per-beam cache of generated tokens is gathered by beam.
  Same prompts, checks and results as DecoderScorer.
  """

  def init(self, params, prompt):
    model = _merge(self.graphdef, params)
    ids = prompt["input_ids"][None]  # [1, T]
    mask = prompt["attention_mask"][None].astype(bool)  # [1, T]
    dtype = jnp.dtype(self.cache_dtype)
    prefix = model.init_cache(1, ids.shape[1], dtype)
    logits, prefix = model.prefill(ids, mask, prefix)  # [1, T, V]
    suffix = model.init_suffix(1, max(self._num_new - 1, 1), dtype)
    return (prefix, suffix), logits[0, -1]

  def step(self, params, state, tokens):
    model = _merge(self.graphdef, params)
    prefix, suffix = state
    logits, suffix = model.decode_step_shared(tokens, prefix, suffix)
    return (prefix, suffix), logits

  def gather(self, state, beam):
    prefix, suffix = state
    return prefix, gather_beams(suffix, beam)

  def expand(self, state, beams):
    prefix, suffix = state
    return prefix, jax.tree.map(lambda x: jnp.repeat(x, beams, 0), suffix)

  def check_prompts(self, prompts, num_new):
    check_left_padded(prompts["input_ids"], prompts["attention_mask"],
                      vocab_size=self.vocab_size,
                      required_suffix=self.required_suffix)


@dataclasses.dataclass(frozen=True)
class T5Scorer:
  """An encoder-decoder (genrec_jax.models.t5): encode once, decode steps.

  prompt: {"input_ids": int32 [S], "attention_mask": bool [S]} encoder input
  (padding anywhere). The decoder starts from `start_token`.
  The cross-attention keys/values are computed once per prompt and shared
  by the beams (not gathered).
  """

  graphdef: Any
  start_token: int = 0
  max_decode_len: int | None = None
  vocab_size: int | None = None
  _num_new: int = 0

  def init(self, params, prompt):
    model = _merge(self.graphdef, params)
    ids = prompt["input_ids"][None]  # [1, S]
    mask = prompt["attention_mask"][None].astype(bool)  # [1, S]
    cross = model.cross_kv(model.encode(ids, mask))  # 2 x [L, 1, S, N, H]
    cache = model.init_cache(1, self.max_decode_len or self._num_new + 1)
    start = jnp.full((1,), self.start_token, jnp.int32)
    logits, cache = model.decode_step(start, None, mask, cache, cross=cross)
    return (cache, cross, mask), logits[0]  # [V]

  def step(self, params, state, tokens):
    model = _merge(self.graphdef, params)
    cache, cross, mask = state
    logits, cache = model.decode_step(tokens, None, mask, cache, cross=cross)
    return (cache, cross, mask), logits  # [W, V]

  def gather(self, state, beam):
    cache, cross, mask = state
    return gather_beams(cache, beam), cross, mask

  def expand(self, state, beams):
    cache, cross, mask = state  # cross K/V stay [L, 1, S, N, H]
    return jax.tree.map(lambda x: jnp.repeat(x, beams, 0), cache), cross, mask

  def check_prompts(self, prompts, num_new):
    ids = np.asarray(prompts["input_ids"])
    mask = np.asarray(prompts["attention_mask"]).astype(bool)
    if ids.ndim != 2 or mask.shape != ids.shape or ids.size == 0:
      raise ValueError(f"encoder prompts must be non-empty [batch, length], "
                       f"got {ids.shape} / {mask.shape}")
    empty = np.flatnonzero(~mask.any(1))
    if len(empty):
      raise ValueError(f"encoder prompt row {empty[0]} is all padding")
    if self.max_decode_len is not None and num_new > self.max_decode_len:
      raise ValueError(f"start token + {num_new - 1} decoder steps exceed the "
                       f"decoder cache length {self.max_decode_len}")
    real = ids[mask]
    if (real < 0).any() or (self.vocab_size is not None and
                            (real >= self.vocab_size).any()):
      raise ValueError(f"encoder token ids outside [0, {self.vocab_size})")

  def with_levels(self, num_new: int) -> T5Scorer:
    """Copy that knows how many tokens are decoded (cache length)."""
    return dataclasses.replace(self, _num_new=num_new)


# ----------------------------------------------------------------------------
# The search.


def _next_states(tables: TrieTables, state, level, c_max: int):
  """int32 [W, C] next state (item id at the last level) or -1.

  Args:
    tables: trie tables.
    state: int32 [W] current trie states (any value for dead beams).
    level: int32 [] current level.
    c_max: codes per row of the output.
  """
  w = state.shape[0]
  s_dense = tables.dense_next.shape[0]
  # Dense levels: one row lookup.
  dense = tables.dense_next[jnp.clip(state, 0, s_dense - 1)]  # [W, C']
  if dense.shape[1] > c_max:
    raise ValueError(f"trie codebooks ({dense.shape[1]} codes) are wider than "
                     f"the SID token blocks ({c_max})")
  if dense.shape[1] < c_max:  # SID blocks wider than the trie's codebooks
    dense = jnp.pad(dense, ((0, 0), (0, c_max - dense.shape[1])),
                    constant_values=-1)  # [W, C]
  # Sparse levels: read a window of max_branch CSR entries from the row start.
  row = jnp.clip(state - s_dense, 0, tables.indptr.shape[0] - 2)  # [W]
  start = tables.indptr[row]  # [W]
  stop = tables.indptr[row + 1]  # [W]
  pos = start[:, None] + tables.window[None, :]  # [W, R]
  inside = pos < stop[:, None]  # [W, R]
  codes = jnp.where(inside, tables.csr_codes[pos], c_max)  # [W, R]
  nxt = tables.csr_next[pos]  # [W, R]
  sparse = jnp.full((w, c_max), -1, jnp.int32).at[
      jnp.arange(w)[:, None], codes].set(nxt, mode="drop")  # [W, C]
  return jnp.where(level < tables.num_dense, dense, sparse)


def _allowed(exclusion: ExclusionTables, exclude):
  """(state -> any item left, item -> not excluded) for one row.

  Args:
    exclusion: the trie's exclusion tables.
    exclude: int32 [E] distinct excluded item ids, -1 padded.

  Returns:
    (bool [num_states], bool [num_items]).
  """
  num_items = exclusion.item_states.shape[0]
  ok = exclude >= 0
  item = jnp.where(ok, exclude, 0)  # [E]
  states = exclusion.item_states[item]  # [E, L]
  hit = ok[:, None] & (states >= 0)  # [E, L]
  removed = jnp.zeros_like(exclusion.state_items).at[
      jnp.where(hit, states, 0)].add(hit.astype(jnp.int32))  # [S]
  banned = jnp.zeros((num_items,), bool).at[
      jnp.where(ok, exclude, num_items)].set(True, mode="drop")
  return exclusion.state_items - removed > 0, ~banned


def _search_one(scorer, params, prompt, tables: TrieTables, exclude=None,
                exclusion: ExclusionTables | None = None, *,
                sid_tokens: SidTokens, beam_size: int, num_levels: int,
                top_n: int):
  """Beam search for one example. Returns (items [N], scores [N], codes [N, L]).

  `exclude` (int32 [E], -1 padded; with `exclusion`): items this row must
  not return; prefixes with no other item below are never entered.
  """
  w = beam_size
  c_max = max(sid_tokens.sizes)
  sizes = np.asarray(sid_tokens.sizes)
  # Static per-level token ids and code validity: [L, C].
  code_range = np.arange(c_max)[None, :]
  code_ok = code_range < sizes[:, None]
  tok_idx = np.where(code_ok, np.asarray(sid_tokens.offsets)[:, None]
                     + code_range, 0).astype(np.int32)

  sstate, logits = scorer.init(params, prompt)  # logits [V]
  vocab = logits.shape[-1]
  if sid_tokens.end > vocab:
    raise ValueError(
        f"SID tokens {sid_tokens.offsets} + sizes {sid_tokens.sizes} reach "
        f"token {sid_tokens.end - 1}, beyond the model vocabulary of {vocab}")
  sstate = expand_state(scorer, sstate, w)
  logits = jnp.broadcast_to(logits, (w, vocab))  # [W, V]
  scores = jnp.where(jnp.arange(w) == 0, 0.0, NEG_INF)  # [W]
  tstate = jnp.zeros((w,), jnp.int32)  # [W] all at the root
  seqs = jnp.full((w, num_levels), -1, jnp.int32)  # [W, L]
  tok_idx_j = jnp.asarray(tok_idx)
  code_ok_j = jnp.asarray(code_ok)
  if exclude is not None:
    state_ok, item_ok = _allowed(exclusion, exclude)

  def select(level, logits, scores, tstate, k):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [W, V]
    lp = jnp.take(logp, tok_idx_j[level], axis=1)  # [W, C]
    nxt = _next_states(tables, tstate, level, c_max)  # [W, C]
    ok = ((nxt >= 0) & code_ok_j[level][None, :]
          & (scores > NEG_INF / 2)[:, None])  # [W, C]
    if exclude is not None:  # next state (item at the last level) left?
      left = jnp.where(
          level == num_levels - 1,
          item_ok[jnp.clip(nxt, 0, item_ok.shape[0] - 1)],
          state_ok[jnp.clip(nxt, 0, state_ok.shape[0] - 1)])
      ok = ok & left
    cand = jnp.where(ok, scores[:, None] + lp, NEG_INF)  # [W, C]
    top, flat = jax.lax.top_k(cand.reshape(-1), k)  # [k]
    beam, code = flat // c_max, flat % c_max
    alive = top > NEG_INF / 2
    new_state = jnp.where(alive, nxt[beam, code], -1)
    return jnp.where(alive, top, NEG_INF), beam, code, new_state, alive

  def body(carry, level):
    sstate, logits, scores, tstate, seqs = carry
    scores, beam, code, tstate, _ = select(level, logits, scores, tstate, w)
    seqs = seqs[beam].at[:, level].set(code)  # [W, L]
    sstate = scorer.gather(sstate, beam)
    tokens = tok_idx_j[level][code]  # [W]
    sstate, logits = scorer.step(params, sstate, tokens)  # logits [W, V]
    return (sstate, logits, scores, tstate, seqs), None

  carry = (sstate, logits, scores, tstate, seqs)
  if num_levels > 1:
    carry, _ = jax.lax.scan(body, carry, jnp.arange(num_levels - 1))
  sstate, logits, scores, tstate, seqs = carry
  last = num_levels - 1
  suffix = sid_tokens.suffix
  scores, beam, code, items, alive = select(
      last, logits, scores, tstate, w if suffix else top_n)
  codes = seqs[beam].at[:, last].set(code)  # [N, L] (N = W with a suffix)
  if suffix:
    # Forced tokens: one continuation per beam, so the beam set is final;
    # only the scores (and hence the order) change.
    sstate = scorer.gather(sstate, beam)
    tokens = tok_idx_j[last][code]  # [W]
    for f in suffix:
      sstate, logits = scorer.step(params, sstate, tokens)  # [W, V]
      lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, f]
      scores = jnp.where(alive, scores + lp, NEG_INF)  # [W]
      tokens = jnp.full((w,), f, jnp.int32)
    scores, order = jax.lax.top_k(scores, top_n)  # [N]
    items, codes, alive = items[order], codes[order], alive[order]
  codes = jnp.where(alive[:, None], codes, -1)
  return items, scores, codes


def search_batch(scorer, params, prompts, tables: TrieTables, exclude=None,
                 exclusion: ExclusionTables | None = None, *,
                 sid_tokens: SidTokens, beam_size: int, num_levels: int,
                 top_n: int) -> SearchResult:
  """The vmapped (not yet jitted) search; see `beam_search`."""
  if len(sid_tokens.sizes) != num_levels:
    raise ValueError(f"sid_tokens has {len(sid_tokens.sizes)} levels, "
                     f"num_levels={num_levels}")
  if not 1 <= top_n <= beam_size:
    raise ValueError(f"top_n={top_n} must be in [1, beam_size={beam_size}]")
  if hasattr(scorer, "with_levels"):
    scorer = scorer.with_levels(sid_tokens.num_new_tokens)
  one = functools.partial(_search_one, scorer, sid_tokens=sid_tokens,
                          beam_size=beam_size, num_levels=num_levels,
                          top_n=top_n)
  if exclude is None:
    items, scores, codes = jax.vmap(one, in_axes=(None, 0, None))(
        params, prompts, tables)
  else:
    items, scores, codes = jax.vmap(one, in_axes=(None, 0, None, 0, None))(
        params, prompts, tables, exclude, exclusion)
  return SearchResult(items, scores, codes)


def pad_exclude(exclude: Sequence[Sequence[int]], num_items: int
                ) -> np.ndarray:
  """Rows of item ids -> int32 [B, E] distinct in-range ids, -1 padded.

  E is rounded up to a power of two (>= 8) so that a jitted search compiles
  for a few widths only.
  """
  rows = [np.unique(np.asarray(r, np.int64)) for r in exclude]
  rows = [r[(r >= 0) & (r < num_items)] for r in rows]
  width = max([8] + [len(r) for r in rows])
  width = 1 << (width - 1).bit_length()
  out = np.full((len(rows), width), -1, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


# Jitted once per (scorer, sid_tokens, beam_size, num_levels, top_n) and
# input shapes; params, prompts and trie tables are traced arguments.
beam_search_jit = jax.jit(
    search_batch,
    static_argnames=("scorer", "sid_tokens", "beam_size", "num_levels",
                     "top_n"))


def beam_search(scorer, params, prompts, trie: Trie, *, beam_size: int,
                top_n: int | None = None, sid_tokens: SidTokens,
                exclude: Sequence[Sequence[int]] | None = None
                ) -> SearchResult:
  """Constrained beam search with host-side input checks.

  Args:
    scorer: a hashable scorer (DecoderScorer, T5Scorer, ...).
    params: model parameters (a pytree of arrays; nnx State(s)).
    prompts: a pytree of arrays with a leading batch axis, as the scorer
      expects.
    trie: item trie; `trie.tables` are passed to the jitted search.
    beam_size: beams per example (W).
    top_n: results per example (<= beam_size; default beam_size).
    sid_tokens: SID token layout in the model vocabulary (and the forced
      suffix tokens, if any).
    exclude: per row the item ids it must not return (e.g. its history):
      they are removed from that row's trie, so the top_n results are
      top_n other items whenever the catalogue has them.

  Returns:
    SearchResult with [B, top_n] items and scores, best first.

  Raises:
    ValueError: malformed prompts, SID layout not matching the trie or the
      vocabulary, top_n > beam_size.
  """
  top_n = beam_size if top_n is None else top_n
  if tuple(sid_tokens.sizes) != tuple(trie.codebook_sizes):
    if len(sid_tokens.sizes) != trie.num_levels or any(
        s < t for s, t in zip(sid_tokens.sizes, trie.codebook_sizes)):
      raise ValueError(f"SID token sizes {sid_tokens.sizes} do not cover the "
                       f"trie codebook sizes {trie.codebook_sizes}")
  scorer.check_prompts(prompts, sid_tokens.num_new_tokens)
  if exclude is not None:
    exclude = pad_exclude(exclude, trie.num_items)
    return beam_search_jit(scorer, params, prompts, trie.tables, exclude,
                           trie.exclusion, sid_tokens=sid_tokens,
                           beam_size=beam_size, num_levels=trie.num_levels,
                           top_n=top_n)
  return beam_search_jit(scorer, params, prompts, trie.tables,
                         sid_tokens=sid_tokens, beam_size=beam_size,
                         num_levels=trie.num_levels, top_n=top_n)


def _log_likelihood_one(scorer, params, prompt, tokens):
  """Sum of the full-vocabulary log-probs of `tokens` [N] after `prompt`."""
  sstate, logits = scorer.init(params, prompt)  # logits [V]
  sstate = expand_state(scorer, sstate, 1)
  total = jnp.zeros((), jnp.float32)
  n = tokens.shape[0]
  for i in range(n):  # a few tokens (the levels + suffix), unrolled
    # [V] after init, [1, V] after a step
    logp = jax.nn.log_softmax(logits.reshape(-1).astype(jnp.float32))
    total = total + logp[tokens[i]]
    if i + 1 < n:
      sstate, logits = scorer.step(params, sstate, tokens[i:i + 1])  # [1, V]
  return total


@functools.partial(jax.jit, static_argnames=("scorer",))
def _log_likelihood_jit(scorer, params, prompts, tokens):
  return jax.vmap(functools.partial(_log_likelihood_one, scorer),
                  in_axes=(None, 0, 0))(params, prompts, tokens)


def sid_log_likelihood(scorer, params, prompts, sid_token_ids: np.ndarray, *,
                       sid_tokens: SidTokens) -> np.ndarray:
  """Teacher-forced log-likelihood of one given SID per prompt.

  The sum over the SID's levels (and the forced suffix) of the model's
  full-vocabulary log-probs: minus the training loss of that target, and
  the score the exhaustive `beam_search` gives the same item. A cheap,
  low-variance check of how well a model predicts held-out targets.

  Args:
    scorer, params, prompts: as `beam_search`.
    sid_token_ids: int [B, L] the SID token ids (offsets added, e.g. rows
      of `SemanticIds.token_table`) of each prompt's target.
    sid_tokens: the layout (its suffix tokens are appended).

  Returns:
    float64 [B] log-likelihoods (<= 0).
  """
  ids = np.asarray(sid_token_ids, np.int32)
  if ids.ndim != 2 or ids.shape[1] != len(sid_tokens.sizes):
    raise ValueError(f"sid_token_ids has shape {ids.shape}, expected "
                     f"[B, {len(sid_tokens.sizes)}]")
  if (ids < 0).any():
    raise ValueError("sid_token_ids has negative ids (targets without an "
                     "SID); leave those rows out")
  suffix = np.broadcast_to(np.asarray(sid_tokens.suffix, np.int32),
                           (len(ids), len(sid_tokens.suffix)))
  tokens = np.concatenate([ids, suffix], 1)
  scorer.check_prompts(prompts, sid_tokens.num_new_tokens)
  if hasattr(scorer, "with_levels"):
    scorer = scorer.with_levels(sid_tokens.num_new_tokens)
  return np.asarray(_log_likelihood_jit(scorer, params, prompts, tokens),
                    np.float64)
