"""Evaluation of generative (semantic-ID) recommenders with constrained beams.

Library entry points:

* `evaluate_generative(search_fn, examples, ...)`: the model-agnostic core.
  `search_fn(batch: EvalExamples) -> int [B, N]` returns ranked item ids
  (-1 = no item) for a batch of evaluation rows; the function computes
  HR/Recall/NDCG@K and MRR with `ranks_from_lists` / `metrics_from_ranks`
  and `invalid_rate` -- the fraction of returned ids that are not real items
  in the trie, measured on every returned id (it is 0 by construction of the
  constrained search, and we check it rather than assume it).
* `sid_history_prompts(...)`: left-padded token prompts made of the SID
  tokens of the last `max_history` history items (TIGER-style input for a
  from-scratch SID decoder).
* `run(config, workdir)`: the `evaluate` stage (binaries/evaluate.py).
  Reads `WORKDIR/dataset`, `WORKDIR/<sids>/item_sids.json` and the model
  folder `WORKDIR/<model>/` and writes `WORKDIR/<model>/metrics.json`.

What the stage can load: a model folder written by `save_model` --
`model.json` (`kind`, the model config, the SID token layout `sid_tokens`
and the prompt settings) plus `params/` (an orbax checkpoint of the NNX
params). Kinds: "decoder" (genrec_jax.models.decoder, Qwen2/Llama) and
"reference_decoder" (genrec_jax.decoding.reference_decoder), scored with
`SharedPrefixDecoderScorer` (the prompt cache shared by the beams), and "t5" (TIGER, genrec_jax.models.t5) with `T5Scorer`.
Prompts follow the folder's `prompt.format`: "sid" (default,
`sid_history_prompts`), "tiger" (T5 encoder inputs) or "text" (MiniOneRec
prompts). The train_generative stage writes such folders
(WORKDIR/<name>/: evaluate with --config.model=<name>).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged
from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.decoding import beam_search as bs
from genrec_jax.decoding import trie as trie_lib
from genrec_jax.evaluation import metrics as metrics_lib


def take_examples(examples: EvalExamples, rows: np.ndarray) -> EvalExamples:
  """The rows `rows` of `examples`, in that order."""
  rows = np.asarray(rows, dtype=np.int64)
  return EvalExamples(
      users=examples.users[rows],
      history=examples.history.take(rows),
      targets=examples.targets.take(rows),
      exclude=None if examples.exclude is None else examples.exclude.take(rows),
      candidates=(None if examples.candidates is None
                  else examples.candidates[rows]),
  )


def drop_excluded(items: np.ndarray, exclude: Ragged, top_n: int
                  ) -> np.ndarray:
  """Ranked lists without each row's excluded items, -1 padded to top_n.

  The full-ranking protocol of SASRec / most-popular masks a row's
  `exclude` items (its history); a beam search keeps more beams than top_n
  and drops them afterwards.

  Args:
    items: int [B, W] ranked item ids (-1 = empty).
    exclude: per row the items masked at ranking time.
    top_n: list length kept.
  """
  out = np.full((len(items), top_n), -1, np.int64)
  for i, row in enumerate(items):
    row = row[(row >= 0) & ~np.isin(row, exclude[i])][:top_n]
    out[i, :len(row)] = row
  return out


def evaluate_generative(
    search_fn: Callable[[EvalExamples], np.ndarray],
    examples: EvalExamples,
    *,
    is_valid_item: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
    prefix: str = "test/",
    ks=metrics_lib.KS,
    log_every_s: float = 30.0,
) -> dict[str, float]:
  """Ranking metrics of ranked item lists produced batch by batch.

  Args:
    search_fn: maps a batch of rows to int [B, N] ranked item ids, best
      first, -1 for empty slots. Batches always hold `batch_size` rows (the
      last one is padded by repeating its last row; the padding is dropped),
      so a jitted search compiles once.
    examples: evaluation rows (targets as item ids).
    is_valid_item: int array -> bool array, True for real items of the
      catalogue that have an SID (e.g. `trie.is_valid_item`).
    batch_size: rows per search_fn call.
    prefix: metric key prefix ("test/" or "valid/").
    ks: cut-offs; only K <= N are reported.
    log_every_s: progress log period.

  Returns:
    {prefix + "hr@K", "recall@K", "ndcg@K", "mrr"}, plus `invalid_rate`
    (returned ids that are not valid items / all returned ids), and
    `empty_rate` (list slots left at -1 because fewer than N items could
    be decoded), `num_eval_users`, `seconds`, `rows_per_second`.

  Raises:
    ValueError: search_fn returned a bad shape or duplicate items in a list.
  """
  n = len(examples)
  if n == 0:
    raise ValueError("no evaluation rows")
  t0 = time.perf_counter()
  last_log = t0
  lists = None
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    rows = np.arange(start, stop)
    fill = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    out = np.asarray(search_fn(take_examples(examples, fill)))
    if out.ndim != 2 or out.shape[0] != batch_size:
      raise ValueError(f"search_fn returned shape {out.shape}, expected "
                       f"[{batch_size}, N]")
    if lists is None:
      lists = np.full((n, out.shape[1]), -1, dtype=np.int64)
    lists[start:stop] = out[: len(rows)]
    now = time.perf_counter()
    if now - last_log > log_every_s or stop == n:
      rate = stop / (now - t0)
      logging.info("evaluate %s: %d/%d rows, %.1f rows/s, ETA %.0fs", prefix,
                   stop, n, rate, (n - stop) / max(rate, 1e-9))
      last_log = now
  seconds = time.perf_counter() - t0
  top_n = lists.shape[1]
  returned = lists >= 0
  srt = np.sort(np.where(returned, lists, -1 - np.arange(top_n)[None]), 1)
  if (np.diff(srt, axis=1) == 0).any():
    raise ValueError("search_fn returned an item twice in one list")
  valid = is_valid_item(lists) & returned
  num_returned = int(returned.sum())
  ranks = metrics_lib.ranks_from_lists(lists, examples.targets)
  ks = tuple(k for k in ks if k <= top_n)
  out = metrics_lib.metrics_from_ranks(ranks, examples.targets.lengths(), ks,
                                       prefix)
  out.update({
      "invalid_rate": float((num_returned - int(valid.sum())) /
                            max(num_returned, 1)),
      "empty_rate": float(1.0 - num_returned / lists.size),
      "num_eval_users": int(n),
      "seconds": round(seconds, 3),
      "rows_per_second": round(n / max(seconds, 1e-9), 2),
  })
  return out


def sid_history_prompts(
    history: Ragged,
    item_tokens: np.ndarray,
    *,
    max_history: int,
    bos_id: int | None,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
  """Left-padded SID-token prompts from item histories.

  Args:
    history: per row, time-ordered item ids.
    item_tokens: int [num_items, L] token ids of each item's SID (-1 rows for
      items without an SID: those history items are skipped).
    max_history: the most recent items kept.
    bos_id: token prepended to every prompt (None: none).
    pad_id: padding token id (masked out).

  Returns:
    {"input_ids": int32 [B, T], "attention_mask": bool [B, T]} with
    T = max_history * L + (bos_id is not None).

  Raises:
    ValueError: a row ends up empty (no history and no BOS).
  """
  num_levels = item_tokens.shape[1]
  t = max_history * num_levels + (bos_id is not None)
  b = len(history)
  ids = np.full((b, t), pad_id, dtype=np.int32)
  mask = np.zeros((b, t), dtype=bool)
  for i in range(b):
    items = history[i]
    items = items[(items >= 0) & (items < len(item_tokens))]
    toks = item_tokens[items]
    toks = toks[(toks >= 0).all(1)][-max_history:].reshape(-1)
    if bos_id is not None:
      toks = np.concatenate([[bos_id], toks])
    if len(toks) == 0:
      raise ValueError(f"evaluation row {i}: empty prompt (no history item "
                       "with an SID and no BOS token)")
    ids[i, t - len(toks):] = toks
    mask[i, t - len(toks):] = True
  return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------
# Model folders.

MODEL_JSON = "model.json"

# Model kinds the stage can rebuild from model.json (all decoder-only LMs
# with the DecoderScorer cache API):
#   "decoder": genrec_jax.models.decoder.Decoder, model_config = the
#     DecoderConfig fields (dtype as a name, e.g. "float32");
#   "reference_decoder": genrec_jax.decoding.reference_decoder.
#   "t5": genrec_jax.models.t5.T5Model (TIGER), model_config = the
#     T5Config fields, scored with `T5Scorer`; its prompt settings say how
#     encoder inputs are built (format "tiger": optional hashed user token +
#     history SID tokens, genrec_jax.training.generative).
_KINDS = ("decoder", "reference_decoder", "t5")


def config_dict(cfg) -> dict[str, Any]:
  """A model config (dataclass or mapping) as JSON-able model_config."""
  d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
  if "dtype" in d:
    d["dtype"] = np.dtype(d["dtype"]).name
  return d


def _build_model(kind: str, model_config: dict[str, Any], where: str):
  """(model, vocab size) for a model.json kind + model_config."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  try:
    kw = dict(model_config)
    if "dtype" in kw:
      kw["dtype"] = jnp.dtype(kw["dtype"])
    if kind == "decoder":
      from genrec_jax.models import decoder as decoder_lib  # pylint: disable=g-import-not-at-top
      cfg = decoder_lib.DecoderConfig(**kw)
      return decoder_lib.Decoder(cfg, rngs=nnx.Rngs(0)), cfg.vocab_size
    if kind == "t5":
      from genrec_jax.models import t5  # pylint: disable=g-import-not-at-top
      cfg = t5.T5Config(**kw)
      return t5.T5Model(cfg, rngs=nnx.Rngs(0)), cfg.vocab_size
    if kind == "reference_decoder":
      from genrec_jax.decoding import reference_decoder  # pylint: disable=g-import-not-at-top
      cfg = reference_decoder.decoder_config(**model_config)
      return (reference_decoder.ReferenceDecoder(cfg, rngs=nnx.Rngs(0)),
              cfg.vocab)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: field 'model_config': {e}") from None
  raise ValueError(f"{where}: field 'kind' = {kind!r}; this stage can "
                   f"evaluate {list(_KINDS)}")


def save_model(model_dir: str | pathlib.Path, kind: str, model,
               model_config: dict[str, Any], sid_tokens: bs.SidTokens, *,
               prompt: dict[str, Any]) -> None:
  """Writes a model folder the `evaluate` stage can load.

  Args:
    model_dir: folder to write (`model.json` + `params/`).
    kind: one of _KINDS ("decoder", "reference_decoder").
    model: the NNX model.
    model_config: the model's config (dataclass or dict; see config_dict).
    sid_tokens: SID token layout in the model vocabulary.
    prompt: {"max_history": int, "bos_id": int|None, "pad_id": int}.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  model_dir = pathlib.Path(model_dir).resolve()
  model_dir.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(model_dir / "params", nnx.state(model, nnx.Param), force=True)
  atomic_write_json(model_dir / MODEL_JSON, {
      "kind": kind,
      "model_config": config_dict(model_config),
      "sid_tokens": {"offsets": list(sid_tokens.offsets),
                     "sizes": list(sid_tokens.sizes),
                     "suffix": list(sid_tokens.suffix)},
      "prompt": prompt,
  })


def load_model(model_dir: pathlib.Path, spec: dict[str, Any]):
  """(scorer, params, SidTokens, prompt settings) of a model folder."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  model_dir = pathlib.Path(model_dir).resolve()  # Orbax: absolute paths
  where = str(model_dir / MODEL_JSON)
  for field in ("model_config", "sid_tokens"):
    if field not in spec:
      raise ValueError(f"{where}: missing field {field!r}")
  model, vocab = _build_model(spec.get("kind"), spec["model_config"], where)
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  # Restore onto this process's first device whatever topology the folder
  # was written on (a model trained on a pod is served on one chip or CPU).
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(model_dir / "params", abstract)
  try:
    sid = bs.SidTokens(tuple(spec["sid_tokens"]["offsets"]),
                       tuple(spec["sid_tokens"]["sizes"]),
                       tuple(spec["sid_tokens"].get("suffix", ())))
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{where}: field 'sid_tokens': {e}") from None
  prompt = dict(spec.get("prompt") or {})
  if spec.get("kind") == "t5":
    scorer = bs.T5Scorer(graphdef, start_token=int(prompt.get(
        "start_token", 0)), vocab_size=int(vocab))
  else:
    scorer = bs.SharedPrefixDecoderScorer(graphdef, vocab_size=int(vocab))
  return scorer, (params, rest), sid, prompt


def prompt_builder(prompt: dict[str, Any], item_tokens: np.ndarray,
                    max_history: int, ds: Dataset, trie, sid: bs.SidTokens,
                    workdir: pathlib.Path, where: pathlib.Path):
  """EvalExamples -> prompts, per the model folder's prompt settings.

  Formats: "sid" (default; `sid_history_prompts`), "sid_sep" (SID prompts
  with a separator and optional hints), "tiger" (T5 encoder inputs) and
  "text" (MiniOneRec prompts); the last three live in
  genrec_jax.training.generative.
  """
  fmt = prompt.get("format", "sid")
  if fmt == "sid":
    return lambda batch: sid_history_prompts(
        batch.history, item_tokens, max_history=max_history,
        bos_id=prompt.get("bos_id"), pad_id=int(prompt.get("pad_id", 0)))
  if fmt == "sid_sep":
    from genrec_jax.training import generative  # pylint: disable=g-import-not-at-top
    return generative.sid_prompt_builder(prompt, item_tokens, workdir,
                                         max_history)
  if fmt == "tiger":
    from genrec_jax.training import generative  # pylint: disable=g-import-not-at-top
    return lambda batch: generative.tiger_encoder_inputs(
        batch.users, batch.history.padded(max_history, -1, left=True),
        item_tokens, max_history=max_history,
        user_base=int(prompt["user_base"]),
        num_user_tokens=int(prompt.get("num_user_tokens", 0)))
  if fmt == "text":
    from genrec_jax.training import generative  # pylint: disable=g-import-not-at-top
    return generative.text_prompt_builder(prompt, ds, trie, sid, workdir,
                                          max_history)
  raise ValueError(f"{where}: field 'prompt.format' = {fmt!r} is not sid, "
                   "sid_sep, tiger or text")


class ModelSearch:
  """A model folder of a workdir, ready for constrained beam search.

  Loads WORKDIR/<model>/model.json + params/, WORKDIR/dataset and
  WORKDIR/<sids_dir>/item_sids.json; `search` ranks items for a batch of
  rows with the folder's prompt format (the evaluate stage and
  genrec_jax.recommend both use it).
  """

  def __init__(self, workdir: str | pathlib.Path, model: str, *,
               sids_dir: str = "sids", max_history: int = 0):
    self.workdir = pathlib.Path(workdir)
    model_dir = self.workdir / model
    spec_path = model_dir / MODEL_JSON
    if not spec_path.exists():
      raise FileNotFoundError(
          f"{spec_path}: no generative model (the folder needs a model.json "
          "written by the training stage or save_model)")
    try:
      spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{spec_path}: {e}") from None
    self.ds = Dataset.load(self.workdir / "dataset")
    self.trie = trie_lib.load_trie(self.workdir / sids_dir / "item_sids.json",
                                   num_items=self.ds.num_items)
    self.scorer, self.params, self.sid, prompt = load_model(model_dir, spec)
    max_history = int(max_history or prompt.get("max_history", 20))
    item_tokens = np.where(self.trie.codes >= 0,
                           self.sid.tokens(np.maximum(self.trie.codes, 0)), -1)
    self.make_prompts = prompt_builder(prompt, item_tokens, max_history,
                                       self.ds, self.trie, self.sid,
                                       self.workdir, spec_path)

  def search(self, batch: EvalExamples, *, beam_size: int, top_n: int,
             exclude_history: bool) -> np.ndarray:
    """int [B, top_n] ranked items (-1 = none); with exclude_history the
    rows' `exclude` items are dropped from the beam_size results first."""
    res = bs.beam_search(self.scorer, self.params, self.make_prompts(batch),
                         self.trie, beam_size=beam_size,
                         top_n=beam_size if exclude_history else top_n,
                         sid_tokens=self.sid)
    items = np.asarray(res.items)
    if exclude_history and batch.exclude is not None:
      return drop_excluded(items, batch.exclude, top_n)
    return items


def run(config, workdir) -> dict[str, Any]:
  """The evaluate stage: constrained beam search over a split.

  Reads WORKDIR/dataset, WORKDIR/<config.sids_dir>/item_sids.json and
  WORKDIR/<config.model>/model.json; writes WORKDIR/<config.model>/
  metrics.json (existing keys of other splits are kept).
  """
  if config.split not in ("test", "valid"):
    raise ValueError(f"config field 'split': {config.split!r} is not 'test' "
                     "or 'valid'")
  model = ModelSearch(workdir, config.model, sids_dir=config.sids_dir,
                      max_history=config.max_history)
  ds, trie = model.ds, model.trie
  examples = ds.test if config.split == "test" else ds.valid
  if examples is None:
    raise ValueError(f"{model.workdir / 'dataset'}: the dataset has no "
                     f"{config.split} split")
  if config.max_rows:
    examples = take_examples(examples, np.arange(min(config.max_rows,
                                                     len(examples))))
  exclude = bool(config.exclude_history)

  def search_fn(batch: EvalExamples) -> np.ndarray:
    return model.search(batch, beam_size=config.beam_size,
                        top_n=config.top_n, exclude_history=exclude)

  prefix = f"{config.split}/"
  out = evaluate_generative(search_fn, examples,
                            is_valid_item=trie.is_valid_item,
                            batch_size=config.batch_size, prefix=prefix)
  out["beam_size"] = int(config.beam_size)
  out["history_masked"] = exclude
  if out["invalid_rate"] != 0.0:
    logging.error("invalid_rate %.4f != 0: the constrained search returned "
                  "items outside the trie", out["invalid_rate"])
  path = model.workdir / config.model / "metrics.json"
  merged = {}
  if path.exists():
    try:
      merged = json.loads(path.read_text())
    except json.JSONDecodeError:
      merged = {}
  merged = {k: v for k, v in merged.items() if not k.startswith(prefix)}
  merged.update(out)
  atomic_write_json(path, merged)
  k = max(k for k in metrics_lib.KS if k <= config.top_n)
  logging.info("evaluate %s: %s hr@%d %.4f ndcg@%d %.4f invalid_rate %g "
               "(%d rows, %.1fs)", config.model, config.split, k,
               out[f"{prefix}hr@{k}"], k, out[f"{prefix}ndcg@{k}"],
               out["invalid_rate"], out["num_eval_users"], out["seconds"])
  return out
