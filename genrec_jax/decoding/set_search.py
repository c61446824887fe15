"""Set decoding: a list of distinct semantic IDs under a repeating trie.

Generate-and-rank (issue 15): a generator turns a text query into a LIST of
semantic IDs, e.g. "80s" -> <a_3><b_1><c_7> <a_3><b_2><c_0> ... <eos>. The
sequence is constrained by a *repeating trie* over the unique SID paths
(leaf = SID index 0..num_sids-1; `trie.build_trie(unique_codes, sizes)`
with the SID index as the item id):

  * inside an SID (level l > 0) the next code follows the trie;
  * at an SID boundary (level 0): any level-0 code that still leads to an
    unused SID, or EOS (not before `min_sids` SIDs, default 1); after
    `max_sids` SIDs only EOS;
  * no SID twice: a prefix whose SIDs are all used is masked too;
  * after EOS the sequence is finished and only `pad_token` follows.

Layout (`SetTables`, numpy arrays built once on the host by `set_tables`,
passed to the jitted searches as *arguments*, never closed over):

  * nodes: 0 = root, then every prefix of 1..L-1 codes numbered level by
    level (S internal nodes in all), then the leaves S + sid;
  * `children[s, c]`: the node reached from internal node s by code c,
    or -1. Dense [S, C]: O(1) lookup; O(S x C) storage, fine for the
    catalogues of generate-and-rank (<= ~5,000 SIDs);
  * `num_leaves[n]`: SIDs under node n (1 for a leaf);
  * `leaf_path[sid]`: the L + 1 nodes from the root to the leaf.

Per sequence the state (`SetState`) is the current node and level, the
count of *unused* SIDs under every node (`remaining`, int32 [S + num_sids],
O(num_nodes) memory), the SIDs emitted so far and a finished flag. A code is
allowed when its child exists and `remaining[child] > 0`; emitting an SID
decrements `remaining` along its leaf path, so exhausted prefixes vanish
from the mask in O(L). `allowed` (bool [V] over the full vocabulary) and
`advance` are pure jnp functions of one sequence, vmapped over beams.

Searches (same scorer protocol as beam_search.py: `init`, `step`,
`gather`, optional `expand`, host-side `check_prompts`, `with_levels`):

  * `set_beam_search`: one example with a beam axis W, `lax.scan` over the
    T = max_sids * L + 1 steps (static), vmapped over the batch, jitted once
    per (shapes, beam_size, max_sids). Candidates per beam are the C codes
    of its level plus one "end" slot: EOS for a live beam at an SID
    boundary, `pad_token` with the frozen score for a finished beam (one
    candidate each, so finished beams stay in the pool), then top_k over
    W x (C + 1). Scores are sums of full-vocabulary log-probs (no
    renormalisation over the allowed set, as beam_search). Beams without a
    valid continuation carry exactly NEG_INF and are returned as
    (sids -1, length 0, NEG_INF).
  * `set_sample`: constrained ancestral sampling (the original's current
    inference: N samples per query, SIDs ranked by how often they occur).
    Tokens are drawn from softmax(logits / temperature) renormalised over
    the allowed tokens (optionally the top_k of them); the returned score of
    a sample is still its full-vocabulary log-prob at temperature 1, the
    same quantity beam search sums.
  * `votes`: host-side aggregation of the sequences into a ranked SID list.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.decoding.beam_search import (NEG_INF, SidTokens, expand_state,
                                             gather_beams)
from genrec_jax.decoding.trie import Trie


class SetTables(NamedTuple):
  """The repeating-trie arrays (a pytree of arrays; see the module doc).

  Attributes:
    children: int32 [S, C] child node of internal node s by code c, or -1;
      a child >= S is the leaf of SID (child - S).
    num_leaves: int32 [S + num_sids] SIDs under each node.
    leaf_path: int32 [num_sids, L + 1] nodes from the root to each leaf.
    codebook_sizes: int32 [L] codes per level of the trie.
  """

  children: np.ndarray
  num_leaves: np.ndarray
  leaf_path: np.ndarray
  codebook_sizes: np.ndarray


class SetState(NamedTuple):
  """Decoding state of one sequence (leading beam axis when batched).

  Attributes:
    node: int32 [] current node (0 at an SID boundary).
    level: int32 [] codes of the current SID emitted so far (0..L-1).
    remaining: int32 [S + num_sids] unused SIDs under each node.
    num_sids: int32 [] complete SIDs emitted.
    finished: bool [] EOS emitted (or a dead beam).
    sids: int32 [max_sids] SID indices in generation order, -1 after.
  """

  node: jax.Array
  level: jax.Array
  remaining: jax.Array
  num_sids: jax.Array
  finished: jax.Array
  sids: jax.Array


class SetResult(NamedTuple):
  """Generated SID lists per prompt.

  Attributes:
    sids: int32 [B, W, max_sids] SID indices in generation order, -1 after
      the end (and for dead beams).
    lengths: int32 [B, W] number of SIDs (0 for dead beams).
    scores: float32 [B, W] sum of full-vocabulary log-probs (divided by
      lengths**length_penalty in beam search); NEG_INF for dead beams.
  """

  sids: jax.Array
  lengths: jax.Array
  scores: jax.Array


@dataclasses.dataclass(frozen=True)
class SetSpec:
  """The static (hashable) part of the constraint.

  Attributes:
    sid_tokens: where the level-l code tokens live (no forced suffix).
    eos_token: ends the list; allowed only at an SID boundary.
    pad_token: fed to the scorer by finished sequences.
    max_sids: at most this many SIDs per sequence.
    min_sids: EOS is not allowed before this many SIDs (>= 1).
  """

  sid_tokens: SidTokens
  eos_token: int
  pad_token: int
  max_sids: int
  min_sids: int = 1

  def __post_init__(self):
    if self.sid_tokens.suffix:
      raise ValueError("set search takes no forced SID suffix, got "
                       f"{self.sid_tokens.suffix}")
    if not 1 <= self.min_sids <= self.max_sids:
      raise ValueError(f"need 1 <= min_sids={self.min_sids} <= "
                       f"max_sids={self.max_sids}")
    for name in ("eos_token", "pad_token"):
      tok = getattr(self, name)
      if tok < 0:
        raise ValueError(f"{name}={tok} is negative")
      for l, (o, s) in enumerate(zip(self.sid_tokens.offsets,
                                     self.sid_tokens.sizes)):
        if o <= tok < o + s:
          raise ValueError(f"{name}={tok} is an SID token of level {l} "
                           f"[{o}, {o + s})")

  @property
  def num_levels(self) -> int:
    return len(self.sid_tokens.sizes)

  @property
  def num_steps(self) -> int:
    """Tokens generated per sequence: max_sids SIDs and EOS."""
    return self.max_sids * self.num_levels + 1


# ----------------------------------------------------------------------------
# The constraint.


def set_tables(trie: Trie) -> SetTables:
  """Repeating-trie tables from a trie over the unique SID paths.

  Args:
    trie: `build_trie(unique_codes, sizes)`; its item ids are SID indices
      (ids without a path are never generated).

  Returns:
    The host-side tables.
  """
  num_sids = trie.num_items
  sid_ids = np.flatnonzero(trie.has_item)  # [P]
  codes = trie.codes[sid_ids].astype(np.int64)  # [P, L]
  n, num_levels = codes.shape
  c_max = max(trie.codebook_sizes)
  # node[:, l] = node after l codes; column L = the leaf.
  node = np.zeros((n, num_levels + 1), dtype=np.int64)
  start = 1
  for l in range(1, num_levels):
    key = node[:, l - 1] * c_max + codes[:, l - 1]
    uniq, inv = np.unique(key, return_inverse=True)
    node[:, l] = start + inv.reshape(-1)
    start += len(uniq)
  num_internal = start
  node[:, num_levels] = num_internal + sid_ids
  children = np.full((num_internal, c_max), -1, dtype=np.int32)
  for l in range(num_levels):
    children[node[:, l], codes[:, l]] = node[:, l + 1]
  num_leaves = np.zeros(num_internal + num_sids, dtype=np.int32)
  for l in range(num_levels + 1):
    np.add.at(num_leaves, node[:, l], 1)
  leaf_path = np.zeros((num_sids, num_levels + 1), dtype=np.int32)
  leaf_path[sid_ids] = node
  return SetTables(children=children, num_leaves=num_leaves,
                   leaf_path=leaf_path,
                   codebook_sizes=np.asarray(trie.codebook_sizes, np.int32))


def init_state(spec: SetSpec, tables: SetTables) -> SetState:
  """The empty sequence (at the root, nothing used)."""
  zero = jnp.zeros((), jnp.int32)
  return SetState(node=zero, level=zero,
                  remaining=jnp.asarray(tables.num_leaves, jnp.int32),
                  num_sids=zero, finished=jnp.zeros((), bool),
                  sids=jnp.full((spec.max_sids,), -1, jnp.int32))


def _options(spec: SetSpec, tables: SetTables, state: SetState):
  """The next-token options of one sequence at its current level.

  Returns:
    child: int32 [C] node reached by each code of the level, or -1.
    code_ok: bool [C] the code is allowed (C = widest SID token block).
    eos_ok: bool [] EOS is allowed.
  """
  c = max(spec.sid_tokens.sizes)
  children = jnp.asarray(tables.children)
  if children.shape[1] > c:
    raise ValueError(f"trie codebooks ({children.shape[1]} codes) are wider "
                     f"than the SID token blocks ({c})")
  row = children[state.node]  # [C']
  row = jnp.pad(row, (0, c - row.shape[0]), constant_values=-1)  # [C]
  sizes = jnp.asarray(spec.sid_tokens.sizes, jnp.int32)  # [L]
  at_boundary = state.level == 0
  code_ok = ((row >= 0) & (jnp.arange(c) < sizes[state.level])
             & (state.remaining[jnp.maximum(row, 0)] > 0)
             & ~state.finished
             & (~at_boundary | (state.num_sids < spec.max_sids)))  # [C]
  eos_ok = ~state.finished & at_boundary & (state.num_sids >= spec.min_sids)
  return row, code_ok, eos_ok


def allowed(spec: SetSpec, tables: SetTables, state: SetState,
            vocab_size: int) -> jax.Array:
  """bool [V]: the tokens one sequence may emit next (pad once finished)."""
  _, code_ok, eos_ok = _options(spec, tables, state)  # [C], []
  mask = jnp.zeros((vocab_size,), bool)  # [V]
  for l, (o, s) in enumerate(zip(spec.sid_tokens.offsets,
                                 spec.sid_tokens.sizes)):
    mask = mask.at[o:o + s].set(mask[o:o + s]
                                | (code_ok[:s] & (state.level == l)))
  mask = mask.at[spec.eos_token].set(mask[spec.eos_token] | eos_ok)
  return mask.at[spec.pad_token].set(mask[spec.pad_token] | state.finished)


def advance(spec: SetSpec, tables: SetTables, state: SetState,
            token: jax.Array) -> SetState:
  """The state after `token`; a token that is not allowed changes nothing."""
  child, code_ok, eos_ok = _options(spec, tables, state)  # [C], [C], []
  c = child.shape[0]
  offsets = jnp.asarray(spec.sid_tokens.offsets, jnp.int32)  # [L]
  code = token - offsets[state.level]
  idx = jnp.clip(code, 0, c - 1)
  is_code = (code >= 0) & (code < c) & code_ok[idx]
  nxt = child[idx]
  num_internal = tables.children.shape[0]
  leaf = is_code & (nxt >= num_internal)  # an SID completed
  sid = jnp.where(leaf, nxt - num_internal, -1)
  path = jnp.asarray(tables.leaf_path)[jnp.maximum(sid, 0)]  # [L + 1]
  remaining = state.remaining.at[path].add(-leaf.astype(jnp.int32))
  slot = jnp.minimum(state.num_sids, spec.max_sids - 1)
  sids = state.sids.at[slot].set(jnp.where(leaf, sid, state.sids[slot]))
  return SetState(
      node=jnp.where(leaf, 0, jnp.where(is_code, nxt, state.node)),
      level=jnp.where(leaf, 0, state.level + is_code.astype(jnp.int32)),
      remaining=remaining,
      num_sids=state.num_sids + leaf.astype(jnp.int32),
      finished=state.finished | (eos_ok & (token == spec.eos_token)),
      sids=sids)


# ----------------------------------------------------------------------------
# The searches.


def _start(scorer, params, prompt, spec: SetSpec, tables: SetTables,
           width: int):
  """Prefills one prompt -> (scorer state, logits [W, V], SetState [W])."""
  sstate, logits = scorer.init(params, prompt)  # logits [V]
  vocab = logits.shape[-1]
  top = max(spec.sid_tokens.end, spec.eos_token + 1, spec.pad_token + 1)
  if top > vocab:
    raise ValueError(f"SID / EOS / pad tokens reach token {top - 1}, beyond "
                     f"the model vocabulary of {vocab}")
  sstate = expand_state(scorer, sstate, width)
  logits = jnp.broadcast_to(logits, (width, vocab))  # [W, V]
  one = init_state(spec, tables)
  cstate = jax.tree.map(lambda x: jnp.broadcast_to(x, (width,) + x.shape),
                        one)  # [W, ...]
  return sstate, logits, cstate


def _beam_one(scorer, params, prompt, tables: SetTables, *, spec: SetSpec,
              beam_size: int, length_penalty: float):
  """Beam search for one example -> (sids [W, M], lengths [W], scores [W])."""
  w = beam_size
  c = max(spec.sid_tokens.sizes)
  sstate, logits, cstate = _start(scorer, params, prompt, spec, tables, w)
  vocab = logits.shape[-1]
  offsets = jnp.asarray(spec.sid_tokens.offsets, jnp.int32)  # [L]
  scores = jnp.where(jnp.arange(w) == 0, 0.0, NEG_INF)  # [W]
  options = jax.vmap(functools.partial(_options, spec, tables))
  step_state = jax.vmap(functools.partial(advance, spec, tables))

  def select(logits, scores, cstate):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [W, V]
    _, code_ok, eos_ok = options(cstate)  # [W, C], [W]
    tok = jnp.minimum(offsets[cstate.level][:, None] + jnp.arange(c)[None],
                      vocab - 1)  # [W, C]
    lp = jnp.take_along_axis(logp, tok, axis=1)  # [W, C]
    live = scores > NEG_INF / 2  # [W]
    code_cand = jnp.where(code_ok & live[:, None], scores[:, None] + lp,
                          NEG_INF)  # [W, C]
    end_cand = jnp.where(
        cstate.finished, scores,
        jnp.where(eos_ok, scores + logp[:, spec.eos_token], NEG_INF))  # [W]
    end_cand = jnp.where(live, end_cand, NEG_INF)
    cand = jnp.concatenate([code_cand, end_cand[:, None]], 1)  # [W, C + 1]
    top, flat = jax.lax.top_k(cand.reshape(-1), w)  # [W]
    beam, slot = flat // (c + 1), flat % (c + 1)
    alive = top > NEG_INF / 2
    end_tok = jnp.where(cstate.finished[beam], spec.pad_token, spec.eos_token)
    token = jnp.where(slot == c, end_tok, tok[beam, jnp.minimum(slot, c - 1)])
    token = jnp.where(alive, token, spec.pad_token)  # [W]
    cstate = step_state(gather_beams(cstate, beam), token)
    cstate = cstate._replace(finished=cstate.finished | ~alive)
    return jnp.where(alive, top, NEG_INF), beam, token, cstate

  def body(carry, _):
    sstate, logits, scores, cstate = carry
    scores, beam, token, cstate = select(logits, scores, cstate)
    sstate = scorer.gather(sstate, beam)
    sstate, logits = scorer.step(params, sstate, token)  # logits [W, V]
    return (sstate, logits, scores, cstate), None

  carry = (sstate, logits, scores, cstate)
  carry, _ = jax.lax.scan(body, carry, None, length=spec.num_steps - 1)
  _, logits, scores, cstate = carry
  # The last step allows only EOS: every live beam ends finished.
  scores, _, _, cstate = select(logits, scores, cstate)
  alive = scores > NEG_INF / 2  # [W]
  lengths = jnp.where(alive, cstate.num_sids, 0)  # [W]
  if length_penalty:
    norm = jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
    scores = jnp.where(alive, scores / norm, NEG_INF)
    scores, order = jax.lax.top_k(scores, w)
    alive, lengths, cstate = alive[order], lengths[order], gather_beams(
        cstate, order)
  sids = jnp.where(alive[:, None], cstate.sids, -1)  # [W, M]
  return sids, lengths, scores


def _sample_one(scorer, params, prompt, key, tables: SetTables, temperature,
                *, spec: SetSpec, num_samples: int, top_k: int):
  """N samples for one example -> (sids [N, M], lengths [N], scores [N])."""
  n = num_samples
  sstate, logits, cstate = _start(scorer, params, prompt, spec, tables, n)
  vocab = logits.shape[-1]
  mask_of = jax.vmap(functools.partial(allowed, spec, tables,
                                       vocab_size=vocab))
  step_state = jax.vmap(functools.partial(advance, spec, tables))

  def pick(t, logits, scores, cstate):
    logits = logits.astype(jnp.float32)  # [N, V]
    logp = jax.nn.log_softmax(logits, axis=-1)  # [N, V]
    z = jnp.where(mask_of(cstate), logits / temperature, NEG_INF)  # [N, V]
    if top_k:
      kth = jax.lax.top_k(z, min(top_k, vocab))[0][:, -1:]  # [N, 1]
      z = jnp.where(z >= kth, z, NEG_INF)
    token = jax.random.categorical(jax.random.fold_in(key, t), z, axis=-1)
    token = token.astype(jnp.int32)  # [N]
    lp = jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0]  # [N]
    scores = jnp.where(cstate.finished, scores, scores + lp)
    return token, scores, step_state(cstate, token)

  def body(carry, t):
    sstate, logits, scores, cstate = carry
    token, scores, cstate = pick(t, logits, scores, cstate)
    sstate, logits = scorer.step(params, sstate, token)  # logits [N, V]
    return (sstate, logits, scores, cstate), None

  carry = (sstate, logits, jnp.zeros((n,), jnp.float32), cstate)
  last = spec.num_steps - 1
  carry, _ = jax.lax.scan(body, carry, jnp.arange(last))
  _, logits, scores, cstate = carry
  _, scores, cstate = pick(last, logits, scores, cstate)
  return cstate.sids, cstate.num_sids, scores


def _prepare(scorer, spec: SetSpec):
  if hasattr(scorer, "with_levels"):
    scorer = scorer.with_levels(spec.num_steps)
  return scorer


def set_search_batch(scorer, params, prompts, tables: SetTables, *,
                     spec: SetSpec, beam_size: int,
                     length_penalty: float = 0.0) -> SetResult:
  """The vmapped (not yet jitted) beam search; see `set_beam_search`."""
  one = functools.partial(_beam_one, _prepare(scorer, spec), spec=spec,
                          beam_size=beam_size, length_penalty=length_penalty)
  return SetResult(*jax.vmap(one, in_axes=(None, 0, None))(
      params, prompts, tables))


def set_sample_batch(scorer, params, prompts, tables: SetTables, rng,
                     temperature, *, spec: SetSpec, num_samples: int,
                     top_k: int = 0) -> SetResult:
  """The vmapped (not yet jitted) sampler; see `set_sample`."""
  batch = jax.tree.leaves(prompts)[0].shape[0]
  keys = jax.random.split(rng, batch)  # [B] one stream per prompt
  one = functools.partial(_sample_one, _prepare(scorer, spec), spec=spec,
                          num_samples=num_samples, top_k=top_k)
  return SetResult(*jax.vmap(one, in_axes=(None, 0, 0, None, None))(
      params, prompts, keys, tables, jnp.asarray(temperature, jnp.float32)))


# Jitted once per (scorer, spec, width, ...) and input shapes; params,
# prompts, tables, rng and temperature are traced arguments.
set_search_jit = jax.jit(
    set_search_batch,
    static_argnames=("scorer", "spec", "beam_size", "length_penalty"))
set_sample_jit = jax.jit(
    set_sample_batch, static_argnames=("scorer", "spec", "num_samples",
                                       "top_k"))


def _check(scorer, prompts, tables: SetTables, spec: SetSpec, width: int):
  """Host-side checks shared by both searches."""
  if width < 1:
    raise ValueError(f"need at least one beam / sample, got {width}")
  trie_sizes = np.asarray(tables.codebook_sizes)
  if len(trie_sizes) != spec.num_levels or (
      trie_sizes > np.asarray(spec.sid_tokens.sizes)).any():
    raise ValueError(f"SID token sizes {spec.sid_tokens.sizes} do not cover "
                     f"the trie codebook sizes {trie_sizes.tolist()}")
  available = int(np.asarray(tables.num_leaves)[0])
  if spec.min_sids > available:
    raise ValueError(f"min_sids={spec.min_sids} but the trie holds only "
                     f"{available} SIDs")
  scorer.check_prompts(prompts, spec.num_steps)


def set_beam_search(scorer, params, prompts, tables: SetTables, *,
                    sid_tokens: SidTokens, eos_token: int, pad_token: int,
                    beam_size: int, max_sids: int, min_sids: int = 1,
                    length_penalty: float = 0.0) -> SetResult:
  """Beam search over lists of distinct SIDs (repeating-trie constraint).

  Args:
    scorer: a hashable scorer (T5Scorer, DecoderScorer, ...).
    params: model parameters (a pytree of arrays).
    prompts: a pytree of arrays with a leading batch axis.
    tables: `set_tables(trie)` over the unique SIDs.
    sid_tokens: SID token layout (no suffix).
    eos_token: ends a list (only at an SID boundary, after min_sids SIDs).
    pad_token: fed by finished beams.
    beam_size: W beams per prompt, all returned.
    max_sids: at most this many SIDs per list (T = max_sids * L + 1 steps).
    min_sids: no EOS before this many SIDs.
    length_penalty: alpha; the finished pool is ranked (and scored) by
      sum / lengths**alpha (HF-style: alpha > 0 favours longer lists).
      Applied to the final pool only; the search keeps beams by raw sums.

  Returns:
    SetResult [B, W, ...], best first.
  """
  spec = SetSpec(sid_tokens, int(eos_token), int(pad_token), int(max_sids),
                 int(min_sids))
  _check(scorer, prompts, tables, spec, beam_size)
  return set_search_jit(scorer, params, prompts, tables, spec=spec,
                        beam_size=beam_size,
                        length_penalty=float(length_penalty))


def set_sample(scorer, params, prompts, tables: SetTables, *,
               sid_tokens: SidTokens, eos_token: int, pad_token: int,
               num_samples: int, max_sids: int, temperature: float,
               rng: jax.Array, top_k: int = 0,
               min_sids: int = 1) -> SetResult:
  """Constrained ancestral sampling of lists of distinct SIDs.

  Each step draws from softmax(logits / temperature) over the allowed
  tokens (the top_k of them when top_k > 0). Deterministic for a given rng
  (one stream per prompt: `jax.random.split(rng, B)`, folded with the
  step).

  Args:
    scorer, params, prompts, tables, sid_tokens, eos_token, pad_token,
    max_sids, min_sids: as in `set_beam_search`.
    num_samples: N sequences per prompt.
    temperature: > 0.
    rng: a PRNG key.
    top_k: sample among the k best allowed tokens (0: all).

  Returns:
    SetResult [B, N, ...] in sample order; scores are the samples'
    full-vocabulary log-probs at temperature 1.
  """
  if not temperature > 0:
    raise ValueError(f"temperature={temperature} must be > 0")
  if top_k < 0:
    raise ValueError(f"top_k={top_k} must be >= 0")
  spec = SetSpec(sid_tokens, int(eos_token), int(pad_token), int(max_sids),
                 int(min_sids))
  _check(scorer, prompts, tables, spec, num_samples)
  return set_sample_jit(scorer, params, prompts, tables, rng,
                        float(temperature), spec=spec,
                        num_samples=num_samples, top_k=int(top_k))


# ----------------------------------------------------------------------------
# Aggregation.


class Votes(NamedTuple):
  """SIDs ranked per prompt, best first.

  Attributes:
    sids: int32 [B, num_sids] SID indices; -1 after those generated.
    scores: float64 [B, num_sids] their votes; 0 after those generated.
  """

  sids: np.ndarray
  scores: np.ndarray


def votes(result: SetResult, num_sids: int,
          weighting: str = "count", discount: bool = False) -> Votes:
  """Aggregates generated lists into one SID ranking per prompt (host).

  Args:
    result: from set_beam_search or set_sample.
    num_sids: SID index bound.
    weighting: "count": the number of sequences containing the SID;
      "beam": the sum of softmax(scores) over the sequences containing it.
      Ties go to the earlier mean position, then the smaller index.
    discount: weigh an occurrence at position m (0-based) by
      1 / log2(m + 2) (DCG's discount), so that the order of a list counts:
      a list ordered by relevance puts its surest SIDs first.

  Returns:
    Votes.
  """
  sids = np.asarray(result.sids)  # [B, W, M]
  lengths = np.asarray(result.lengths)  # [B, W]
  scores = np.asarray(result.scores, np.float64)  # [B, W]
  pos = np.broadcast_to(np.arange(sids.shape[2]), sids.shape)  # [B, W, M]
  valid = (sids >= 0) & (pos < lengths[..., None])  # [B, W, M]
  if weighting == "count":
    weight = np.ones_like(scores)
  elif weighting == "beam":
    live = scores > NEG_INF / 2
    z = np.where(live, scores, -np.inf)
    z = np.exp(z - np.max(z, axis=1, keepdims=True, initial=-1e300))
    weight = z / np.maximum(z.sum(1, keepdims=True), 1e-300)
  else:
    raise ValueError(f"weighting={weighting!r}: 'count' or 'beam'")
  out_sids = np.full((sids.shape[0], num_sids), -1, np.int32)
  out_scores = np.zeros((sids.shape[0], num_sids))
  for b in range(sids.shape[0]):
    row, m = np.nonzero(valid[b])
    s = sids[b, row, m]
    w = weight[b, row] / (np.log2(m + 2.0) if discount else 1.0)
    vote = np.bincount(s, weights=w, minlength=num_sids)
    hits = np.bincount(s, minlength=num_sids)
    pos_sum = np.bincount(s, weights=m, minlength=num_sids)
    seen = np.flatnonzero(hits)
    order = np.lexsort((seen, pos_sum[seen] / hits[seen], -vote[seen]))
    out_sids[b, :len(seen)] = seen[order]
    out_scores[b, :len(seen)] = vote[seen][order]
  return Votes(out_sids, out_scores)
