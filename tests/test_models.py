"""Flax models vs transformers: logits parity, checkpoint round trips, strict conversion."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_tiny import TINY, hf_logits, make_tiny, padded_batch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

import jaxgrpo.models as M


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny_checkpoint(request, tmp_path_factory):
  model = make_tiny(request.param)
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path)
  return request.param, model, path


def test_logits_parity_f32_with_padding(tiny_checkpoint):
  name, hf, path = tiny_checkpoint
  model, params = M.from_pretrained(path)
  ids, mask = padded_batch(model.config.vocab_size)
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  theirs = hf_logits(hf, ids, mask)
  valid = mask.astype(bool)
  assert np.abs(theirs[valid]).max() > 1.0, "test model too tame to catch errors"
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=0)


def test_qwen3_with_tied_embeddings_and_attention_bias_matches_transformers(tmp_path):
  """The other Qwen3 variants: tied embeddings (Qwen3-0.6B … 4B) and attention_bias (q/k/v and o biased)."""
  from transformers import Qwen3Config, Qwen3ForCausalLM

  torch.manual_seed(1)
  hf = Qwen3ForCausalLM(Qwen3Config(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True,
                                    attention_bias=True, max_position_embeddings=32)).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.normal_(1.0 if p.ndim == 1 else 0.0, 0.3)
  hf.save_pretrained(str(tmp_path))
  model, params = M.from_pretrained(str(tmp_path))
  assert model.config.tie_word_embeddings and model.config.qk_norm and model.config.out_bias
  ids, mask = padded_batch(50, seed=5)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(M.logits(model, params, ids, mask))[valid], hf_logits(hf, ids, mask)[valid],
                             atol=1e-4, rtol=0)
  assert M.to_hf_config(model.config)["attention_bias"] is True


def test_logits_bf16_error_comparable_to_transformers_bf16(tiny_checkpoint):
  import copy

  name, hf, path = tiny_checkpoint
  model, params = M.from_pretrained(path, dtype=jnp.bfloat16, param_dtype="bfloat16")  # strings or jnp dtypes
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  ids, mask = padded_batch(model.config.vocab_size, seed=1)
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  exact = hf_logits(hf, ids, mask)
  hf_bf16 = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), ids, mask)
  valid = mask.astype(bool)
  # Mean abs error against the f32 logits, ours vs transformers' own bf16 run.
  err_ours = np.abs(ours[valid] - exact[valid]).mean()
  err_hf = np.abs(hf_bf16[valid] - exact[valid]).mean()
  assert err_ours <= 2 * err_hf, (err_ours, err_hf)


def test_save_pretrained_reloads_in_transformers(tiny_checkpoint, tmp_path):
  name, hf, path = tiny_checkpoint
  model, params = M.from_pretrained(path)
  out = str(tmp_path / "export")
  M.save_pretrained(model, params, out)
  reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
  ids, mask = padded_batch(model.config.vocab_size, seed=2)
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  valid = mask.astype(bool)
  np.testing.assert_allclose(hf_logits(reloaded, ids, mask)[valid], ours[valid], atol=1e-4)
  # and back into jaxgrpo: identical parameters
  model2, params2 = M.from_pretrained(out)
  assert model2.config == model.config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_round_trip(tiny_checkpoint, tmp_path):
  name, hf, path = tiny_checkpoint
  model, params = M.from_pretrained(path)
  out = str(tmp_path / "sharded")
  M.save_pretrained(model, params, out, max_shard_bytes=20_000)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 1
  _, params2 = M.from_pretrained(out)
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
  ids, mask = padded_batch(model.config.vocab_size, seed=3)
  valid = mask.astype(bool)
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(hf_logits(reloaded, ids, mask)[valid], ours[valid], atol=1e-4)


def test_every_param_has_logical_axes(tiny_checkpoint):
  _, _, path = tiny_checkpoint
  model, params = M.from_pretrained(path)
  axes = M.logical_axes(model)
  pairs = jax.tree.leaves(jax.tree.map(lambda a, x: (tuple(a), x.ndim), axes, params,
                                       is_leaf=lambda a: isinstance(a, jax.sharding.PartitionSpec)),
                          is_leaf=lambda t: isinstance(t, tuple))
  assert pairs
  for names, ndim in pairs:
    assert len(names) == ndim
  assert tuple(axes["layers"]["attn"]["q_kernel"]) == ("layers", "embed", "heads", "head_dim")
  assert tuple(axes["embed"]) == ("vocab", "embed")


def _rewrite(path, tmp_path, edit_config=None, edit_tensors=None):
  out = tmp_path / "edited"
  out.mkdir()
  with open(os.path.join(path, "config.json")) as f:
    cfg = json.load(f)
  if edit_config:
    edit_config(cfg)
  with open(out / "config.json", "w") as f:
    json.dump(cfg, f)
  tensors = load_file(os.path.join(path, "model.safetensors"))
  if edit_tensors:
    edit_tensors(tensors)
  save_file(tensors, str(out / "model.safetensors"))
  return str(out)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("llama"))
  make_tiny("llama_gqa_llama3rope").save_pretrained(path)
  return path


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(sliding_window_pattern=2), "unknown config field 'sliding_window_pattern'"),
        (lambda c: c.update(hidden_act="gelu"), "'hidden_act' = 'gelu' is not supported"),
        (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
         "rope_type 'yarn' is not supported"),
        (lambda c: c.update(pretraining_tp=2), "'pretraining_tp' = 2 is not supported"),
        (lambda c: c.update(model_type="mistral"), "'model_type' = 'mistral'"),
    ],
)
def test_unknown_or_unsupported_config_fields_are_refused(llama_path, tmp_path, edit, match):
  path = _rewrite(llama_path, tmp_path, edit_config=edit)
  with pytest.raises(M.UnsupportedConfigError, match=match):
    M.from_pretrained(path)


def test_qwen2_sliding_window_refused():
  base = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 16}
  M.from_hf_config(base)
  with pytest.raises(M.UnsupportedConfigError, match="'use_sliding_window' = True"):
    M.from_hf_config({**base, "use_sliding_window": True})
  with pytest.raises(M.UnsupportedConfigError, match="layer_types"):
    M.from_hf_config({**base, "layer_types": ["sliding_attention"]})


def test_old_style_rope_fields_read_like_rope_parameters():
  base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 16}
  scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
  old = M.from_hf_config({**base, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling}})
  new = M.from_hf_config({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **scaling}})
  assert old == new and old.rope_scaling.factor == 32.0 and old.rope_theta == 500000.0
  with pytest.raises(M.UnsupportedConfigError, match=r"missing \['factor'\]"):
    partial = {k: v for k, v in scaling.items() if k != "factor"}
    M.from_hf_config({**base, "rope_scaling": {"rope_type": "llama3", **partial}})


def test_checkpoint_mismatches_are_reported_by_name(llama_path, tmp_path):
  def edit(t):
    del t["model.layers.1.mlp.up_proj.weight"]
    t["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    t["model.norm.weight"] = np.zeros(7, np.float32)

  path = _rewrite(llama_path, tmp_path, edit_tensors=edit)
  with pytest.raises(M.CheckpointMismatchError) as err:
    M.from_pretrained(path)
  msg = str(err.value)
  assert "missing tensors (1): ['model.layers.1.mlp.up_proj.weight']" in msg
  assert "unexpected tensors (1): ['model.layers.0.extra.weight']" in msg
  assert "model.norm.weight: expected (32,), got (7,)" in msg


def test_gpt2_checkpoint_without_transformer_prefix(tmp_path):
  hf = make_tiny("gpt2")
  hf.save_pretrained(str(tmp_path / "full"))
  tensors = load_file(str(tmp_path / "full" / "model.safetensors"))
  stripped = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  for i in range(2):  # the causal-mask buffers old GPT-2 checkpoints carry
    stripped[f"h.{i}.attn.bias"] = np.zeros((1, 1, 64, 64), np.float32)
  out = tmp_path / "stripped"
  out.mkdir()
  save_file(stripped, str(out / "model.safetensors"))
  (out / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
  model, params = M.from_pretrained(str(out))
  ids, mask = padded_batch(101)
  valid = mask.astype(bool)
  ours = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(ours[valid], hf_logits(hf, ids, mask)[valid], atol=1e-4)


def test_init_params_from_config_runs_and_matches_axes():
  cfg = M.ModelConfig(family="gpt2", vocab_size=11, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2,
                      head_dim=8, intermediate_size=32, max_position_embeddings=16, activation="gelu_new",
                      tie_word_embeddings=True, qkv_bias=True, out_bias=True, mlp_bias=True)
  model = M.from_config(cfg)
  params = M.init_params(model, jax.random.PRNGKey(0))
  out = M.logits(model, params, jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32))
  assert out.shape == (2, 5, 11) and bool(jnp.isfinite(out).all())
  with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
    M.logits(model, params, jnp.ones((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32))


@pytest.mark.parametrize("name, size", [("Qwen/Qwen3-1.7B", (1.7e9, 1.75e9)),
                                        ("google/gemma-3-1b-it", (0.99e9, 1.01e9))])
def test_known_architectures_have_the_parameter_count_of_transformers(name, size):
  """``jaxgrpo plan`` with ``model.checkpoint`` = a known hub id sizes the real architecture: our shape-only params
  count what transformers' own model of that config.json counts (built on the meta device: no memory)."""
  from transformers import AutoConfig, AutoModelForCausalLM

  from jaxgrpo.models import known

  hf_cfg = dict(known.CONFIGS[name])
  with torch.device("meta"):
    config = AutoConfig.for_model(**hf_cfg)
    theirs = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
  ours = sum(x.size for x in jax.tree.leaves(M.abstract_params(M.from_config(M.from_hf_config(hf_cfg)))))
  assert ours == theirs and size[0] < ours < size[1]
  if name.startswith("google"):
    cfg = M.from_hf_config(hf_cfg)
    assert cfg.local_layers == tuple((i + 1) % 6 != 0 for i in range(26)) and cfg.sliding_window == 512
