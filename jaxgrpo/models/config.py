"""Model configuration and the strict reading of Hugging Face config.json.

Every HF field is looked up in a per-family table: *used* (mapped onto
``ModelConfig``), *ignored* (metadata that does not change the forward pass) or
*fixed* (accepted only at the value jaxgrpo implements).  A field in none of the
tables is refused with an error naming it, so nothing is silently mis-converted.
Dropout fields are accepted and not applied: jaxgrpo runs without dropout, as RL
fine-tuning does.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp

Family = Literal["gpt2", "llama", "qwen2"]
FAMILIES: tuple[str, ...] = typing.get_args(Family)
# Families whose forward runs packed prefix trees (``TreeMask``: any attention mask and positions per token), which
# shared-prefix training needs; a family with attention the mask cannot express (a sliding window, say) is left out.
TREE_MASK_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "qwen2")
DTYPES = ("float32", "bfloat16", "float16")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# ``remat`` values: no rematerialization, recompute everything, or a named jax.checkpoint policy.
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable",
                  "everything_saveable")


def dtype_name(dtype, field: str = "dtype") -> str:
  """Canonical name of a floating dtype given as a string or a numpy/jnp dtype ("float32", "bfloat16", ...)."""
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    raise ValueError(f"{field} must be one of {DTYPES} (a string or a jnp dtype); got {dtype!r}") from None
  if name not in DTYPES:
    raise ValueError(f"{field} must be one of {DTYPES}; got {dtype!r}")
  return name


def remat_policy(name: str):
  """The jax.checkpoint policy for a ``remat`` name (None for "full": save nothing)."""
  if name not in REMAT_POLICIES or name == "none":
    raise ValueError(f"remat must be one of {REMAT_POLICIES}; got {name!r}")
  return None if name == "full" else getattr(jax.checkpoint_policies, name)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters W + (alpha / rank) · A B on the named projections (PEFT's LoRA, dropout 0)."""

  rank: int
  alpha: float
  targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"lora rank must be an integer >= 1; got {self.rank!r}")
    if not self.alpha > 0:
      raise ValueError(f"lora alpha must be > 0; got {self.alpha!r}")
    object.__setattr__(self, "targets", tuple(self.targets))
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    if bad or not self.targets:
      raise ValueError(f"lora targets must be a non-empty subset of {LORA_TARGETS}; got {list(self.targets)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 rope scaling ("rope_type": "llama3")."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer of one of the supported families."""

  family: Family
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  max_position_embeddings: int
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: True; Llama: attention_bias
  out_bias: bool = False  # Llama attention_bias also biases o_proj
  mlp_bias: bool = False
  activation: str = "silu"  # "silu" (Llama/Qwen2) | "gelu_new" (GPT-2)
  bos_token_id: int | None = None
  eos_token_id: tuple[int, ...] = ()
  pad_token_id: int | None = None
  dtype: str = "float32"  # compute dtype (activations, matmuls); strings or jnp dtypes accepted
  param_dtype: str = "float32"  # parameters (and so Adam moments): f32 master weights by default
  remat: str = "none"  # rematerialization of each scanned layer: see REMAT_POLICIES
  attention_chunk: int = 0  # full forward passes: queries in blocks of this size (0 = one block)
  lora: LoraConfig | None = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}; got {self.family!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
      )
    object.__setattr__(self, "dtype", dtype_name(self.dtype, "dtype"))
    object.__setattr__(self, "param_dtype", dtype_name(self.param_dtype, "param_dtype"))
    if self.remat != "none":
      remat_policy(self.remat)
    if self.attention_chunk < 0:
      raise ValueError(f"attention_chunk must be >= 0; got {self.attention_chunk}")
    if self.activation not in ("silu", "gelu_new"):
      raise ValueError(f"activation must be 'silu' or 'gelu_new'; got {self.activation!r}")

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  @property
  def is_gpt2(self) -> bool:
    return self.family == "gpt2"


# Fields every PretrainedConfig may carry that do not change the forward pass.
_COMMON_IGNORED = {
    "_name_or_path", "architectures", "dtype", "torch_dtype", "id2label", "label2id", "output_attentions",
    "output_hidden_states", "return_dict", "problem_type", "chunk_size_feed_forward", "transformers_version",
    "use_cache", "initializer_range", "task_specific_params", "_attn_implementation_autoset",
    "attention_dropout", "tokenizer_class", "prefix", "finetuning_task", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "cross_attention_hidden_size", "decoder_start_token_id",
    "sep_token_id", "bad_words_ids", "begin_suppress_tokens", "suppress_tokens", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "output_attentions", "tie_encoder_decoder", "is_decoder", "_model_name_or_path", "unk_token_id",
    "auto_map",  # remote-code class names (e.g. Qwen2.5-Math-PRM); the architecture is checked field by field
}
# Fields accepted only at these values (the behaviour jaxgrpo implements).
_COMMON_FIXED = {"is_encoder_decoder": False, "add_cross_attention": False, "pretraining_tp": 1}

_LLAMA_USED = {
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "bos_token_id",
    "eos_token_id", "pad_token_id",
}
_QWEN2_USED = _LLAMA_USED - {"attention_bias", "mlp_bias"} | {
    "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "use_mrope",
}
_GPT2_USED = {
    "model_type", "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
    "layer_norm_epsilon", "activation_function", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "summary_dropout",
}
_USED = {"llama": _LLAMA_USED, "qwen2": _QWEN2_USED, "gpt2": _GPT2_USED}


class UnsupportedConfigError(ValueError):
  """A config.json field jaxgrpo does not implement."""


def _eos_tuple(v) -> tuple[int, ...]:
  if v is None:
    return ()
  return tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
  """rope_theta and scaling from transformers 5 ``rope_parameters`` or the older
  ``rope_theta`` + ``rope_scaling`` fields."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling") or {}
  theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
  merged = {**scaling, **params}
  rope_type = merged.pop("rope_type", merged.pop("type", "default"))
  if rope_type == "default":
    partial = merged.pop("partial_rotary_factor", 1.0)
    if merged or partial != 1.0:
      unsupported = sorted(merged) + (["partial_rotary_factor"] if partial != 1.0 else [])
      raise UnsupportedConfigError(f"rope parameters {unsupported} are not supported with rope_type 'default'")
    return float(theta), None
  if rope_type == "llama3":
    known = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    missing, extra = known - set(merged), set(merged) - known
    if missing or extra:
      raise UnsupportedConfigError(
          f"llama3 rope scaling needs exactly {sorted(known)}; missing {sorted(missing)}, unknown {sorted(extra)}"
      )
    return float(theta), RopeScaling(
        float(merged["factor"]), float(merged["low_freq_factor"]), float(merged["high_freq_factor"]),
        int(merged["original_max_position_embeddings"]),
    )
  raise UnsupportedConfigError(f"rope_type {rope_type!r} is not supported (supported: 'default', 'llama3')")


def _check_fields(hf: dict[str, Any], family: str) -> None:
  for key, value in hf.items():
    if key in _USED[family] or key in _COMMON_IGNORED:
      continue
    if key in _COMMON_FIXED:
      if value not in (_COMMON_FIXED[key], None):
        raise UnsupportedConfigError(
            f"config field {key!r} = {value!r} is not supported for {family} (only {_COMMON_FIXED[key]!r})"
        )
      continue
    raise UnsupportedConfigError(
        f"unknown config field {key!r} for model_type {family!r}: jaxgrpo does not implement it and refuses "
        "to guess; remove it if it does not change the forward pass"
    )


def _require(hf, key, allowed, family):
  if key in hf and hf[key] not in allowed:
    raise UnsupportedConfigError(
        f"config field {key!r} = {hf[key]!r} is not supported for {family} (supported: {sorted(map(repr, allowed))})"
    )


def from_hf_config(hf: dict[str, Any], dtype="float32", **options) -> ModelConfig:
  """Strictly convert a Hugging Face config.json dict into a ``ModelConfig``.

  ``options`` sets the fields that are not in config.json (param_dtype, remat, attention_chunk, lora).
  """
  family = hf.get("model_type")
  if family not in FAMILIES:
    raise UnsupportedConfigError(f"config field 'model_type' = {family!r}; supported: {list(FAMILIES)}")
  _check_fields(hf, family)
  common = dict(
      bos_token_id=hf.get("bos_token_id"), eos_token_id=_eos_tuple(hf.get("eos_token_id")),
      pad_token_id=hf.get("pad_token_id"), dtype=dtype, **options,
  )
  if family == "gpt2":
    _require(hf, "activation_function", {"gelu_new"}, family)
    _require(hf, "scale_attn_weights", {True}, family)
    _require(hf, "scale_attn_by_inverse_layer_idx", {False}, family)
    _require(hf, "reorder_and_upcast_attn", {False}, family)
    _require(hf, "tie_word_embeddings", {True}, family)
    if hf.get("n_ctx") not in (None, hf.get("n_positions", 1024)):
      raise UnsupportedConfigError(f"config field 'n_ctx' = {hf['n_ctx']} differs from n_positions")
    d, h = hf.get("n_embd", 768), hf.get("n_head", 12)
    if d % h:
      raise UnsupportedConfigError(f"n_embd ({d}) must be divisible by n_head ({h})")
    return ModelConfig(
        family="gpt2", vocab_size=hf.get("vocab_size", 50257), hidden_size=d, num_layers=hf.get("n_layer", 12),
        num_heads=h, num_kv_heads=h, head_dim=d // h, intermediate_size=hf.get("n_inner") or 4 * d,
        max_position_embeddings=hf.get("n_positions", 1024), norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=True, qkv_bias=True, out_bias=True, mlp_bias=True, activation="gelu_new", **common,
    )
  _require(hf, "hidden_act", {"silu"}, family)
  if family == "qwen2":
    _require(hf, "use_sliding_window", {False}, family)
    _require(hf, "use_mrope", {False}, family)
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
      raise UnsupportedConfigError("config field 'layer_types' must be all 'full_attention' (no sliding window)")
  theta, scaling = _rope_from_hf(hf)
  d = hf["hidden_size"]
  heads = hf["num_attention_heads"]
  attention_bias = bool(hf.get("attention_bias", False))
  return ModelConfig(
      family=family, vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or d // heads, intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=True if family == "qwen2" else attention_bias, out_bias=attention_bias,
      mlp_bias=bool(hf.get("mlp_bias", False)), activation="silu", **common,
  )


def to_hf_config(cfg: ModelConfig, dtype: str | None = None) -> dict[str, Any]:
  """The config.json transformers needs to rebuild the same model (``dtype``: of the saved tensors)."""
  eos = list(cfg.eos_token_id)
  eos_field = eos[0] if len(eos) == 1 else (eos or None)
  tokens = dict(bos_token_id=cfg.bos_token_id, eos_token_id=eos_field, pad_token_id=cfg.pad_token_id)
  dtype = dtype_name(dtype or cfg.param_dtype)
  if cfg.family == "gpt2":
    return dict(
        model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
        n_positions=cfg.max_position_embeddings, layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
        tie_word_embeddings=True, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, dtype=dtype, **tokens,
    )
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling is not None:
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
  out = dict(
      model_type=cfg.family, architectures=["LlamaForCausalLM" if cfg.family == "llama" else "Qwen2ForCausalLM"],
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
      rms_norm_eps=cfg.norm_eps, rope_parameters=rope, tie_word_embeddings=cfg.tie_word_embeddings,
      hidden_act="silu", dtype=dtype, **tokens,
  )
  if cfg.family == "llama":
    if cfg.qkv_bias != cfg.out_bias:
      raise ValueError("llama checkpoints bias q/k/v and o together (attention_bias); qkv_bias != out_bias")
    out.update(attention_bias=cfg.out_bias, mlp_bias=cfg.mlp_bias)
  else:
    if not cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
      raise ValueError("qwen2 checkpoints have q/k/v biases only")
    out.update(use_sliding_window=False)
  return out
