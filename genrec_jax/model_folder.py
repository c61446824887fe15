"""Model folders: the one on-disk form of every trained model.

A trained model leaves `WORKDIR/<name>/` with

  model.json   {"kind": ..., "model_config": {...}, ...family fields}
  params/      an Orbax checkpoint of the parameter tree (NNX params or a
               dict of arrays)

written by `save` (params and model.json built in a temporary sibling
folder, then renamed into place; model.json, the done-marker, last), read
back by `read_spec` + `restore_params`. Each model family turns a folder
into a `Ranker` (`genrec_jax.recommend.load_model` dispatches on `kind`):
something that ranks items for a batch of evaluation rows, which the
evaluate stage and `recommend` use alike.

`ScoreRanker` is the Ranker of any model that scores the whole catalogue
(SASRec, LightGCN): full scores, history masked, top-N.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Callable, Protocol

import jax
import numpy as np

from genrec_jax.data.dataset import EvalExamples, atomic_write_json

MODEL_JSON = "model.json"
PARAMS_DIR = "params"
# Masked score of excluded items.
NEG_INF = -1e9


class Ranker(Protocol):
  """A loaded model that ranks items.

  Attributes:
    kind: the model.json kind.
    beam_size: the beam width the model was evaluated with (generative
      models; None for scoring models).
  """

  kind: str
  beam_size: int | None

  def rank(self, batch: EvalExamples, *, top_n: int,
           exclude_history: bool) -> np.ndarray:
    """int [B, top_n] ranked item ids, best first (-1 = no item)."""


def config_dict(cfg: Any) -> dict[str, Any]:
  """A model config (dataclass, ConfigDict or mapping) as JSON-able dict."""
  if dataclasses.is_dataclass(cfg):
    d = dataclasses.asdict(cfg)
  elif hasattr(cfg, "to_dict"):
    d = cfg.to_dict()
  else:
    d = dict(cfg)
  if "dtype" in d:
    d["dtype"] = np.dtype(d["dtype"]).name
  return d


def save(model_dir: str | os.PathLike, spec: dict[str, Any],
         params: Any) -> None:
  """Writes (or replaces) the model folder `model_dir`.

  Args:
    model_dir: the folder, e.g. WORKDIR/sasrec (other files in it, such as
      metrics.json or checkpoints/, are left alone).
    spec: model.json content; must hold "kind".
    params: the parameter tree (arrays; an nnx.State works).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  if "kind" not in spec:
    raise ValueError("model folder spec: missing field 'kind'")
  model_dir = pathlib.Path(model_dir).resolve()  # Orbax: absolute paths
  tmp = model_dir / ".model.tmp"
  # Several processes: each saves its shards, process 0 does the files.
  lead = jax.process_index() == 0
  if lead:
    model_dir.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
      shutil.rmtree(tmp)
    tmp.mkdir()
  _sync("model_folder.save:tmp")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp / PARAMS_DIR, params, force=True)
  if lead:
    atomic_write_json(tmp / MODEL_JSON, spec)
    # model.json is the done-marker: remove it first, put it back last.
    (model_dir / MODEL_JSON).unlink(missing_ok=True)
    if (model_dir / PARAMS_DIR).exists():
      shutil.rmtree(model_dir / PARAMS_DIR)
    (tmp / PARAMS_DIR).rename(model_dir / PARAMS_DIR)
    (tmp / MODEL_JSON).rename(model_dir / MODEL_JSON)
    shutil.rmtree(tmp)
  _sync("model_folder.save:done")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def read_spec(model_dir: str | os.PathLike, *, kind: str | None = None,
              num_items: int | None = None) -> dict[str, Any]:
  """model.json of a folder (FileNotFoundError / ValueError naming it).

  Args:
    model_dir: the folder.
    kind: the kind the caller loads (None: any).
    num_items: the catalogue size of the dataset it will serve (None: not
      checked); a folder trained on another catalogue is an error.
  """
  path = pathlib.Path(model_dir) / MODEL_JSON
  if not path.exists():
    raise FileNotFoundError(
        f"{path}: not a model folder (no model.json; train the model first)")
  try:
    spec = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: {e}") from None
  if not isinstance(spec, dict) or "kind" not in spec:
    raise ValueError(f"{path}: missing field 'kind'")
  if kind is not None and spec["kind"] != kind:
    raise ValueError(f"{path}: kind {spec['kind']!r}, expected {kind!r}")
  if num_items is not None and int(spec.get("num_items", num_items)) != (
      num_items):
    raise ValueError(f"{path}: a model of {spec['num_items']} items, the "
                     f"dataset has {num_items}")
  return spec


def restore_params(model_dir: str | os.PathLike, abstract: Any) -> Any:
  """The params of a folder, restored onto this process's first device.

  Args:
    model_dir: the folder.
    abstract: a tree of arrays or ShapeDtypeStructs with the expected
      structure (e.g. nnx.state(model, nnx.Param) of a fresh model).

  Whatever topology the folder was written on (a model trained on a pod is
  served on one chip or CPU).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(model_dir).resolve() / PARAMS_DIR
  if not path.exists():
    raise FileNotFoundError(f"{path}: missing (an incomplete model folder)")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  with ocp.StandardCheckpointer() as ckptr:
    try:
      return ckptr.restore(path, abstract)
    except (ValueError, KeyError) as e:
      raise ValueError(f"{path}: does not match the model in "
                       f"{MODEL_JSON}: {e}") from None


def mask_and_top(scores: np.ndarray, batch: EvalExamples, *, top_n: int,
                 exclude_history: bool) -> np.ndarray:
  """int [B, top_n] items by descending score; history masked when asked."""
  scores = np.array(scores, dtype=np.float32, copy=True)  # [B, I]
  if exclude_history and batch.exclude is not None:
    ex = batch.exclude
    scores[ex.row_ids(), ex.values] = NEG_INF
  top_n = min(top_n, scores.shape[1])
  part = np.argpartition(-scores, top_n - 1, axis=1)[:, :top_n]
  order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1,
                     kind="stable")
  items = np.take_along_axis(part, order, 1).astype(np.int64)
  masked = np.take_along_axis(scores, items, 1) <= NEG_INF
  return np.where(masked, -1, items)


@dataclasses.dataclass
class ScoreRanker:
  """Ranker of a model that scores every item for a batch of rows.

  Attributes:
    kind: the model.json kind.
    score_fn: EvalExamples -> float [B, num_items].
    num_items: catalogue size.
  """

  kind: str
  score_fn: Callable[[EvalExamples], np.ndarray]
  num_items: int
  beam_size: int | None = None

  def scores(self, batch: EvalExamples) -> np.ndarray:
    return np.asarray(self.score_fn(batch))

  def rank(self, batch: EvalExamples, *, top_n: int,
           exclude_history: bool) -> np.ndarray:
    return mask_and_top(self.scores(batch), batch, top_n=top_n,
                        exclude_history=exclude_history)
