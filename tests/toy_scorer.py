"""A toy beam-search scorer for tests: logits from a table, brute force.

`TableScorer` plugs into decoding.beam_search like a model: logits depend
on a hash of the prompt and the tokens so far; `path_log_probs` scores any
path independently of the search (the brute-force reference).
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from genrec_jax.decoding.beam_search import gather_beams


@dataclasses.dataclass(frozen=True)
class TableScorer:
  """Toy scorer: logits depend on a hash of the prompt and the prefix.

  params: float [M, V] logits table. prompt: int32 [] start row in [0, M).
  After token t the row becomes (row * 31 + t + 7) % M. Used by tests and
  as the brute-force reference (`path_log_probs`).
  """

  def init(self, params, prompt):
    row = jnp.asarray(prompt, jnp.int32).reshape(1)  # [1]
    return row, params[row[0]]

  def step(self, params, row, tokens):
    row = (row * 31 + tokens + 7) % params.shape[0]  # [W]
    return row, params[row]  # [W, V]

  def gather(self, state, beam):
    return gather_beams(state, beam)

  def check_prompts(self, prompts, num_new):
    prompts = np.asarray(prompts)
    if prompts.ndim != 1:
      raise ValueError(f"TableScorer prompts must be int [B], got "
                       f"{prompts.shape}")

  @staticmethod
  def path_log_probs(table: np.ndarray, prompt: int,
                     tokens: np.ndarray) -> np.ndarray:
    """float64 [P]: sum of full-vocab log-probs of each int [P, L] path."""
    table = np.asarray(table, np.float64)
    m = table.shape[0]
    logp = table - np.log(np.exp(table - table.max(1, keepdims=True)).sum(
        1, keepdims=True)) - table.max(1, keepdims=True)
    row = np.full(tokens.shape[0], int(prompt), dtype=np.int64)
    total = np.zeros(tokens.shape[0])
    for l in range(tokens.shape[1]):
      total += logp[row, tokens[:, l]]
      row = (row * 31 + tokens[:, l] + 7) % m
    return total
