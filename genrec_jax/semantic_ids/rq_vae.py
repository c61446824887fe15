"""RQ-VAE semantic IDs in the TIGER configuration (METHODS.md 1.4).

MLP encoder (D -> 512 -> 256 -> 128 -> 32, ReLU), L residual codebooks of
dimension 32, mirrored decoder. Loss = reconstruction (squared error summed
over features) + sum over levels of ||sg[r] - e||^2 + beta ||r - sg[e]||^2.
Codebooks are initialised by k-means on the latents of the first batch
(residual level by level). The gradient reaches the encoder through the
straight-through estimator ("ste") or the rotation trick ("rotation",
Fifty et al. 2024: the quantized vector is the encoder output rotated and
rescaled by a stop-gradient map, so the gradient keeps angle information).
Optionally, codes unused for `reset_every` steps are re-seeded with random
residuals of the current batch (dead-code reset) during the first
`reset_fraction` of training.
"""

from __future__ import annotations

import functools
import time

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrec_jax.semantic_ids import kmeans as km
from genrec_jax.semantic_ids.quantizers import Quantized, register
from genrec_jax.semantic_ids.rq_kmeans import check_sizes

_HIGHEST = jax.lax.Precision.HIGHEST


class MLP(nnx.Module):
  """Linear layers with ReLU between them (none after the last)."""

  def __init__(self, dims: list[int], *, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(dims[:-1], dims[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


class RQVAE(nnx.Module):
  """Encoder, L codebooks [K_l, latent] and decoder."""

  def __init__(self, in_dim: int, hidden: list[int], latent_dim: int,
               codebook_sizes: list[int], *, rngs: nnx.Rngs):
    dims = [in_dim, *hidden, latent_dim]
    self.encoder = MLP(dims, rngs=rngs)
    self.decoder = MLP(dims[::-1], rngs=rngs)
    self.codebooks = nnx.List([
        nnx.Param(jax.random.normal(rngs.params(), (k, latent_dim)) * 0.1)
        for k in codebook_sizes])

  def books(self) -> list[jax.Array]:
    return [b[...] for b in self.codebooks]


def residual_quantize(z, books):
  """Greedy residual quantization of z [B, E] with codebooks [K_l, E].

  Returns:
    codes int32 [B, L], quantized sum [B, E], per-level codebook loss and
    commitment loss (each [B]), and the last level's costs [B, K_L].
  """
  r = z
  zq = jnp.zeros_like(z)
  codes, cb_loss, commit_loss = [], 0.0, 0.0
  cost = None
  for book in books:
    cost = jnp.maximum(
        jnp.sum(r * r, 1, keepdims=True)
        - 2.0 * jnp.einsum("BE,KE->BK", r, book, precision=_HIGHEST)
        + jnp.sum(book * book, 1)[None, :], 0.0)  # [B, K]
    idx = jnp.argmin(cost, axis=1).astype(jnp.int32)
    e = book[idx]  # [B, E]
    cb_loss += jnp.sum((jax.lax.stop_gradient(r) - e) ** 2, axis=1)
    commit_loss += jnp.sum((r - jax.lax.stop_gradient(e)) ** 2, axis=1)
    zq = zq + e
    r = r - jax.lax.stop_gradient(e)
    codes.append(idx)
  return jnp.stack(codes, 1), zq, cb_loss, commit_loss, cost


def rotation_trick(z, zq, eps: float = 1e-8):
  """Maps z onto zq by a stop-gradient rotation + rescaling (value = zq)."""
  sg = jax.lax.stop_gradient
  zn = jnp.linalg.norm(z, axis=-1, keepdims=True)
  qn = jnp.linalg.norm(zq, axis=-1, keepdims=True)
  u = sg(z / (zn + eps))
  v = sg(zq / (qn + eps))
  w = u + v
  w = sg(w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + eps))
  lam = sg(qn / (zn + eps))
  rotated = (z - 2.0 * w * jnp.sum(w * z, -1, keepdims=True)
             + 2.0 * v * jnp.sum(u * z, -1, keepdims=True))
  return lam * rotated


def forward(model: RQVAE, x, *, beta: float, gradient: str):
  """Losses and outputs of one batch x [B, D]."""
  z = model.encoder(x)  # [B, E]
  codes, zq, cb_loss, commit_loss, _ = residual_quantize(z, model.books())
  if gradient == "ste":
    zq_dec = z + jax.lax.stop_gradient(zq - z)
  elif gradient == "rotation":
    zq_dec = rotation_trick(z, zq)
  else:
    raise ValueError(f"rq_vae.gradient must be 'ste' or 'rotation', got {gradient!r}")
  x_hat = model.decoder(zq_dec)  # [B, D]
  recon = jnp.sum((x - x_hat) ** 2, axis=1)
  quant = cb_loss + beta * commit_loss
  loss = jnp.mean(recon + quant)
  return loss, {"loss": loss, "recon": jnp.mean(recon),
                "codebook": jnp.mean(cb_loss), "commit": jnp.mean(commit_loss),
                "codes": codes}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _level_residuals(graphdef, params, x):
  """float32 [L, B, E]: the residual each level quantizes, for batch x."""
  model = nnx.merge(graphdef, params)
  r = model.encoder(x)
  out = []
  for book in model.books():
    out.append(r)
    d = (jnp.sum(book * book, 1)[None, :]
         - 2.0 * jnp.einsum("BE,KE->BK", r, book, precision=_HIGHEST))
    r = r - book[jnp.argmin(d, axis=1)]
  return jnp.stack(out)


def reset_dead_codes(graphdef, params, x_batch, counts, rng):
  """Codes unused since the last reset take random residuals of the batch."""
  model = nnx.merge(graphdef, params)
  res = np.asarray(_level_residuals(graphdef, params, x_batch))  # [L, B, E]
  n_reset = []
  for level, count in enumerate(counts):
    dead = np.flatnonzero(count == 0)
    n_reset.append(int(len(dead)))
    if len(dead):
      book = np.array(model.codebooks[level][...])
      pick = rng.choice(res.shape[1], len(dead), replace=len(dead) > res.shape[1])
      book[dead] = res[level, pick]
      model.codebooks[level].set_value(jnp.asarray(book))
  _, params = nnx.split(model, nnx.Param)
  return params, n_reset


def init_codebooks(model: RQVAE, x_batch: np.ndarray, sizes, *, seed: int,
                   iters: int) -> None:
  """Residual k-means on the first batch's latents -> the codebooks."""
  z = np.asarray(model.encoder(jnp.asarray(x_batch)))
  for level, k in enumerate(sizes):
    res = km.kmeans(z, k, seed=seed * 1000 + level, iters=iters, restarts=1)
    model.codebooks[level].set_value(jnp.asarray(res.centroids))
    z = z - res.centroids[res.assign]


def train(x: np.ndarray, config) -> tuple[RQVAE, dict]:
  """Trains an RQ-VAE on x (float32 [N, D]) with config.rq_vae settings."""
  rc = config.rq_vae
  n, d = x.shape
  sizes = check_sizes(n, config.codebook_sizes)
  batch = min(int(rc.batch_size), n)
  if batch < max(sizes):
    batch = n  # the k-means init needs at least K points
  rng = np.random.default_rng(config.seed)
  model = RQVAE(d, list(rc.hidden), rc.latent_dim, sizes,
                rngs=nnx.Rngs(config.seed))
  order = rng.permutation(n)
  init_codebooks(model, x[order[:batch]], sizes, seed=config.seed,
                 iters=rc.init_iters)
  tx = optax.adamw(rc.learning_rate, weight_decay=rc.weight_decay)
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, xb):
    def loss_fn(p):
      return forward(nnx.merge(graphdef, p), xb, beta=rc.beta,
                     gradient=rc.gradient)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, aux

  xj = jnp.asarray(x)
  history = []
  counts = [np.zeros(k, np.int64) for k in sizes]
  resets = []
  reset_until = int(rc.steps * rc.reset_fraction)
  t0 = time.perf_counter()
  pos = batch  # the first batch was used for the init; continue the epoch
  for step in range(int(rc.steps)):
    if pos + batch > n:
      order, pos = rng.permutation(n), 0
    idx = jnp.asarray(order[pos:pos + batch])
    pos += batch
    params, opt_state, aux = train_step(params, opt_state, xj[idx])
    if rc.reset_every:
      codes = np.asarray(aux["codes"])
      for level, k in enumerate(sizes):
        counts[level] += np.bincount(codes[:, level], minlength=k)
      if (step + 1) % rc.reset_every == 0 and step < reset_until:
        params, n_reset = reset_dead_codes(graphdef, params, xj[idx], counts, rng)
        resets.append({"step": step + 1, "reset_codes": n_reset})
        counts = [np.zeros(k, np.int64) for k in sizes]
    if step == 0 or (step + 1) % rc.log_every == 0 or step + 1 == rc.steps:
      used = [int(np.unique(np.asarray(aux["codes"][:, l])).size)
              for l in range(len(sizes))]
      rec = {"step": step + 1, **{k: float(v) for k, v in aux.items() if k != "codes"},
             "batch_codes_used": used}
      history.append(rec)
      rate = (step + 1) / max(time.perf_counter() - t0, 1e-9)
      logging.info("rq_vae step %d/%d loss %.4f recon %.4f commit %.4f "
                   "codes used %s (%.1f steps/s, ETA %.0fs)", step + 1,
                   rc.steps, rec["loss"], rec["recon"], rec["commit"], used,
                   rate, (rc.steps - step - 1) / rate)
  model = nnx.merge(graphdef, params)
  return model, {"history": history, "train_seconds": time.perf_counter() - t0,
                 "steps": int(rc.steps), "batch_size": batch, "resets": resets,
                 "gradient": rc.gradient, "beta": rc.beta}


@nnx.jit
def _encode_all(model: RQVAE, x):
  z = model.encoder(x)
  codes, zq, _, _, last_cost = residual_quantize(z, model.books())
  return codes, model.decoder(zq), last_cost, z, zq


@register("rq_vae")
def fit_rq_vae(x: np.ndarray, config) -> Quantized:
  """Trains the RQ-VAE and encodes every item."""
  x = np.asarray(x, np.float32)
  model, info = train(x, config)
  codes, recon, last_cost, z, zq = _encode_all(model, jnp.asarray(x))
  info["latent_quantization_error"] = float(jnp.mean(jnp.sum((z - zq) ** 2, 1)))
  info["last_cost_space"] = "latent"
  return Quantized(codes=np.asarray(codes), codebook_sizes=list(config.codebook_sizes),
                   recon=np.asarray(recon), last_cost=np.asarray(last_cost),
                   info=info)
