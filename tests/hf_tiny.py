"""Tiny random transformers models of each family (torch CPU), for parity tests."""

import numpy as np
import torch
from transformers import (
  Gemma3ForCausalLM,
  Gemma3TextConfig,
  GPT2Config,
  GPT2LMHeadModel,
  LlamaConfig,
  LlamaForCausalLM,
  Qwen2Config,
  Qwen2ForCausalLM,
  Qwen3Config,
  Qwen3ForCausalLM,
)

TINY = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                        bos_token_id=100, eos_token_id=100)),
    "llama_gqa_llama3rope": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_tied_biases": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True, attention_bias=True,
        mlp_bias=True)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)),
    # Qwen3: per-head q/k RMSNorm, no biases, head_dim set apart from hidden/heads, untied head (the tied variant is
    # in tests/test_models.py's logits test)
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)),
    # Gemma 3 text: a sliding window of 4 on layers 0 and 2 (11-token test rows cross it), a global layer 1 with
    # linearly scaled RoPE, query_pre_attn_scalar ≠ head_dim, (1 + w) norms before and after attention and MLP,
    # √D embeddings, a final-logit softcap
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], query_pre_attn_scalar=12,
        final_logit_softcapping=5.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
}


def make_tiny(name: str, seed: int = 0):
  """A tiny model with weights large enough that a wrong formula shows in the logits."""
  torch.manual_seed(seed)
  model = TINY[name]().eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if "norm" in pname or "ln_" in pname:
        p.copy_(1.0 + 0.3 * torch.randn_like(p) if pname.endswith("weight") else 0.3 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.25)
  return model


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """transformers logits with positions from the mask (as generate() does for left padding)."""
  pos = np.maximum(mask.cumsum(-1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
  return out.logits.float().numpy()


def padded_batch(vocab: int, seed: int = 0, b: int = 3, t: int = 11):
  """Left-padded rows, one right-padded row, one full row."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, size=(b, t))
  mask = np.ones((b, t), np.int64)
  mask[0, :4] = 0  # left padding
  mask[1, -3:] = 0  # right padding
  return ids, mask


def tiny_llama_with_tokenizer(out_dir: str, seed: int = 0) -> str:
  """A tiny random Llama with SmolLM2's tokenizer (vocab 49,152), saved as an HF directory a trainer can use."""
  import os
  import shutil

  from jaxgrpo.models import smollm2

  src = smollm2.hf_checkpoint_dir()
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1,
      eos_token_id=2, pad_token_id=2)).eval()
  model.save_pretrained(out_dir)
  for name in os.listdir(src):
    if name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
      shutil.copy(os.path.join(src, name), out_dir)
  return out_dir
