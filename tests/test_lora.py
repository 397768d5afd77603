"""LoRA: adapters on every family, only adapters trained, reference = adapters off, PEFT export that peft loads,
merged HF export that transformers loads."""


import jax
import numpy as np
import pytest
from hf_tiny import hf_logits, make_tiny, padded_batch
from meshes import trainer

import jaxgrpo.models as M
from jaxgrpo.models import lora


def _random_adapters(params, seed=0):
  """Non-zero B so the adapters change the logits."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  key = jax.random.PRNGKey(seed)
  out = []
  for i, (path, x) in enumerate(leaves):
    name = jax.tree_util.keystr(path)
    out.append(0.3 * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype) if "lora_b" in name else x)
  return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture(scope="module", params=["gpt2", "llama_tied_biases", "qwen2", "qwen3", "gemma3"])
def tiny_lora(request, tmp_path_factory):
  name = request.param
  hf = make_tiny(name)
  path = str(tmp_path_factory.mktemp(name))
  hf.save_pretrained(path)
  targets = ("q", "k", "v", "o", "up", "down") if name == "gpt2" else ("q", "v", "o", "gate", "down")
  model, base = M.from_pretrained(path, lora=M.LoraConfig(rank=4, alpha=8.0, targets=targets))
  from jaxgrpo.train.build import init_adapters

  params = _random_adapters(lora.combine(base, init_adapters(model, jax.random.PRNGKey(1))))
  return name, hf, path, model, base, params


def test_adapters_start_at_zero_and_sit_beside_their_weights(tiny_lora):
  name, hf, path, model, base, params = tiny_lora
  from jaxgrpo.train.build import init_adapters

  fresh = lora.combine(base, init_adapters(model, jax.random.PRNGKey(1)))
  ids, mask = padded_batch(model.config.vocab_size)
  np.testing.assert_array_equal(M.logits(model, fresh, ids, mask), M.logits(model, base, ids, mask))
  adapters, rest = lora.split(params)
  jax.tree.map(np.testing.assert_array_equal, rest, base)
  axes = M.logical_axes(model)["layers"]["attn"]
  assert tuple(axes["q_kernel_lora_a"]) == ("layers", "embed", None)
  assert tuple(axes["q_kernel_lora_b"]) == ("layers", None, "heads", "head_dim")
  assert tuple(axes["o_kernel_lora_a"]) == ("layers", "heads", "head_dim", None)
  assert not np.allclose(M.logits(model, params, ids, mask), M.logits(model, base, ids, mask))


def test_merged_export_loads_in_transformers(tiny_lora, tmp_path):
  name, hf, path, model, base, params = tiny_lora
  M.save_pretrained(model, params, str(tmp_path / "merged"))
  from transformers import AutoModelForCausalLM

  merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  ids, mask = padded_batch(model.config.vocab_size, seed=3)
  ours = np.asarray(M.logits(model, params, ids, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(hf_logits(merged, ids, mask)[valid], ours[valid], atol=1e-4)


def test_peft_adapter_loads_onto_the_transformers_base(tiny_lora, tmp_path):
  peft = pytest.importorskip("peft")
  name, hf, path, model, base, params = tiny_lora
  adapters, _ = lora.split(params)
  lora.save_peft(model.config, adapters, str(tmp_path / "adapter"), base_model=path)
  from transformers import AutoModelForCausalLM

  base_hf = AutoModelForCausalLM.from_pretrained(path).eval()
  peft_model = peft.PeftModel.from_pretrained(base_hf, str(tmp_path / "adapter")).eval()
  ids, mask = padded_batch(model.config.vocab_size, seed=4)
  ours = np.asarray(M.logits(model, params, ids, mask))
  valid = mask.astype(bool)
  theirs = hf_logits(peft_model, ids, mask)
  np.testing.assert_allclose(theirs[valid], ours[valid], atol=1e-4)
  if not model.config.is_gpt2:  # and back
    back = lora.load_peft(model.config, str(tmp_path / "adapter"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), back, jax.device_get(adapters))


def test_lora_training_updates_only_adapters_and_uses_the_base_as_reference(tmp_path):
  """The toy model with LoRA: only adapter params have optimizer state; KL's reference is the base
  (no second copy of the weights); the base weights never change."""
  from jaxgrpo.train import presets
  from jaxgrpo.train.config import replace as config_replace

  cfg = config_replace(presets.preset("toy"), steps=3, output_dir=str(tmp_path / "run"), progress=False,
                        model={"lora": {"rank": 2, "alpha": 4.0, "targets": ("q", "v", "up")}},
                        objective={"kl_beta": 0.05}, optim={"learning_rate": 1e-2})
  t = trainer(cfg)
  assert t.update_spec.reference == "base" and t.ref_params is None
  names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(t.state["params"])[0]}
  assert names and all("_lora_" in n for n in names)
  n_adapter = sum(x.size for x in jax.tree.leaves(t.state["params"]))
  n_opt = sum(x.size for x in jax.tree.leaves(t.state["opt_state"]) if x.ndim > 0)
  assert n_opt == 2 * n_adapter  # Adam's two moments, for the adapters only
  frozen_before = jax.device_get(t.frozen)
  adapters_before = jax.device_get(t.state["params"])
  history = t.run(resume=False)
  assert all(np.isfinite(h["loss"]) for h in history) and history[-1]["kl_mean"] > 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(t.frozen), frozen_before)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(t.state["params"]), adapters_before)
  assert any(jax.tree.leaves(changed))


def test_gate_is_refused_for_gpt2_peft_export():
  cfg = M.ModelConfig(family="gpt2", vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                      head_dim=4, intermediate_size=16, max_position_embeddings=8, activation="gelu_new",
                      tie_word_embeddings=True, qkv_bias=True, out_bias=True, mlp_bias=True,
                      lora=M.LoraConfig(rank=2, alpha=2.0, targets=("q", "gate")))
  with pytest.raises(ValueError, match="GPT-2 has no gate projection"):
    lora.save_peft(cfg, {}, "/tmp/unused")
  with pytest.raises(ValueError, match="lora targets must be a non-empty subset"):
    M.LoraConfig(rank=2, alpha=2.0, targets=("query",))
