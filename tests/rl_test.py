"""GRPO (genrec_jax/rl): rewards, advantages, loss, rollouts, the stage.

The workdir is generative_test's planted catalogue (item i is followed by
item i + 1); a tiny SID decoder is SFT-trained on it once per module and
GRPO starts from it.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import generative as generative_config
from configs import rl as rl_config
from genrec_jax import pipeline
from genrec_jax.data.dataset import Dataset, Ragged
from genrec_jax.generative import losses
from genrec_jax.generative import ranker as ranker_lib
from genrec_jax.generative import sid_decoder
from genrec_jax.generative import stage as generative_stage
from genrec_jax.rl import grpo
from genrec_jax.rl import rewards
from genrec_jax.rl import stage as rl_stage
from genrec_jax.training import loop
from genrec_jax.training import sharding
from tests.generative_test import PLANTED_ITEMS
from tests.generative_test import planted  # noqa: F401  pylint: disable=unused-import

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------
# Rewards and advantages against the formulas.


def _rollouts(items, targets):
  from genrec_jax.data.dataset import EvalExamples, Ragged  # pylint: disable=g-import-not-at-top
  items = np.asarray(items)
  return rewards.Rollouts(items=items, examples=EvalExamples(
      users=np.arange(len(items), dtype=np.int32),
      history=Ragged.from_lists([[0]] * len(items)),
      targets=Ragged.from_lists([[t] for t in targets])))


def test_ranking_reward_table_g16_and_target_at_rank_3():
  g = 16
  items = np.arange(100, 100 + g)[None].repeat(2, 0)
  items[1, 3] = 7  # row 1: the target at beam rank 3; row 0: all miss
  total, parts = rewards.compute("ranking", _rollouts(items, [7, 7]), {})
  denom = sum(1 / np.log2(j + 2) for j in range(g))
  assert denom == pytest.approx(6.106, abs=1e-3)
  want = np.array([-(1 / np.log2(i + 2)) / denom for i in range(g)])
  want[3] = 1.0
  np.testing.assert_allclose(total[1], want, rtol=1e-6)
  assert total[1, 0] == pytest.approx(-0.164, abs=1e-3)
  assert total[1, 15] == pytest.approx(-0.040, abs=1e-3)
  np.testing.assert_array_equal(total[0], 0.0)  # all-miss group
  np.testing.assert_array_equal(parts["rule"][1], np.eye(g)[3])
  adv = rewards.group_advantages(total, items >= 0)
  r = want
  np.testing.assert_allclose(
      adv[1], (r - r.mean()) / (r.std(ddof=1) + 1e-4), rtol=1e-5)
  assert adv[1, 3] == pytest.approx(3.72, abs=0.01)  # METHODS.md 3.4
  others = np.delete(adv[1], 3)
  assert others.min() == pytest.approx(-0.63, abs=0.01)
  assert others.max() == pytest.approx(-0.17, abs=0.01)
  np.testing.assert_array_equal(adv[0], 0.0)  # no hit: zero advantage


def test_rule_only_and_invalid_beams():
  items = np.array([[4, 5, -1, -1], [1, 2, 3, -1]])
  roll = _rollouts(items, [5, 9])
  total, _ = rewards.compute("rule", roll, {})
  np.testing.assert_array_equal(total, [[0, 1, 0, 0], [0, 0, 0, 0]])
  adv = rewards.group_advantages(total, items >= 0)
  # Only the 2 valid beams of row 0 are a group: +-1/sqrt(2) / (std + eps).
  s = np.std([0.0, 1.0], ddof=1)
  np.testing.assert_allclose(adv[0, :2], [-0.5 / (s + 1e-4),
                                          0.5 / (s + 1e-4)], rtol=1e-5)
  np.testing.assert_array_equal(adv[0, 2:], 0.0)
  np.testing.assert_array_equal(adv[1], 0.0)
  only, parts = rewards.compute("ranking_only", _rollouts(items, [4, 9]), {})
  assert set(parts) == {"ranking"} and only[0, 0] == 0.0
  assert only[0, 1] == pytest.approx(rewards.rank_penalty(4)[1])
  assert only[0, 2] == 0.0  # invalid beam


def test_semantic_reward_is_the_cosine():
  emb = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  items = np.array([[0, 3, -1]])
  total, _ = rewards.compute("semantic", _rollouts(items, [2]),
                             {"unit_embeddings": unit})
  np.testing.assert_allclose(total[0, :2], [unit[0] @ unit[2],
                                            unit[3] @ unit[2]], rtol=1e-5)
  assert total[0, 2] == 0.0


def test_sasrec_reward_is_the_softmax_probability():
  from genrec_jax import model_folder  # pylint: disable=g-import-not-at-top
  logits = np.array([[0.5, 2.0, -1.0, 0.0], [1.0, 1.0, 1.0, 3.0]])
  ranker = model_folder.ScoreRanker("sasrec", lambda b: logits, 4)
  items = np.array([[1, 3, -1], [3, 0, 2]])
  total, parts = rewards.compute("sasrec", _rollouts(items, [1, 3]),
                                 {"sasrec": ranker})
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(total, [[probs[0, 1], probs[0, 3], 0.0],
                                     [probs[1, 3], probs[1, 0], probs[1, 2]]],
                             rtol=1e-6)
  assert set(parts) == {"sasrec"}


# ----------------------------------------------------------------------------
# The loss.


def _tiny_decoder(seed=0):
  from genrec_jax.models import decoder  # pylint: disable=g-import-not-at-top
  cfg = decoder.DecoderConfig(
      vocab_size=29, hidden_size=24, intermediate_size=40, num_layers=2,
      num_heads=3, num_kv_heads=1, tie_word_embeddings=True,
      attention_bias=False, model_type="llama", max_position_embeddings=64,
      bos_token_id=2, eos_token_id=1, pad_token_id=0)
  return decoder.Decoder(cfg, rngs=nnx.Rngs(seed))


def _loss_batch(rng, p=2, t=6, g=3, c=3):
  ids = rng.integers(5, 29, size=(p, t)).astype(np.int32)
  mask = np.ones((p, t), bool)
  mask[0, :3] = False  # left padding
  ids[0, :3] = 0
  return {"prompt_ids": ids, "prompt_mask": mask,
          "completions": rng.integers(5, 29, size=(p, g, c)).astype(np.int32),
          "weight": np.array([[1, 1, 1], [1, 0, 1]], np.float32),
          "advantages": rng.normal(size=(p, g)).astype(np.float32),
          "ref_logp": -rng.random((p, g, c)).astype(np.float32)}


def _grouped(model, b):
  return losses.grouped_completion_log_probs(model, b["prompt_ids"],
                                             b["prompt_mask"],
                                             b["completions"])


def test_completion_log_probs_equal_the_full_forward():
  model = _tiny_decoder()
  rng = np.random.default_rng(1)
  ids = rng.integers(5, 29, size=(6, 9)).astype(np.int32)
  mask = np.ones((6, 9), bool)
  mask[0, :3] = False
  full = losses.sequence_log_probs(model, ids, mask,
                                   np.pad(np.ones((6, 3)), ((0, 0), (6, 0))))
  tail = losses.completion_log_probs(model, ids, mask, 3)
  np.testing.assert_allclose(tail, full[:, -3:], atol=1e-5)


def test_grouped_log_probs_equal_one_row_per_completion():
  model = _tiny_decoder()
  rng = np.random.default_rng(4)
  p, t, g, c = 3, 7, 5, 4
  prompts = rng.integers(5, 29, size=(p, t)).astype(np.int32)
  pmask = np.ones((p, t), bool)
  pmask[0, :2] = pmask[2, :5] = False  # left padding
  prompts[~pmask] = 0
  comp = rng.integers(5, 29, size=(p, g, c)).astype(np.int32)
  rows = np.concatenate([np.repeat(prompts, g, 0), comp.reshape(p * g, c)], 1)
  mask = np.concatenate([np.repeat(pmask, g, 0), np.ones((p * g, c), bool)],
                        1)
  want = losses.completion_log_probs(model, rows, mask, c).reshape(p, g, c)
  got = losses.grouped_completion_log_probs(model, prompts, pmask, comp)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_beta0_gradient_is_minus_advantage_times_grad_logp():
  model = _tiny_decoder()
  b = _loss_batch(np.random.default_rng(2))
  loss_fn = grpo.make_grpo_loss(beta=0.0, epsilon=0.2, mu=1)
  graphdef, params = nnx.split(model)

  def grpo_loss(p):
    return loss_fn(nnx.merge(graphdef, p), b, None)[0]

  def plain(p):  # -(1/N) sum_i w_i A_i mean_t logp_it
    lp = _grouped(nnx.merge(graphdef, p), b)
    w = b["weight"]
    return -jnp.sum(w * b["advantages"] * lp.mean(-1)) / w.sum()

  g1 = jax.tree.leaves(jax.grad(grpo_loss)(params))
  g2 = jax.tree.leaves(jax.grad(plain)(params))
  for x, y in zip(g1, g2):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
  # The loss value itself is -mean A (ratio 1) over the valid rows.
  w = b["weight"]
  assert float(grpo_loss(params)) == pytest.approx(
      -float(np.sum(w * b["advantages"]) / w.sum()), rel=1e-5)


def test_kl_zero_at_the_reference_and_ppo_clip():
  model = _tiny_decoder()
  b = _loss_batch(np.random.default_rng(3))
  lp = np.asarray(_grouped(model, b))
  b = dict(b, ref_logp=lp, old_logp=lp)
  _, aux = grpo.make_grpo_loss(beta=1e-3, epsilon=0.2, mu=1)(model, b, None)
  assert float(aux["kl"]) == pytest.approx(0.0, abs=1e-6)
  # k3 against a shifted reference: exp(d) - d - 1 summed over valid tokens.
  d = 0.3
  _, aux = grpo.make_grpo_loss(beta=1e-3, epsilon=0.2, mu=1)(
      model, dict(b, ref_logp=lp + d), None)
  assert float(aux["kl"]) == pytest.approx(5 * 3 * (np.exp(d) - d - 1),
                                           rel=1e-4)
  # mu > 1 at old = current: ratio 1, nothing clipped, loss = -mean A.
  loss, aux = grpo.make_grpo_loss(beta=0.0, epsilon=0.2, mu=2)(model, b, None)
  w = b["weight"]
  assert float(loss) == pytest.approx(
      -float(np.sum(w * b["advantages"]) / w.sum()), rel=1e-5)
  assert float(aux["clipped"]) == 0.0


# ----------------------------------------------------------------------------
# Rollouts and the stage on the planted catalogue.


@pytest.fixture(scope="module")
def sft(planted):  # noqa: F811
  """A tiny SID decoder SFT-trained briefly on the planted pattern."""
  config = generative_config.get_config("decoder_sid,tiny")
  config.name = "sft"
  config.train.update(num_steps=120, batch_size=16, learning_rate=1e-2,
                      warmup_steps=10, eval_every=0, checkpoint_every=0,
                      log_every=60)
  config.eval.update(select="none", beam_size=PLANTED_ITEMS, top_n=5,
                     exclude_history=False, batch_size=8)
  config.data.update(max_history=3, history_buckets=(3,))
  config.mesh.num_devices = 1
  metrics = generative_stage.run(config, str(planted))
  return planted, metrics


def _rl_config(**train):
  config = rl_config.get_config("tiny")
  config.init, config.name = "sft", "rl"
  config.mesh.num_devices = 1
  config.eval.exclude_history = False
  config.train.update(**train)
  return config


def _source(root, config):
  ds = Dataset.load(root / "dataset")
  sft_ranker = ranker_lib.load(root / "sft", root, ds=ds)
  g, p, r = nnx.split(sft_ranker.model, nnx.Param, ...)
  ref = nnx.merge(g, jax.tree.map(jnp.copy, p), r)
  src = grpo.RolloutSource(sft_ranker.fmt, ds, ref, config, seed=0,
                           reward_context={}, ref_dir=root / "ref_unused")
  return src, sft_ranker


def test_rollouts_are_valid_and_scores_match_teacher_forcing(sft):
  root, _ = sft
  config = _rl_config()
  config.rollout.update(num_generations=PLANTED_ITEMS, prompts_per_step=7)
  src, ranker = _source(root, config)
  model = ranker.model
  batch = src.next_batch(model, 0)
  ex = src.examples(0)
  res = src.search(model, src.fmt.rollout_prompts(ex))
  items = np.asarray(res.items)
  # G = catalogue: every group holds every item once, hence the target.
  assert (np.sort(items, 1) == np.arange(PLANTED_ITEMS)).all()
  assert batch["stat_groups_hit"].sum() == 7 == batch["stat_groups"].sum()
  # Beam scores = sums of teacher-forced full-vocabulary log-probs.
  lp = src.log_probs(model, batch).sum(-1)  # [P, G]
  np.testing.assert_allclose(lp, np.asarray(res.scores), atol=2e-4)
  # The reference is the SFT model: its log-probs are the policy's.
  np.testing.assert_allclose(batch["ref_logp"], src.log_probs(model, batch),
                             atol=1e-5)
  # Deterministic in (params, step); another step, other prompts.
  src._cache = None  # pylint: disable=protected-access
  again = src.next_batch(model, 0)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])
  assert not np.array_equal(src.rows(0), src.rows(1))


def test_one_update_raises_the_target_log_prob(sft):
  root, _ = sft
  config = _rl_config()
  config.reward.type = "rule"
  config.rollout.update(num_generations=PLANTED_ITEMS, prompts_per_step=8)
  src, ranker = _source(root, config)
  batch = src.next_batch(ranker.model, 0)
  is_target = batch["stat_reward_rule"] > 0  # one per group

  def target_logp(model):
    return src.log_probs(model, batch).sum(-1)[is_target]

  before = target_logp(ranker.model)
  cfg = ml_collections.ConfigDict(config.train.to_dict())
  # One Adam step moves every parameter by ~lr: 1e-3 stays first-order here
  # (3e-3 overshoots on this tiny model).
  cfg.update(learning_rate=1e-3, warmup_steps=0, checkpoint_every=0,
             eval_every=0, resume=False)
  res = loop.train(ranker.model, grpo.make_grpo_loss(beta=0.0, epsilon=0.2,
                                                     mu=1),
                   [batch], cfg, mesh=sharding.mesh_from_config(
                       ml_collections.ConfigDict(dict(
                           shape=(1, 1, 1), axes=("data", "fsdp", "tensor"),
                           num_devices=1))),
                   ckpt_dir=root / "one_update", num_steps=1)
  after = target_logp(res.model)
  assert after.mean() > before.mean() + 1e-3, (before, after)


def test_stage_metrics_diagnostics_and_no_retrace(sft):
  root, sft_metrics = sft
  config = _rl_config()
  metrics = rl_stage.run(config, str(root))
  saved = json.loads((root / "rl" / "metrics.json").read_text())
  assert saved == metrics
  for k in ("test/hr@1", "test/ndcg@5", "invalid_rate", "rl/group_hit_rate",
            "rl/kl", "rl/completion_length", "stop_reason"):
    assert k in metrics, k
  assert metrics["invalid_rate"] == 0.0 and metrics["stop_reason"] == "steps"
  assert metrics["rl/completion_length"] == 3  # the 3 SID levels
  assert 0.0 <= metrics["rl/group_hit_rate"] <= 1.0
  assert set(metrics) >= {k for k in sft_metrics if k.startswith("test/")}
  log = json.loads((root / "rl" / "train_log.json").read_text())
  assert log["traces"] == log["batch_shapes"] == 1  # no retrace
  assert "group_hit_rate" in log["curve"][-1]
  assert [e["step"] for e in log["evals"]] == [3, 6]
  assert "valid/hr@1" in log["evals"][0]
  # The folder serves like the SFT one.
  spec = json.loads((root / "rl" / "model.json").read_text())
  assert spec["prompt"]["format"] == "sid" and spec["kind"] == "decoder"


def _first_hint_rows(root, name, n=12):
  """(format, examples, rollout ids, eval ids) of n training prompt rows of
  model folder `name`, each row's target set to its last item's first hint
  (rollout prompts must clean it out; evaluation prompts show it)."""
  ds = Dataset.load(root / "dataset")
  fmt = ranker_lib.load(root / name, root, ds=ds).fmt
  users, pos = grpo.train_prompt_rows(ds, fmt.item_tokens)
  ex = grpo.prompt_examples(ds, users[:n], pos[:n], fmt.max_history)
  last = np.array([h[-1] for h in ex.history.tolist()])
  first = np.array([fmt.hints.for_item(int(i))[0] for i in last])
  ex.targets = Ragged.from_lists([[int(t)] for t in first])
  return (fmt, ex, last, fmt.rollout_prompts(ex)["input_ids"],
          fmt.eval_prompts(ex)["input_ids"])


def test_text_format_with_hints_runs(sft):
  """The text format: completions carry the suffix ("\\n", EOS); hints in
  rollout prompts never show the target."""
  root, _ = sft
  config = generative_config.get_config("decoder_hints,tiny")
  config.name = "sft_text"
  config.train.update(num_steps=3, eval_every=0, checkpoint_every=0)
  config.eval.update(select="none", max_test_users=4)
  config.mesh.num_devices = 1
  generative_stage.run(config, str(root))
  rl = _rl_config(num_steps=2, eval_every=0)
  rl.update(init="sft_text", name="rl_text")
  rl.rollout.title_fraction = 0.5  # title -> SID prompts too
  rl.eval.max_test_users = 4
  metrics = rl_stage.run(rl, str(root))
  spec = json.loads((root / "sft_text" / "model.json").read_text())
  levels = len(spec["sid_tokens"]["sizes"])
  suffix = len(spec["sid_tokens"]["suffix"])
  assert suffix >= 1
  assert metrics["rl/completion_length"] == levels + suffix
  assert metrics["format"] == "text" and metrics["hints"] is True
  # Rollout prompts clean the target out of the hint sentence: rows whose
  # target is the last item's first neighbour (planted hints: +3, +5, ...).
  ds = Dataset.load(root / "dataset")
  fmt, ex, last, clean, full = _first_hint_rows(root, "sft_text")
  for i in range(12):
    assert not np.array_equal(clean[i], full[i]), i
  ex.targets = Ragged.from_lists([[int(t)] for t in (last + 1) % 13])
  np.testing.assert_array_equal(fmt.rollout_prompts(ex)["input_ids"], full)
  # Title -> SID rows ask for the target's title, nothing of the history.
  titled = fmt.rollout_prompts(ex, title_rows=np.arange(12) % 2 == 0)
  text = [fmt.tokenizer.decode(fmt.remap.keep[r[r > 0]]) if fmt.remap
          is not None else fmt.tokenizer.decode(r) for r in
          titled["input_ids"]]
  for i in range(12):
    title = ds.title(int(ex.targets[i][0]))
    assert (f"Which item has the title: {title}?" in text[i]) == (i % 2 == 0)


def test_causal_sid_format_with_hints_runs(sft):
  """GRPO from a decoder trained on causal windows: rollouts use the causal
  layout, its last hint block cleaned of the target."""
  root, _ = sft
  config = generative_config.get_config("decoder_sid_hints,tiny")
  config.update(name="sft_causal")
  config.data.examples = "causal"
  config.train.update(num_steps=3, eval_every=0, checkpoint_every=0)
  config.eval.update(select="none", max_test_users=4)
  config.mesh.num_devices = 1
  generative_stage.run(config, str(root))
  rl = _rl_config(num_steps=2, eval_every=0)
  rl.update(init="sft_causal", name="rl_causal")
  rl.eval.max_test_users = 4
  metrics = rl_stage.run(rl, str(root))
  assert metrics["format"] == "sid" and metrics["hints"] is True
  assert metrics["invalid_rate"] == 0.0
  fmt, _, _, clean, full = _first_hint_rows(root, "rl_causal")
  assert fmt.causal
  for i in range(12):  # the last hint block differs, the rest is equal
    assert not np.array_equal(clean[i], full[i]), i
    assert clean[i][-1] == full[i][-1] == sid_decoder.SEP


def test_bad_config_and_init(sft):
  root, _ = sft
  config = _rl_config()
  config.init = "nope"
  with pytest.raises(FileNotFoundError, match="nope"):
    rl_stage.run(config, str(root))
  config = _rl_config()
  config.grpo.mu = 3  # checkpoint_every 2 is not a multiple
  with pytest.raises(ValueError, match="grpo.mu"):
    rl_stage.run(config, str(root))
  config = _rl_config()
  config.rollout.title_fraction = 0.5  # the "sid" format has no titles
  with pytest.raises(ValueError, match="title_fraction"):
    rl_stage.run(config, str(root))
  config = _rl_config()
  config.reward.type = "bleu"
  with pytest.raises(ValueError, match="reward.type"):
    rl_stage.run(config, str(root))


def test_seeded_pipeline_points_rl_at_the_same_seed():
  config = ml_collections.ConfigDict()
  config.stage_kinds = {"minionerec": "train_generative",
                        "minionerec_rl": "train_rl"}
  config.minionerec = generative_config.get_config("decoder_demo")
  config.minionerec_rl = rl_config.get_config("demo")
  config.seeds = (0, 2)
  config.seeded_stages = ("minionerec", "minionerec_rl")
  runs = pipeline.stage_runs(config, "minionerec_rl")
  assert [(r.config.name, r.config.init, r.config.seed) for r in runs] == [
      ("minionerec_rl_s0", "minionerec_s0", 0),
      ("minionerec_rl_s2", "minionerec_s2", 2)]


def test_benchmark_tiny_matches_transformers_generate(torch_python):
  """benchmarks/rl.py at a tiny size: our rollouts from the initial weights
  are HF generate's beams (same weights, constrained to the same trie)."""
  from configs import benchmarks as bench_configs  # pylint: disable=g-import-not-at-top
  from genrec_jax.benchmarks import rl as bench  # pylint: disable=g-import-not-at-top
  config = bench_configs.get_config("rl")
  config.update(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=48,
                vocab=227, sid_base=200, codebook=9, num_items=200,
                prompts=3, prompt_len=7, G=5, repeats=1,
                torch_python=str(torch_python))
  out = bench.run(config, None)
  assert out["valid_our_beams"] == out["valid_torch_beams"] == 1.0
  assert out["top1_agreement"] == 1.0 and out["beam_set_overlap"] == 1.0
  assert out["speedup"] > 0


# ----------------------------------------------------------------------------
# SIGKILL + resume == uninterrupted (subprocesses), with mu = 2 and a
# reference synced every 2 steps.


def _child(workdir: str, delay: float) -> None:
  orig = grpo.RolloutSource.next_batch

  def slow(self, model, step):
    time.sleep(delay)
    return orig(self, model, step)

  grpo.RolloutSource.next_batch = slow
  config = _rl_config(num_steps=8, checkpoint_every=2, eval_every=0)
  config.grpo.update(mu=2, ref_sync_every=4, ref_sync_alpha=0.5, beta=0.05)
  config.name = "rl_kill"
  config.eval.max_test_users = 3
  rl_stage.run(config, workdir)
  ds = Dataset.load(pathlib.Path(workdir) / "dataset")
  model = ranker_lib.load(pathlib.Path(workdir) / "rl_kill", workdir,
                          ds=ds).model
  (pathlib.Path(workdir) / "digest.json").write_text(json.dumps(
      loop.params_digest(model)))


def _spawn(workdir, delay):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.Popen(
      [sys.executable, "-m", "tests.rl_test", "child", str(workdir),
       str(delay)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE)


def test_sigkill_resume_is_bit_identical(sft, tmp_path):
  root, _ = sft
  import shutil  # pylint: disable=g-import-not-at-top
  dirs = {}
  for name in ("ref", "run"):
    dirs[name] = tmp_path / name
    dirs[name].mkdir()
    for sub in ("dataset", "sids", "hints", "sft"):
      shutil.copytree(root / sub, dirs[name] / sub)
  ref = _spawn(dirs["ref"], 0.0)
  killed = _spawn(dirs["run"], 1.0)
  latest = dirs["run"] / "rl_kill" / "checkpoints" / "latest"
  deadline = time.time() + 240
  while not (latest.exists() and any(
      p.name.isdigit() and int(p.name) >= 4 for p in latest.iterdir())):
    assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
    assert time.time() < deadline, "no checkpoint written in time"
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert not (dirs["run"] / "digest.json").exists()  # really mid-run
  resumed = _spawn(dirs["run"], 0.0)
  for p in (ref, resumed):
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
  a = json.loads((dirs["ref"] / "digest.json").read_text())
  b = json.loads((dirs["run"] / "digest.json").read_text())
  assert a == b
  assert (dirs["run"] / "rl_kill" / "checkpoints" / "ref" /
          "ref_4.npz").exists()


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
  _child(sys.argv[2], float(sys.argv[3]))
