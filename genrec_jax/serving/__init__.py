"""Serving a model folder: HTTP with micro-batching, and batch inference.

  engine = Engine.load(WORKDIR, "sasrec", buckets=(1, 8, 32, 64))
  server = RecommendServer(engine, port=8000)   # server.py
  server.serve_forever()                        # POST /recommend, GET /health

`engine.py` turns JSON requests (a raw user id or a raw item history) into
rows of one padded batch for any `recommend.load_model` Ranker; `server.py`
is the stdlib HTTP front, its bounded queue and the one device worker that
groups requests; `batch.py` writes the top-N of every user to jsonl.
"""
