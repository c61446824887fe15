"""LightGCN (He et al., SIGIR 2020): graph, propagation, BPR, evaluation.

The user-item bipartite graph A = [[0, R], [R^T, 0]] over N = users + items
nodes (users first, items offset by num_users) is symmetric-normalised,
Â = D^-1/2 A D^-1/2 (no self-loops), and kept as an edge list
(receivers, senders, weights) sorted by receiver, i.e. also CSR. Propagation
is E^(k+1) = Â E^(k): `propagate` writes it as
segment_sum(w * E^(k)[senders], receivers) (the reference form), the model
uses the same product as a BCSR matmul (`propagate_csr`, ~7x faster on CPU)
with a custom VJP (Â symmetric: the backward pass is a propagation). The
final embedding is the mean of layers 0..K. Score(u, i) = e_u . e_i.
The model may hold the graph's arrays as `GraphArray` variables (not
params): the trainer passes them to every step in `rest`, once on device.

Training: BPR with one negative per sampled (user, positive) pair, users drawn
uniformly and a positive uniformly from the user's items (the PyTorch port's
sampler), negatives exactly uniform over items the user has not interacted
with (vectorised binary search in JAX), plus L2 on the batch's layer-0 embeddings:
decay * 1/2 (|e_u|^2 + |e_i|^2 + |e_j|^2) / batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import sparse

from genrec_jax.data.dataset import DataError, Ragged
from genrec_jax.evaluation import metrics as metrics_lib

# Score given to masked (training) items at ranking time.
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class Graph:
  """Normalised bipartite graph plus the per-user CSR used for sampling.

  Attributes:
    num_users, num_items: node counts (N = num_users + num_items).
    receivers, senders: int32 [2E] edge endpoints (node ids), receiver-sorted.
    weights: float32 [2E] 1 / sqrt(deg(receiver) deg(sender)).
    indptr: int32 [N + 1] CSR row pointers of Â (rows = receivers).
    offsets: int32 [num_users + 1] CSR offsets of each user's items.
    items: int32 [E] each user's distinct train items, sorted ascending.
  """

  num_users: int
  num_items: int
  receivers: np.ndarray
  senders: np.ndarray
  weights: np.ndarray
  indptr: np.ndarray
  offsets: np.ndarray
  items: np.ndarray

  @property
  def num_nodes(self) -> int:
    return self.num_users + self.num_items

  @property
  def num_edges(self) -> int:
    """Distinct (user, item) train pairs."""
    return len(self.items)

  def arrays(self) -> dict[str, jax.Array]:
    """The device arrays a jitted step takes."""
    return {k: jnp.asarray(getattr(self, k))
            for k in ("receivers", "senders", "weights", "indptr", "offsets",
                      "items")}

  def user_items(self, u: int) -> np.ndarray:
    return self.items[self.offsets[u] : self.offsets[u + 1]]


def build_graph(train: Ragged, num_users: int, num_items: int) -> Graph:
  """Builds Â from per-user train items (duplicates collapsed).

  Raises:
    DataError: ids out of range, or no interactions at all.
  """
  if len(train) != num_users:
    raise DataError(f"dataset/train: {len(train)} user rows, expected {num_users}")
  users = train.row_ids().astype(np.int64)
  items = train.values.astype(np.int64)
  if len(items) == 0:
    raise DataError("dataset/train: empty training set; LightGCN has no edges")
  if items.min() < 0 or items.max() >= num_items:
    bad = items[(items < 0) | (items >= num_items)][0]
    raise DataError(f"dataset/train: item id {bad} outside [0, {num_items})")
  keys = np.unique(users * num_items + items)  # sorted by (user, item)
  users, items = keys // num_items, keys % num_items
  deg_u = np.bincount(users, minlength=num_users).astype(np.float64)
  deg_i = np.bincount(items, minlength=num_items).astype(np.float64)
  w = 1.0 / np.sqrt(deg_u[users] * deg_i[items])
  item_nodes = items + num_users
  receivers = np.concatenate([users, item_nodes])
  senders = np.concatenate([item_nodes, users])
  weights = np.concatenate([w, w])
  order = np.argsort(receivers, kind="stable")
  offsets = np.zeros(num_users + 1, dtype=np.int64)
  np.cumsum(deg_u.astype(np.int64), out=offsets[1:])
  receivers = receivers[order].astype(np.int32)
  indptr = np.searchsorted(receivers, np.arange(num_users + num_items + 1))
  return Graph(num_users, num_items, receivers, senders[order].astype(np.int32),
               weights[order].astype(np.float32), indptr.astype(np.int32),
               offsets.astype(np.int32), items.astype(np.int32))


def propagate(emb0: jax.Array, receivers: jax.Array, senders: jax.Array,
              weights: jax.Array, num_layers: int) -> jax.Array:
  """Mean of E^(0..K), E^(k+1) = Â E^(k); emb0 float [N, D] -> [N, D]."""
  n = emb0.shape[0]
  layer, total = emb0, emb0
  for _ in range(num_layers):
    msg = weights[:, None] * layer[senders]  # [2E, D]
    layer = jax.ops.segment_sum(msg, receivers, num_segments=n,
                                indices_are_sorted=True)  # [N, D]
    total = total + layer
  return total / (num_layers + 1)


def propagate_csr(emb0: jax.Array, indptr: jax.Array, senders: jax.Array,
                  weights: jax.Array, num_layers: int) -> jax.Array:
  """`propagate` with Â as a BCSR matrix: layer = Â @ layer.

  Same result as the gather + segment_sum form; on CPU the BCSR product is
  several times faster (the row gather dominates the segment_sum form).
  """
  n = emb0.shape[0]
  a_hat = sparse.BCSR((weights, senders, indptr), shape=(n, n))
  layer, total = emb0, emb0
  for _ in range(num_layers):
    layer = a_hat @ layer  # [N, D]
    total = total + layer
  return total / (num_layers + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def propagate_symmetric(emb0: jax.Array, indptr: jax.Array,
                        senders: jax.Array, weights: jax.Array,
                        num_layers: int) -> jax.Array:
  """`propagate_csr` whose backward pass is another propagation.

  The layer mean is P = mean_k Â^k with Â symmetric (edges in both
  directions with equal weights, as `build_graph` makes them), so the
  cotangent of emb0 is P g: the backward pass reuses the forward product
  instead of autodiff's transpose. Only valid for a symmetric Â; no gradient
  for the graph.
  """
  return propagate_csr(emb0, indptr, senders, weights, num_layers)


def _prop_fwd(emb0, indptr, senders, weights, num_layers):
  out = propagate_csr(emb0, indptr, senders, weights, num_layers)
  return out, (indptr, senders, weights)


def _prop_bwd(num_layers, res, g):
  indptr, senders, weights = res
  return (propagate_csr(g, indptr, senders, weights, num_layers), None, None,
          None)


propagate_symmetric.defvjp(_prop_fwd, _prop_bwd)


class GraphArray(nnx.Variable):
  """A constant array of the training graph held by the model.

  Not an nnx.Param: `nnx.split(model, nnx.Param, ...)` puts it in `rest`,
  so the trainer places it on the device once and passes it to every step
  (never trained, never checkpointed; rebuilt from the dataset).
  """


GRAPH_FIELDS = ("receivers", "senders", "weights", "indptr", "offsets",
                "items")


class LightGCN(nnx.Module):
  """Layer-0 user and item embeddings, optionally holding the train graph.

  Args:
    num_users, num_items: table sizes.
    dim: embedding dimension D.
    num_layers: propagation depth K.
    init_std: normal init scale (0.1 in the PyTorch port).
    propagation: "csr" (BCSR matmul + symmetric VJP) or "segment_sum"
      (gather + segment_sum, plain autodiff).
    graph: the train graph; when given, its arrays (`Graph.arrays`) are kept
      as GraphArray variables and `__call__()` / `graph_arrays()` use them.
    rngs: init randomness.
  """

  def __init__(self, num_users: int, num_items: int, dim: int,
               num_layers: int, init_std: float = 0.1,
               propagation: str = "csr", *, graph: Graph | None = None,
               rngs: nnx.Rngs):
    if propagation not in ("csr", "segment_sum"):
      raise ValueError(f"propagation {propagation!r}: use csr or segment_sum")
    init = nnx.initializers.normal(init_std)
    self.user_emb = nnx.Param(init(rngs.params(), (num_users, dim)))
    self.item_emb = nnx.Param(init(rngs.params(), (num_items, dim)))
    self.num_layers = num_layers
    self.propagation = propagation
    self.has_graph = graph is not None
    if graph is not None:
      if (graph.num_users, graph.num_items) != (num_users, num_items):
        raise ValueError(f"graph of {graph.num_users} users x "
                         f"{graph.num_items} items for a model of "
                         f"{num_users} x {num_items}")
      for k, v in graph.arrays().items():
        setattr(self, f"graph_{k}", GraphArray(v))

  @property
  def num_users(self) -> int:
    return self.user_emb.shape[0]

  @property
  def num_items(self) -> int:
    return self.item_emb.shape[0]

  def graph_arrays(self) -> dict[str, jax.Array]:
    """The held graph's arrays (see `Graph.arrays`)."""
    if not self.has_graph:
      raise ValueError("this LightGCN holds no graph; pass graph= at "
                       "construction or the arrays to __call__")
    return {k: getattr(self, f"graph_{k}")[...] for k in GRAPH_FIELDS}

  def ego(self) -> jax.Array:
    """float [N, D]: users then items, layer 0."""
    return jnp.concatenate([self.user_emb[...], self.item_emb[...]], axis=0)

  def __call__(self, graph: dict[str, jax.Array] | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Final (layer-mean) user [U, D] and item [I, D] embeddings.

    Args:
      graph: `Graph.arrays()`; None = the graph the model holds.
    """
    if graph is None:
      graph = self.graph_arrays()
    if self.propagation == "segment_sum":
      out = propagate(self.ego(), graph["receivers"], graph["senders"],
                      graph["weights"], self.num_layers)
    else:
      out = propagate_symmetric(self.ego(), graph["indptr"], graph["senders"],
                                graph["weights"], self.num_layers)
    u = self.num_users
    return out[:u], out[u:]


def _complement_item(items: jax.Array, lo: jax.Array, deg: jax.Array,
                     r: jax.Array, steps: int) -> jax.Array:
  """The r-th (0-based) item NOT in the sorted segment items[lo:lo+deg].

  With s_0 < s_1 < ... the user's items, g(k) = s_k - k is non-decreasing and
  the answer is r + #{k : g(k) <= r}; the count is found by a vectorised
  binary search of `steps` iterations (enough for the largest degree).
  """
  last = items.shape[0] - 1

  def body(_, state):
    a, b = state
    mid = (a + b) // 2
    g = items[jnp.minimum(lo + mid, last)] - mid
    go_right = g <= r
    active = a < b
    return (jnp.where(active & go_right, mid + 1, a),
            jnp.where(active & ~go_right, mid, b))

  count, _ = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(deg), deg))
  return r + count


def sample_bpr(key: jax.Array, graph: dict[str, jax.Array], num_users: int,
               num_items: int, batch_size: int, search_steps: int):
  """(users, positives, negatives), int32 [B] each, sampled on device.

  Users are uniform over users with at least one train item (the PyTorch
  port's sampler), the positive uniform over that user's items, and the
  negative exactly uniform over the items the user has NOT interacted with
  (no rejection loop: the r-th non-interacted item is found by binary search).
  """
  k_u, k_p, k_n = jax.random.split(key, 3)
  offsets, items = graph["offsets"], graph["items"]
  deg = offsets[1:] - offsets[:-1]  # [U]
  active = jnp.flatnonzero(deg > 0, size=num_users, fill_value=0)
  num_active = jnp.sum(deg > 0)
  users = active[jax.random.randint(k_u, (batch_size,), 0, num_active)]
  lo, d = offsets[users], deg[users]  # [B]
  r = jax.random.uniform(k_p, (batch_size,))
  pos = items[lo + jnp.minimum((r * d).astype(jnp.int32), d - 1)]
  free = jnp.maximum(num_items - d, 1)
  rn = jnp.floor(jax.random.uniform(k_n, (batch_size,)) * free).astype(jnp.int32)
  neg = _complement_item(items, lo, d, jnp.minimum(rn, free - 1), search_steps)
  return users.astype(jnp.int32), pos.astype(jnp.int32), neg.astype(jnp.int32)


def bpr_loss(model: LightGCN, graph: dict[str, jax.Array] | None, users,
             pos, neg, decay: float):
  """BPR + decay * L2 on the batch's layer-0 embeddings; returns (loss, aux).

  `graph` None: the graph the model holds.
  """
  all_u, all_i = model(graph)
  eu, ep, en = all_u[users], all_i[pos], all_i[neg]  # [B, D]
  bpr = jnp.mean(jax.nn.softplus(jnp.sum(eu * en, -1) - jnp.sum(eu * ep, -1)))
  u0 = model.user_emb[...][users]
  p0, n0 = model.item_emb[...][pos], model.item_emb[...][neg]
  reg = 0.5 * (jnp.sum(u0 ** 2) + jnp.sum(p0 ** 2) + jnp.sum(n0 ** 2))
  reg = reg / users.shape[0]
  return bpr + decay * reg, {"bpr": bpr, "reg": reg}


def search_steps_for(graph: Graph) -> int:
  """Binary-search iterations that cover the largest user degree."""
  max_deg = int(np.diff(graph.offsets).max()) if graph.num_users else 1
  return max(1, int(np.ceil(np.log2(max_deg + 1))) + 1)


@functools.partial(jax.jit, static_argnames=("k",))
def _topk(user_vecs, item_vecs, mask, k: int):
  scores = user_vecs @ item_vecs.T  # [B, I]
  scores = jnp.where(mask, NEG_INF, scores)
  return jax.lax.top_k(scores, k)[1]  # [B, k]


def evaluate_topk(user_emb: np.ndarray, item_emb: np.ndarray, examples,
                  *, prefix: str, k: int = 20, batch_size: int = 1024,
                  ks=metrics_lib.KS) -> dict[str, float]:
  """All-item ranking with `examples.exclude` masked, via the top-k list.

  Equivalent to metrics.evaluate_scorer for cut-offs <= k (up to score
  ties) but O(items) per user instead of O(targets * items), which matters
  with hundreds of targets per user (Gowalla). `mrr` is truncated at k.
  Adds `precision@k` (LightGCN's third number).
  """
  ks = tuple(x for x in ks if x <= k)
  n = len(examples)
  num_items = item_emb.shape[0]
  item_emb = jnp.asarray(item_emb)
  all_ranks = []
  t_max = int(examples.targets.lengths().max()) if n else 1
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    fill = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    mask = np.zeros((batch_size, num_items), dtype=bool)
    if examples.exclude is not None:
      ex = examples.exclude.take(fill)
      mask[ex.row_ids(), ex.values] = True
    top = np.asarray(_topk(jnp.asarray(user_emb[examples.users[fill]]),
                           item_emb, mask, min(k, num_items)))[: len(rows)]
    tgt = examples.targets.take(rows)
    r = metrics_lib.ranks_from_lists(top, tgt)  # [b, T_b]
    pad = np.full((len(rows), t_max), metrics_lib.NOT_FOUND, dtype=np.int32)
    pad[:, : r.shape[1]] = r
    all_ranks.append(pad)
  ranks = np.concatenate(all_ranks)
  out = metrics_lib.metrics_from_ranks(ranks, examples.targets.lengths(), ks,
                                       prefix)
  out[f"{prefix}precision@{k}"] = float(np.mean((ranks < k).sum(1) / k))
  return out
