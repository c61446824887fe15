"""LightGCN seconds per training epoch: JAX vs scipy.sparse + numpy, one run.

python -m binaries.benchmark --config=configs/benchmarks.py:lightgcn --workdir=runs/bench

Both do the same work per step on the same graph (Gowalla by default): sample
`batch_size` (user, positive, negative) triples, propagate all embeddings
through K layers of Â and average, BPR + L2 on the layer-0 rows, backpropagate
through the propagation, one Adam update of all embeddings.
  * JAX: the trainer's step (`loop.make_train_step` on
    `lightgcn_train.make_loss`, jitted; the graph held by the model, the
    sampler on device, BCSR propagation with the symmetric custom VJP); also
    timed with the gather + segment_sum propagation and plain autodiff.
  * reference: scipy.sparse CSR Â @ E for propagation, the BPR gradient and
    its back-propagation (Â is symmetric, so grad E0 = mean_k Â^k grad E) in
    numpy, a vectorised numpy sampler (rejection against sorted user-item
    keys), numpy Adam. This is the PyTorch port's algorithm (full-graph
    propagation every batch) without a framework.
Seconds per epoch = median step time x ceil(train pairs / batch) (timing
`steps` JAX steps and `ref_steps` reference steps, not a whole epoch). The
reference's gradient is checked against JAX autodiff on one batch
(`max_abs_grad_diff`).
"""

from __future__ import annotations

import math
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from flax import nnx

from genrec_jax.data import prepare
from genrec_jax.graph import lightgcn as lgcn
from genrec_jax.graph import lightgcn_train
from genrec_jax.training import loop
from genrec_jax.training import optimizer


class NumpyLightGCN:
  """The scipy.sparse + numpy reference step."""

  def __init__(self, graph: lgcn.Graph, emb0: np.ndarray, cfg):
    n = graph.num_nodes
    self.a = sp.csr_matrix((graph.weights, (graph.receivers, graph.senders)),
                           shape=(n, n))
    self.g, self.cfg = graph, cfg
    self.emb = emb0.astype(np.float32).copy()
    self.m = np.zeros_like(self.emb)
    self.v = np.zeros_like(self.emb)
    self.t = 0
    users = np.repeat(np.arange(graph.num_users), np.diff(graph.offsets))
    self.keys = users.astype(np.int64) * graph.num_items + graph.items
    self.rng = np.random.default_rng(cfg.seed)

  def sample(self, b):
    g = self.g
    deg = np.diff(g.offsets)
    users = self.rng.choice(np.flatnonzero(deg > 0), b)
    pos = g.items[g.offsets[users] + self.rng.integers(0, deg[users])]
    neg = self.rng.integers(0, g.num_items, b)
    while True:
      k = users.astype(np.int64) * g.num_items + neg
      j = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
      hit = self.keys[j] == k
      if not hit.any():
        return users, pos, neg
      neg[hit] = self.rng.integers(0, g.num_items, hit.sum())

  def propagate(self, x):
    total, layer = x.copy(), x
    for _ in range(self.cfg.num_layers):
      layer = self.a @ layer
      total += layer
    return total / (self.cfg.num_layers + 1)

  def grad(self, users, pos, neg):
    """(loss, grad wrt the layer-0 table [N, D])."""
    u_n = self.g.num_users
    final = self.propagate(self.emb)
    eu, ep, en = final[users], final[u_n + pos], final[u_n + neg]
    diff = np.sum(eu * en, 1) - np.sum(eu * ep, 1)
    b = len(users)
    sig = 1.0 / (1.0 + np.exp(-diff))
    loss = np.mean(np.logaddexp(0.0, diff))
    coef = (sig / b)[:, None].astype(np.float32)
    gf = np.zeros_like(self.emb)
    np.add.at(gf, users, coef * (en - ep))
    np.add.at(gf, u_n + pos, -coef * eu)
    np.add.at(gf, u_n + neg, coef * eu)
    g0 = self.propagate(gf)  # Â symmetric: the backward pass is a forward pass
    e0 = self.emb
    decay = self.cfg.decay / b
    np.add.at(g0, users, decay * e0[users])
    np.add.at(g0, u_n + pos, decay * e0[u_n + pos])
    np.add.at(g0, u_n + neg, decay * e0[u_n + neg])
    reg = 0.5 * (np.sum(e0[users] ** 2) + np.sum(e0[u_n + pos] ** 2)
                 + np.sum(e0[u_n + neg] ** 2)) / b
    return loss + self.cfg.decay * reg, g0

  def step(self):
    loss, g = self.grad(*self.sample(self.cfg.batch_size))
    lr, b1, b2, eps = self.cfg.learning_rate, 0.9, 0.999, 1e-8
    self.t += 1
    self.m = b1 * self.m + (1 - b1) * g
    self.v = b2 * self.v + (1 - b2) * g * g
    mh, vh = self.m / (1 - b1 ** self.t), self.v / (1 - b2 ** self.t)
    self.emb -= lr * mh / (np.sqrt(vh) + eps)
    return loss


def run(config, out_dir) -> dict:
  del out_dir
  ds = prepare.build(config.data_config)
  graph = lgcn.build_graph(ds.train, ds.num_users, ds.num_items)
  steps_per_epoch = math.ceil(graph.num_edges / config.batch_size)
  # The train stage's optimizer (Adam, constant lr) at this learning rate.
  tcfg = config.lightgcn.train
  tcfg.learning_rate = config.learning_rate
  tx = optimizer.make_optimizer(tcfg, config.steps + 1)
  loss_fn = lightgcn_train.make_loss(
      num_users=ds.num_users, num_items=ds.num_items,
      batch_size=config.batch_size, search_steps=lgcn.search_steps_for(graph),
      decay=config.decay)
  garrays = graph.arrays()

  def build(propagation):
    model = lgcn.LightGCN(ds.num_users, ds.num_items, config.dim,
                          config.num_layers, propagation=propagation,
                          graph=graph, rngs=nnx.Rngs(config.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    step = loop.make_train_step(graphdef, tx, loss_fn)
    return np.asarray(model.ego()), step, params, rest

  def time_steps(step, params, rest, n):
    opt = tx.init(params)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    params, opt, _ = step(params, opt, rest, {}, key, np.int32(0))
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - t0
    times = []
    for s in range(n):
      t0 = time.perf_counter()
      params, opt, _ = step(params, opt, rest, {}, key, np.int32(s + 1))
      jax.block_until_ready(params)
      times.append(time.perf_counter() - t0)
    return float(np.median(times)), compile_s

  emb0, step, params, rest = build("csr")
  jax_step, compile_s = time_steps(step, params, rest, config.steps)
  logging.info("JAX (BCSR): %.3fs per step (compile %.1fs)", jax_step,
               compile_s)
  # The same step with gather + segment_sum propagation and plain autodiff.
  _, seg_step, seg_params, seg_rest = build("segment_sum")
  seg_step_s, _ = time_steps(seg_step, seg_params, seg_rest,
                             max(3, config.steps // 5))
  logging.info("JAX (segment_sum): %.3fs per step", seg_step_s)

  ref = NumpyLightGCN(graph, emb0, config)
  # Gradient check on one batch (same triples, same layer-0 table).
  users, pos, neg = ref.sample(512)
  _, g_ref = ref.grad(users, pos, neg)
  model0 = lgcn.LightGCN(ds.num_users, ds.num_items, config.dim,
                         config.num_layers, rngs=nnx.Rngs(config.seed))
  g_jax = nnx.grad(lambda m: lgcn.bpr_loss(
      m, garrays, jnp.asarray(users), jnp.asarray(pos), jnp.asarray(neg),
      config.decay)[0])(model0)
  g_jax = np.concatenate([np.asarray(g_jax.user_emb[...]),
                          np.asarray(g_jax.item_emb[...])])
  grad_diff = float(np.max(np.abs(g_jax - g_ref)))
  ref_times = []
  ref.step()  # warm-up
  for _ in range(config.ref_steps):
    t0 = time.perf_counter()
    ref.step()
    ref_times.append(time.perf_counter() - t0)
  ref_step = float(np.median(ref_times))
  logging.info("reference: %.3fs per step", ref_step)
  return {
      "dataset": config.data,
      "train_pairs": graph.num_edges,
      "batch_size": config.batch_size,
      "steps_per_epoch": steps_per_epoch,
      "jax_seconds_per_step": jax_step,
      "jax_compile_seconds": compile_s,
      "jax_seconds_per_epoch": jax_step * steps_per_epoch,
      "jax_segment_sum_seconds_per_step": seg_step_s,
      "jax_segment_sum_seconds_per_epoch": seg_step_s * steps_per_epoch,
      "speedup_segment_sum_vs_ref": ref_step / seg_step_s,
      "ref_seconds_per_step": ref_step,
      "ref_seconds_per_epoch": ref_step * steps_per_epoch,
      "speedup": ref_step / jax_step,
      "max_abs_grad_diff": grad_diff,
      "max_abs_grad": float(np.max(np.abs(g_ref))),
      "reference": "scipy.sparse CSR propagation + numpy BPR grads/sampler/Adam",
  }
