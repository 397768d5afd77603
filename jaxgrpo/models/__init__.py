"""Flax GPT-2, Llama and Qwen2 models loaded from and saved to HF checkpoints.

    model, params = jaxgrpo.models.from_pretrained("path/to/hf_dir", dtype=jnp.bfloat16)  # f32 master weights
    logits = jaxgrpo.models.logits(model, params, input_ids, attention_mask)               # float32[B, T, V]
    jaxgrpo.models.save_pretrained(model, params, "out_dir")                               # transformers loads it
"""

from __future__ import annotations

import functools

import jax

from jaxgrpo.models.build import build_model, config_from_spec, model_config
from jaxgrpo.models.checkpoint import from_pretrained, read_config, read_safetensors, save_pretrained
from jaxgrpo.models.config import (
  LoraConfig,
  ModelConfig,
  RopeScaling,
  UnsupportedConfigError,
  dtype_name,
  from_hf_config,
  to_hf_config,
)
from jaxgrpo.models.convert import CheckpointMismatchError, hf_to_params, params_to_hf
from jaxgrpo.models.transformer import (
  Transformer,
  abstract_params,
  cast_params,
  causal_mask,
  init_params,
  logical_axes,
  positions_from_mask,
)


@functools.partial(jax.jit, static_argnums=0)
def logits(model: Transformer, params, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Full forward pass: float32[B, T, V] logits.

  Args:
    input_ids: int[B, T]; attention_mask: [B, T] (left or right padding; the
      positions come from the mask, so left-padded prompts work).
  """
  if input_ids.shape != attention_mask.shape:
    raise ValueError(f"attention_mask must have the shape of input_ids {input_ids.shape}; got {attention_mask.shape}")
  positions = positions_from_mask(attention_mask)
  out, _ = model.apply({"params": params}, input_ids, positions, causal_mask(attention_mask))
  return out


def from_config(cfg: ModelConfig) -> Transformer:
  """A model (no parameters yet: see ``init_params``) from a config."""
  return Transformer(cfg)


__all__ = [
    "CheckpointMismatchError",
    "LoraConfig",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "UnsupportedConfigError",
    "abstract_params",
    "build_model",
    "cast_params",
    "causal_mask",
    "config_from_spec",
    "dtype_name",
    "from_config",
    "from_hf_config",
    "from_pretrained",
    "hf_to_params",
    "init_params",
    "logical_axes",
    "logits",
    "model_config",
    "params_to_hf",
    "positions_from_mask",
    "read_config",
    "read_safetensors",
    "save_pretrained",
    "to_hf_config",
]
