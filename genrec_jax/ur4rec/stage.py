"""The train_ur4rec stage: a preference retriever fused with SASRec.

python -m binaries.train_ur4rec --config=configs/ur4rec.py --workdir=runs/ml100k

Reads (all from WORKDIR):
  dataset/                 leave-one-out ML-100K (valid/test rows)
  sasrec/                  the SASRec model folder (stage 1: train_sasrec)
  <config.texts>/          users.jsonl + items.jsonl (generate_texts)
  <config.features.path>   a [num_items, D] .npy (multimodal only; the
                           `build_features` stage writes stand-ins)
Writes WORKDIR/<config.name>/:
  model.json, params/      the model folder (kind "ur4rec": SASRec +
                           retriever params, the fusion chosen on valid)
  metrics.json             both protocols (see below), every scorer and
                           fusion, latency, the stages' training summaries
  train_log.json           each training stage's curve and evaluations
  checkpoints/<stage>/     Orbax latest + best of each training stage
  tb/<stage>/              TensorBoard summaries

Multi-stage training on the one trainer (`training/loop.train`), each
stage resumable from its checkpoints and early-stopped on valid NDCG@10
(100 sampled candidates): (1) SASRec pre-trained by train_sasrec (loaded
here); (2) `retriever`: the retriever alone (SASRec frozen); (3) `joint`:
both losses (weights `train.joint_weights`), the parts updated on
alternating steps; (4) `end_to_end`: the softmax cross-entropy of the
summed scores over the candidates plus the parts' own losses (weights
`train.end_to_end_weights`), every part each step. Learning rates per
part (`train.sasrec_lr`, `train.retriever_lr`);
a stage with 0 steps is skipped.

The user and item texts go through the frozen MiniLM once; the pooled
vectors are cached in WORKDIR/<texts>.minilm.npz (keyed by the texts' and
the encoder's digest), so seeds and variants do not re-encode. With
`retriever.trainable_layers = n > 0` the top n MiniLM blocks belong to the
retriever (initialised from MiniLM, learning rate `train.encoder_lr`): the
user texts' token states below them are cached instead
(WORKDIR/<texts>.minilm_top<n>.npz) and the blocks run in every step.

Evaluation (metrics.json): the same rows scored by SASRec (A) and the
retriever (B), under two protocols, both stated in metrics.json:
  sampled  1 target + 99 negatives the user never had, drawn once with
           `eval.candidate_seed` (the same lists for every model and seed)
  full     every item, the user's history masked
Fusions (genrec_jax/ur4rec/fusion.py): weighted, rank, cascade (their
weights / shortlist chosen on valid NDCG@10 of each protocol) and a gate
fitted on the valid rows. Keys `<protocol>/<method>/<split>/<metric>`;
`test/*` and `valid/*` are the fusion picked by valid NDCG@10 under the
full protocol (`selected`). `sasrec_pretrained` is the SASRec folder as
loaded (the baseline every fusion is compared with); `sasrec` is the SASRec
part after the joint stages.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np

from genrec_jax import model_folder
from genrec_jax.checks import check_ranges
from genrec_jax.data import splits
from genrec_jax.data.dataset import Dataset, DataError, EvalExamples
from genrec_jax.data.dataset import atomic_write_json
from genrec_jax.evaluation.generative import take_examples
from genrec_jax.models.sasrec import SASRec
from genrec_jax.training import loop
from genrec_jax.training import sharding
from genrec_jax.ur4rec import features as features_lib
from genrec_jax.ur4rec import fusion
from genrec_jax.ur4rec import model as model_lib
from genrec_jax.ur4rec import scoring
from genrec_jax.ur4rec import training

# model.json kind.
KIND = "ur4rec"
# Early-stopping metric of every training stage.
SELECT = "valid/ndcg@10"


def _check(config) -> None:
  t = config.train
  check_ranges([
      ("train.batch_size", t.batch_size, 1, None),
      ("train.num_negatives", t.num_negatives, 1, None),
      ("train.sasrec_lr", t.sasrec_lr, 0.0, None),
      ("train.retriever_lr", t.retriever_lr, 0.0, None),
      ("history_len", config.history_len, 1, None),
      ("eval.num_negatives", config.eval.num_negatives, 1, None),
  ])
  for field in ("joint_weights", "end_to_end_weights"):
    for i, w in enumerate(t[field]):
      fusion.check_weight(f"train.{field}[{i}]", w)
  for s in t.steps:
    if s not in training.STAGES:
      raise ValueError(f"config field 'train.steps': unknown stage {s!r} "
                       f"(stages: {', '.join(training.STAGES)})")
  if t.retriever_loss not in ("bce", "infonce"):
    raise ValueError(f"config field 'train.retriever_loss': "
                     f"{t.retriever_loss!r} is not bce or infonce")
  if t.loss_weighting not in ("fixed", "uncertainty"):
    raise ValueError(f"config field 'train.loss_weighting': "
                     f"{t.loss_weighting!r} is not fixed or uncertainty")
  check_ranges([("retriever.trainable_layers",
                 config.retriever.trainable_layers, 0, None),
                ("train.encoder_lr", t.encoder_lr, 0.0, None)])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates one UR4Rec model; returns its metrics."""
  t_start = time.time()
  _check(config)
  workdir = pathlib.Path(workdir)
  ds = Dataset.load(workdir / "dataset")
  if ds.valid is None:
    raise DataError(f"{workdir / 'dataset'}: UR4Rec needs a valid split")
  out = workdir / config.name
  texts = model_lib.encode_texts(config, workdir, ds)
  feats = None
  if config.features.path:
    feats = features_lib.load_features(workdir / config.features.path,
                                       ds.num_items)
  sasrec, scfg = model_lib.load_sasrec(workdir, config.sasrec, ds)
  model = model_lib.build_model(config, workdir, sasrec, texts, feats)
  max_len, hl = int(scfg.max_len), int(config.history_len)

  # The same sampled candidates for every model and seed.
  seqs = [ds.sequences[u] for u in range(ds.num_users)]
  valid = splits.add_sampled_candidates(
      take_examples(ds.valid, np.arange(len(ds.valid))), seqs, ds.num_items,
      config.eval.num_negatives, config.eval.candidate_seed)
  test = splits.add_sampled_candidates(
      take_examples(ds.test, np.arange(len(ds.test))), seqs, ds.num_items,
      config.eval.num_negatives, config.eval.candidate_seed + 1)

  # The baseline: stage 1's SASRec before any UR4Rec training.
  pretrained = {
      split: scoring.all_scores(model, ex, max_len=max_len,
                                history_len=hl)[0]
      for split, ex in (("valid", valid), ("test", test))}
  tcfg = config.train
  mesh = sharding.mesh_from_config(config.get("mesh"))
  logs = {}
  ckpt_root = out / "checkpoints"
  loop.reset_stale_checkpoints(ckpt_root, _fingerprint(config))
  for stage in training.STAGES:
    steps = int(tcfg.steps.get(stage, 0))
    if not steps:
      continue

    def valid_metrics(m, stage=stage):
      a, b = scoring.all_scores(m, valid, max_len=max_len, history_len=hl)
      sa, sb, mask, col = scoring.protocol_arrays(a, b, valid, "sampled")
      f = sb if stage == "retriever" else fusion.weighted(sa, sb, mask)
      res = fusion.evaluate(f, mask, col, prefix="valid/")
      return {SELECT: float(res[SELECT]), "valid/hr@10":
              float(res["valid/hr@10"])}

    source = training.Batches(
        ds, batch_size=tcfg.batch_size, num_negatives=tcfg.num_negatives,
        history_len=hl, max_len=max_len, seed=config.seed + 1000 * len(logs))
    result = loop.train(
        model, training.make_loss(stage, tcfg, config.sasrec_loss), source,
        tcfg, mesh=mesh, ckpt_dir=ckpt_root / stage, num_steps=steps,
        seed=config.seed, evaluate=valid_metrics,
        select=SELECT, examples_key="users", name=f"ur4rec/{stage}",
        summary_dir=out / "tb" / stage,
        optimizer=training.make_optimizer(stage, tcfg, steps))
    model = result.model
    logs[stage] = {"steps": result.step, "best": result.best,
                   "best_step": result.best_step,
                   "stop_reason": result.stop_reason,
                   "seconds": round(result.seconds, 1),
                   "curve": result.curve, "evals": result.evals}

  scores = {split: scoring.all_scores(model, ex, max_len=max_len,
                                      history_len=hl)
            for split, ex in (("valid", valid), ("test", test))}
  metrics, chosen = scoring.evaluate_fusions(
      scores, valid, test, seed=config.seed, pretrained=pretrained)
  fusions = scoring.FUSIONS
  best = max(fusions, key=lambda m: (metrics[f"full/{m}/valid/ndcg@10"],
                                     -fusions.index(m)))
  for k, v in list(metrics.items()):
    protocol, method, rest = k.split("/", 2)
    if method == best:
      metrics[rest if protocol == "full" else f"sampled/{rest}"] = v
  metrics.update(scoring.latency(model, test, max_len=max_len,
                                 history_len=hl))
  metrics.update({
      "selected": best, "num_eval_users": int(len(test)),
      "protocols": {
          "sampled": (f"leave-one-out, 1 target + {config.eval.num_negatives}"
                      f" negatives the user never had (seed "
                      f"{config.eval.candidate_seed}: the same lists for "
                      "every model)"),
          "full": "leave-one-out, every item, the user's history masked"},
      "texts": config.texts, "features": config.features.path,
      "multimodal": model.is_multimodal, "fusion_params": chosen,
      "stages": {k: {kk: vv for kk, vv in v.items()
                     if kk not in ("curve", "evals")}
                 for k, v in logs.items()},
      "seconds": round(time.time() - t_start, 1)})
  _save(out, model, config, scfg, chosen, best, metrics, logs)
  logging.info("ur4rec %s: selected %s; full test NDCG@10 %s; sampled %s",
               config.name, best,
               {m: round(metrics[f"full/{m}/test/ndcg@10"], 4)
                for m in scoring.METHODS},
               {m: round(metrics[f"sampled/{m}/test/ndcg@10"], 4)
                for m in scoring.METHODS})
  return metrics


def _save(out: pathlib.Path, model: model_lib.UR4Rec, config, scfg, chosen,
          best, metrics, logs) -> None:
  if jax.process_index() != 0:
    return
  retr_cfg = model.retriever.config
  spec = {"kind": KIND, "num_items": int(model.sasrec.num_items),
          "sasrec_config": model_folder.config_dict(scfg),
          "retriever_config": model_lib.config_json(retr_cfg),
          "multimodal": model.is_multimodal,
          "texts": config.texts, "encoder": config.encoder.to_dict(),
          "features": config.features.path,
          "history_len": int(config.history_len),
          "fusion": {"method": best, "params": chosen["full"][best]}}
  (out / "metrics.json").unlink(missing_ok=True)
  model_folder.save(out, spec, nnx.state(model, nnx.Param))
  atomic_write_json(out / "train_log.json", logs)
  atomic_write_json(out / "metrics.json", metrics)  # the done-marker


def _fingerprint(config) -> dict[str, Any]:
  """What the checkpoints depend on (resume needs the same)."""
  keys = ("seed", "texts", "sasrec", "features", "retriever", "train",
          "history_len", "sasrec_loss", "encoder")
  return {k: (config[k].to_dict() if hasattr(config[k], "to_dict")
              else config[k]) for k in keys}


# ----------------------------------------------------------------------------
# The model folder as a Ranker (recommend, evaluate, serve).


@dataclasses.dataclass
class UR4RecRanker(model_folder.ScoreRanker):
  """Fused full scores of a known user; SASRec alone for a bare history.

  `explain(user)` is the user's preference text (what the retriever read).
  """

  user_texts: list[str] = dataclasses.field(default_factory=list)

  def explain(self, user: int) -> str | None:
    return self.user_texts[user] if 0 <= user < len(self.user_texts) else None


def load_ranker(model_dir: str | pathlib.Path, workdir: str | pathlib.Path,
                spec: dict[str, Any], ds: Dataset) -> UR4RecRanker:
  """A `ur4rec` model folder -> UR4RecRanker (the fusion chosen on valid)."""
  model_dir, workdir = pathlib.Path(model_dir), pathlib.Path(workdir)
  cfg = ml_collections.ConfigDict({"texts": spec["texts"],
                                   "encoder": spec["encoder"]})
  user_vecs, item_vecs, user_texts = model_lib.encode_texts(cfg, workdir, ds)
  scfg = ml_collections.ConfigDict(spec["sasrec_config"])
  rcfg, mcfg = model_lib.configs_from_json(spec["retriever_config"],
                                           bool(spec.get("multimodal")))
  user_mask = None
  if rcfg.trainable_layers:
    user_vecs, user_mask, _ = model_lib.user_token_states(
        cfg, workdir, user_texts, rcfg.trainable_layers)
  feats = (features_lib.load_features(workdir / spec["features"],
                                      ds.num_items)
           if spec.get("multimodal") else None)
  retr = model_lib.make_retriever(rcfg, item_vecs, feats, mcfg)
  model = model_lib.UR4Rec(SASRec(ds.num_items, scfg, rngs=nnx.Rngs(0)),
                           retr, user_vecs, user_mask)
  nnx.update(model, model_folder.restore_params(
      model_dir, nnx.state(model, nnx.Param)))
  max_len, hl = int(scfg.max_len), int(spec["history_len"])
  method, params = spec["fusion"]["method"], spec["fusion"]["params"]
  gate = fusion.GateParams.from_dict(params) if method == "gate" else None
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)
  score = scoring.make_score_fn(graphdef)

  def score_fn(batch: EvalExamples) -> np.ndarray:
    a, b = (np.asarray(x) for x in score(
        state, rest, *scoring.batch_rows(batch, max_len, hl, ds.num_items)))
    known = (batch.users >= 0) & (batch.users < ds.num_users)  # [B]
    # As evaluated: history items (batch.exclude) out of the normalisation.
    _, mask = fusion.candidate_scores(scoring.FixedScores(a), batch, None)
    if gate is not None:
      fused = fusion.apply_gate(gate, a, b, mask, batch.history.lengths())
    else:
      fused = fusion.fuse(method, a, b, mask, params)
    return np.where(known[:, None], fused, a)

  return UR4RecRanker(KIND, score_fn, ds.num_items, user_texts=user_texts)
