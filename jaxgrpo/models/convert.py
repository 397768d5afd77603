"""Pure conversion between Hugging Face tensor names and jaxgrpo's params pytree.

One table per family drives both directions.  Each row names an HF tensor
(``{i}`` for the layer index), the params it becomes, the HF shape it must have,
and the two transforms.  Errors name every missing tensor, unexpected tensor and
shape mismatch at once.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from jaxgrpo.models.config import ModelConfig

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Row:
  hf: str  # HF tensor name; "{i}" marks a per-layer tensor
  ours: tuple[Path, ...]  # params paths (under "layers" for per-layer rows)
  hf_shape: Callable[[ModelConfig], tuple[int, ...]]
  to_ours: Callable[[np.ndarray, ModelConfig], list[np.ndarray]]
  to_hf: Callable[[list[np.ndarray], ModelConfig], np.ndarray]

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


def _linear(path, out_dim, in_dim, ours_shape):
  """torch Linear weight [out, in] ↔ ours [in, ...] (transpose, then reshape)."""
  return lambda hf: Row(
      hf, (path,), lambda c: (out_dim(c), in_dim(c)),
      lambda a, c: [a.T.reshape(ours_shape(c))],
      lambda xs, c: xs[0].reshape(in_dim(c), out_dim(c)).T,
  )


def _vec(path, size, ours_shape=None):
  return lambda hf: Row(
      hf, (path,), lambda c: (size(c),),
      lambda a, c: [a.reshape(ours_shape(c)) if ours_shape else a],
      lambda xs, c: xs[0].reshape(size(c)),
  )


D = lambda c: c.hidden_size
F = lambda c: c.intermediate_size
V = lambda c: c.vocab_size
QD = lambda c: c.num_heads * c.head_dim
KD = lambda c: c.num_kv_heads * c.head_dim


def _block_norms(cfg: ModelConfig) -> list[Row]:
  """The norms after the input norm: Llama/Qwen's post_attention_layernorm is the MLP's pre-norm; Gemma 3 has a
  norm after attention, one before the MLP and one after it."""
  L = ("layers",)
  if not cfg.gemma_norms:
    return [_vec(L + ("mlp_norm", "scale"), D)("model.layers.{i}.post_attention_layernorm.weight")]
  return [_vec(L + ("post_attn_norm", "scale"), D)("model.layers.{i}.post_attention_layernorm.weight"),
          _vec(L + ("mlp_norm", "scale"), D)("model.layers.{i}.pre_feedforward_layernorm.weight"),
          _vec(L + ("post_mlp_norm", "scale"), D)("model.layers.{i}.post_feedforward_layernorm.weight")]


def _llama_rows(cfg: ModelConfig, lm_head: bool = True) -> list[Row]:
  L = ("layers",)
  rows = [
      Row("model.embed_tokens.weight", (("embed",),), lambda c: (V(c), D(c)), lambda a, c: [a], lambda xs, c: xs[0]),
      _vec(("final_norm", "scale"), D)("model.norm.weight"),
      _vec(L + ("attn_norm", "scale"), D)("model.layers.{i}.input_layernorm.weight"),
      *_block_norms(cfg),
      _linear(L + ("attn", "q_kernel"), QD, D, lambda c: (D(c), c.num_heads, c.head_dim))(
          "model.layers.{i}.self_attn.q_proj.weight"),
      _linear(L + ("attn", "k_kernel"), KD, D, lambda c: (D(c), c.num_kv_heads, c.head_dim))(
          "model.layers.{i}.self_attn.k_proj.weight"),
      _linear(L + ("attn", "v_kernel"), KD, D, lambda c: (D(c), c.num_kv_heads, c.head_dim))(
          "model.layers.{i}.self_attn.v_proj.weight"),
      _linear(L + ("attn", "o_kernel"), D, QD, lambda c: (c.num_heads, c.head_dim, D(c)))(
          "model.layers.{i}.self_attn.o_proj.weight"),
      _linear(L + ("mlp", "gate_kernel"), F, D, lambda c: (D(c), F(c)))("model.layers.{i}.mlp.gate_proj.weight"),
      _linear(L + ("mlp", "up_kernel"), F, D, lambda c: (D(c), F(c)))("model.layers.{i}.mlp.up_proj.weight"),
      _linear(L + ("mlp", "down_kernel"), D, F, lambda c: (F(c), D(c)))("model.layers.{i}.mlp.down_proj.weight"),
  ]
  if lm_head and not cfg.tie_word_embeddings:
    rows.append(_linear(("lm_head",), V, D, lambda c: (D(c), V(c)))("lm_head.weight"))
  if cfg.qkv_bias:
    rows += [
        _vec(L + ("attn", "q_bias"), QD, lambda c: (c.num_heads, c.head_dim))("model.layers.{i}.self_attn.q_proj.bias"),
        _vec(L + ("attn", "k_bias"), KD, lambda c: (c.num_kv_heads, c.head_dim))(
            "model.layers.{i}.self_attn.k_proj.bias"),
        _vec(L + ("attn", "v_bias"), KD, lambda c: (c.num_kv_heads, c.head_dim))(
            "model.layers.{i}.self_attn.v_proj.bias"),
    ]
  if cfg.out_bias:
    rows.append(_vec(L + ("attn", "o_bias"), D)("model.layers.{i}.self_attn.o_proj.bias"))
  if cfg.qk_norm:
    rows += [_vec(L + ("attn", "q_norm_scale"), lambda c: c.head_dim)("model.layers.{i}.self_attn.q_norm.weight"),
             _vec(L + ("attn", "k_norm_scale"), lambda c: c.head_dim)("model.layers.{i}.self_attn.k_norm.weight")]
  if cfg.mlp_bias:
    rows += [
        _vec(L + ("mlp", "gate_bias"), F)("model.layers.{i}.mlp.gate_proj.bias"),
        _vec(L + ("mlp", "up_bias"), F)("model.layers.{i}.mlp.up_proj.bias"),
        _vec(L + ("mlp", "down_bias"), D)("model.layers.{i}.mlp.down_proj.bias"),
    ]
  return rows


def _gpt2_rows(cfg: ModelConfig) -> list[Row]:
  L = ("layers",)
  h, dh = cfg.num_heads, cfg.head_dim
  a = L + ("attn",)
  # HF GPT-2 uses Conv1D: weights are stored [in, out] already; c_attn fuses q, k, v.
  return [
      Row("transformer.wte.weight", (("embed",),), lambda c: (V(c), D(c)), lambda x, c: [x], lambda xs, c: xs[0]),
      Row("transformer.wpe.weight", (("pos_embed",),), lambda c: (c.max_position_embeddings, D(c)),
          lambda x, c: [x], lambda xs, c: xs[0]),
      _vec(("final_norm", "scale"), D)("transformer.ln_f.weight"),
      _vec(("final_norm", "bias"), D)("transformer.ln_f.bias"),
      _vec(L + ("attn_norm", "scale"), D)("transformer.h.{i}.ln_1.weight"),
      _vec(L + ("attn_norm", "bias"), D)("transformer.h.{i}.ln_1.bias"),
      _vec(L + ("mlp_norm", "scale"), D)("transformer.h.{i}.ln_2.weight"),
      _vec(L + ("mlp_norm", "bias"), D)("transformer.h.{i}.ln_2.bias"),
      Row("transformer.h.{i}.attn.c_attn.weight", (a + ("q_kernel",), a + ("k_kernel",), a + ("v_kernel",)),
          lambda c: (D(c), 3 * D(c)),
          lambda x, c: [p.reshape(D(c), h, dh) for p in np.split(x, 3, axis=1)],
          lambda xs, c: np.concatenate([p.reshape(D(c), D(c)) for p in xs], axis=1)),
      Row("transformer.h.{i}.attn.c_attn.bias", (a + ("q_bias",), a + ("k_bias",), a + ("v_bias",)),
          lambda c: (3 * D(c),),
          lambda x, c: [p.reshape(h, dh) for p in np.split(x, 3)],
          lambda xs, c: np.concatenate([p.reshape(D(c)) for p in xs])),
      Row("transformer.h.{i}.attn.c_proj.weight", (a + ("o_kernel",),), lambda c: (D(c), D(c)),
          lambda x, c: [x.reshape(h, dh, D(c))], lambda xs, c: xs[0].reshape(D(c), D(c))),
      _vec(a + ("o_bias",), D)("transformer.h.{i}.attn.c_proj.bias"),
      Row("transformer.h.{i}.mlp.c_fc.weight", (L + ("mlp", "up_kernel"),), lambda c: (D(c), F(c)),
          lambda x, c: [x], lambda xs, c: xs[0]),
      _vec(L + ("mlp", "up_bias"), F)("transformer.h.{i}.mlp.c_fc.bias"),
      Row("transformer.h.{i}.mlp.c_proj.weight", (L + ("mlp", "down_kernel"),), lambda c: (F(c), D(c)),
          lambda x, c: [x], lambda xs, c: xs[0]),
      _vec(L + ("mlp", "down_bias"), D)("transformer.h.{i}.mlp.c_proj.bias"),
  ]


def table(cfg: ModelConfig, lm_head: bool = True) -> list[Row]:
  """Conversion rows; ``lm_head=False`` for a body without the LM head (e.g. a PRM backbone)."""
  return _gpt2_rows(cfg) if cfg.is_gpt2 else _llama_rows(cfg, lm_head)


# Tensors that checkpoints may carry but that are not parameters (buffers) or
# are duplicates of tied weights.
def _ignorable(cfg: ModelConfig) -> list[re.Pattern]:
  pats = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"transformer\.h\.\d+\.attn\.(masked_)?bias"]
  if cfg.tie_word_embeddings:
    pats.append(r"lm_head\.weight")
  return [re.compile(p + "$") for p in pats]


def _normalize_names(names, cfg):
  """GPT-2 checkpoints saved from GPT2Model lack the 'transformer.' prefix."""
  if not cfg.is_gpt2:
    return {n: n for n in names}
  return {n if n.startswith(("transformer.", "lm_head.")) else "transformer." + n: n for n in names}


def _set(tree: dict, path: Path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: Path):
  for k in path:
    tree = tree[k]
  return tree


class CheckpointMismatchError(ValueError):
  """The tensors of a checkpoint do not match the config."""


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, dtype=None,
                 lm_head: bool = True) -> dict[str, Any]:
  """HF name → array mapping to the params pytree (numpy arrays).

  Raises ``CheckpointMismatchError`` listing missing and unexpected tensor names
  and shape mismatches.
  """
  names = _normalize_names(tensors.keys(), cfg)
  rows = table(cfg, lm_head)
  expected: dict[str, tuple[Row, int | None]] = {}
  for row in rows:
    for i in range(cfg.num_layers) if row.per_layer else [None]:
      expected[row.hf.format(i=i)] = (row, i)
  ignorable = _ignorable(cfg)
  missing = sorted(set(expected) - set(names))
  unexpected = sorted(n for n in set(names) - set(expected) if not any(p.match(n) for p in ignorable))
  bad_shapes = [
      f"{n}: expected {row.hf_shape(cfg)}, got {tuple(tensors[names[n]].shape)}"
      for n, (row, _) in expected.items()
      if n in names and tuple(tensors[names[n]].shape) != row.hf_shape(cfg)
  ]
  if missing or unexpected or bad_shapes:
    parts = []
    if missing:
      parts.append(f"missing tensors ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
      parts.append(f"unexpected tensors ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    if bad_shapes:
      parts.append(f"shape mismatches ({len(bad_shapes)}): {bad_shapes[:20]}")
    raise CheckpointMismatchError(f"checkpoint does not match the {cfg.family} config: " + "; ".join(parts))

  params: dict[str, Any] = {}
  for row in rows:
    if row.per_layer:
      per_layer = [row.to_ours(np.asarray(tensors[names[row.hf.format(i=i)]]), cfg) for i in range(cfg.num_layers)]
      outs = [np.stack([layer[k] for layer in per_layer]) for k in range(len(row.ours))]
    else:
      outs = row.to_ours(np.asarray(tensors[names[row.hf]]), cfg)
    for path, arr in zip(row.ours, outs):
      _set(params, path, arr if dtype is None else arr.astype(dtype))
  return params


def params_to_hf(params: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
  """The params pytree to HF tensor names (numpy arrays, contiguous)."""
  out = {}
  for row in table(cfg):
    arrays = [np.asarray(_get(params, p)) for p in row.ours]
    if row.per_layer:
      for i in range(cfg.num_layers):
        out[row.hf.format(i=i)] = np.ascontiguousarray(row.to_hf([a[i] for a in arrays], cfg))
    else:
      out[row.hf] = np.ascontiguousarray(row.to_hf(arrays, cfg))
  return out
