"""LoRA adapters: split/merge the params tree, fold adapters into the weights, and PEFT's file format.

With ``ModelConfig.lora`` set, each targeted kernel ``<name>`` has adapters
``<name>_lora_a`` (A: input dims × r) and ``<name>_lora_b`` (B: r × output dims)
beside it, and the layer computes x W + (alpha / r) · (x A) B.  The adapters are
ordinary params, so ``split`` separates the trainable adapters from the frozen
base weights and ``combine`` puts them back; the base alone is the model with
the adapters off (the reference policy).

PEFT: ``save_peft`` writes adapter_config.json + adapter_model.safetensors that
``peft.PeftModel.from_pretrained(base_transformers_model, dir)`` loads; GPT-2's
fused ``c_attn`` gets one block-diagonal adapter for q/k/v (rank = r × the
number of q/k/v targets, alpha scaled to keep alpha / r).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxgrpo.models.config import ModelConfig

SUFFIXES = ("_lora_a", "_lora_b")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# target → HF module path under a layer for Llama/Qwen2/Qwen3, and GPT-2's modules.
_LLAMA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                  "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_GPT2_MODULES = {"o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"}
_KERNELS = {"q": ("attn", "q_kernel"), "k": ("attn", "k_kernel"), "v": ("attn", "v_kernel"),
            "o": ("attn", "o_kernel"), "gate": ("mlp", "gate_kernel"), "up": ("mlp", "up_kernel"),
            "down": ("mlp", "down_kernel")}


def is_adapter(name: str) -> bool:
  return name.endswith(SUFFIXES)


def split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(adapters, base): two trees with the same nesting; empty sub-dicts are dropped."""
  def go(tree, keep):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        sub = go(v, keep)
        if sub:
          out[k] = sub
      elif keep(k):
        out[k] = v
    return out

  return go(params, is_adapter), go(params, lambda k: not is_adapter(k))


def combine(base: dict[str, Any], adapters: dict[str, Any] | None) -> dict[str, Any]:
  """The full params tree from base weights and adapters (adapters None or {}: the base model)."""
  if not adapters:
    return base
  out = dict(base)
  for k, v in adapters.items():
    out[k] = combine(base.get(k, {}), v) if isinstance(v, dict) else v
  return out


def _delta(cfg: ModelConfig, target: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """scale · A B in the kernel's layout, for stacked layers: a [L, *in, r], b [L, r, *out]."""
  r = cfg.lora.rank
  n_layers = a.shape[0]
  a2 = a.reshape(n_layers, -1, r)
  b2 = b.reshape(n_layers, r, -1)
  out_shape = b.shape[2:]
  return cfg.lora.scale * np.einsum("lir,lro->lio", a2, b2).reshape(a.shape[:-1] + out_shape)


def merged(cfg: ModelConfig, params: dict[str, Any]) -> dict[str, Any]:
  """Base params with the adapters folded into the weights: W + (alpha / r) · A B (float32 math)."""
  adapters, base = split(jax.device_get(params))
  if cfg.lora is None or not adapters:
    return base
  layers = {k: dict(v) for k, v in base["layers"].items()}
  for target in cfg.lora.targets:
    mod, kernel = _KERNELS[target]
    if mod not in adapters.get("layers", {}) or kernel + "_lora_a" not in adapters["layers"][mod]:
      continue
    ad = adapters["layers"][mod]
    w = np.asarray(layers[mod][kernel])
    d = _delta(cfg, target, np.asarray(ad[kernel + "_lora_a"], np.float32), np.asarray(ad[kernel + "_lora_b"],
                                                                                         np.float32))
    layers[mod][kernel] = (w.astype(np.float32) + d).astype(w.dtype)
  return {**base, "layers": layers}


# ----------------------------------------------------------------------------- PEFT format


def _peft_targets(cfg: ModelConfig) -> tuple[list[str], dict[str, int], dict[str, float]]:
  """(target_modules, rank_pattern, alpha_pattern) for adapter_config.json."""
  lc = cfg.lora
  if not cfg.is_gpt2:
    return sorted(_LLAMA_MODULES[t].split(".")[-1] for t in lc.targets), {}, {}
  mods = sorted({_GPT2_MODULES[t] for t in lc.targets if t in _GPT2_MODULES})
  qkv = [t for t in ("q", "k", "v") if t in lc.targets]
  rank_pattern, alpha_pattern = {}, {}
  if qkv:
    mods.append("attn.c_attn")
    rank_pattern["c_attn"] = lc.rank * len(qkv)
    alpha_pattern["c_attn"] = lc.alpha * len(qkv)
  if "gate" in lc.targets:
    raise ValueError("GPT-2 has no gate projection: remove 'gate' from the LoRA targets")
  return mods, rank_pattern, alpha_pattern


def to_peft(cfg: ModelConfig, adapters: dict[str, Any]) -> dict[str, np.ndarray]:
  """Adapter tensors named as PEFT names them on the transformers model (lora_A [r, in], lora_B [out, r])."""
  ad = jax.device_get(adapters)["layers"]
  out = {}
  prefix = "base_model.model.transformer.h.{i}." if cfg.is_gpt2 else "base_model.model.model.layers.{i}."
  for i in range(cfg.num_layers):
    pre = prefix.format(i=i)
    if cfg.is_gpt2:
      qkv = [t for t in ("q", "k", "v") if t in cfg.lora.targets]
      if qkv:
        a_blocks, b_blocks = [], []
        for t in ("q", "k", "v"):
          if t in qkv:
            a = np.asarray(ad["attn"][f"{t}_kernel_lora_a"][i], np.float32)  # [d, r]
            b = np.asarray(ad["attn"][f"{t}_kernel_lora_b"][i], np.float32).reshape(cfg.lora.rank, -1)  # [r, d]
            a_blocks.append(a.T)
            b_blocks.append(b.T)
          else:
            b_blocks.append(None)
        r, d = cfg.lora.rank, cfg.hidden_size
        big_b = np.zeros((3 * d, r * len(qkv)), np.float32)
        col = 0
        for j, blk in enumerate(b_blocks):
          if blk is not None:
            big_b[j * d:(j + 1) * d, col:col + r] = blk
            col += r
        out[pre + "attn.c_attn.lora_A.weight"] = np.concatenate(a_blocks, axis=0)
        out[pre + "attn.c_attn.lora_B.weight"] = big_b
      modules = {t: _GPT2_MODULES[t] for t in cfg.lora.targets if t in _GPT2_MODULES}
    else:
      modules = {t: _LLAMA_MODULES[t] for t in cfg.lora.targets}
    for t, module in modules.items():
      mod, kernel = _KERNELS[t]
      a = np.asarray(ad[mod][kernel + "_lora_a"][i], np.float32)
      b = np.asarray(ad[mod][kernel + "_lora_b"][i], np.float32)
      out[pre + module + ".lora_A.weight"] = a.reshape(-1, cfg.lora.rank).T
      out[pre + module + ".lora_B.weight"] = b.reshape(cfg.lora.rank, -1).T
  # safetensors writes an array's buffer as is: transposed views must be made C-contiguous first
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_peft(cfg: ModelConfig, adapters: dict[str, Any], path: str, base_model: str | None = None) -> None:
  """Write the adapters in PEFT's format (adapter_config.json + adapter_model.safetensors)."""
  if cfg.lora is None:
    raise ValueError("the model has no LoRA config: there are no adapters to save")
  targets, rank_pattern, alpha_pattern = _peft_targets(cfg)
  os.makedirs(path, exist_ok=True)
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha,
      "lora_dropout": 0.0, "bias": "none", "target_modules": targets, "fan_in_fan_out": cfg.is_gpt2,
      "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "use_rslora": False, "use_dora": False,
      "init_lora_weights": True, "inference_mode": True, "base_model_name_or_path": base_model,
  }
  with open(os.path.join(path, ADAPTER_CONFIG), "w") as f:
    json.dump(config, f, indent=2)
  save_file(to_peft(cfg, adapters), os.path.join(path, ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_peft(cfg: ModelConfig, path: str) -> dict[str, Any]:
  """Adapters from a PEFT directory written by ``save_peft`` (Llama/Qwen2), as a params subtree."""
  if cfg.is_gpt2:
    raise ValueError("reading GPT-2 PEFT adapters (fused c_attn) back is not supported")
  tensors = load_file(os.path.join(path, ADAPTER_WEIGHTS))
  r = cfg.lora.rank
  per_target: dict[str, dict[str, list]] = {}
  for t in cfg.lora.targets:
    mod, kernel = _KERNELS[t]
    a_list, b_list = [], []
    for i in range(cfg.num_layers):
      name = f"base_model.model.model.layers.{i}.{_LLAMA_MODULES[t]}"
      if name + ".lora_A.weight" not in tensors:
        raise ValueError(f"{path}: missing adapter tensor {name}.lora_A.weight")
      a_list.append(tensors[name + ".lora_A.weight"].T)
      b_list.append(tensors[name + ".lora_B.weight"].T)
    per_target[t] = {"a": np.stack(a_list), "b": np.stack(b_list)}
  layers: dict[str, dict] = {"attn": {}, "mlp": {}}
  h, kv, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
  f = cfg.intermediate_size
  in_shapes = {"q": (d,), "k": (d,), "v": (d,), "o": (h, dh), "gate": (d,), "up": (d,), "down": (f,)}
  out_shapes = {"q": (h, dh), "k": (kv, dh), "v": (kv, dh), "o": (d,), "gate": (f,), "up": (f,), "down": (d,)}
  for t, ab in per_target.items():
    mod, kernel = _KERNELS[t]
    n = cfg.num_layers
    layers[mod][kernel + "_lora_a"] = ab["a"].reshape(n, *in_shapes[t], r)
    layers[mod][kernel + "_lora_b"] = ab["b"].reshape(n, r, *out_shapes[t])
  return {"layers": {k: v for k, v in layers.items() if v}}
