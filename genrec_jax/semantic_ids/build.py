"""The build_sids stage: WORKDIR/embeddings -> WORKDIR/sids/.

python -m binaries.build_sids --config=configs/sids.py[:variant] --workdir=DIR

Reads `embeddings/items.npy` (row i = internal item i) and `dataset/`, fits
the quantizer named by `config.method`, makes the codes collision-free and
writes, atomically (a temp folder renamed onto `sids/`):

  sids/item_sids.json      {"<item>": [c1, ..., cL(, dedup)]}, item = internal id
  sids/<name>.index.json   MiniOneRec form {"<item>": ["<a_12>", "<b_34>", ...]}
  sids/codes.npy           int32 [N, L] the same codes
  sids/report.json         quality, collisions, timings (written last)
  sids/code_usage.png      items per code per level (when matplotlib exists)
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time

from absl import logging
import numpy as np

from genrec_jax.data.dataset import DataError, Dataset, replace_dir
from genrec_jax.semantic_ids import collisions, quality, quantizers
from genrec_jax.semantic_ids.table import token_string

DONE_FILE = "sids/report.json"


def load_embeddings(workdir: pathlib.Path, num_items: int | None) -> tuple[np.ndarray, dict]:
  """float32 [N, D] item vectors and their meta; DataError when unusable."""
  path = workdir / "embeddings" / "items.npy"
  if not path.exists():
    raise DataError(f"{path}: missing; run binaries.embed_items first")
  try:
    x = np.load(path)
  except ValueError as e:
    raise DataError(f"{path}: not a readable .npy file ({e})") from e
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise DataError(f"{path}: expected a non-empty [items, dim] array, got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise DataError(f"{path}: expected floats, got {x.dtype}")
  if num_items is not None and x.shape[0] != num_items:
    raise DataError(
        f"{path}: {x.shape[0]} rows but the dataset has {num_items} items; "
        "re-run binaries.embed_items")
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)
    raise DataError(f"{path}: {len(rows)} rows with NaN or infinite values "
                    f"(first rows {rows[:5].tolist()})")
  meta_path = workdir / "embeddings" / "meta.json"
  meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
  return x.astype(np.float32, copy=False), meta


def index_tokens(codes: np.ndarray) -> dict[str, list[str]]:
  """MiniOneRec `*.index.json`: level l uses letter a, b, c, ... ."""
  return {str(i): [token_string(l, c) for l, c in enumerate(row)]
          for i, row in enumerate(codes)}


def build(x: np.ndarray, config) -> tuple[np.ndarray, dict]:
  """Fits config.method, removes collisions; returns (codes, report)."""
  t0 = time.perf_counter()
  fit = quantizers.get(config.method)
  q = fit(x, config)
  t_fit = time.perf_counter() - t0
  t1 = time.perf_counter()
  codes, sizes, cinfo = collisions.make_collision_free(
      q.codes, q.codebook_sizes, config.collisions.strategy, q.last_cost)
  t_coll = time.perf_counter() - t1
  t2 = time.perf_counter()
  rep = quality.report(x, q.codes, codes, sizes, q.recon,
                       sample=config.quality.sample, seed=config.seed)
  t_quality = time.perf_counter() - t2
  if (config.collisions.strategy == "reassign" and q.last_cost is not None
      and q.info.get("last_cost_space", "input") == "input"):
    final = q.last_cost[np.arange(len(codes)), codes[:, -1]]
    rep["quantization_error_after_collisions"] = float(final.mean())
  rep.update({
      "method": config.method,
      "collision_strategy": config.collisions.strategy,
      **cinfo,
      "seed": int(config.seed),
      "quantizer_info": {k: v for k, v in q.info.items() if k != "codebooks"},
      "timings": {"fit_seconds": round(t_fit, 3),
                  "collisions_seconds": round(t_coll, 3),
                  "quality_seconds": round(t_quality, 3)},
  })
  rep["_codebooks"] = q.info.get("codebooks")
  return codes, rep


def run(config, workdir: str | pathlib.Path) -> dict:
  """Builds WORKDIR/sids/ from WORKDIR/embeddings; returns the report."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  dataset_dir = workdir / "dataset"
  num_items, name = None, "items"
  if (dataset_dir / "meta.json").exists():
    meta = json.loads((dataset_dir / "meta.json").read_text())
    num_items, name = int(meta["num_items"]), meta.get("name") or name
  elif config.require_dataset:
    Dataset.load(dataset_dir)  # raises the standard "missing" DataError
  x, emb_meta = load_embeddings(workdir, num_items)
  logging.info("build_sids: %s on %d x %d embeddings (%s)", config.method,
               x.shape[0], x.shape[1], emb_meta.get("encoder", "?"))
  codes, rep = build(x, config)
  books = rep.pop("_codebooks")
  index_name = config.export.index_name or name
  warnings = dict(emb_meta.get("warnings", {}))
  if emb_meta.get("empty_texts"):
    warnings["empty_texts"] = int(emb_meta["empty_texts"])
  rep["warnings"] = warnings
  rep["embeddings"] = {k: emb_meta[k] for k in ("encoder", "model", "dim", "pooling",
                                                "normalize") if k in emb_meta}
  rep["index_file"] = f"{index_name}.index.json"

  out = workdir / config.get("output", "sids")
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="sids.tmp", dir=workdir))
  try:
    t1 = time.perf_counter()
    with open(tmp / "item_sids.json", "w", encoding="utf-8") as f:
      json.dump({str(i): [int(c) for c in row] for i, row in enumerate(codes)}, f)
    with open(tmp / f"{index_name}.index.json", "w", encoding="utf-8") as f:
      json.dump(index_tokens(codes), f)
    np.save(tmp / "codes.npy", codes.astype(np.int32))
    if books is not None:
      np.savez(tmp / "codebooks.npz", **{f"level{l}": b for l, b in enumerate(books)})
    if config.quality.plot:
      rep["plot"] = "code_usage.png" if quality.plot_usage(
          codes, rep["codebook_sizes"], tmp / "code_usage.png",
          title=f"{name}: {config.method}") else None
    rep["timings"]["write_seconds"] = round(time.perf_counter() - t1, 3)
    rep["timings"]["total_seconds"] = round(time.perf_counter() - t0, 3)
    with open(tmp / "report.json", "w", encoding="utf-8") as f:
      json.dump(rep, f, indent=1)
    replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("build_sids: %d items, levels %s, collisions %d -> %d, "
               "utilization %s, error %.4f, %.1fs", rep["num_items"],
               rep["codebook_sizes"], rep["collisions_before"],
               rep["collisions_after"],
               [round(u, 3) for u in rep["utilization"]],
               rep["quantization_error"], rep["timings"]["total_seconds"])
  return rep
