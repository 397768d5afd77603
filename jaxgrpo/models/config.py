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

Family = Literal["gpt2", "llama", "qwen2", "qwen3", "gemma3"]  # gemma3: HF model_type "gemma3_text"
FAMILIES: tuple[str, ...] = typing.get_args(Family)
# Families whose forward runs packed prefix trees (``TreeMask``: any attention mask and positions per token), which
# shared-prefix training needs, and continuous-batching decode slots (``SlotMask``); Gemma 3's sliding-window layers
# run on the plain causal mask and the static KV cache only.
TREE_MASK_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "qwen2", "qwen3")  # not gemma3
DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("silu", "gelu_new", "gelu_pytorch_tanh")
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
  qkv_bias: bool = False  # Qwen2: True; Llama, Qwen3: attention_bias
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on each query and key head (before RoPE)
  out_bias: bool = False  # Llama attention_bias also biases o_proj
  mlp_bias: bool = False
  activation: str = "silu"  # "silu" (Llama/Qwen: gated) | "gelu_new" (GPT-2) | "gelu_pytorch_tanh" (Gemma 3: gated)
  # Gemma 3 (all off elsewhere): (1 + w) RMSNorms in float32, norms after attention and MLP too, embeddings × √D,
  # attention scaled by query_pre_attn_scalar^-1/2, sliding-window layers with their own RoPE base, logit softcap
  gemma_norms: bool = False  # (1 + w)·x̂ RMSNorm computed in float32, and post-attention / post-MLP norms
  embed_scale: bool = False  # token embeddings multiplied by √hidden_size
  query_pre_attn_scalar: float | None = None  # attention scale = query_pre_attn_scalar^-1/2 (None: head_dim^-1/2)
  sliding_window: int | None = None  # keys more than this many positions back are not seen by local layers
  local_layers: tuple[bool, ...] = ()  # per layer: True = sliding-window ("local") attention (empty: none)
  rope_local_theta: float | None = None  # RoPE base of the local layers (None: rope_theta)
  rope_linear_factor: float = 1.0  # linear RoPE scaling of the global layers (positions / factor)
  final_logit_softcap: float | None = None  # logits = cap · tanh(logits / cap)
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
    if self.qk_norm and self.is_gpt2:
      raise ValueError("qk_norm (Qwen3's per-head q/k RMSNorm) is not part of gpt2")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}")
    object.__setattr__(self, "local_layers", tuple(bool(x) for x in self.local_layers))
    if self.local_layers and len(self.local_layers) != self.num_layers:
      raise ValueError(f"local_layers has {len(self.local_layers)} entries; expected one per layer ({self.num_layers})")
    if any(self.local_layers) and not (self.sliding_window and self.sliding_window >= 1):
      raise ValueError(f"local (sliding-window) layers need sliding_window >= 1; got {self.sliding_window!r}")

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  @property
  def is_gpt2(self) -> bool:
    return self.family == "gpt2"

  @property
  def windowed(self) -> bool:
    """Some layers attend through a sliding window."""
    return any(self.local_layers)


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
_QWEN3_USED = _LLAMA_USED - {"mlp_bias"} | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"}
_GEMMA3_USED = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_activation", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
    "eos_token_id", "pad_token_id", "tie_word_embeddings", "rope_parameters", "rope_theta", "rope_local_base_freq",
    "rope_scaling", "attention_bias", "query_pre_attn_scalar", "sliding_window", "sliding_window_pattern",
    "_sliding_window_pattern",  # what transformers 5 saves beside layer_types (which decides)
    "layer_types", "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention",
    "cache_implementation",  # a generation hint ("hybrid": a sliding cache for the local layers)
}
_GPT2_USED = {
    "model_type", "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
    "layer_norm_epsilon", "activation_function", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "summary_dropout",
}
_USED = {"llama": _LLAMA_USED, "qwen2": _QWEN2_USED, "qwen3": _QWEN3_USED, "gpt2": _GPT2_USED, "gemma3": _GEMMA3_USED}
_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}


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
  family = _MODEL_TYPES.get(hf.get("model_type"))
  if family is None:
    raise UnsupportedConfigError(f"config field 'model_type' = {hf.get('model_type')!r}; supported: "
                                 f"{list(_MODEL_TYPES)}")
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
  if family == "gemma3":
    return _gemma3_from_hf(hf, common)
  _require(hf, "hidden_act", {"silu"}, family)
  if family in ("qwen2", "qwen3"):
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
      mlp_bias=bool(hf.get("mlp_bias", False)), activation="silu", qk_norm=family == "qwen3", **common,
  )


def _gemma3_rope(hf: dict[str, Any]) -> tuple[float, float, float]:
  """(global theta, local theta, global linear factor) from ``rope_parameters`` keyed by layer type (transformers 5)
  or the older ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling`` fields."""
  params = hf.get("rope_parameters") or {}
  if params and not set(params) <= {"full_attention", "sliding_attention"}:
    raise UnsupportedConfigError(f"config field 'rope_parameters' must be keyed by layer type (full_attention, "
                                 f"sliding_attention) for gemma3; got keys {sorted(params)}")
  full = dict(params.get("full_attention") or {})
  local = dict(params.get("sliding_attention") or {})
  full = {**(hf.get("rope_scaling") or {}), **full}
  theta = float(full.pop("rope_theta", hf.get("rope_theta", 1_000_000.0)))
  local_theta = float(local.pop("rope_theta", hf.get("rope_local_base_freq", 10_000.0)))
  kind = full.pop("rope_type", full.pop("type", "default"))
  factor = 1.0
  if kind == "linear":
    factor = float(full.pop("factor"))
  elif kind != "default":
    raise UnsupportedConfigError(f"gemma3 rope_type {kind!r} for full_attention is not supported (default, linear)")
  local_kind = local.pop("rope_type", local.pop("type", "default"))
  leftover = sorted(set(full) - {"factor"}) + sorted(local)
  if local_kind != "default" or leftover:
    raise UnsupportedConfigError(f"gemma3 rope parameters not supported: sliding_attention rope_type {local_kind!r}, "
                                 f"unknown fields {leftover}")
  return theta, local_theta, factor


def _gemma3_from_hf(hf: dict[str, Any], common: dict) -> ModelConfig:
  family = "gemma3"
  _require(hf, "hidden_activation", {"gelu_pytorch_tanh"}, family)
  _require(hf, "attn_logit_softcapping", {None}, family)
  _require(hf, "use_bidirectional_attention", {False, None}, family)
  _require(hf, "attention_bias", {False}, family)
  layers = hf["num_hidden_layers"]
  types_ = hf.get("layer_types")
  if types_ is None:
    pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
    types_ = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
  bad = sorted(set(types_) - {"sliding_attention", "full_attention"})
  if bad or len(types_) != layers:
    raise UnsupportedConfigError(f"config field 'layer_types' must list full_attention / sliding_attention for each "
                                 f"of the {layers} layers; got {types_}")
  local = tuple(t == "sliding_attention" for t in types_)
  window = hf.get("sliding_window", 4096)
  if any(local) and not window:
    raise UnsupportedConfigError("config field 'sliding_window' must be set when layer_types has sliding_attention")
  theta, local_theta, factor = _gemma3_rope(hf)
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  return ModelConfig(
      family="gemma3", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=layers, num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or d // heads,
      intermediate_size=hf["intermediate_size"], max_position_embeddings=hf.get("max_position_embeddings", 131072),
      norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, tie_word_embeddings=bool(hf.get("tie_word_embeddings",
                                                                                                True)),
      activation="gelu_pytorch_tanh", qk_norm=True, gemma_norms=True, embed_scale=True,
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)), sliding_window=window if any(local) else None,
      local_layers=local if any(local) else (), rope_local_theta=local_theta, rope_linear_factor=factor,
      final_logit_softcap=hf.get("final_logit_softcapping"), **common,
  )


def _int_if_whole(x):
  return int(x) if x is not None and float(x).is_integer() else x


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


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
  if cfg.family == "gemma3":
    full = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_linear_factor != 1.0:
      full = {"rope_type": "linear", "rope_theta": cfg.rope_theta, "factor": cfg.rope_linear_factor}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
    return dict(
        model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar),
        sliding_window=cfg.sliding_window or 4096,
        layer_types=["sliding_attention" if cfg.local_layers and cfg.local_layers[i] else "full_attention"
                     for i in range(cfg.num_layers)],
        rope_parameters={"full_attention": full, "sliding_attention": local},
        final_logit_softcapping=cfg.final_logit_softcap, attn_logit_softcapping=None, attention_bias=False,
        tie_word_embeddings=cfg.tie_word_embeddings, dtype=dtype, **tokens,
    )
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling is not None:
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
  out = dict(
      model_type=cfg.family, architectures=[_ARCHITECTURES[cfg.family]],
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
      rms_norm_eps=cfg.norm_eps, rope_parameters=rope, tie_word_embeddings=cfg.tie_word_embeddings,
      hidden_act="silu", dtype=dtype, **tokens,
  )
  if cfg.qk_norm != (cfg.family == "qwen3"):
    raise ValueError(f"{cfg.family} checkpoints {'have' if cfg.family == 'qwen3' else 'have no'} q/k norms; "
                     f"qk_norm = {cfg.qk_norm}")
  if cfg.family in ("llama", "qwen3"):
    if cfg.qkv_bias != cfg.out_bias:
      raise ValueError(f"{cfg.family} checkpoints bias q/k/v and o together (attention_bias); qkv_bias != out_bias")
    out.update(attention_bias=cfg.out_bias)
    if cfg.family == "llama":
      out.update(mlp_bias=cfg.mlp_bias)
    elif cfg.mlp_bias:
      raise ValueError("qwen3 checkpoints have no MLP biases; mlp_bias = True")
    else:
      out.update(use_sliding_window=False)
  else:
    if not cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
      raise ValueError("qwen2 checkpoints have q/k/v biases only")
    out.update(use_sliding_window=False)
  return out
