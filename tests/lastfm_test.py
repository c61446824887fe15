"""Last.fm 2K reader, queries, split by query text, item2vec corpus, stages."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import lastfm as lastfm_config
from genrec_jax.data.dataset import DataError
from genrec_jax.gar import lastfm
from tests.conftest import REPO, shared_data

ARTISTS = {1: "Radiohead", 2: "Sigur Rós", 3: "Portishead", 4: "Massive Attack",
           5: "Caetano Veloso", 6: "Gilberto Gil", 7: "Björk", 8: "Air"}
# Tag 4 has tag 1's text up to case and spaces: the two are one query.
TAGS = {1: "rock", 2: "Tropicália", 3: "chill out", 4: " Rock ", 5: "unused"}
LISTENS = [  # (user, artist, plays)
    (10, 1, 500), (10, 2, 300), (10, 3, 200), (10, 4, 100),
    (11, 5, 900), (11, 6, 800), (11, 1, 10),
    (12, 3, 50), (12, 4, 60), (12, 8, 70), (12, 7, 5),
    (13, 2, 1), (13, 7, 2),
]
TAGGED = [  # (user, artist, tag)
    (10, 1, 1), (10, 2, 1), (10, 3, 1), (11, 1, 4), (12, 2, 1),
    (11, 5, 2), (11, 6, 2),
    (12, 3, 3), (12, 4, 3), (12, 8, 3), (13, 7, 3),
]


def write_lastfm(root: pathlib.Path, artists=ARTISTS, tags=TAGS,
                 listens=LISTENS, tagged=TAGGED) -> pathlib.Path:
  """The four files in the release's layout (tags.dat in Latin-1)."""
  root.mkdir(parents=True, exist_ok=True)
  lines = ["id\tname\turl\tpictureURL"] + [
      f"{a}\t{n}\thttp://www.last.fm/music/{a}\t" for a, n in artists.items()]
  (root / "artists.dat").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
  lines = ["tagID\ttagValue"] + [f"{t}\t{v}" for t, v in tags.items()]
  (root / "tags.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
  lines = ["userID\tartistID\tweight"] + ["\t".join(map(str, r)) for r in listens]
  (root / "user_artists.dat").write_text("\n".join(lines) + "\n")
  lines = ["userID\tartistID\ttagID\tday\tmonth\tyear"] + [
      f"{u}\t{a}\t{t}\t1\t5\t2009" for u, a, t in tagged]
  (root / "user_taggedartists.dat").write_text("\n".join(lines) + "\n")
  return root


def tiny_config(path, **data):
  config = lastfm_config.get_config("tiny")
  config.data.path = str(path)
  config.data.update(data)
  return config


def test_reads_files_and_builds_queries(tmp_path):
  root = write_lastfm(tmp_path / "lfm")
  prep = lastfm.build(tiny_config(root, holdout_fraction=0.0).data)
  assert prep.items["artist_ids"] == [str(a) for a in sorted(ARTISTS)]
  assert prep.items["names"][1] == "Sigur Rós"
  assert prep.items["listeners"][:2] == [2, 2]
  queries = [q for s in lastfm.SPLITS for q in prep.queries[s]]
  tag_queries = {q["text"]: q for q in queries if q["kind"] == "tag"}
  # Latin-1 decoded, lower-cased; tags 1 and 4 merged into one query.
  assert sorted(tag_queries) == ["chill out", "rock", "tropicália"]
  rock = tag_queries["rock"]
  assert rock["tag_ids"] == [1, 4]
  # Items by taggers (artist 1 twice, artist 2 twice, artist 3 once).
  assert rock["items"] == [0, 1, 2] and rock["counts"] == [2, 2, 1]
  user_tag = sorted((q["user"], q["text"], q["items"]) for q in queries
                    if q["kind"] == "user_tag")
  assert user_tag == [("10", "rock", [0, 1, 2]), ("11", "tropicália", [4, 5]),
                      ("12", "chill out", [2, 3, 7])]
  # User sentences: most played first; then the train split's tag lists.
  sentences = prep.sentences.tolist()
  assert sentences[:4] == [[0, 1, 2, 3], [4, 5, 0], [7, 3, 2, 6], [6, 1]]
  train_tags = [q["items"] for q in prep.queries["train"] if q["kind"] == "tag"]
  assert sentences[4:] == train_tags
  assert prep.sentence_kind.tolist() == [0] * 4 + [1] * len(train_tags)
  assert prep.stats["filtered"]["tags_merged_same_text"] == 1


def test_holdout_takes_the_last_item(tmp_path):
  root = write_lastfm(tmp_path / "lfm")
  prep = lastfm.build(tiny_config(root, holdout_fraction=1.0).data)
  # Users with >= 3 items lose their last (least played) one.
  assert prep.heldout["user"].tolist() == [10, 11, 12]
  assert prep.heldout["query"].tolist() == [2, 5, 2]
  assert prep.heldout["target"].tolist() == [3, 0, 6]
  assert prep.sentences.tolist()[:4] == [[0, 1, 2], [4, 5], [7, 3, 2], [6, 1]]


def test_run_writes_folder_and_load(tmp_path):
  root = write_lastfm(tmp_path / "lfm")
  work = tmp_path / "work"
  stats = lastfm.run(tiny_config(root), work)
  names = sorted(p.name for p in (work / "lastfm").iterdir())
  assert names == ["corpus.npz", "items.json", "queries.json", "stats.json"]
  assert json.loads((work / lastfm.DONE_FILE).read_text()) == stats
  corpus = lastfm.load_corpus(work)
  assert corpus.num_items == len(ARTISTS)
  assert len(corpus.sentences) == sum(stats["sentences"].values())
  assert lastfm.load_items(work)["names"][6] == "Björk"
  assert set(lastfm.load_queries(work)) == set(lastfm.SPLITS)


def _corrupt(root, name, lineno, new=None, raw=None):
  path = root / name
  lines = path.read_bytes().split(b"\n")
  lines[lineno - 1] = raw if raw is not None else new.encode()
  path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("name,lineno,new,raw,message", [
    ("user_artists.dat", 3, "10\t2", None, "expected 3 tab-separated fields"),
    ("user_artists.dat", 4, "10\t99\t5", None, "artist 99 is not in artists.dat"),
    ("user_artists.dat", 2, "x\t1\t5", None, "non-integer id 'x'"),
    ("user_artists.dat", 5, "10\t4\t7", None, "appears twice (first on line 5)"),
    ("user_artists.dat", 1, "user\tartist\tweight", None, "expected the header"),
    ("user_taggedartists.dat", 6, "11\t5\t77\t1\t5\t2009", None,
     "tag 77 is not in tags.dat"),
    ("user_taggedartists.dat", 3, "10\t2\t1\t1\t5", None,
     "expected 6 tab-separated fields"),
    ("artists.dat", 4, None, b"3\tPortis\xffhead\tu\t", "not utf-8 text (byte 0xff"),
    ("artists.dat", 3, "1\tDup\tu\t", None, "artist id 1 appears twice"),
    ("tags.dat", 2, "one\trock", None, "non-integer id 'one'"),
])
def test_bad_rows_name_file_and_line(tmp_path, name, lineno, new, raw, message):
  root = write_lastfm(tmp_path / "lfm")
  work = tmp_path / "work"
  lastfm.run(tiny_config(root), work)  # a good folder already there
  before = (work / "lastfm" / "stats.json").read_bytes()
  if name == "user_artists.dat" and "twice" in message:
    lineno = 6  # repeat line 5's (user, artist) on line 6
  _corrupt(root, name, lineno, new, raw)
  with pytest.raises(DataError) as e:
    lastfm.run(tiny_config(root), work)
  where = f"{root / name}:{lineno}:"
  assert str(e.value).startswith(where), str(e.value)
  assert message in str(e.value)
  # Nothing half-written: the old folder is intact, no temp folder is left.
  assert (work / "lastfm" / "stats.json").read_bytes() == before
  assert sorted(p.name for p in work.iterdir()) == ["lastfm"]


def test_unknown_tagged_artist_dropped_or_error(tmp_path):
  root = write_lastfm(tmp_path / "lfm", tagged=TAGGED + [(10, 42, 3)])
  prep = lastfm.build(tiny_config(root).data)
  assert prep.stats["filtered"]["tag_rows_unknown_artist"] == 1
  with pytest.raises(DataError, match=r"user_taggedartists.dat:13: artist 42 "
                     "is not in artists.dat"):
    lastfm.build(tiny_config(root, unknown_tagged_artists="error").data)


def test_filters_are_counted(tmp_path):
  root = write_lastfm(tmp_path / "lfm")
  prep = lastfm.build(tiny_config(root, min_listeners=2,
                                  min_query_items=3).data)
  f = prep.stats["filtered"]
  # Listeners: artists 1, 2, 3, 4, 7 have two; 5, 6, 8 one.
  assert prep.items["artist_ids"] == ["1", "2", "3", "4", "7"]
  assert f["artists_below_min_listeners"] == 3
  assert f["listens_of_dropped_artists"] == 3
  assert f["tag_rows_of_dropped_artists"] == 3
  # "tropicália" lost all its items; "rock" and "chill out" keep 3.
  assert f.get("tag_queries_too_few_items", 0) == 0
  assert sorted(q["text"] for s in lastfm.SPLITS for q in prep.queries[s]
                if q["kind"] == "tag") == ["chill out", "rock"]
  # (11, rock), (12, rock), (12, chill out), (13, chill out) are too small.
  assert f["user_tag_queries_too_few_items"] == 4


def _many_tags(root, n_tags=60, seed=0):
  rng = np.random.default_rng(seed)
  tags = {t: f"tag {t}" for t in range(1, n_tags + 1)}
  tagged = sorted({(int(u), int(a), t) for t in tags
                   for u, a in zip(rng.integers(10, 14, 6),
                                   rng.integers(1, 9, 6))})
  return write_lastfm(root, tags=tags, tagged=tagged)


def test_split_is_by_query_text_and_seeded(tmp_path):
  root = _many_tags(tmp_path / "lfm")
  a = lastfm.build(tiny_config(root, seed=3).data)
  texts = {s: {q["text"] for q in a.queries[s]} for s in lastfm.SPLITS}
  assert all(texts[s] for s in lastfm.SPLITS)
  for s, t in (("train", "valid"), ("train", "test"), ("valid", "test")):
    assert not texts[s] & texts[t]
  # Every user_tag query sits with its text's tag query.
  for s in lastfm.SPLITS:
    for q in a.queries[s]:
      assert q["text"] in texts[s]
  n = sum(len(t) for t in texts.values())
  assert abs(len(texts["train"]) - 0.8 * n) <= 1
  # Same seed, same everything; another seed, another split.
  b = lastfm.build(tiny_config(root, seed=3).data)
  assert a.queries == b.queries and a.sentences.tolist() == b.sentences.tolist()
  c = lastfm.build(tiny_config(root, seed=4).data)
  assert {q["text"] for q in c.queries["test"]} != texts["test"]
  # Only train-split tag lists become sentences.
  train_lists = [q["items"] for q in a.queries["train"] if q["kind"] == "tag"]
  tag_rows = [r for r, k in zip(a.sentences.tolist(), a.sentence_kind) if k == 1]
  assert tag_rows == train_lists


def test_config_checks(tmp_path):
  root = write_lastfm(tmp_path / "lfm")
  with pytest.raises(ValueError, match="split_fractions"):
    lastfm.build(tiny_config(root, split_fractions=(0.5, 0.1, 0.1)).data)
  with pytest.raises(ValueError, match="unknown_tagged_artists"):
    lastfm.build(tiny_config(root, unknown_tagged_artists="skip").data)
  with pytest.raises(DataError, match="not found"):
    lastfm.build(tiny_config(tmp_path / "nowhere").data)


def test_binary_exits_1_with_file_line(tmp_path):
  root = write_lastfm(tmp_path / "lfm")
  _corrupt(root, "user_artists.dat", 3, "10\t2")
  proc = subprocess.run(
      [sys.executable, "-m", "binaries.prepare_lastfm",
       "--config=configs/lastfm.py:tiny", f"--config.data.path={root}",
       f"--workdir={tmp_path / 'work'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert f"error: {root / 'user_artists.dat'}:3: expected 3" in proc.stderr
  assert not (tmp_path / "work" / "lastfm").exists()


def test_real_lastfm_2k():
  path = shared_data("lastfm-2k")
  config = lastfm_config.get_config()
  config.data.path = str(path)
  prep = lastfm.build(config.data)
  s = prep.stats
  assert (s["artists"], s["tags"], s["listen_rows"]) == (17632, 11946, 92834)
  assert s["filtered"]["tag_rows_unknown_artist"] == 1538
  assert s["items"] == 2828
  texts = {sp: {q["text"] for q in prep.queries[sp]} for sp in lastfm.SPLITS}
  assert not texts["test"] & texts["train"] and not texts["valid"] & texts["train"]
  assert all(len(q["items"]) >= 10 for sp in lastfm.SPLITS
             for q in prep.queries[sp])
  assert "chillout" in set().union(*texts.values())
  raw = lastfm.read(path)
  assert raw.tags[2863] == "tropicália" and raw.tags[7982] == "fußball"
  assert prep.num_items == len(prep.items["names"])
  assert s["heldout"] > 800
