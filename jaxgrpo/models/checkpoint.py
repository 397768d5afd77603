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
from jaxgrpo.models import convert
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
    with safe_open(file, framework="numpy") as f:
      for name in f.keys():
        tensors[name] = f.get_tensor(name)
  return tensors


def read_config(path: str, dtype: str = "float32") -> config_lib.ModelConfig:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path}: no config.json")
  with open(cfg_path) as f:
    return config_lib.from_hf_config(json.load(f), dtype=dtype)


def from_pretrained(path: str, dtype: str = "float32") -> tuple[Transformer, dict[str, Any]]:
  """Load an HF checkpoint directory into (model, params).

  Args:
    path: directory with config.json and model.safetensors (or a sharded
      model.safetensors.index.json).
    dtype: "float32" or "bfloat16" for parameters and compute.
  """
  cfg = read_config(path, dtype)
  np_dtype = jnp.bfloat16 if dtype == "bfloat16" else np.float32
  params = convert.hf_to_params(read_safetensors(path), cfg, dtype=np_dtype)
  return Transformer(cfg), jax.tree.map(jnp.asarray, params)


def save_pretrained(
    model: Transformer, params: dict[str, Any], path: str, *, max_shard_bytes: int | None = None
) -> None:
  """Write config.json and safetensors that transformers' from_pretrained loads.

  Args:
    max_shard_bytes: if set and the tensors exceed it, write shards plus
      model.safetensors.index.json.
  """
  cfg = model.config
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_lib.to_hf_config(cfg), f, indent=2)
  tensors = convert.params_to_hf(jax.device_get(params), cfg)
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
