"""Flax GPT-2, Llama and Qwen2 models loaded from and saved to HF checkpoints.

    model, params = jaxgrpo.models.from_pretrained("path/to/hf_dir", dtype=jnp.bfloat16)  # f32 master weights
    logits = jaxgrpo.models.logits(model, params, input_ids, attention_mask)               # float32[B, T, V]
    jaxgrpo.models.save_pretrained(model, params, "out_dir")                               # transformers loads it

Modules: ``config`` (ModelConfig and the strict reading of config.json), ``transformer`` (the Flax module, its
``Output`` record, params helpers), ``convert`` (pure HF ↔ params conversion), ``checkpoint`` (safetensors I/O),
``lora`` (adapters and PEFT files), ``policy`` (the policy's next-token distribution and completion log-probs),
``tokenizers`` (HF tokenizers with chat templates), ``smollm2`` (the offline SmolLM2 checkpoint), ``known``
(architectures of the paper presets' hub models).
"""

from jaxgrpo.models import lora, policy, tokenizers
from jaxgrpo.models.checkpoint import from_pretrained, read_config, read_safetensors, save_pretrained
from jaxgrpo.models.config import (
  FAMILIES,
  TREE_MASK_FAMILIES,
  Family,
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
  Output,
  Params,
  SlotMask,
  Transformer,
  TreeMask,
  abstract_params,
  as_bits,
  cast_params,
  causal_mask,
  from_bits,
  from_config,
  init_params,
  logical_axes,
  logits,
  positions_from_mask,
)

__all__ = [
    "FAMILIES",
    "CheckpointMismatchError",
    "Family",
    "LoraConfig",
    "ModelConfig",
    "Output",
    "Params",
    "RopeScaling",
    "TREE_MASK_FAMILIES",
    "Transformer",
    "SlotMask",
    "TreeMask",
    "UnsupportedConfigError",
    "abstract_params",
    "as_bits",
    "cast_params",
    "causal_mask",
    "dtype_name",
    "from_bits",
    "from_config",
    "from_hf_config",
    "from_pretrained",
    "hf_to_params",
    "init_params",
    "logical_axes",
    "logits",
    "lora",
    "params_to_hf",
    "policy",
    "positions_from_mask",
    "read_config",
    "read_safetensors",
    "save_pretrained",
    "to_hf_config",
    "tokenizers",
]
