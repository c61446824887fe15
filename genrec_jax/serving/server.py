"""The HTTP front: stdlib ThreadingHTTPServer + one micro-batching worker.

  server = RecommendServer(engine, port=0, max_batch=64, max_wait_ms=2.0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  ...                                   # POST /recommend, GET /health
  server.shutdown(); server.server_close()

Each connection's handler thread parses its request (`Engine.parse`; a bad
one is answered 400 at once) and puts it on a bounded queue (full: 503).
One worker thread, the only one that touches the model, takes the first
waiting request, gathers more for up to `max_wait_ms` or until it has
`max_batch`, ranks them in one padded call (`Engine.rank`) and hands each
handler its answer.

  POST /recommend  {"user": "196"} | {"history": ["50", "181"]}
                   [, "top_n": 10][, "exclude_history": true]
     200 {"items": [{"item": "50", "title": "Star Wars (1977)",
                     "score": 7.1}, ...]}        (no "score": generative)
     400 {"error": "field 'user': unknown user 'x'", "field": "user"}
     503 {"error": "queue full ..."}   504 the answer took too long
  GET /health      200 {"status": "ok", "model": ..., "stats": {...}}
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import pathlib
import queue
import signal
import threading
import time
from typing import Any, Callable, Sequence
import urllib.parse

from absl import logging

from genrec_jax.checks import check_ranges
from genrec_jax.serving.engine import Engine, RequestError

# The worker's stop signal on the queue.
_STOP = object()


class QueueFull(RuntimeError):
  """The request queue is at its bound (HTTP 503)."""


class MicroBatcher:
  """One worker thread applying `fn` to batches of queued items.

  Attributes:
    max_batch: most items per fn call.
    max_wait_s: how long the worker waits for more items after the first.
    queue_size: bound of the queue of waiting items.
  """

  def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], *,
               max_batch: int, max_wait_ms: float, queue_size: int):
    check_ranges([("max_batch", max_batch, 1, None),
                  ("max_wait_ms", max_wait_ms, 0.0, None),
                  ("queue_size", queue_size, 1, None)])
    self.max_batch = int(max_batch)
    self.max_wait_s = float(max_wait_ms) / 1000.0
    self.queue_size = int(queue_size)
    self._fn = fn
    self._queue: queue.Queue = queue.Queue(maxsize=self.queue_size)
    self._lock = threading.Lock()
    self._stats = {"accepted": 0, "rejected": 0, "answered": 0,
                   "failed": 0, "batches": 0, "largest_batch": 0}
    self._thread = threading.Thread(target=self._loop, daemon=True,
                                    name="serving-worker")
    self._thread.start()

  def submit(self, item: Any) -> concurrent.futures.Future:
    """Queues an item; its Future gets fn's answer. QueueFull when full."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
      self._queue.put_nowait((item, future))
    except queue.Full:
      self._count(rejected=1)
      raise QueueFull(f"queue full (queue_size {self.queue_size}); retry "
                      "later") from None
    self._count(accepted=1)
    return future

  def alive(self) -> bool:
    return self._thread.is_alive()

  def stats(self) -> dict[str, int]:
    """Counters: accepted, rejected (queue full), answered, failed,
    batches, largest_batch, waiting (in the queue now)."""
    with self._lock:
      return {**self._stats, "waiting": self._queue.qsize()}

  def close(self) -> None:
    """Stops the worker after the items queued before this call."""
    if self._thread.is_alive():
      self._queue.put(_STOP)
      self._thread.join()

  def _count(self, **increments: int) -> None:
    with self._lock:
      for k, v in increments.items():
        self._stats[k] += v

  def _take(self) -> list[tuple[Any, concurrent.futures.Future]] | None:
    """The next batch: the first item, then more until max_batch or the
    deadline (None: stop)."""
    first = self._queue.get()
    if first is _STOP:
      return None
    batch = [first]
    deadline = time.monotonic() + self.max_wait_s
    while len(batch) < self.max_batch:
      try:
        item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
      except queue.Empty:
        break
      if item is _STOP:
        self._queue.put(_STOP)  # stop after this batch
        break
      batch.append(item)
    return batch

  def _loop(self) -> None:
    while (batch := self._take()) is not None:
      # Drop what a caller gave up on (timed out and cancelled).
      batch = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
      if not batch:
        continue
      self._count(batches=1)
      with self._lock:
        self._stats["largest_batch"] = max(self._stats["largest_batch"],
                                           len(batch))
      try:
        answers = self._fn([x for x, _ in batch])
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("serving worker: a batch of %d failed", len(batch))
        self._count(failed=len(batch))
        for _, f in batch:
          f.set_exception(e)
        continue
      self._count(answered=len(batch))
      for (_, f), answer in zip(batch, answers):
        f.set_result(answer)


class RecommendServer(http.server.ThreadingHTTPServer):
  """POST /recommend and GET /health for one Engine (see the module doc).

  Attributes:
    engine: the model.
    batcher: the queue and its worker (calls engine.rank).
    port: the bound port (useful with port=0).
  """

  daemon_threads = True
  # Listen backlog (socketserver's default, 5, resets bursts of clients).
  request_queue_size = 1024

  def __init__(self, engine: Engine, *, host: str = "127.0.0.1",
               port: int = 0, max_batch: int = 64, max_wait_ms: float = 2.0,
               queue_size: int = 256, request_timeout_s: float = 30.0,
               max_body_bytes: int = 1 << 20):
    self.engine = engine
    self.request_timeout_s = float(request_timeout_s)
    self.max_body_bytes = int(max_body_bytes)
    self.warm_up_seconds: dict[int, float] = {}
    self.batcher = MicroBatcher(engine.rank, max_batch=max_batch,
                                max_wait_ms=max_wait_ms,
                                queue_size=queue_size)
    try:
      super().__init__((host, port), _Handler)
    except OSError:  # e.g. the port is taken
      self.batcher.close()
      raise

  @property
  def port(self) -> int:
    return self.server_address[1]

  def recommend(self, body: bytes) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) of a /recommend request body."""
    try:
      payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
      return 400, {"error": f"field 'body': not valid JSON ({e})",
                   "field": "body"}
    try:
      query = self.engine.parse(payload)
    except RequestError as e:
      return 400, {"error": str(e), "field": e.field}
    try:
      future = self.batcher.submit(query)
    except QueueFull as e:
      return 503, {"error": str(e)}
    try:
      return 200, {"items": future.result(timeout=self.request_timeout_s)}
    except concurrent.futures.TimeoutError:
      future.cancel()
      return 504, {"error": f"no answer within {self.request_timeout_s} s"}
    except Exception as e:  # pylint: disable=broad-except
      return 500, {"error": f"ranking failed: {e}"}

  def health(self) -> tuple[int, dict[str, Any]]:
    """(200 or 503 when the worker died, what is served and counters)."""
    ok = self.batcher.alive()
    return (200 if ok else 503), {
        "status": "ok" if ok else "worker stopped",
        **self.engine.info(),
        "max_batch": self.batcher.max_batch,
        "queue_size": self.batcher.queue_size,
        "warm_up_seconds": self.warm_up_seconds,
        "stats": self.batcher.stats()}

  def server_close(self) -> None:
    super().server_close()
    self.batcher.close()


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes /recommend and /health to the server (keep-alive HTTP/1.1)."""

  protocol_version = "HTTP/1.1"
  # TCP_NODELAY: a small answer is not held back by Nagle + delayed ACKs.
  disable_nagle_algorithm = True
  server: RecommendServer

  def do_GET(self) -> None:  # pylint: disable=invalid-name
    if urllib.parse.urlsplit(self.path).path == "/health":
      self._send(*self.server.health())
    else:
      self._send(404, {"error": f"no GET {self.path}; use GET /health or "
                       "POST /recommend"})

  def do_POST(self) -> None:  # pylint: disable=invalid-name
    if urllib.parse.urlsplit(self.path).path != "/recommend":
      self._send(404, {"error": f"no POST {self.path}; use POST /recommend"})
      return
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      self.close_connection = True
      self._send(411, {"error": "header 'Content-Length': missing or not an "
                       "integer"})
      return
    if length > self.server.max_body_bytes:
      self.close_connection = True
      self._send(413, {"error": f"body: {length} bytes, the limit is "
                       f"{self.server.max_body_bytes}"})
      return
    self._send(*self.server.recommend(self.rfile.read(length)))

  def _send(self, status: int, answer: dict[str, Any]) -> None:
    data = json.dumps(answer, ensure_ascii=False).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json; charset=utf-8")
    self.send_header("Content-Length", str(len(data)))
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
    logging.vlog(1, "%s %s", self.address_string(), format % args)


def make_server(config, workdir: str | pathlib.Path, *,
                port: int | None = None) -> RecommendServer:
  """Loads WORKDIR/<config.model> once, binds, warms every bucket.

  Args:
    config: configs/serve.py.
    workdir: the trained workdir.
    port: overrides config.port (0: any free port).
  """
  check_ranges([("max_batch", config.max_batch, 1, max(config.buckets))])
  t0 = time.perf_counter()
  engine = Engine.load(workdir, config.model, beam_size=config.beam_size,
                       buckets=config.buckets, top_n=config.top_n,
                       max_top_n=config.max_top_n,
                       exclude_history=config.exclude_history)
  logging.info("loaded %s (%s) from %s in %.1fs", config.model,
               engine.ranker.kind, workdir, time.perf_counter() - t0)
  port = config.port if port is None else port
  try:
    server = RecommendServer(
        engine, host=config.host, port=port, max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms, queue_size=config.queue_size,
        request_timeout_s=config.request_timeout_s,
        max_body_bytes=config.max_body_bytes)
  except OSError as e:
    raise ValueError(f"config fields 'host', 'port' = {config.host!r}, "
                     f"{port}: cannot listen there ({e})") from None
  try:
    server.warm_up_seconds = engine.warm_up()
  except BaseException:
    server.server_close()
    raise
  logging.info("warm-up (bucket: seconds): %s",
               {b: round(s, 2) for b, s in server.warm_up_seconds.items()})
  return server


def serve(config, workdir: str | pathlib.Path) -> None:
  """Serves until SIGINT or SIGTERM (binaries/serve.py).

  Connections that arrive during the warm-up wait in the listen backlog.
  On a signal the server stops taking connections; the worker ranks what
  was queued before it stops.
  """
  server = make_server(config, workdir)
  host, port = server.server_address[:2]

  def stop(signum, frame):  # shutdown() waits for serve_forever: a thread
    del frame
    logging.info("signal %d: stopping", signum)
    threading.Thread(target=server.shutdown, daemon=True).start()

  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, stop)
  logging.info("serving %s on http://%s:%d (POST /recommend, GET /health)",
               config.model, host, port)
  try:
    server.serve_forever()
  finally:
    server.server_close()
