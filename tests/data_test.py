"""Data layer: sources, splits, the dataset container, bad input."""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from configs import data as data_config
from genrec_jax.data import prepare, readers, splits
from genrec_jax.data.dataset import Dataset, DataError, Ragged
from tests.conftest import REPO, shared_data

SEQS = {  # user -> items in time order (raw ids)
    "7": [10, 11, 12, 13, 14],
    "3": [11, 12, 15],
    "9": [12, 13],  # shorter than min_len: train only
    "5": [10, 15, 16, 11, 13, 12, 14],
}
TITLES = {10: "Red lipstick", 11: "Blue mascara", 12: "Face cream",
          13: "Nail polish", 14: "Hair spray", 15: "Eye liner"}  # 16: none


def write_seq_txt(tmp_path):
  seq = tmp_path / "seq.txt"
  seq.write_text("".join(f"{u} {' '.join(map(str, s))}\n"
                         for u, s in SEQS.items()))
  items = tmp_path / "items.tsv"
  items.write_text("item_id\ttitle\tbrand\n" + "".join(
      f"{i}\t{t}\tAcme\n" for i, t in TITLES.items()))
  return seq, items


def seq_config(tmp_path, **overrides):
  seq, items = write_seq_txt(tmp_path)
  config = data_config.get_config("default")
  config.data.update(dict(name="toy", source="seq_txt", sequence_file=str(seq),
                          items_file=str(items),
                          text_template="$title by $brand"))
  config.data.update(overrides)
  return config


def test_seq_txt_leave_one_out(tmp_path):
  stats = prepare.run(seq_config(tmp_path), tmp_path / "w")
  assert (stats["users"], stats["items"], stats["interactions"]) == (4, 7, 17)
  # Item 16 is in no TSV row, user 9 is too short to evaluate: counted.
  assert stats["filtered"] == {"items_missing_from_item_file": 1,
                               "items_without_title": 1,
                               "users_train_only_too_short": 1}
  assert stats["items_with_text"] == 6
  ds = Dataset.load(tmp_path / "w" / "dataset")
  raw = {u: [ds.item_ids[i] for i in ds.sequences[k]]
         for k, u in enumerate(ds.user_ids)}
  assert raw["5"] == ["10", "15", "16", "11", "13", "12", "14"]
  u5 = ds.user_ids.index("5")
  row = list(ds.test.users).index(u5)
  assert [ds.item_ids[i] for i in ds.test.targets[row]] == ["14"]
  assert [ds.item_ids[i] for i in ds.test.history[row]] == raw["5"][:-1]
  vrow = list(ds.valid.users).index(u5)
  assert [ds.item_ids[i] for i in ds.valid.targets[vrow]] == ["12"]
  assert len(ds.train[u5]) == 5
  # User 9 (2 items) is train-only.
  assert ds.user_ids.index("9") not in set(ds.test.users)
  assert len(ds.test) == 3 and len(ds.valid) == 3
  assert ds.item_text(ds.item_ids.index("12")) == "Face cream by Acme"
  assert ds.title(ds.item_ids.index("16")) == ""


def test_dataset_round_trip(tmp_path):
  prepare.run(seq_config(tmp_path), tmp_path / "w")
  a = Dataset.load(tmp_path / "w" / "dataset")
  a.save(tmp_path / "copy")
  b = Dataset.load(tmp_path / "copy")
  assert a.item_ids == b.item_ids and a.user_ids == b.user_ids
  np.testing.assert_array_equal(a.train.values, b.train.values)
  np.testing.assert_array_equal(a.test.history.values, b.test.history.values)
  assert a.item_fields == b.item_fields and a.stats == b.stats


def test_sampled_candidates(tmp_path):
  config = seq_config(tmp_path, split="sampled_candidates", num_negatives=3,
                      min_len=2)
  with open(config.data.items_file, "a") as f:  # 4 items nobody had
    f.write("".join(f"{i}\tSpare {i}\tAcme\n" for i in range(17, 21)))
  prepare.run(config, tmp_path / "w")
  ds = Dataset.load(tmp_path / "w" / "dataset")
  c = ds.test.candidates
  assert c.shape == (len(ds.test), 4)
  for r, u in enumerate(ds.test.users):
    assert c[r, 0] == ds.test.targets[r][0]
    assert not set(c[r, 1:]) & set(ds.sequences[u].tolist())
    assert len(set(c[r])) == 4


def test_sliding_window_is_temporal():
  from genrec_jax.data.sources import RawData
  seqs = [np.array([0, 1, 2, 3]), np.array([4, 5, 6])]
  times = [np.array([1, 5, 9, 13]), np.array([2, 6, 10])]
  raw = RawData("t", ["a", "b"], [str(i) for i in range(7)],
                {"title": [""] * 7}, seqs, times)
  train, valid, test = splits.sliding_window(raw, window=2, ratios=(3, 1, 1))
  # 5 rows sorted by target time: (a,1)@5 (b,1)@6 (a,2)@9 | (b,2)@10 | (a,3)@13
  assert [list(h) for h in (test.history[0],)] == [[1, 2]]
  assert list(test.targets[0]) == [3]
  assert list(valid.targets[0]) == [6] and list(valid.history[0]) == [4, 5]
  assert train.tolist() == [[0, 1, 2], [4, 5]]


def test_lightgcn_txt_given_split(tmp_path):
  d = tmp_path / "lg"
  d.mkdir()
  (d / "train.txt").write_text("0 1 2 2\n1 0 3\n2 4\n")
  (d / "test.txt").write_text("0 3\n1 4 1\n")
  config = data_config.get_config("default")
  config.data.update(dict(source="lightgcn_txt", split="given", path=str(d)))
  stats = prepare.run(config, tmp_path / "w")
  assert stats["filtered"] == {"duplicate_train_pairs": 1}
  assert (stats["train_interactions"], stats["test_interactions"]) == (5, 3)
  ds = Dataset.load(tmp_path / "w" / "dataset")
  assert ds.test.targets.tolist() == [[3], [4, 1]]
  assert ds.test.exclude.tolist() == [[1, 2], [0, 3]]


def _review(user, asin, ts):
  return json.dumps({"reviewerID": user, "asin": asin,
                     "unixReviewTime": ts}) + "\n"


def test_amazon2018_kcore_window_and_text(tmp_path):
  meta = tmp_path / "meta.json.gz"
  with gzip.open(meta, "wt") as f:
    for a in "ABC":
      f.write(json.dumps({"asin": a, "title": f"Item {a}",
                          "description": ["nice", "thing"], "brand": "B",
                          "category": ["Beauty", "Skin"]}) + "\n")
    f.write(json.dumps({"asin": "D", "title": ""}) + "\n")
  reviews = tmp_path / "reviews.json"
  jan, feb, dec = 1517443200 - 86400 * 20, 1517443200 + 86400, 1546300800
  lines = [_review(u, a, jan + i) for i, (u, a) in enumerate(
      [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u3", "A"),
       ("u3", "C")])]
  lines += [_review("u1", "A", feb), _review("u2", "D", feb),
            _review("u3", "B", dec)]
  reviews.write_text("".join(lines))
  config = data_config.get_config("default")
  config.data.update(dict(source="amazon2018", reviews_file=str(reviews),
                          meta_file=str(meta), k_core=2, start_month="2018-01",
                          end_month="2018-11", split="leave_one_out",
                          min_len=2, text_template="$title: $description"))
  stats = prepare.run(config, tmp_path / "w")
  f = stats["filtered"]
  assert f["meta_items_bad_title"] == 1
  assert f["reviews_item_without_title"] == 1
  assert f["reviews_outside_window"] == 1
  assert f["duplicate_reviews"] == 1
  # (u3, C) goes (item C has one user), then (u3, A) (u3 has one item left).
  assert f["k_core"] == 2
  assert (stats["users"], stats["items"], stats["interactions"]) == (2, 2, 4)
  ds = Dataset.load(tmp_path / "w" / "dataset")
  assert ds.item_text(0) == "Item A: nice thing"


@pytest.mark.parametrize("case,expect", [
    ("missing", "not found"),
    ("empty", "empty file"),
    ("non_int", "seq.txt:2: non-integer id 'x12'"),
    ("no_title", "header has no 'title' column"),
    ("truncated_gz", "truncated or corrupt"),
    ("unknown_source", "unknown source 'nope'"),
])
def test_bad_input_in_process(tmp_path, case, expect):
  config = seq_config(tmp_path)
  seq, items = config.data.sequence_file, config.data.items_file
  if case == "missing":
    config.data.sequence_file = str(tmp_path / "absent.txt")
  elif case == "empty":
    open(seq, "w").close()
  elif case == "non_int":
    with open(seq, "a") as f:
      f.write("")
    lines = open(seq).read().splitlines()
    lines[1] = "3 11 x12 15"
    open(seq, "w").write("\n".join(lines) + "\n")
  elif case == "no_title":
    open(items, "w").write("item_id\tname\n10\tRed\n")
  elif case == "truncated_gz":
    blob = gzip.compress(open(seq, "rb").read() * 50)
    gz = tmp_path / "seq.txt.gz"
    gz.write_bytes(blob[: len(blob) // 2])
    config.data.sequence_file = str(gz)
  elif case == "unknown_source":
    config.data.source = "nope"
  with pytest.raises(DataError, match=expect.replace("(", r"\(")):
    prepare.run(config, tmp_path / "w")
  assert not (tmp_path / "w" / "dataset").exists()


def test_bad_input_binary_exit_and_nothing_half_written(tmp_path):
  seq, items = write_seq_txt(tmp_path)
  w = tmp_path / "w"
  ok = [sys.executable, "-m", "binaries.prepare_data",
        "--config=configs/data.py:default", f"--workdir={w}",
        "--config.data.source=seq_txt", f"--config.data.sequence_file={seq}",
        f"--config.data.items_file={items}"]
  subprocess.run(ok, cwd=REPO, check=True, capture_output=True)
  before = (w / "dataset" / "stats.json").read_text()
  seq.write_text("7 10 11\n8 12 oops\n")
  r = subprocess.run(ok, cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert err == [f"error: {seq}:2: non-integer id 'oops'"]
  # The earlier complete dataset is untouched; no temp folder is left.
  assert (w / "dataset" / "stats.json").read_text() == before
  assert sorted(p.name for p in w.iterdir()) == ["dataset"]


def _ml100k_grouplens(tmp_path, items):
  d = tmp_path / "ml"
  d.mkdir()
  (d / "u.data").write_text("1\t10\t5\t100\n1\t11\t4\t101\n")
  (d / "u.item").write_text("".join(f"{i}|{t}|01-Jan-1995||x|0\n"
                                    for i, t in items))
  return d


def _ml100k_recbole(tmp_path, items):
  d = tmp_path / "rb"
  d.mkdir()
  (d / "ml-100k.inter").write_text(
      "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
      "1\t10\t5\t100\n1\t11\t4\t101\n")
  (d / "ml-100k.item").write_text(
      "item_id:token\tmovie_title:token_seq\trelease_year:token\n" + "".join(
          f"{i}\t{t}\t1995\n" for i, t in items))
  return d


def _minionerec(tmp_path, item_json):
  d = tmp_path / "mor"
  for sub in ("index", "valid", "test"):
    (d / sub).mkdir(parents=True)
  (d / "index" / "X.item.json").write_text(item_json)
  for split, (hist, target) in (("valid", ("[0]", 1)), ("test", ("[0, 1]", 2))):
    (d / split / "X.csv").write_text(
        f'user_id,history_item_id,item_id\nA0,"{hist}",{target}\n')
  return d


def _amazon_meta(tmp_path, records):
  meta = tmp_path / "meta.json"
  meta.write_text("".join(json.dumps(r) + "\n" for r in records))
  reviews = tmp_path / "reviews.json"
  reviews.write_text("".join(_review(u, a, 1517443200 + i) for i, (u, a) in
                             enumerate([("u1", "A"), ("u1", "B"),
                                        ("u2", "A"), ("u2", "B")])))
  config = data_config.get_config("default")
  config.data.update(dict(source="amazon2018", reviews_file=str(reviews),
                          meta_file=str(meta), k_core=1, min_len=2))
  return config


def test_duplicate_item_ids_are_errors(tmp_path):
  """Every source that reads an item file names the file and the line of a
  repeated item id (it used to keep the last title silently)."""
  items = [(10, "Heat"), (11, "Ran"), (10, "Heat 2")]
  for d, fname, line in ((_ml100k_grouplens(tmp_path, items), "u.item", 3),
                         (_ml100k_recbole(tmp_path, items), "ml-100k.item", 4)):
    config = data_config.get_config("default")
    config.data.path = str(d)
    with pytest.raises(DataError, match=(
        f"{fname}:{line}: item_id 10 appears twice \\(first on line "
        f"{line - 2}\\)")):
      prepare.run(config, tmp_path / "w")
  # seq_txt and sasrec_txt share the items.tsv reader.
  config = seq_config(tmp_path)
  with open(config.data.items_file, "a") as f:
    f.write("12\tFace cream again\tAcme\n")
  with pytest.raises(DataError, match=r"items.tsv:8: item_id 12 appears "
                     r"twice \(first on line 4\)"):
    prepare.run(config, tmp_path / "w")
  sasrec = tmp_path / "sasrec.txt"
  sasrec.write_text("1 10\n1 11\n1 12\n")
  config.data.update(dict(source="sasrec_txt", path=str(sasrec)))
  with pytest.raises(DataError, match=r"items.tsv:8: item_id 12 appears"):
    prepare.run(config, tmp_path / "w")
  # MiniOneRec: a repeated key of the item JSON object (json.loads would
  # keep the last one).
  d = _minionerec(tmp_path, '{\n  "0": {"title": "a"},\n  "1": {"title": '
                  '"b"},\n  "2": {"title": "c"},\n  "1": {"title": "B"}\n}\n')
  config = data_config.get_config("default")
  config.data.update(dict(source="minionerec", split="given", path=str(d)))
  with pytest.raises(DataError, match=r"X.item.json:5: item id 1 appears "
                     r"twice \(first on line 3\)"):
    prepare.run(config, tmp_path / "w")
  # Amazon 2018 meta: the same asin with other fields is an error...
  config = _amazon_meta(tmp_path, [
      {"asin": "A", "title": "Soap"}, {"asin": "B", "title": "Comb"},
      {"asin": "A", "title": "Soap bar"}])
  with pytest.raises(DataError, match=r"meta.json:3: asin A appears twice "
                     r"with different fields \(first on line 1\)"):
    prepare.run(config, tmp_path / "w")


def test_identical_amazon_meta_repeats_are_counted(tmp_path):
  config = _amazon_meta(tmp_path, [
      {"asin": "A", "title": "Soap"}, {"asin": "B", "title": "Comb"},
      {"asin": "A", "title": "Soap"}])
  stats = prepare.run(config, tmp_path / "w")
  assert stats["filtered"]["meta_duplicate_asins"] == 1
  assert stats["items"] == 2


def test_minionerec_item_json_parsed_in_order(tmp_path):
  d = _minionerec(tmp_path, '{"0": {"title": "a &amp; b"}, "2": {"title": '
                  '"c", "brand": "X"},\n "1": {"title": "b"}}')
  config = data_config.get_config("default")
  config.data.update(dict(source="minionerec", split="given", path=str(d)))
  prepare.run(config, tmp_path / "w")
  ds = Dataset.load(tmp_path / "w" / "dataset")
  assert [ds.title(i) for i in range(3)] == ["a & b", "b", "c"]
  assert ds.test.targets.tolist() == [[2]]


@pytest.mark.parametrize("text,expect", [
    ('{"a": 1, "b": [1, {"a": 2}],\n"a": 3}',
     [(1, "a", 1), (1, "b", [1, {"a": 2}]), (2, "a", 3)]),
    ("  {\n}\n", []),
    ('[1, 2]', "x.json:1: invalid JSON \\(expected '{', found '\\['\\)"),
    ('{"a": 1,\n "b" 2}', "x.json:2: invalid JSON \\(expected ':'"),
    ('{"a": 1,\n\n 3: 2}', "x.json:3: invalid JSON \\(expected a key\\)"),
    ('{"a": tru}', "x.json:1: invalid JSON"),
    ('{"a": 1}\n{}', "x.json:2: invalid JSON \\(extra data"),
    ('{"a": 1', "x.json:1: invalid JSON \\(expected ',' or '}', found end"),
])
def test_json_object_items(tmp_path, text, expect):
  f = tmp_path / "x.json"
  f.write_text(text)
  if isinstance(expect, list):
    assert list(readers.json_object_items(f)) == expect
  else:
    with pytest.raises(DataError, match=expect):
      list(readers.json_object_items(f))


def test_real_beauty_counts(tmp_path):
  shared_data("amazon-beauty", "p5", "sequential_data.txt")
  stats = prepare.run(data_config.get_config("beauty"), tmp_path)
  assert (stats["users"], stats["items"], stats["interactions"]) == (
      22363, 12101, 198502)
  assert stats["filtered"] == {"items_without_title": 7}


def test_real_ml100k_from_recbole(tmp_path):
  stats = prepare.run(data_config.get_config("ml100k"), tmp_path)
  assert (stats["users"], stats["items"], stats["interactions"]) == (
      943, 1682, 100000)
  ds = Dataset.load(tmp_path / "dataset")
  assert "Toy Story" in ds.item_text(ds.item_ids.index("1"))


def test_real_gowalla_counts(tmp_path):
  shared_data("lightgcn", "gowalla", "train.txt")
  stats = prepare.run(data_config.get_config("gowalla"), tmp_path)
  assert (stats["users"], stats["items"]) == (29858, 40981)
  assert (stats["train_interactions"], stats["test_interactions"]) == (
      810128, 217242)


def test_real_minionerec_given_split(tmp_path):
  shared_data("minionerec", "Industrial_and_Scientific")
  stats = prepare.run(data_config.get_config("industrial"), tmp_path)
  assert (stats["valid_rows"], stats["test_rows"]) == (4532, 4533)
