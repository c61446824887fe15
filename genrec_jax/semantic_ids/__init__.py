"""Semantic IDs: item text -> vectors -> collision-free code tuples.

Stages (each `run(config, workdir) -> dict`, outputs written atomically):
  embed.run   configs/embed.py  dataset/ -> embeddings/items.npy + meta.json
  build.run   configs/sids.py   embeddings/ -> sids/item_sids.json, report.json,
                                <name>.index.json, codes.npy, code_usage.png

Library:
  table       SemanticIds: the one reader of sids/ (codes, sizes, dedup
              level, token strings, trie); every consumer goes through it
  encoders    TextEncoder interface + registry ("bert": NNX BERT, mean pooling)
  kmeans      jitted k-means (k-means++, restarts, re-seeding, Sinkhorn mode)
  quantizers  Quantized result + registry of SID methods (config.method)
  rq_kmeans   rq_kmeans, balanced, hierarchical
  rq_vae      TIGER RQ-VAE (STE / rotation trick)
  faiss_backend  faiss_kmeans, faiss_rq (reference backends)
  collisions  dedup code / re-assignment to free last-level codes
  quality     report fields and the code-usage plot
"""
