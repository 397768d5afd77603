"""Every bad input gets a clear error that names it: sampler arguments, checked PRPO inputs, checkpoint files."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import jaxgrpo.models as M
from jaxgrpo import checked
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.rollout import sampler

CFG = M.ModelConfig(family="llama", vocab_size=20, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=8, intermediate_size=32, max_position_embeddings=32)


@pytest.fixture(scope="module")
def tiny():
  model = M.from_config(CFG)
  return model, M.init_params(model, jax.random.PRNGKey(0))


def test_sample_does_not_consume_the_callers_key(tiny):
  model, params = tiny
  key = jax.random.PRNGKey(3)
  ids, mask = np.array([[0, 4, 5]]), np.array([[0, 1, 1]])
  a = sampler.sample(model, params, ids, mask, key, group_size=2, max_new_tokens=4)
  assert not key.is_deleted()
  b = sampler.sample(model, params, ids, mask, key, group_size=2, max_new_tokens=4)  # the same key again
  np.testing.assert_array_equal(a.tokens, b.tokens)


@pytest.mark.parametrize("ids, mask, kw, match", [
    ([[4, 5, 0]], [[1, 1, 0]], {}, r"prompts must be left-padded.*row 0"),
    ([[4, 5, 6]], [[0, 0, 0]], {}, r"prompt row 0 is empty"),
    ([[4, 25, 6]], [[1, 1, 1]], {}, r"prompt_ids\[0, 1\] = 25 is outside the vocabulary \[0, 20\)"),
    ([[4, -1, 6]], [[1, 1, 1]], {}, r"prompt_ids\[0, 1\] = -1 is outside the vocabulary"),
    ([[4, 5, 6]], [[1, 2, 1]], {}, r"prompt_mask must hold only 0 and 1"),
    ([[4, 5, 6]], [[1, 1, 1]], {"eos_ids": (3, 99)}, r"eos_ids \[99\] outside the vocabulary \[0, 20\)"),
    ([[4, 5, 6]], [[1, 1, 1]], {"pad_id": 20}, r"pad_id \[20\] outside the vocabulary"),
])
def test_sample_rejects_bad_prompts_and_ids(tiny, ids, mask, kw, match):
  model, params = tiny
  with pytest.raises(ValueError, match=match):
    sampler.sample(model, params, np.array(ids), np.array(mask), jax.random.PRNGKey(0), max_new_tokens=2, **kw)


def test_checked_entropy_segments_and_segment_scores():
  ent = np.ones((2, 6), np.float32)
  with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
    checked.entropy_segments(ent, np.full((2, 6), 2))
  with pytest.raises(ValueError, match="mask must be right-padded"):
    checked.entropy_segments(ent, np.array([[0, 1, 1, 1, 1, 1], [1] * 6]))
  seg = np.array([[0, 0, 1, 1, 2, -1]])
  with pytest.raises(ValueError, match=r"scores has 2 score\(s\) per completion but segment_ids .* up to id 2"):
    checked.segment_scores_to_tokens(seg, np.array([[0.5, 1.0]]))
  out = checked.segment_scores_to_tokens(seg, np.array([[0.5, 1.0, 0.0]]))
  np.testing.assert_allclose(out, [[0.5, 0.5, 1.0, 1.0, 0.0, 0.0]])


def test_checkpoint_file_errors_name_the_file(tiny, tmp_path):
  model, params = tiny
  d = tmp_path / "ck"
  M.save_pretrained(model, params, str(d))
  (d / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"ck/config.json: not valid JSON"):
    M.from_pretrained(str(d))
  cfg = M.to_hf_config(model.config)
  (d / "config.json").write_text(json.dumps({**cfg, "sliding_window_pattern": 4}))
  with pytest.raises(ValueError, match=r"ck/config.json: unknown config field 'sliding_window_pattern'"):
    M.from_pretrained(str(d))
  (d / "config.json").write_text(json.dumps(cfg))
  with open(d / "model.safetensors", "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match=r"ck/model.safetensors: not a readable safetensors file"):
    M.from_pretrained(str(d))
  os.remove(d / "model.safetensors")
  with pytest.raises(FileNotFoundError, match=r"no model.safetensors or model.safetensors.index.json"):
    M.from_pretrained(str(d))


def test_a_model_directory_without_tokenizer_files_says_so(tiny, tmp_path):
  model, params = tiny
  M.save_pretrained(model, params, str(tmp_path / "no_tok"))
  with pytest.raises(FileNotFoundError, match=r"no tokenizer files .*copy the tokenizer"):
    HFTokenizer(str(tmp_path / "no_tok"))
  shutil.rmtree(tmp_path / "no_tok")


def test_missing_checkpoint_tensors_are_named(tiny, tmp_path):
  model, params = tiny
  from safetensors.numpy import load_file, save_file

  M.save_pretrained(model, params, str(tmp_path / "m"))
  tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
  del tensors["model.layers.0.mlp.up_proj.weight"]
  save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
  with pytest.raises(M.CheckpointMismatchError, match=r"m: .*missing tensors \(1\): \['model.layers.0.mlp.up_proj"):
    M.from_pretrained(str(tmp_path / "m"))
