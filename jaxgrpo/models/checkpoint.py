"""Reading and writing Hugging Face checkpoint directories (config.json + safetensors)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxgrpo.models import config as config_lib
from jaxgrpo.models import convert, lora
from jaxgrpo.models.transformer import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory: model.safetensors or a sharded index."""
  single = os.path.join(path, SINGLE_FILE)
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  else:
    raise FileNotFoundError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
  tensors = {}
  for file in files:
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file}: listed in {INDEX_FILE} but missing")
    try:
      with safe_open(file, framework="numpy") as f:
        for name in f.keys():
          tensors[name] = f.get_tensor(name)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
      raise ValueError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from None
  return tensors


def read_config(path: str, dtype="float32", **options) -> config_lib.ModelConfig:
  """The ``ModelConfig`` of an HF directory's config.json (errors name the file and the field)."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path}: no config.json")
  try:
    with open(cfg_path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{cfg_path}: must hold a JSON object")
  try:
    return config_lib.from_hf_config(hf, dtype=dtype, **options)
  except ValueError as e:
    raise type(e)(f"{cfg_path}: {e}") from None


def from_pretrained(path: str, dtype="float32", param_dtype="float32", **options) -> tuple[Transformer, dict[str, Any]]:
  """Load an HF checkpoint directory into (model, params).

  Args:
    path: directory with config.json and model.safetensors (or a sharded
      model.safetensors.index.json).
    dtype: compute dtype; param_dtype: dtype the parameters are stored in
      (float32 master weights by default: a bf16 checkpoint loads losslessly).
      Strings ("bfloat16") or jnp dtypes (jnp.bfloat16).
    options: other ``ModelConfig`` fields (remat, attention_chunk, lora).
  """
  cfg = read_config(path, dtype, param_dtype=param_dtype, **options)
  tensors = read_safetensors(path)
  try:
    params = convert.hf_to_params(tensors, cfg, dtype=jnp.dtype(cfg.param_dtype))
  except convert.CheckpointMismatchError as e:
    raise convert.CheckpointMismatchError(f"{path}: {e}") from None
  return Transformer(cfg), jax.tree.map(jnp.asarray, params)


def save_pretrained(
    model: Transformer, params: dict[str, Any], path: str, *, max_shard_bytes: int | None = None,
    dtype=None,
) -> None:
  """Write config.json and safetensors that transformers' from_pretrained loads.

  Args:
    params: the model's params (LoRA adapters, if any, are folded into the weights).
    max_shard_bytes: if set and the tensors exceed it, write shards plus
      model.safetensors.index.json.
    dtype: dtype of the saved tensors (default: the params' dtype).
  """
  cfg = model.config
  params = lora.merged(cfg, params)
  np_dtype = None if dtype is None else jnp.dtype(config_lib.dtype_name(dtype))
  tensors = convert.params_to_hf(params, cfg)
  if np_dtype is not None:
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
  saved_dtype = next(iter(tensors.values())).dtype
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_lib.to_hf_config(cfg, dtype=saved_dtype), f, indent=2)
  total = sum(t.nbytes for t in tensors.values())
  meta = {"format": "pt"}
  if max_shard_bytes is None or total <= max_shard_bytes:
    save_file(tensors, os.path.join(path, SINGLE_FILE), metadata=meta)
    return
  shards, current, size = [], {}, 0
  for name, t in tensors.items():
    if current and size + t.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = t
    size += t.nbytes
  shards.append(current)
  weight_map = {}
  for k, shard in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(path, fname), metadata=meta)
    weight_map.update({name: fname for name in shard})
  with open(os.path.join(path, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
