"""Serving a model folder over HTTP, and batch inference for every user.

python -m binaries.serve --config=configs/serve.py --workdir=runs/ml100k --config.model=sasrec
curl -s localhost:8000/recommend -d '{"user": "196", "top_n": 5}'
python -m binaries.batch_recommend --config=configs/serve.py --workdir=runs/ml100k --config.model=sasrec

Any model folder of the workdir (sasrec, lightgcn, tiger, minionerec,
minigr_cf, ...). Variants: default, tiny (tests: small buckets).
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  config = ml_collections.ConfigDict()
  # Model folder under the workdir (holds model.json and params/).
  config.model = "sasrec"
  # Beam width of a generative model (0: the width it was evaluated with,
  # recorded in its model.json).
  config.beam_size = 0
  # Items returned when a request gives no "top_n".
  config.top_n = 10
  # Largest "top_n" a request may ask for (a larger one is a 400). A
  # generative model searches max(beam_size, top_n) beams: a top_n above
  # its beam_size compiles a wider search on first use.
  config.max_top_n = 100
  # Mask the history's items when a request gives no "exclude_history".
  config.exclude_history = True
  # Batch sizes every model call is padded to (one compilation each, all
  # at start-up); the largest bounds a call.
  config.buckets = (1, 8, 32, 64)

  # Address to bind (0.0.0.0: every interface).
  config.host = "127.0.0.1"
  # Port (0: any free port, logged at start).
  config.port = 8000
  # Most requests ranked in one model call (<= the largest bucket).
  config.max_batch = 64
  # How long the worker waits for more requests after the first of a batch.
  config.max_wait_ms = 2.0
  # Requests waiting for the worker at most; one more is answered 503.
  config.queue_size = 256
  # A request not answered within this many seconds gets 504.
  config.request_timeout_s = 30.0
  # Largest request body (bytes); a larger one gets 413.
  config.max_body_bytes = 1 << 20

  # binaries/batch_recommend.py.
  config.batch = ml_collections.ConfigDict()
  # Output jsonl ("": WORKDIR/<model>/batch_top<top_n>.jsonl).
  config.batch.output = ""

  if variant == "tiny":  # tests: seconds on 2 CPU cores
    config.buckets = (1, 4)
    config.max_batch = 4
    config.port = 0
  elif variant != "default":
    raise ValueError(f"configs/serve.py: unknown variant {variant!r}")
  return config
