"""Hugging Face folders (config.json + safetensors) <-> our NNX models.

  model = load_pretrained("/path/to/hf_folder")          # dispatch on config
  save_pretrained(model, "/tmp/out")             # transformers-loadable

Loading builds the model skeleton with `nnx.eval_shape` (no random init),
fills numpy buffers from the checkpoint through the family's key map
(`keymaps.py`), and fails on any unused checkpoint key or unfilled parameter.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Iterator

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from genrec_jax.weights import keymaps

PathLike = str | os.PathLike

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}


class WeightsError(ValueError):
  """A checkpoint that does not match the model (names the file/key)."""


def read_config(path: PathLike) -> dict[str, Any]:
  """config.json of an HF folder as a dict."""
  f = pathlib.Path(path) / "config.json"
  if not f.is_file():
    raise WeightsError(f"{f}: no config.json in {path}")
  try:
    return json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise WeightsError(f"{f}: invalid JSON ({e})") from e


def family(hf_config: dict[str, Any], where: str = "config.json") -> str:
  """'bert' | 'decoder' | 't5' from architectures / model_type."""
  archs = hf_config.get("architectures") or []
  mtype = hf_config.get("model_type")
  by_arch = {"BertModel": "bert", "Qwen2ForCausalLM": "decoder",
             "LlamaForCausalLM": "decoder",
             "T5ForConditionalGeneration": "t5"}
  by_type = {"bert": "bert", "qwen2": "decoder", "llama": "decoder",
             "t5": "t5"}
  for a in archs:
    if a in by_arch:
      return by_arch[a]
  if not archs and mtype in by_type:
    return by_type[mtype]
  raise WeightsError(
      f"{where}: unsupported architecture {archs or None} / model_type "
      f"{mtype!r}; supported: {sorted(by_arch)}")


def _family_classes(fam: str):
  """(ConfigClass, ModelClass, keymap_fn) for a family."""
  if fam == "bert":
    from genrec_jax.models import bert
    return bert.BertConfig, bert.BertModel, keymaps.bert_keymap
  if fam == "decoder":
    from genrec_jax.models import decoder
    return decoder.DecoderConfig, decoder.Decoder, keymaps.decoder_keymap
  if fam == "t5":
    from genrec_jax.models import t5
    return t5.T5Config, t5.T5Model, keymaps.t5_keymap
  raise WeightsError(f"unknown family {fam!r}")


def _checkpoint_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
  """HF key -> safetensors file holding it (single file or sharded index)."""
  index = path / "model.safetensors.index.json"
  single = path / "model.safetensors"
  if index.is_file():
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
      raise WeightsError(f"{index}: no weight_map")
    out = {}
    for key, fname in weight_map.items():
      f = path / fname
      if not f.is_file():
        raise WeightsError(f"{index}: shard {fname} (key {key}) is missing")
      out[key] = f
    return out
  if single.is_file():
    from safetensors import safe_open
    with safe_open(str(single), framework="np") as f:
      return {k: single for k in f.keys()}
  others = sorted(p.name for p in path.glob("*.bin")) + sorted(
      p.name for p in path.glob("*.safetensors"))
  raise WeightsError(
      f"{path}: no model.safetensors or model.safetensors.index.json"
      + (f" (found {others})" if others else ""))


def iter_safetensors(path: PathLike) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (key, numpy array) from an HF folder's safetensors."""
  from safetensors import safe_open
  files = _checkpoint_files(pathlib.Path(path))
  by_file: dict[pathlib.Path, list[str]] = {}
  for k, f in files.items():
    by_file.setdefault(f, []).append(k)
  for f, keys in by_file.items():
    with safe_open(str(f), framework="np") as h:
      present = set(h.keys())
      for k in keys:
        if k not in present:
          raise WeightsError(f"{f}: key {k} listed in the index is missing")
        yield k, h.get_tensor(k)


def _abstract_model(model_cls, cfg):
  return nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))


def fill_model(model_cls: Callable, cfg: Any, keymap: keymaps.KeyMap,
               tensors: Iterator[tuple[str, np.ndarray]], dtype: Any,
               source: str = "checkpoint"):
  """Builds `model_cls(cfg)` with every parameter taken from `tensors`.

  Args:
    model_cls: the NNX module class.
    cfg: its config (its `dtype` is the parameter dtype).
    keymap: the family's key map.
    tensors: (HF key, array) pairs.
    dtype: parameter dtype.
    source: name used in error messages (the folder or file).

  Returns:
    The concrete model.

  Raises:
    WeightsError: unused/duplicate/missing key or a shape mismatch.
  """
  abstract = _abstract_model(model_cls, cfg)
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  bufs: dict[tuple, np.ndarray] = {}
  for p, v in flat.items():
    bufs[tuple(str(x) for x in p)] = np.zeros(v.shape, np.float32)
  filled: set[tuple[tuple[str, ...], int | None]] = set()
  seen: set[str] = set()
  alias_values: dict[str, np.ndarray] = {}
  for key, arr in tensors:
    k = key
    if (k not in keymap.entries and k not in keymap.aliases and
        keymap.strip_prefix and k.startswith(keymap.strip_prefix)):
      k = k[len(keymap.strip_prefix):]
    if keymap.is_ignored(key) or keymap.is_ignored(k):
      continue
    if k in keymap.aliases:
      alias_values[k] = arr
      continue
    if k not in keymap.entries:
      raise WeightsError(f"{source}: unused checkpoint key {key} "
                         f"(shape {tuple(arr.shape)}) for this config")
    if k in seen:
      raise WeightsError(f"{source}: duplicate checkpoint key {key}")
    seen.add(k)
    e = keymap.entries[k]
    buf = bufs.get(e.path)
    if buf is None:
      raise AssertionError(f"key map path {e.path} not in the model")
    target = buf if e.layer is None else buf[e.layer]
    try:
      value = e.to_ours(np.asarray(arr).astype(np.float32))
    except ValueError as err:
      raise WeightsError(f"{source}: key {key} has shape {tuple(arr.shape)}, "
                         f"which does not fit the config ({err})") from err
    if value.shape != target.shape:
      raise WeightsError(
          f"{source}: key {key} has shape {tuple(arr.shape)}, the config "
          f"expects {tuple(e.to_hf(np.zeros(target.shape)).shape)}")
    target[...] = value
    filled.add((e.path, e.layer))
  missing = [k for k, e in keymap.entries.items() if k not in seen]
  if missing:
    raise WeightsError(f"{source}: missing checkpoint key {missing[0]}"
                       + (f" (and {len(missing) - 1} more)"
                          if len(missing) > 1 else ""))
  for k, arr in alias_values.items():
    canon = keymap.entries[keymap.aliases[k]]
    ours = canon.to_hf(bufs[canon.path])
    if ours.shape != arr.shape or not np.allclose(
        ours, np.asarray(arr, np.float32), atol=1e-6):
      raise WeightsError(f"{source}: key {k} should be a tied copy of "
                         f"{keymap.aliases[k]} but differs (untied weights "
                         "with tie_word_embeddings=true?)")
  covered = {e.path for e in keymap.entries.values()}
  for p in flat:
    if tuple(str(x) for x in p) not in covered:
      raise AssertionError(f"parameter {p} has no checkpoint key")
  for p, v in flat.items():
    pk = tuple(str(x) for x in p)
    v.set_value(jnp.asarray(bufs[pk], dtype=dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def resolve_dtype(dtype: Any, hf_config: dict[str, Any]) -> Any:
  """None -> the config's torch_dtype/dtype (float32 when absent)."""
  if dtype is not None:
    return dtype
  name = hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"
  if name not in _DTYPES:
    raise WeightsError(f"config.json: unsupported dtype {name!r}")
  return _DTYPES[name]


def load_pretrained(path: PathLike, dtype: Any = jnp.float32, **overrides):
  """Loads a local Hugging Face folder into our NNX model.

  Args:
    path: folder with config.json + model.safetensors (or a sharded index).
      GGUF files load through `genrec_jax.weights.load_pretrained`, which
      dispatches to `gguf.load_gguf` (this module never imports gguf).
    dtype: parameter and compute dtype (jnp.float32 or jnp.bfloat16); None
      takes the checkpoint's `torch_dtype`.
    **overrides: config fields to override (e.g. add_pooling_layer=False).

  Returns:
    `BertModel`, `Decoder` or `T5Model` with weights loaded.

  Raises:
    WeightsError: bad folder, unknown architecture, shape mismatch, missing
      shard, unused or missing key.
  """
  path = pathlib.Path(path)
  if path.suffix == ".gguf":
    raise WeightsError(f"{path}: a GGUF file; load it with "
                       "genrec_jax.weights.load_pretrained or "
                       "genrec_jax.weights.gguf.load_gguf")
  if not path.is_dir():
    raise WeightsError(f"{path}: not a directory")
  hf = read_config(path)
  fam = family(hf, str(path / "config.json"))
  cfg_cls, model_cls, keymap_fn = _family_classes(fam)
  dtype = resolve_dtype(dtype, hf)
  try:
    cfg = cfg_cls.from_hf(hf, dtype=dtype, **overrides)
  except (KeyError, TypeError) as e:
    raise WeightsError(f"{path / 'config.json'}: {e}") from e
  if fam == "bert":
    keys = set(_checkpoint_files(path))
    if "pooler.dense.weight" not in keys and "bert.pooler.dense.weight" \
        not in keys and "add_pooling_layer" not in overrides:
      cfg = cfg_cls.from_hf(hf, dtype=dtype, add_pooling_layer=False,
                            **overrides)
  model = fill_model(model_cls, cfg, keymap_fn(cfg), iter_safetensors(path),
                     dtype, source=str(path))
  logging.info("loaded %s (%s) from %s", type(model).__name__, fam, path)
  return model


def _keymap_for(model):
  from genrec_jax.models import bert
  if isinstance(model, bert.BertModel):
    return keymaps.bert_keymap(model.config)
  name = type(model).__name__
  if name == "Decoder":
    return keymaps.decoder_keymap(model.config)
  if name == "T5Model":
    return keymaps.t5_keymap(model.config)
  raise WeightsError(f"save_pretrained: unsupported model {name}")


def model_tensors(model) -> dict[str, np.ndarray]:
  """Our parameters as HF-named numpy arrays (the checkpoint dtype)."""
  km = _keymap_for(model)
  flat = {tuple(str(x) for x in p): v[...]
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  out = {}
  for key, e in km.entries.items():
    arr = np.asarray(jax.device_get(flat[e.path]))
    if e.layer is not None:
      arr = arr[e.layer]
    dt = arr.dtype
    out[key] = np.ascontiguousarray(e.to_hf(arr.astype(np.float32))).astype(
        dt)
  return out


def save_pretrained(model, path: PathLike) -> None:
  """Writes config.json + model.safetensors that transformers loads back.

  Args:
    model: a model from this package (BertModel, Decoder, T5Model).
    path: output folder (created; existing files are replaced atomically).
  """
  from safetensors.numpy import save_file
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tensors = model_tensors(model)
  tmp = path / "model.safetensors.tmp"
  save_file(tensors, str(tmp), metadata={"format": "pt"})
  os.chmod(tmp, 0o644)
  os.replace(tmp, path / "model.safetensors")
  cfg = model.config.to_hf()
  tmpc = path / "config.json.tmp"
  tmpc.write_text(json.dumps(cfg, indent=2, sort_keys=True))
  os.replace(tmpc, path / "config.json")
  logging.info("saved %s (%d tensors) to %s", type(model).__name__,
               len(tensors), path)


del ml_dtypes  # imported so safetensors can hand back bfloat16 arrays
