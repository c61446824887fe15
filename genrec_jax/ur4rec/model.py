"""The UR4Rec model: SASRec + a preference retriever, and its inputs.

`UR4Rec` holds a loaded SASRec, a text (`retriever.PreferenceRetriever`) or
multimodal (`multimodal.MultimodalRetriever`) retriever and the users'
cached text encodings; `scores` gives both scorers' full scores. The texts
go through the frozen MiniLM once (`encode_texts`, pooled vectors cached in
WORKDIR/<texts>.minilm.npz); with `retriever.trainable_layers = n > 0` the
user texts' token states below the top n blocks are cached instead
(`user_token_states`, WORKDIR/<texts>.minilm_top<n>.npz) and those blocks
belong to the retriever.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genrec_jax import model_folder
from genrec_jax.data.dataset import Dataset
from genrec_jax.models import bert
from genrec_jax.models.sasrec import SASRec
from genrec_jax.semantic_ids import encoders
from genrec_jax.training import sasrec_train
from genrec_jax.ur4rec import multimodal
from genrec_jax.ur4rec import retriever as retriever_lib
from genrec_jax.ur4rec import texts as texts_lib


class UserText(nnx.Variable):
  """Cached text encodings of every user (a per-run constant): pooled
  [U, in_dim], or token states [U, S, in_dim] below trainable blocks."""


class UserMask(nnx.Variable):
  """The token mask [U, S] of cached token states (trainable blocks)."""


class UR4Rec(nnx.Module):
  """SASRec + a preference retriever (text or multimodal), two scorers."""

  def __init__(self, sasrec: SASRec, retriever: nnx.Module,
               user_text: np.ndarray, user_mask: np.ndarray | None = None):
    self.sasrec = sasrec
    self.retriever = retriever
    self.user_text = UserText(jnp.asarray(user_text, jnp.float32))
    self.user_mask = (None if user_mask is None
                      else UserMask(jnp.asarray(user_mask, jnp.int32)))

  @property
  def is_multimodal(self) -> bool:
    return isinstance(self.retriever, multimodal.MultimodalRetriever)

  def retriever_batch(self, users, history) -> dict[str, jax.Array]:
    """What the retriever reads: the users' cached text encodings (+ their
    token mask) and history."""
    out = {"user_text": self.user_text[...][users], "history": history}
    if self.user_mask is not None:
      out["user_mask"] = self.user_mask[...][users]
    return out

  def user_vectors(self, users, history) -> jax.Array:
    """Unit user vectors [B, D] (evaluation: no dropout)."""
    b = self.retriever_batch(users, history)
    if self.is_multimodal:
      return self.retriever.users(b)
    return retriever_lib.user_vectors(self.retriever, b)

  def scores(self, users, history, seq) -> tuple[jax.Array, jax.Array]:
    """(SASRec [B, I], retriever [B, I]) scores of every item."""
    a = self.sasrec.score_last(seq)  # [B, I]
    b = self.retriever.scores(self.user_vectors(users, history))  # [B, I]
    return a, b


def _digest(*parts: Any) -> str:
  h = hashlib.sha256()
  for p in parts:
    h.update(json.dumps(p, sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def _cached(path: pathlib.Path, key: str, compute, what: str
            ) -> dict[str, np.ndarray]:
  """The arrays of the npz at `path` when its key matches, else compute()'s
  (a dict of arrays), written there atomically first."""
  if path.exists():
    with np.load(path) as z:
      if str(z["key"]) == key:
        logging.info("%s from %s", what, path)
        return {k: z[k] for k in z.files if k != "key"}
  t0 = time.time()
  arrays = compute()
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, key=key, **arrays)
  tmp.replace(path)
  logging.info("%s in %.0fs -> %s", what, time.time() - t0, path)
  return arrays


def encode_texts(config, workdir: pathlib.Path, ds: Dataset
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(user vectors [U, 384], item vectors [I, 384], user texts), cached."""
  user_texts, item_texts = texts_lib.load_texts(
      workdir / config.texts, ds.num_users, ds.num_items)

  def compute():
    enc = encoders.make(config.encoder)
    return {"users": enc.encode(user_texts).astype(np.float32),
            "items": enc.encode(item_texts).astype(np.float32)}

  z = _cached(workdir / f"{config.texts}.minilm.npz",
              _digest(user_texts, item_texts, config.encoder.to_dict()),
              compute, f"{len(user_texts)} user and {len(item_texts)} item "
              "text encodings")
  return z["users"], z["items"], user_texts


def user_token_states(config, workdir: pathlib.Path, user_texts: list[str],
                      layers: int) -> tuple[np.ndarray, np.ndarray,
                                            bert.BertModel]:
  """Token states of the user texts below the top `layers` encoder blocks.

  Returns (float32 [U, S, D] states, int32 [U, S] mask, the full encoder
  whose top blocks initialise the retriever's); the states are cached in
  WORKDIR/<texts>.minilm_top<layers>.npz (keyed by texts and encoder), S =
  the longest text's tokens (<= encoder.max_length).
  """
  enc = encoders.make(config.encoder)
  full = nnx.merge(enc.graphdef, enc.state)

  def compute():
    bottom, _ = retriever_lib.split_bert(full, layers)
    length = max(len(t) for t in enc.tokenize(user_texts))
    states, mask = enc.token_states(
        user_texts, min(length, enc.max_length), model=bottom)
    return {"states": states, "mask": mask}

  z = _cached(workdir / f"{config.texts}.minilm_top{layers}.npz",
              _digest(user_texts, config.encoder.to_dict(), layers), compute,
              f"token states of {len(user_texts)} user texts below the top "
              f"{layers} block(s)")
  return z["states"], z["mask"], full


def make_retriever(rcfg: retriever_lib.RetrieverConfig, item_vecs,
                   feats: np.ndarray | None, mcfg: dict[str, Any] | None, *,
                   pretrained: bert.BertModel | None = None, seed: int = 0
                   ) -> nnx.Module:
  """The text retriever, or the multimodal one when `feats` are given."""
  rngs = nnx.Rngs(seed)
  if feats is None:
    return retriever_lib.PreferenceRetriever(
        rcfg, item_init=item_vecs, pretrained=pretrained, rngs=rngs)
  cfg = multimodal.MultimodalConfig(
      **{**(mcfg or {}), "retriever": rcfg, "feat_dim": int(feats.shape[1])})
  return multimodal.MultimodalRetriever(
      cfg, item_init=item_vecs, item_features=feats, pretrained=pretrained,
      rngs=rngs)


def build_model(config, workdir: pathlib.Path, sasrec: SASRec, texts,
                feats: np.ndarray | None) -> UR4Rec:
  """A UR4Rec of the config's retriever around a loaded SASRec.

  `texts` = encode_texts' (user vectors, item vectors, user texts).
  """
  user_vecs, item_vecs, user_texts = texts
  n = int(config.retriever.trainable_layers)
  user_mask, pretrained, bcfg = None, None, None
  if n:
    user_vecs, user_mask, pretrained = user_token_states(
        config, workdir, user_texts, n)
    bcfg = pretrained.config
  rcfg = retriever_lib.RetrieverConfig(
      in_dim=int(item_vecs.shape[1]), bert=bcfg,
      **config.retriever.to_dict())
  retr = make_retriever(rcfg, item_vecs, feats,
                        config.features.model.to_dict(),
                        pretrained=pretrained, seed=config.seed)
  return UR4Rec(sasrec, retr, user_vecs, user_mask)


def load_sasrec(workdir: pathlib.Path, name: str, ds: Dataset
                ) -> tuple[SASRec, ml_collections.ConfigDict]:
  """The SASRec model folder's module (stage 1's output)."""
  folder = workdir / name
  spec = model_folder.read_spec(folder, kind=sasrec_train.KIND,
                                num_items=ds.num_items)
  mcfg = ml_collections.ConfigDict(spec["model_config"])
  model = SASRec(ds.num_items, mcfg, rngs=nnx.Rngs(0))
  params = model_folder.restore_params(folder, nnx.state(model, nnx.Param))
  nnx.update(model, params)
  return model, mcfg


def configs_from_json(d: dict[str, Any], is_multimodal: bool
                      ) -> tuple[retriever_lib.RetrieverConfig,
                                 dict[str, Any] | None]:
  """model.json's retriever_config -> (the text retriever's config, the
  multimodal config's other fields or None); dtypes by name."""
  d = dict(d)
  mcfg = None
  if is_multimodal:
    mcfg = {k: v for k, v in d.items() if k != "retriever"}
    mcfg["dtype"] = jnp.dtype(mcfg.get("dtype", "float32"))
    d = dict(d["retriever"])
  if "dtype" in d:
    d["dtype"] = jnp.dtype(d["dtype"])
  if d.get("bert") is not None:
    b = dict(d["bert"])
    d["bert"] = bert.BertConfig(**{**b, "dtype": jnp.dtype(b["dtype"])})
  return retriever_lib.RetrieverConfig(**d), mcfg


def config_json(cfg) -> dict[str, Any]:
  """A (nested) config dataclass as JSON (dtypes by name)."""

  def clean(x):
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (int, float, str, bool, type(None), list, tuple)):
      return x
    return jnp.dtype(x).name

  return clean(dataclasses.asdict(cfg))
