"""Serving load test on loopback: micro-batched HTTP vs unbatched calls.

python -m binaries.benchmark --config=configs/benchmarks.py:serving --workdir=runs/bench --config.workdir=runs/ml100k

Loads WORKDIR/<serve.model> once (`server.make_server`: every bucket
warmed), then runs each of these for `seconds`, requests cycling through
the dataset's users (`{"user": id}`, the default top_n):
  * direct (the reference): sequential unbatched calls in this thread,
    one request at a time: JSON decode, `Engine.parse`, `Engine.rank` of
    one query (bucket 1), no HTTP, no queue;
  * http_c<N> for N in `clients`: N client threads, each on its own
    keep-alive connection sending POST /recommend one after another, to
    the micro-batching server on 127.0.0.1;
  * http_unbatched_c<N> (N = `unbatched_clients`): the same server with
    max_batch 1, what micro-batching is compared with at load.
Clients and server share this process (and its GIL): the latencies include
the clients' own Python time. Each run reports requests, ok, rejected
(503), errors, p50 / p99 / mean latency (ms), ok requests per second and
the server's mean batch; `dropped` = requests - ok must be 0 while N is
below the queue bound (`no_drops_below_queue_bound`).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any, Callable

from absl import logging
import numpy as np

from genrec_jax.serving import server as server_lib

_HEADERS = {"Content-Type": "application/json"}


def _summary(latencies: list[float], statuses: list[int],
             transport_errors: int, wall: float) -> dict[str, Any]:
  """Counts and latency percentiles of one run."""
  ms = np.asarray(latencies) * 1e3
  ok, rejected = statuses.count(200), statuses.count(503)
  requests = len(statuses) + transport_errors
  return {"requests": requests, "ok": ok, "rejected": rejected,
          "errors": requests - ok - rejected, "dropped": requests - ok,
          "p50_ms": float(np.percentile(ms, 50)),
          "p99_ms": float(np.percentile(ms, 99)),
          "mean_ms": float(ms.mean()), "requests_per_s": ok / wall,
          "seconds": wall}


def _direct(engine, bodies: list[bytes], seconds: float) -> dict[str, Any]:
  """The reference: one request at a time through the engine."""
  latencies, statuses = [], []
  start = time.perf_counter()
  i = 0
  while time.perf_counter() - start < seconds:
    t0 = time.perf_counter()
    engine.rank([engine.parse(json.loads(bodies[i % len(bodies)]))])
    latencies.append(time.perf_counter() - t0)
    statuses.append(200)
    i += 1
  return _summary(latencies, statuses, 0, time.perf_counter() - start)


def _load(port: int, bodies: list[bytes], clients: int,
          seconds: float) -> dict[str, Any]:
  """`clients` threads posting for `seconds`, each on its own connection."""
  latencies: list[list[float]] = [[] for _ in range(clients)]
  statuses: list[list[int]] = [[] for _ in range(clients)]
  errors = [0] * clients
  barrier = threading.Barrier(clients + 1)
  stop = [float("inf")]

  def client(c: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    barrier.wait()
    i = c
    while time.perf_counter() < stop[0]:
      t0 = time.perf_counter()
      try:
        conn.request("POST", "/recommend", body=bodies[i % len(bodies)],
                     headers=_HEADERS)
        r = conn.getresponse()
        r.read()
      except (OSError, http.client.HTTPException) as e:
        logging.warning("client %d: %r", c, e)
        errors[c] += 1
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        continue
      latencies[c].append(time.perf_counter() - t0)
      statuses[c].append(r.status)
      i += clients
    conn.close()

  threads = [threading.Thread(target=client, args=(c,), daemon=True)
             for c in range(clients)]
  for t in threads:
    t.start()
  barrier.wait()  # every client connected
  start = time.perf_counter()
  stop[0] = start + seconds
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  return _summary(sum(latencies, []), sum(statuses, []), sum(errors), wall)


def _with_batches(srv: server_lib.RecommendServer,
                  fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """fn()'s summary plus the server's mean batch over the run."""
  before = srv.batcher.stats()
  out = fn()
  after = srv.batcher.stats()
  batches = after["batches"] - before["batches"]
  out["mean_batch"] = (after["answered"] - before["answered"]) / max(
      batches, 1)
  return out


def _serve(srv: server_lib.RecommendServer) -> threading.Thread:
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  return thread


def run(config, out_dir) -> dict[str, Any]:
  del out_dir
  srv = server_lib.make_server(config.serve, config.workdir, port=0)
  engine = srv.engine
  bodies = [json.dumps({"user": u}).encode() for u in engine.ds.user_ids]
  results: dict[str, Any] = {
      "model": config.serve.model, "kind": engine.ranker.kind,
      "scored": engine.scored, "buckets": list(engine.buckets),
      "max_batch": config.serve.max_batch,
      "max_wait_ms": config.serve.max_wait_ms,
      "queue_size": config.serve.queue_size, "seconds_per_run": config.seconds,
      "warm_up_seconds": srv.warm_up_seconds,
      "reference": "sequential unbatched Engine calls (parse + rank of one "
                   "request, bucket 1), no HTTP"}
  runs = {"direct": _direct(engine, bodies, config.seconds)}
  logging.info("direct: %s", runs["direct"])
  _serve(srv)
  try:
    for n in config.clients:
      runs[f"http_c{n}"] = _with_batches(
          srv, lambda n=n: _load(srv.port, bodies, n, config.seconds))
      logging.info("http_c%d: %s", n, runs[f"http_c{n}"])
  finally:
    srv.shutdown()
    srv.server_close()
  if config.unbatched_clients:
    n = config.unbatched_clients
    plain = server_lib.RecommendServer(
        engine, max_batch=1, queue_size=config.serve.queue_size,
        request_timeout_s=config.serve.request_timeout_s)
    _serve(plain)
    try:
      runs[f"http_unbatched_c{n}"] = _with_batches(
          plain, lambda: _load(plain.port, bodies, n, config.seconds))
      logging.info("http_unbatched_c%d: %s", n, runs[f"http_unbatched_c{n}"])
    finally:
      plain.shutdown()
      plain.server_close()
  results["runs"] = runs
  direct = runs["direct"]["requests_per_s"]
  for name, r in runs.items():
    results[f"{name}_requests_per_s"] = round(r["requests_per_s"], 1)
    results[f"{name}_p50_ms"] = round(r["p50_ms"], 3)
    results[f"{name}_p99_ms"] = round(r["p99_ms"], 3)
    if name != "direct":
      results[f"{name}_vs_direct"] = round(r["requests_per_s"] / direct, 3)
  below = [r for name, r in runs.items() if name.startswith("http")
           and int(name.rsplit("c", 1)[1]) < config.serve.queue_size]
  results["no_drops_below_queue_bound"] = all(r["dropped"] == 0
                                              for r in below)
  if not results["no_drops_below_queue_bound"]:
    logging.error("requests dropped below the queue bound: %s", runs)
  return results
