"""ur4rec/texts.py: training-only prompts, template, cache resume, loader."""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import ur4rec_texts
from genrec_jax.data.dataset import DataError, Dataset, EvalExamples, Ragged
from genrec_jax.decoding import sampling
from genrec_jax.ur4rec import text_lm
from genrec_jax.ur4rec import text_report
from genrec_jax.ur4rec import texts

REPO = pathlib.Path(__file__).resolve().parents[1]
USERS, ITEMS = 5, 23
GENRES = ("Western", "Horror", "Comedy", "Drama", "Sci-Fi")


def _sequences():
  """Distinct items per user. User 0: Westerns in training, then a Horror
  valid item and a Horror test item."""
  rng = np.random.default_rng(3)
  seqs = [[0, 5, 10, 15, 20, 1, 6]]  # 1, 6: held out (Horror)
  for n in (4, 9, 6, 3):
    seqs.append(rng.choice(ITEMS, n, replace=False).tolist())
  return seqs


def _genres(i):
  if i in (1, 6):
    return "Horror"
  if i % 5 == 0:
    return "Western"
  return " ".join(GENRES[j] for j in range(len(GENRES)) if (i + j) % 3 == 0
                  ) or "Drama"


def _dataset(path: pathlib.Path) -> Dataset:
  seqs = _sequences()

  def rows(cut):
    return EvalExamples(
        users=np.arange(USERS, dtype=np.int32),
        history=Ragged.from_lists([s[:len(s) - cut] for s in seqs]),
        targets=Ragged.from_lists([[s[len(s) - cut]] for s in seqs]))

  d = Dataset(
      name="toy", num_users=USERS, num_items=ITEMS,
      item_ids=[str(i) for i in range(ITEMS)],
      user_ids=[str(u) for u in range(USERS)],
      item_fields={
          "title": [f"Picture Number {i} ({1950 + 2 * i})"
                    for i in range(ITEMS)],
          "year": [str(1950 + 2 * i) for i in range(ITEMS)],
          "genres": [_genres(i) for i in range(ITEMS)]},
      sequences=Ragged.from_lists(seqs), timestamps=None,
      train=Ragged.from_lists([s[:-2] for s in seqs]), valid=rows(2),
      test=rows(1), split="leave_one_out")
  d.save(path / "dataset")
  return d


def _tiny_config(**kw):
  config = ur4rec_texts.get_config("tiny")
  # Short prompts: one compiled shape per kind.
  config.lm.system = ""
  config.prompts.user = "$history"
  config.prompts.item = "$title"
  config.history = 0 if kw.pop("no_history", False) else 50
  for k, v in kw.items():
    setattr(config, k, v)
  return config


def _read(folder, name):
  with open(folder / name, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_no_heldout_title_reaches_a_user_prompt(tmp_path, monkeypatch):
  d = _dataset(tmp_path)
  seen = {}

  def fake_generate(lm, prompts, lm_config, max_new_tokens, cache, what,
                    log_every):
    seen[what] = list(prompts)
    return [{"key": str(j), "text": "one two three.", "finished": True,
             "tokens": 3} for j in range(len(prompts))], len(prompts)

  monkeypatch.setattr(text_lm, "generate", fake_generate)
  config = ur4rec_texts.get_config("tiny")
  config.history = 50  # everything the prompt may show
  def tokenizer(prompts, add_special_tokens):
    return {"input_ids": [[0] * len(p) for p in prompts]}

  lm = text_lm.LanguageModel(None, tokenizer, "fake", (0,), 0)
  titles = d.item_fields["title"]
  for years in (False, True):
    config.prompts.years_per_title = years
    texts.run(config, tmp_path, lm=lm)
    assert len(seen["users"]) == USERS and len(seen["items"]) == ITEMS
    for u, prompt in enumerate(seen["users"]):
      lines = set(prompt.split("\n"))
      # History lines: the title, without its "(year)" unless years.
      shown = {i for i in range(ITEMS)
               if (titles[i] if years else titles[i].split(" (")[0])
               in lines}
      held = {int(d.valid.targets[u][0]), int(d.test.targets[u][0])}
      assert not shown & held, (u, shown & held)
      assert not any(titles[i] in prompt for i in held), u
      assert shown == set(d.train[u].tolist()), u
  assert "Western" in seen["users"][0] and "Horror" not in seen["users"][0]
  assert "Picture Number 1 (1952)" in seen["items"][1]  # items: own fields


def test_training_histories_drop_heldout_items():
  d = _dataset(pathlib.Path(__import__("tempfile").mkdtemp()))
  hist = texts.training_histories(d)
  assert hist[0] == [0, 5, 10, 15, 20]
  for u in range(USERS):
    assert int(d.valid.targets[u][0]) not in hist[u]
    assert int(d.test.targets[u][0]) not in hist[u]


def test_template_backend_is_deterministic(tmp_path):
  _dataset(tmp_path)
  config = ur4rec_texts.get_config()  # template
  r1 = texts.run(config, tmp_path)
  users1 = (tmp_path / "texts_template" / "users.jsonl").read_text()
  items1 = (tmp_path / "texts_template" / "items.jsonl").read_text()
  r2 = texts.run(config, tmp_path)
  assert (tmp_path / "texts_template" / "users.jsonl").read_text() == users1
  assert (tmp_path / "texts_template" / "items.jsonl").read_text() == items1
  user_texts, item_texts = texts.load_texts(tmp_path / "texts_template",
                                            USERS, ITEMS)
  # User 0's training history is all Westerns; its held-out items are
  # Horror films that must not show.
  assert "Western (5)" in user_texts[0] and "Horror" not in user_texts[0]
  assert "Picture Number 20 (1990)" in user_texts[0]
  assert "1950s" in user_texts[0]
  assert item_texts[1] == "Picture Number 1 (1952): Horror."
  assert r1["users"]["genres"]["precision"] == 1.0
  assert r1["users"]["garbage_rate"] == 0.0
  assert r1["users"]["count"] == USERS and r2["items"]["count"] == ITEMS


def test_lm_backend_end_to_end_and_cache_resume(tmp_path, monkeypatch):
  _dataset(tmp_path)
  calls = []
  real = sampling.sample

  def counting(*args, **kw):
    calls.append(args[2].shape)
    return real(*args, **kw)

  monkeypatch.setattr(sampling, "sample", counting)
  config = _tiny_config()
  r1 = texts.run(config, tmp_path)
  out = tmp_path / "texts_tiny"
  assert r1["complete"] and r1["users"]["generated"] == USERS
  assert r1["items"]["generated"] == ITEMS
  # batch 3: ceil(5 / 3) + ceil(23 / 3) calls
  assert len(calls) == 2 + 8
  user_texts, item_texts = texts.load_texts(out, USERS, ITEMS)
  assert len(user_texts) == USERS and len(item_texts) == ITEMS
  assert all(t.strip() for t in user_texts + item_texts)
  assert r1["users"]["fallback"] < USERS  # the LM wrote them
  first = (out / "users.jsonl").read_text(), (out / "items.jsonl").read_text()

  # Killed after writing the cache: nothing is generated again.
  shutil.rmtree(out)
  calls.clear()
  r2 = texts.run(config, tmp_path)
  assert calls == []
  assert r2["users"]["generated"] == 0 and r2["items"]["generated"] == 0
  assert r2["users"]["cached"] == USERS and r2["items"]["cached"] == ITEMS
  assert ((out / "users.jsonl").read_text(),
          (out / "items.jsonl").read_text()) == first

  # Killed mid-way (last 4 lines lost, one of them half-written): only
  # those 4 prompts run again, with the same texts (per-prompt keys).
  cache = tmp_path / "texts_tiny.cache.jsonl"
  lines = cache.read_text().splitlines(keepends=True)
  cache.write_text("".join(lines[:-4]) + lines[-4][:10])
  r3 = texts.run(config, tmp_path)
  assert r3["users"]["generated"] + r3["items"]["generated"] == 4
  assert ((out / "users.jsonl").read_text(),
          (out / "items.jsonl").read_text()) == first

  # Other sampling settings are other cache keys.
  config.lm.seed = 1
  r4 = texts.run(config, tmp_path)
  assert r4["users"]["generated"] == USERS


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict)
                          else r for r in rows))


def test_load_texts_errors_name_file_and_id(tmp_path):
  _dataset(tmp_path)
  texts.run(ur4rec_texts.get_config(), tmp_path)
  folder = tmp_path / "texts_template"
  users = _read(folder, "users.jsonl")
  items = _read(folder, "items.jsonl")
  assert texts.load_texts(folder, USERS, ITEMS)[0][2] == users[2]["text"]

  _write(folder / "users.jsonl", [r for r in users if r["user"] != 2])
  with pytest.raises(DataError, match=r"users\.jsonl: no text for user 2"):
    texts.load_texts(folder, USERS, ITEMS)
  _write(folder / "users.jsonl", users + [users[3]])
  with pytest.raises(DataError, match=r"users\.jsonl:6: duplicate user 3"):
    texts.load_texts(folder, USERS, ITEMS)
  _write(folder / "users.jsonl", users[:1] + ["{not json\n"] + users[1:])
  with pytest.raises(DataError, match=r"users\.jsonl:2: bad line"):
    texts.load_texts(folder, USERS, ITEMS)
  _write(folder / "users.jsonl", users)
  bad = [dict(r, text="  ") if r["item"] == 3 else r for r in items]
  _write(folder / "items.jsonl", bad)
  with pytest.raises(DataError, match=r"items\.jsonl:4: empty text for item 3"):
    texts.load_texts(folder, USERS, ITEMS)
  _write(folder / "items.jsonl", items)
  with pytest.raises(DataError, match=r"items\.jsonl: no text for item 23"):
    texts.load_texts(folder, USERS, ITEMS + 1)
  (folder / "report.json").unlink()
  with pytest.raises(DataError, match="report.json"):
    texts.load_texts(folder, USERS, ITEMS)


def test_text_quality_measures():
  assert text_report.is_garbage("too short")
  assert text_report.is_garbage("### 1234 5678 %%%% !!!")
  assert text_report.is_garbage("I like movies movies movies movies a lot")
  assert text_report.is_garbage("the film is the film is the film is the film is")
  assert not text_report.is_garbage("This viewer enjoys dark crime dramas.")
  assert text_report.clean_text("One. Two three four. Five six", False) == (
      "One. Two three four.", True)
  assert text_report.clean_text(" A  b c ", True) == ("A b c", False)
  s = text_report.genre_scores(
      ["Loves science fiction and Westerns, hates horror.", "Nothing."],
      [{"Sci-Fi", "Western", "Drama"}, {"Drama"}],
      ["Sci-Fi", "Western", "Horror", "Drama", "War"])
  assert s["precision"] == pytest.approx(2 / 3, abs=1e-4)
  assert s["recall"] == pytest.approx(2 / 4, abs=1e-4)
  assert s["mention_rate"] == 0.5
  # "Star Wars" is no mention of War.
  assert text_report.mentioned_genres("star wars fans", text_report.genre_patterns(
      ["War"])) == set()


def test_binary_template(tmp_path):
  _dataset(tmp_path)
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.generate_texts",
       "--config=configs/ur4rec_texts.py", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((tmp_path / "texts_template" / "report.json")
                      .read_text())
  assert report["users"]["count"] == USERS
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.generate_texts",
       "--config=configs/ur4rec_texts.py", f"--workdir={tmp_path / 'none'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "arrays.npz" in proc.stderr
