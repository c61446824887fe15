"""GRPO over the constrained beam search (MiniOneRec's reinforcement stage).

  source = RolloutSource(fmt, examples, ref_model, cfg, ...)   # BatchSource
  loss = make_grpo_loss(beta=1e-3, epsilon=0.2, mu=1)
  loop.train(policy, loss, source, cfg.train, ...)

Per update (METHODS.md 3.4 and its addendum):
  1. rollouts: P training prompts (seeded order, a deterministic function of
     the step; with the text format a fraction `rollout.title_fraction` ask
     for the SID of the target's title instead, as MiniOneRec's
     RLTitle2SidDataset), ONE jitted trie beam search per prompt with G beams of the
     current policy, sorted by beam score (beam rank = reward rank). Every
     beam is a valid item by construction; a row with fewer than G items
     has -1 beams, which get reward 0 and leave the loss.
  2. rewards from item ids (rl/rewards.py), advantages
     (r - mean_g) / (std_g + 1e-4) with the unbiased std.
  3. reference log-probs of every completion under the frozen reference
     (the SFT parameters; optionally mixed with the policy every
     `ref_sync_every` steps: ref <- alpha * policy + (1 - alpha) * ref).
  4. the loss, per completion token,
       -(exp(logp - sg(logp)) * A - beta * k3),  k3 = exp(d) - d - 1,
       d = ref - logp,
     mean over a completion's tokens, then over the valid completions; with
     mu > 1 each rollout is used for mu updates with the PPO clip
     -min(r A, clip(r, 1 - eps, 1 + eps) A), r = exp(logp - old).
Log-probs come from ONE teacher-forced forward per prompt over the full
vocabulary: the prompt packed once with its G completions, each seeing the
prompt and itself (generative/losses.grouped_completion_log_probs; equal to
one [prompt; completion] row each, at ~G times fewer prompt tokens),
projected only at the completion positions.

Diagnostics flow through the loss's aux sums (per log window): groups,
groups with a hit (non-zero advantage for `rule`/`ranking`), reward parts,
completion tokens and the KL sum; `DIAGNOSTIC_RATIOS` turns them into
rates for the curve and TensorBoard.
"""

from __future__ import annotations

import pathlib
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genrec_jax.data.dataset import EvalExamples, Ragged
from genrec_jax.decoding import beam_search as bs
from genrec_jax.generative import formats
from genrec_jax.generative import losses
from genrec_jax.rl import rewards as rewards_lib
from genrec_jax.training import batching

# Aux keys of the loss that are per-step statistics of the rollouts (summed
# by the trainer over a log window): batch["stat_<name>"] [N] -> aux name.
STAT_PREFIX = "stat_"
# (rate, numerator, denominator) over a log window.
DIAGNOSTIC_RATIOS = (
    ("group_hit_rate", "groups_hit", "groups"),
    ("reward", "reward", "completions"),
    ("kl", "kl", "completion_tokens"),
    ("completion_length", "completion_tokens", "completions"),
    ("clip_fraction", "clipped", "completion_tokens"),
)


def ratios(window: dict[str, float]) -> dict[str, float]:
  """The rates of DIAGNOSTIC_RATIOS (and each reward part) of aux sums."""
  out = {}
  for name, num, den in DIAGNOSTIC_RATIOS:
    if num in window and window.get(den):
      out[name] = window[num] / window[den]
  for k, v in window.items():
    if k.startswith("reward_") and window.get("completions"):
      out[k] = v / window["completions"]
  return out


def make_grpo_loss(*, beta: float, epsilon: float, mu: int):
  """The GRPO loss (model, batch, key) -> (loss, aux); see the module doc.

  batch (one row per prompt, its G completions grouped):
    prompt_ids int [P, T] left-padded, prompt_mask bool [P, T],
    completions int [P, G, C], weight float [P, G] (1 = a valid
    completion), advantages float [P, G], ref_logp float [P, G, C],
    old_logp [P, G, C] when mu > 1, and stat_* [P, G] statistics summed
    into aux.
  The policy log-probs come from one forward per prompt row that packs the
  prompt once with its G completions (losses.grouped_completion_log_probs).
  """

  def loss_fn(model, batch, key):
    del key
    ref = batch["ref_logp"]  # [P, G, C]
    c = ref.shape[-1]
    logp = losses.grouped_completion_log_probs(
        model, batch["prompt_ids"], batch["prompt_mask"],
        batch["completions"])  # [P, G, C]
    adv = batch["advantages"][..., None]  # [P, G, 1]
    if mu > 1:
      ratio = jnp.exp(logp - batch["old_logp"])
      clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
      pg = -jnp.minimum(ratio * adv, clipped * adv)
      clip_hit = (jnp.abs(ratio - 1.0) > epsilon).astype(jnp.float32)
    else:  # on-policy: the ratio is 1 with the policy gradient's gradient
      pg = -jnp.exp(logp - jax.lax.stop_gradient(logp)) * adv
      clip_hit = jnp.zeros_like(logp)
    d = ref - logp
    k3 = jnp.exp(d) - d - 1.0
    per_token = pg + beta * k3  # [P, G, C]
    w = batch["weight"].astype(jnp.float32)  # [P, G]
    per_seq = jnp.mean(per_token, axis=-1)  # every completion has C tokens
    n = jnp.sum(w)
    loss = jnp.sum(per_seq * w) / jnp.maximum(n, 1.0)
    aux = {"completions": n, "completion_tokens": n * c,
           "kl": jnp.sum(jnp.sum(k3, axis=-1) * w),
           "clipped": jnp.sum(jnp.sum(clip_hit, axis=-1) * w)}
    for k, v in batch.items():
      if k.startswith(STAT_PREFIX):
        aux[k[len(STAT_PREFIX):]] = jnp.sum(v.astype(jnp.float32))
    return loss, aux

  return loss_fn


def train_prompt_rows(ds, item_tokens: np.ndarray) -> tuple[np.ndarray,
                                                            np.ndarray]:
  """(users, positions) of every train prefix with >= 1 history item and
  a target that has an SID (the RL prompts: history train[u][:p] ->
  train[u][p])."""
  users, pos = batching.prefixes(ds.train)
  targets = ds.train.values[ds.train.offsets[users] + pos]
  keep = (pos >= 1) & (item_tokens[targets] >= 0).all(1)
  return users[keep], pos[keep]


def prompt_examples(ds, users: np.ndarray, pos: np.ndarray,
                    max_history: int) -> EvalExamples:
  """EvalExamples of train prefixes (history cut to max_history)."""
  offsets, values = ds.train.offsets, ds.train.values
  hist, tgt = [], []
  for u, p in zip(users, pos):
    start = offsets[u]
    hist.append(values[start + max(0, p - max_history):start + p])
    tgt.append([values[start + p]])
  return EvalExamples(users=np.asarray(users, np.int32),
                      history=Ragged.from_lists(hist),
                      targets=Ragged.from_lists(tgt))


class RolloutSource:
  """The trainer's BatchSource: rollouts, rewards, advantages, ref log-probs.

  Deterministic in (params, step): the prompts of rollout r are positions
  [r P, (r + 1) P) of a stream of seeded per-epoch permutations of the
  training prompts; the search is deterministic; the reference at step s is
  the one of the last sync step <= s (saved under `ref_dir`, so a resumed
  run reads it back). With mu > 1 the rollout of step s is the one of step
  s - s % mu (checkpoints must fall on multiples of mu: the rollout is
  recomputed from the restored params).
  """

  def __init__(self, fmt: formats.PromptFormat, ds, ref_model: nnx.Module,
               cfg: ml_collections.ConfigDict, *, seed: int,
               reward_context: dict[str, Any], ref_dir: pathlib.Path,
               shard_index: int = 0, shard_count: int = 1):
    self.fmt, self.ds, self.cfg, self.seed = fmt, ds, cfg, seed
    self.g = int(cfg.rollout.num_generations)
    self.p = int(cfg.rollout.prompts_per_step)
    self.mu = int(cfg.grpo.mu)
    self.reward = cfg.reward.type
    self.reward_context = reward_context
    self.local = batching.check_shards(self.p, shard_index, shard_count)
    self.lo = shard_index * self.local
    self.users, self.pos = train_prompt_rows(ds, fmt.item_tokens)
    if len(self.users) < self.p:
      raise ValueError(f"{len(self.users)} training prompts for "
                       f"rollout.prompts_per_step = {self.p}")
    self.layout = fmt.layout
    self.num_completion = self.layout.num_new_tokens
    graphdef, ref_params, ref_rest = nnx.split(ref_model, nnx.Param, ...)
    self.graphdef, self.ref, self.rest = graphdef, ref_params, ref_rest
    self.scorer = fmt.scorer(graphdef)
    self.ref_dir = pathlib.Path(ref_dir)
    self.ref_step = 0
    self._perms: dict[int, np.ndarray] = {}
    self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    def logp(params, rest, batch):
      model = nnx.merge(graphdef, params, rest)
      return losses.grouped_completion_log_probs(
          model, batch["prompt_ids"], batch["prompt_mask"],
          batch["completions"])

    self._logp = jax.jit(logp)
    logging.info("GRPO rollouts: %d training prompts, %d per step x %d beams, "
                 "reward %s, completion %d tokens", len(self.users), self.p,
                 self.g, self.reward, self.num_completion)

  @property
  def num_prompts(self) -> int:
    return len(self.users)

  # -- prompts ---------------------------------------------------------------

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng(
          [self.seed, epoch]).permutation(len(self.users))}
    return self._perms[epoch]

  def rows(self, rollout: int) -> np.ndarray:
    """Indices of the global prompts of rollout `rollout`."""
    n = len(self.users)
    idx = rollout * self.p + np.arange(self.p)
    out = np.empty(self.p, np.int64)
    for e in np.unique(idx // n):
      sel = idx // n == e
      out[sel] = self._perm(int(e))[idx[sel] % n]
    return out

  def title_rows(self, rollout: int) -> np.ndarray:
    """bool [local P]: rows asked for their target's SID from its title
    (rollout.title_fraction, text formats), seeded by the rollout."""
    frac = float(self.cfg.rollout.title_fraction)
    draws = np.random.default_rng([self.seed, rollout, 1]).random(self.p)
    return (draws < frac)[self.lo:self.lo + self.local]

  def examples(self, rollout: int) -> EvalExamples:
    rows = self.rows(rollout)[self.lo:self.lo + self.local]
    return prompt_examples(self.ds, self.users[rows], self.pos[rows],
                           self.fmt.max_history)

  # -- reference -------------------------------------------------------------

  def _sync_ref(self, model: nnx.Module, step: int) -> None:
    every = int(self.cfg.grpo.ref_sync_every)
    if not every:
      return
    k = (step // every) * every
    if k <= self.ref_step:
      return
    path = self.ref_dir / f"ref_{k}.npz"
    leaves, treedef = jax.tree.flatten(self.ref)
    if k == step:  # the policy of step k is `model`: mix and save
      alpha = float(self.cfg.grpo.ref_sync_alpha)
      policy = jax.tree.leaves(nnx.state(model, nnx.Param))
      leaves = [alpha * p + (1.0 - alpha) * r for p, r in zip(policy, leaves)]
      self.ref_dir.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(".tmp.npz")
      np.savez(tmp, *[np.asarray(x) for x in leaves])
      tmp.replace(path)
      logging.info("GRPO: reference synced at step %d (alpha %.2f)", k, alpha)
    else:  # resumed after the sync of step k
      if not path.exists():
        raise FileNotFoundError(f"{path}: the reference of step {k} (a "
                                "resumed run needs it)")
      with np.load(path) as z:
        leaves = [jax.device_put(z[f"arr_{i}"], x.sharding)
                  for i, x in enumerate(leaves)]
    self.ref = jax.tree.unflatten(treedef, leaves)
    self.ref_step = k

  # -- batches ---------------------------------------------------------------

  def next_batch(self, model: nnx.Module, step: int) -> dict[str, np.ndarray]:
    start = step - step % self.mu
    if self._cache is not None and self._cache[0] == start:
      return self._cache[1]
    self._sync_ref(model, start)
    batch = self.rollout(model, start // self.mu)
    if self.mu > 1:
      batch["old_logp"] = self.log_probs(model, batch)
    self._cache = (start, batch)
    return batch

  def log_probs(self, model: nnx.Module, batch) -> np.ndarray:
    """float32 [P, G, C] completion log-probs of `model`."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return np.asarray(self._logp(params, rest, batch))

  def search(self, model: nnx.Module, prompts) -> bs.SearchResult:
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return bs.beam_search(self.scorer, (params, rest), prompts,
                          self.fmt.sids.trie, beam_size=self.g,
                          sid_tokens=self.layout)

  def rollout(self, model: nnx.Module, index: int) -> dict[str, np.ndarray]:
    """The batch of rollout `index` of the current policy `model`."""
    ex = self.examples(index)
    title_rows = self.title_rows(index)
    prompts = self.fmt.rollout_prompts(
        ex, title_rows=title_rows if title_rows.any() else None)
    res = self.search(model, prompts)
    items = np.asarray(res.items)  # [P, G]
    codes = np.asarray(res.codes)  # [P, G, L]
    valid = items >= 0
    self._check_completions(items, codes, valid)
    roll = rewards_lib.Rollouts(items=items, examples=ex)
    reward, parts = rewards_lib.compute(self.reward, roll,
                                        self.reward_context)
    adv = rewards_lib.group_advantages(reward, valid)
    p, g = items.shape
    comp = self.layout.tokens(np.maximum(codes, 0))  # [P, G, L]
    if self.layout.suffix:
      suffix = np.broadcast_to(np.asarray(self.layout.suffix, np.int32),
                               (p, g, len(self.layout.suffix)))
      comp = np.concatenate([comp, suffix], axis=2)
    batch = {"prompt_ids": prompts["input_ids"].astype(np.int32),
             "prompt_mask": prompts["attention_mask"].astype(bool),
             "completions": comp.astype(np.int32),
             "weight": valid.astype(np.float32), "advantages": adv}
    batch["ref_logp"] = np.asarray(self._logp(self.ref, self.rest, batch))
    first = np.zeros((p, g), np.float32)
    first[:, 0] = 1.0
    hit = roll.hits.any(axis=1, keepdims=True)
    stats = {"groups": first, "groups_hit": first * hit,
             "groups_nonzero_adv": first * (np.abs(adv) > 0).any(
                 1, keepdims=True),
             "reward": reward, "target_rank_sum": first * np.where(
                 hit, np.argmax(roll.hits, axis=1)[:, None], 0)}
    stats.update({f"reward_{k}": v for k, v in parts.items()})
    for k, v in stats.items():
      batch[STAT_PREFIX + k] = np.broadcast_to(
          np.asarray(v, np.float32), (p, g)).copy()
    return batch

  def _check_completions(self, items, codes, valid) -> None:
    """Every live beam is a full SID path of its item (the symptom of a
    broken constraint is a completion of another length)."""
    full = (codes >= 0).all(-1)
    if (valid != full).any() or (
        self.fmt.item_tokens[items[valid]] != self.layout.tokens(
            codes[valid])).any():
      raise RuntimeError(
          "GRPO rollout: a beam's completion is not the full SID of its item "
          f"({int((valid != full).sum())} mismatched lengths): the "
          "constrained search is broken")
