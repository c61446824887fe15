"""Serving: HTTP answers equal the ranker's, micro-batching, bad requests,
a full queue, batch inference to jsonl.

One tiny SASRec model folder (seq_txt data written here, raw ids that are
not the internal ones) is trained once for the module; one server on port
0 runs in a thread for the tests that only read.
"""
import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import data as data_config
from configs import sasrec as sasrec_config
from configs import serve as serve_config
from genrec_jax.data import prepare
from genrec_jax.data.dataset import EvalExamples, Ragged
from genrec_jax.serving import batch
from genrec_jax.serving import server as server_lib
from genrec_jax.serving.engine import Engine
from genrec_jax.training import sasrec_train
from tests.conftest import REPO

USERS, ITEMS = 23, 17
# Raw ids differ from the internal ones (items 100.., users 1000..).
ITEM_BASE, USER_BASE = 100, 1000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with dataset/ and a 1-epoch tiny SASRec folder sasrec/."""
  path = tmp_path_factory.mktemp("serving")
  rng = np.random.default_rng(0)
  lines = []
  for u in range(USERS):  # cycles i -> i + 1; some longer than max_len 7
    start, n = rng.integers(ITEMS), rng.integers(4, 13)
    lines.append(f"{USER_BASE + u} " + " ".join(
        str(ITEM_BASE + (start + k) % ITEMS) for k in range(n)))
  (path / "seq.txt").write_text("\n".join(lines) + "\n")
  (path / "items.tsv").write_text("item_id\ttitle\n" + "".join(
      f"{ITEM_BASE + i}\tFilm {i}\n" for i in range(ITEMS)))
  config = data_config.get_config("ml100k")
  config.data.update(name="tiny", source="seq_txt", text_template="$title",
                     sequence_file=str(path / "seq.txt"),
                     items_file=str(path / "items.tsv"))
  prepare.run(config, path)
  cfg = sasrec_config.get_config("tiny")
  cfg.train.num_epochs = 1
  sasrec_train.run(cfg, str(path))
  return path


@pytest.fixture(scope="module")
def engine(workdir):
  config = serve_config.get_config("tiny")
  eng = Engine.load(workdir, "sasrec", buckets=config.buckets)
  eng.warm_up()
  return eng


def _start(srv):
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  return srv


def _stop(srv):
  srv.shutdown()
  srv.server_close()


@pytest.fixture(scope="module")
def port(engine):
  """A running server (tiny config: buckets 1 and 4, max_batch 4)."""
  srv = _start(server_lib.RecommendServer(engine, max_batch=4))
  yield srv.port
  _stop(srv)


def _request(port, method, path, body=None):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  data = (body if isinstance(body, bytes) or body is None
          else json.dumps(body).encode())
  conn.request(method, path, body=data,
               headers={"Content-Type": "application/json"})
  r = conn.getresponse()
  out = r.status, json.loads(r.read())
  conn.close()
  return out


def _post(port, body):
  return _request(port, "POST", "/recommend", body)


def _direct(engine, rows, *, users=None, top_n=5, exclude=True):
  """ranker.rank on an EvalExamples of internal-id histories, as raw ids."""
  hist = Ragged.from_lists(rows)
  users = [-1] * len(rows) if users is None else users
  batch = EvalExamples(np.array(users, np.int32), hist,
                       Ragged.from_lists([[r[-1]] for r in rows]),
                       exclude=hist if exclude else None)
  items = engine.ranker.rank(batch, top_n=top_n, exclude_history=exclude)
  scores = engine.ranker.scores(batch)
  return ([[engine.ds.item_ids[i] for i in row if i >= 0] for row in items],
          [[float(scores[r, i]) for i in row if i >= 0]
           for r, row in enumerate(items)])


def test_served_top_n_equals_the_ranker(engine, port):
  ds = engine.ds
  for u in (0, 5, USERS - 1):
    status, out = _post(port, {"user": ds.user_ids[u], "top_n": 5})
    assert status == 200, out
    want, scores = _direct(engine, [ds.sequences[u].tolist()], users=[u])
    assert [x["item"] for x in out["items"]] == want[0]
    np.testing.assert_allclose([x["score"] for x in out["items"]], scores[0],
                               rtol=1e-5)
    assert all(x["title"].startswith("Film ") for x in out["items"])
    history = {ds.item_ids[i] for i in ds.sequences[u]}
    assert not history & set(want[0])
  # An integer user id is the same user; default top_n 10 (here fewer items
  # are left after the history is masked).
  status, out = _post(port, {"user": int(ds.user_ids[0])})
  left = ITEMS - len(set(ds.sequences[0].tolist()))
  assert status == 200 and len(out["items"]) == min(10, left)
  status, out = _post(port, {"user": ds.user_ids[0],
                             "exclude_history": False})
  assert status == 200 and len(out["items"]) == 10


def test_history_input_is_cut_to_the_model_window(engine, port):
  max_len = sasrec_config.get_config("tiny").model.max_len
  items = [ITEM_BASE + (3 + k) % ITEMS for k in range(max_len + 4)]
  raw = [str(i) for i in items]
  status, out = _post(port, {"history": raw, "top_n": 6,
                             "exclude_history": False})
  assert status == 200, out
  internal = [engine.ds.item_ids.index(r) for r in raw]
  want, _ = _direct(engine, [internal], top_n=6, exclude=False)
  assert [x["item"] for x in out["items"]] == want[0]
  # Only the last max_len items count.
  _, recent = _post(port, {"history": raw[-max_len:], "top_n": 6,
                           "exclude_history": False})
  assert recent["items"] == out["items"]
  # Masked: none of the history comes back.
  _, masked = _post(port, {"history": raw, "top_n": 6})
  assert not {x["item"] for x in masked["items"]} & set(raw)


@pytest.mark.parametrize("body,field,words", [
    (b"{not json", "body", "not valid JSON"),
    (b"[1, 2]", "body", "expected a JSON object"),
    ({"user": "nobody"}, "user", "unknown user 'nobody'"),
    ({"user": [1]}, "user", "not a string or integer"),
    ({}, "user", "exactly one"),
    ({"user": "1000", "history": ["100"]}, "user", "exactly one"),
    ({"history": ["100", "99999"]}, "history", "unknown items ['99999']"),
    ({"history": []}, "history", "non-empty list"),
    ({"user": "1000", "top_n": 0}, "top_n", "[1, 100]"),
    ({"user": "1000", "top_n": "5"}, "top_n", "not an integer"),
    ({"user": "1000", "exclude_history": 1}, "exclude_history", "true/false"),
    ({"user": "1000", "n": 5}, "n", "unknown field"),
])
def test_bad_requests_are_400_naming_the_field(port, body, field, words):
  status, out = _post(port, body)
  assert status == 400
  assert out["field"] == field and f"field '{field}'" in out["error"]
  assert words in out["error"]


def test_health_and_unknown_paths(engine, port):
  status, out = _request(port, "GET", "/health")
  assert status == 200 and out["status"] == "ok"
  assert out["model"] == "sasrec" and out["scored"] is True
  assert out["items"] == engine.ds.num_items and out["buckets"] == [1, 4]
  assert _request(port, "GET", "/nope")[0] == 404
  assert _request(port, "POST", "/health", {})[0] == 404


def test_batched_answers_equal_unbatched(engine, monkeypatch):
  ds = engine.ds
  queries = [engine.user_query(u, top_n=5) for u in range(7)]
  queries.append(engine.parse({"history": ["101", "102"], "top_n": 3}))
  together = engine.rank(queries)  # two groups by top_n, padded to 4
  alone = [engine.rank([q])[0] for q in queries]
  for t, a in zip(together, alone):
    assert [x["item"] for x in t] == [x["item"] for x in a]
    np.testing.assert_allclose([x["score"] for x in t],
                               [x["score"] for x in a], rtol=1e-5)
  # HTTP requests that queue while the worker is busy go through together.
  with _blocked_server(engine, monkeypatch, max_batch=4) as (srv, release):
    bodies = [{"user": ds.user_ids[i], "top_n": 5} for i in range(4)]
    threads, answers = _queue_behind_held(srv, bodies)
    release.set()
    for t in threads:
      t.join()
    stats = srv.batcher.stats()
  assert stats["batches"] == 2 and stats["largest_batch"] == 3
  for i, (status, out) in enumerate(answers):
    assert status == 200
    assert [x["item"] for x in out["items"]] == [x["item"] for x in alone[i]]


@contextlib.contextmanager
def _blocked_server(engine, monkeypatch, **kwargs):
  """A server whose worker holds its first batch until `release` is set."""
  entered, release = threading.Event(), threading.Event()
  rank = engine.rank

  def blocked_rank(queries):
    entered.set()
    release.wait(30)
    return rank(queries)

  monkeypatch.setattr(engine, "rank", blocked_rank)
  srv = _start(server_lib.RecommendServer(engine, **kwargs))
  srv.entered = entered
  try:
    yield srv, release
  finally:
    release.set()
    _stop(srv)
    monkeypatch.undo()


def _queue_behind_held(srv, bodies):
  """Posts bodies[0] (the worker then holds it), then the rest from threads;
  returns (threads, answers) once the rest wait in the queue."""
  answers = [None] * len(bodies)

  def client(i):
    answers[i] = _post(srv.port, bodies[i])

  threads = [threading.Thread(target=client, args=(i,))
             for i in range(len(bodies))]
  threads[0].start()
  assert srv.entered.wait(30)
  for t in threads[1:]:
    t.start()
  deadline = time.monotonic() + 30
  while srv.batcher.stats()["waiting"] < len(bodies) - 1:
    assert time.monotonic() < deadline, "requests not queued"
    time.sleep(0.01)
  return threads, answers


def test_full_queue_is_503(engine, monkeypatch):
  with _blocked_server(engine, monkeypatch, max_batch=1,
                       queue_size=1) as (srv, release):
    bodies = [{"user": engine.ds.user_ids[u]} for u in range(2)]
    threads, answers = _queue_behind_held(srv, bodies)  # queue now full
    status, out = _post(srv.port, {"user": engine.ds.user_ids[2]})
    assert status == 503 and "queue full (queue_size 1)" in out["error"]
    release.set()
    for t in threads:
      t.join()
    assert [a[0] for a in answers] == [200, 200]
    stats = srv.batcher.stats()
    assert stats["rejected"] == 1 and stats["answered"] == 2


def test_batch_inference_jsonl(engine, workdir):
  config = serve_config.get_config("tiny")
  out = batch.run(config, workdir)
  path = workdir / "sasrec" / "batch_top10.jsonl"
  assert out["path"] == str(path) and out["users"] == USERS
  lines = [json.loads(l) for l in path.read_text().splitlines()]
  assert [l["user"] for l in lines] == engine.ds.user_ids
  for u, line in enumerate(lines):
    want, _ = _direct(engine, [engine.ds.sequences[u].tolist()], users=[u],
                      top_n=10)
    assert [x["item"] for x in line["items"]] == want[0]
  assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_binaries(workdir, tmp_path):
  out = tmp_path / "top.jsonl"
  r = subprocess.run(
      [sys.executable, "-m", "binaries.batch_recommend",
       f"--workdir={workdir}", "--config=configs/serve.py:tiny",
       "--config.top_n=3", f"--config.batch.output={out}"],
      cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = out.read_text().splitlines()
  assert len(lines) == USERS and len(json.loads(lines[0])["items"]) == 3
  # binaries.serve: answers, then stops on SIGTERM.
  with socket.socket() as sock:  # a free port
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  proc = subprocess.Popen(
      [sys.executable, "-m", "binaries.serve", f"--workdir={workdir}",
       "--config=configs/serve.py:tiny", f"--config.port={port}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while True:
      assert proc.poll() is None, proc.communicate()[1][-2000:]
      assert time.monotonic() < deadline, "the server did not start"
      try:
        status, out = _post(port, {"user": str(USER_BASE), "top_n": 2})
        break
      except ConnectionRefusedError:
        time.sleep(0.2)
    assert status == 200 and len(out["items"]) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
