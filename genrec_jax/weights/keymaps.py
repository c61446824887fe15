"""Key-map tables: Hugging Face checkpoint keys <-> our NNX parameter paths.

Each family builds, from its config, a `KeyMap`: every HF key the checkpoint
must hold -> `Entry(path, layer, to_ours, to_hf)`. `path` is the NNX parameter
path (`("layers", "q")`), `layer` the index on the stacked layers axis (None
for unstacked weights). Torch `nn.Linear` weights are `[out, in]`; ours are
`[in, ...]`, so most transforms transpose and split/merge the head axis.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

Fn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Entry:
  """Where one HF tensor lives in our model."""
  # NNX parameter path, e.g. ("layers", "q").
  path: tuple[str, ...]
  # Index on the stacked layers axis, or None.
  layer: int | None
  # HF tensor -> our layout.
  to_ours: Fn
  # Our layout -> HF tensor.
  to_hf: Fn


@dataclasses.dataclass
class KeyMap:
  """All keys of one checkpoint family."""
  # HF key -> Entry; each must be present exactly once.
  entries: dict[str, Entry]
  # Regexes of HF keys that may appear and carry no parameters (buffers).
  ignored: tuple[str, ...] = ()
  # Tied copies: HF key -> the canonical HF key it duplicates (accepted when
  # present, never required, never written).
  aliases: dict[str, str] = dataclasses.field(default_factory=dict)
  # Optional prefix some checkpoints put in front of every key ("bert.").
  strip_prefix: str | None = None

  def is_ignored(self, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in self.ignored)


def ident() -> tuple[Fn, Fn]:
  return (lambda w: w), (lambda p: p)


def transpose() -> tuple[Fn, Fn]:
  """torch [out, in] <-> ours [in, out]."""
  return (lambda w: w.T), (lambda p: p.T)


def to_heads(n: int, h: int) -> tuple[Fn, Fn]:
  """torch [N*H, D] <-> ours [D, N, H] (q/k/v projections)."""
  return ((lambda w: w.T.reshape(w.shape[1], n, h)),
          (lambda p: p.reshape(p.shape[0], n * h).T))


def from_heads(n: int, h: int) -> tuple[Fn, Fn]:
  """torch [D, N*H] <-> ours [N, H, D] (output projection)."""
  return ((lambda w: w.T.reshape(n, h, w.shape[0])),
          (lambda p: p.reshape(n * h, p.shape[-1]).T))


def bias_heads(n: int, h: int) -> tuple[Fn, Fn]:
  """torch [N*H] <-> ours [N, H]."""
  return (lambda w: w.reshape(n, h)), (lambda p: p.reshape(n * h))


def entry(path: tuple[str, ...], layer: int | None,
          fns: tuple[Fn, Fn]) -> Entry:
  return Entry(path, layer, fns[0], fns[1])


def bert_keymap(cfg) -> KeyMap:
  """HF BertModel keys (with or without the "bert." prefix)."""
  n = cfg.num_attention_heads
  h = cfg.hidden_size // n
  e: dict[str, Entry] = {
      "embeddings.word_embeddings.weight": entry(("word_emb",), None, ident()),
      "embeddings.position_embeddings.weight": entry(("pos_emb",), None,
                                                     ident()),
      "embeddings.token_type_embeddings.weight": entry(("type_emb",), None,
                                                       ident()),
      "embeddings.LayerNorm.weight": entry(("emb_ln_scale",), None, ident()),
      "embeddings.LayerNorm.bias": entry(("emb_ln_bias",), None, ident()),
  }
  for i in range(cfg.num_hidden_layers):
    pre = f"encoder.layer.{i}."
    for hf, ours in (("query", "q"), ("key", "k"), ("value", "v")):
      e[f"{pre}attention.self.{hf}.weight"] = entry(("layers", ours), i,
                                                    to_heads(n, h))
      e[f"{pre}attention.self.{hf}.bias"] = entry(("layers", f"{ours}_bias"),
                                                  i, bias_heads(n, h))
    rows = (
        ("attention.output.dense.weight", "o", from_heads(n, h)),
        ("attention.output.dense.bias", "o_bias", ident()),
        ("attention.output.LayerNorm.weight", "attn_ln_scale", ident()),
        ("attention.output.LayerNorm.bias", "attn_ln_bias", ident()),
        ("intermediate.dense.weight", "wi", transpose()),
        ("intermediate.dense.bias", "wi_bias", ident()),
        ("output.dense.weight", "wo", transpose()),
        ("output.dense.bias", "wo_bias", ident()),
        ("output.LayerNorm.weight", "out_ln_scale", ident()),
        ("output.LayerNorm.bias", "out_ln_bias", ident()),
    )
    for hf, ours, fns in rows:
      e[pre + hf] = entry(("layers", ours), i, fns)
  if cfg.add_pooling_layer:
    e["pooler.dense.weight"] = entry(("pooler",), None, transpose())
    e["pooler.dense.bias"] = entry(("pooler_bias",), None, ident())
  return KeyMap(e, ignored=(r"(bert\.)?embeddings\.position_ids",),
                strip_prefix="bert.")


def decoder_keymap(cfg) -> KeyMap:
  """HF Qwen2ForCausalLM / LlamaForCausalLM keys."""
  n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  e: dict[str, Entry] = {
      "model.embed_tokens.weight": entry(("embed",), None, ident()),
      "model.norm.weight": entry(("final_norm",), None, ident()),
  }
  aliases = {}
  if cfg.tie_word_embeddings:
    aliases["lm_head.weight"] = "model.embed_tokens.weight"
  else:
    e["lm_head.weight"] = entry(("lm_head",), None, transpose())
  for i in range(cfg.num_layers):
    pre = f"model.layers.{i}."
    rows = [
        ("self_attn.q_proj.weight", "q", to_heads(n, h)),
        ("self_attn.k_proj.weight", "k", to_heads(k, h)),
        ("self_attn.v_proj.weight", "v", to_heads(k, h)),
        ("self_attn.o_proj.weight", "o", from_heads(n, h)),
        ("mlp.gate_proj.weight", "gate", transpose()),
        ("mlp.up_proj.weight", "up", transpose()),
        ("mlp.down_proj.weight", "down", transpose()),
        ("input_layernorm.weight", "attn_norm", ident()),
        ("post_attention_layernorm.weight", "mlp_norm", ident()),
    ]
    if cfg.attention_bias:
      rows += [
          ("self_attn.q_proj.bias", "q_bias", bias_heads(n, h)),
          ("self_attn.k_proj.bias", "k_bias", bias_heads(k, h)),
          ("self_attn.v_proj.bias", "v_bias", bias_heads(k, h)),
      ]
    if cfg.o_bias:
      rows.append(("self_attn.o_proj.bias", "o_bias", ident()))
    if cfg.mlp_bias:
      rows += [("mlp.gate_proj.bias", "gate_bias", ident()),
               ("mlp.up_proj.bias", "up_bias", ident()),
               ("mlp.down_proj.bias", "down_bias", ident())]
    for hf, ours, fns in rows:
      e[pre + hf] = entry(("layers", ours), i, fns)
  return KeyMap(e, ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\."
                            r"inv_freq", r"model\.rotary_emb\.inv_freq"),
                aliases=aliases)


def t5_keymap(cfg) -> KeyMap:
  """HF T5ForConditionalGeneration keys."""
  n, h = cfg.num_heads, cfg.d_kv
  e: dict[str, Entry] = {
      "shared.weight": entry(("shared",), None, ident()),
      "encoder.final_layer_norm.weight": entry(("enc_final_norm",), None,
                                               ident()),
      "decoder.final_layer_norm.weight": entry(("dec_final_norm",), None,
                                               ident()),
      ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias."
       "weight"): entry(("enc_rel_bias",), None, ident()),
      ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias."
       "weight"): entry(("dec_rel_bias",), None, ident()),
  }
  aliases = {"encoder.embed_tokens.weight": "shared.weight",
             "decoder.embed_tokens.weight": "shared.weight"}
  if cfg.tie_word_embeddings:
    aliases["lm_head.weight"] = "shared.weight"
  else:
    e["lm_head.weight"] = entry(("lm_head",), None, transpose())
  gated = cfg.is_gated_act
  for stack, mod, ffn_layer in (("encoder", "enc", 1), ("decoder", "dec", 2)):
    for i in range(cfg.num_layers if stack == "encoder" else
                   cfg.num_decoder_layers):
      pre = f"{stack}.block.{i}.layer."
      attns = [("0.SelfAttention", "self")]
      if stack == "decoder":
        attns.append(("1.EncDecAttention", "cross"))
      for hf, ours in attns:
        for proj in ("q", "k", "v"):
          e[f"{pre}{hf}.{proj}.weight"] = entry(
              (f"{mod}_layers", f"{ours}_{proj}"), i, to_heads(n, h))
        e[f"{pre}{hf}.o.weight"] = entry((f"{mod}_layers", f"{ours}_o"), i,
                                         from_heads(n, h))
      e[f"{pre}0.layer_norm.weight"] = entry((f"{mod}_layers", "self_norm"),
                                             i, ident())
      if stack == "decoder":
        e[f"{pre}1.layer_norm.weight"] = entry((f"{mod}_layers", "cross_norm"),
                                               i, ident())
      f = f"{pre}{ffn_layer}."
      e[f"{f}layer_norm.weight"] = entry((f"{mod}_layers", "ffn_norm"), i,
                                         ident())
      if gated:
        e[f"{f}DenseReluDense.wi_0.weight"] = entry(
            (f"{mod}_layers", "wi_0"), i, transpose())
        e[f"{f}DenseReluDense.wi_1.weight"] = entry(
            (f"{mod}_layers", "wi_1"), i, transpose())
      else:
        e[f"{f}DenseReluDense.wi.weight"] = entry((f"{mod}_layers", "wi"), i,
                                                  transpose())
      e[f"{f}DenseReluDense.wo.weight"] = entry((f"{mod}_layers", "wo"), i,
                                                transpose())
  return KeyMap(e, aliases=aliases)
