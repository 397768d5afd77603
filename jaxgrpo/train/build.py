"""A run's model, params and tokenizer from its ``ModelSpec`` (an HF directory, ``smollm2``, or a config made here)."""

from __future__ import annotations

import os
from typing import Any

import jax

from jaxgrpo.models import known, smollm2
from jaxgrpo.models import lora as lora_lib
from jaxgrpo.models.checkpoint import from_pretrained, read_config
from jaxgrpo.models.config import LoraConfig, ModelConfig, from_hf_config
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.models.transformer import Params, Transformer, init_params
from jaxgrpo.rollout.sampler import SamplingParams
from jaxgrpo.tasks.sources import ToyTokenizer
from jaxgrpo.train.config import ModelSpec, SamplingSpec


def model_options(spec: ModelSpec) -> dict[str, Any]:
  """The ModelConfig fields a ``ModelSpec`` sets beyond the architecture."""
  lora = LoraConfig(spec.lora.rank, spec.lora.alpha, tuple(spec.lora.targets)) if spec.lora.rank else None
  return dict(param_dtype=spec.param_dtype, remat=spec.remat, attention_chunk=spec.attention_chunk, lora=lora)


def config_from_spec(spec: ModelSpec) -> ModelConfig:
  """The architecture a ``ModelSpec`` makes when it names no checkpoint."""
  heads = spec.num_heads
  gpt2 = spec.family == "gpt2"
  if spec.family == "gemma3":  # Gemma 3's pieces, with every other layer local (a window of a quarter context)
    gemma = dict(activation="gelu_pytorch_tanh", qk_norm=True, gemma_norms=True, embed_scale=True,
                 sliding_window=max(spec.max_position_embeddings // 4, 1),
                 local_layers=tuple(i % 2 == 0 for i in range(spec.num_layers)))
    return ModelConfig(
        family="gemma3", vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
        num_heads=heads, num_kv_heads=heads, head_dim=spec.hidden_size // heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, dtype=spec.dtype, **gemma, **model_options(spec))
  return ModelConfig(
      family=spec.family, vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
      num_heads=heads, num_kv_heads=heads, head_dim=spec.hidden_size // heads,
      intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
      activation="gelu_new" if gpt2 else "silu", tie_word_embeddings=gpt2,
      qkv_bias=spec.family in ("gpt2", "qwen2"), out_bias=gpt2, mlp_bias=gpt2, qk_norm=spec.family == "qwen3",
      dtype=spec.dtype, **model_options(spec),
  )


def checkpoint_dir(spec: ModelSpec) -> str:
  """The local HF directory a ``ModelSpec`` names ("smollm2" is converted once from its GGUF file)."""
  path = spec.checkpoint
  if path == "smollm2":
    return smollm2.hf_checkpoint_dir()
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model.checkpoint {spec.checkpoint!r} is not a local HF checkpoint directory "
                            "(jaxgrpo downloads nothing: point it at a directory with config.json and safetensors)")
  return path


def model_config(spec: ModelSpec) -> ModelConfig:
  """The ``ModelConfig`` of a spec without loading weights (reads config.json for checkpoints; for the
  paper presets' hub ids that are not local, the architectures in ``jaxgrpo.models.known``)."""
  if spec.checkpoint is None:
    return config_from_spec(spec)
  if spec.checkpoint in known.CONFIGS and not os.path.isdir(spec.checkpoint):
    return from_hf_config(known.CONFIGS[spec.checkpoint], dtype=spec.dtype, **model_options(spec))
  return read_config(checkpoint_dir(spec), spec.dtype, **model_options(spec))


def tokenizer_class(spec: ModelSpec) -> type:
  """The tokenizer a spec's run uses, without loading it: the toy task's for a model made from a config.  Its
  ``allowed_ids`` (a class attribute) is the run's allowed-token set, so ``jaxgrpo plan`` needs no files."""
  return ToyTokenizer if spec.checkpoint is None else HFTokenizer


def init_adapters(model: Transformer, rng: jax.Array) -> Params:
  """Fresh LoRA adapters (A random, B zero) for ``model`` (only the adapters are computed)."""
  return jax.jit(lambda k: lora_lib.split(init_params(model, k))[0])(rng)


def build_model(spec: ModelSpec, seed: int = 0, system_prompt: str | None = None,
                chat_template_kwargs: dict | None = None):
  """(model, params, tokenizer) from a ``ModelSpec``; with LoRA the params hold fresh adapters.

  ``system_prompt``: the chat system turn of every prompt (``data.system_prompt``; HF tokenizers only);
  ``chat_template_kwargs``: the chat template's extra variables (``data.chat_template_kwargs``)."""
  if spec.checkpoint is None:
    if chat_template_kwargs:
      raise ValueError("config key 'data.chat_template_kwargs' needs an HF tokenizer with a chat template; a model "
                       "made from a config uses the toy task's tokenizer")
    if spec.vocab_size != ToyTokenizer.vocab_size:
      raise ValueError("a model made from a config is only wired to the toy task's tokenizer (model.vocab_size=3)")
    model = Transformer(config_from_spec(spec))
    return model, init_params(model, jax.random.PRNGKey(seed)), ToyTokenizer()
  path = checkpoint_dir(spec)
  tokenizer = HFTokenizer(path, system_prompt, chat_template_kwargs)
  model, params = from_pretrained(path, spec.dtype, **model_options(spec))
  if model.config.lora is not None:
    params = lora_lib.combine(params, init_adapters(model, jax.random.PRNGKey(seed)))
  return model, params, tokenizer


def sampling_params(spec: SamplingSpec, eos_ids, pad_id: int) -> SamplingParams:
  """The sampler's settings from the config's sampling section (the one place the two meet) and a tokenizer's (or
  a model config's) EOS and pad ids.  ``prompt_multiple`` and ``trim`` are the rollout engine's options."""
  return SamplingParams(group_size=spec.group_size, max_new_tokens=spec.max_new_tokens,
                        temperature=float(spec.temperature), top_k=spec.top_k, top_p=float(spec.top_p),
                        eos_ids=tuple(eos_ids), pad_id=int(pad_id), kv_dtype=spec.kv_dtype)
