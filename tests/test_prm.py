"""PRMs: the rule-based arithmetic PRM and the Qwen2.5-Math-PRM-shaped neural PRM."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxgrpo.models as M
from jaxgrpo.tasks import prm as P
from jaxgrpo.tasks.sources import Example


def test_arithmetic_prm_scores():
  prm = P.ArithmeticPRM(neutral=0.5)
  ex = Example("q", "1")
  assert prm(ex, ["3 + 4 = 7", "7 * 2 = 15", "we are done", "10 / 4 = 2.5 and 2 - 5 = -3"]) == [1.0, 0.0, 0.5, 1.0]


def test_neural_prm_head_matches_torch_and_reads_separators():
  cfg = M.ModelConfig(family="qwen2", vocab_size=20, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                      head_dim=8, intermediate_size=32, max_position_embeddings=32, qkv_bias=True,
                      tie_word_embeddings=True)
  body = M.from_config(cfg)
  prm = P.NeuralPRM(body, separator_id=7)
  torch.manual_seed(0)
  head_t = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
  tensors = {f"score.{k}": v.detach().numpy() for k, v in head_t.state_dict().items()}
  params = {"body": M.init_params(body, jax.random.PRNGKey(1)),
            "head": jax.tree.map(jnp.asarray, P.head_from_hf(tensors))}
  ids = np.array([[0, 3, 4, 7, 5, 6, 7], [0, 0, 2, 7, 9, 9, 7]], np.int32)
  mask = np.array([[1] * 7, [0, 1, 1, 1, 1, 1, 1]], np.int32)
  scores = prm.score_ids(params, ids, mask)
  assert [len(s) for s in scores] == [2, 2]
  hidden = body.apply({"params": params["body"]}, jnp.asarray(ids), M.positions_from_mask(jnp.asarray(mask)),
                      M.causal_mask(jnp.asarray(mask)), compute_logits=False).hidden
  with torch.no_grad():
    probs = torch.softmax(head_t(torch.tensor(np.asarray(hidden))), -1)[..., 1].numpy()
  np.testing.assert_allclose(scores[0], probs[0][[3, 6]], atol=1e-5)
  np.testing.assert_allclose(scores[1], probs[1][[3, 6]], atol=1e-5)
  assert all(0 <= s <= 1 for row in scores for s in row)


def test_load_neural_prm_from_an_hf_directory(tmp_path):
  import json

  from safetensors.numpy import load_file, save_file

  cfg = M.ModelConfig(family="qwen2", vocab_size=20, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                      head_dim=8, intermediate_size=32, max_position_embeddings=32, qkv_bias=True,
                      tie_word_embeddings=True)
  body = M.from_config(cfg)
  body_params = M.init_params(body, jax.random.PRNGKey(2))
  M.save_pretrained(body, body_params, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  rng = np.random.default_rng(0)
  tensors.update({"score.0.weight": rng.normal(size=(16, 16)).astype(np.float32),
                  "score.0.bias": rng.normal(size=16).astype(np.float32),
                  "score.2.weight": rng.normal(size=(2, 16)).astype(np.float32),
                  "score.2.bias": rng.normal(size=2).astype(np.float32)})
  save_file(tensors, str(tmp_path / "model.safetensors"))
  hf_cfg = json.loads((tmp_path / "config.json").read_text())
  hf_cfg.update(tie_word_embeddings=False, architectures=["Qwen2ForProcessRewardModel"],
                auto_map={"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
  (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
  prm, params = P.load_neural_prm(str(tmp_path), separator_id=7)
  jax.tree.map(np.testing.assert_array_equal, params["body"]["layers"], body_params["layers"])
  np.testing.assert_array_equal(params["head"]["w2"], tensors["score.2.weight"].T)
  scores = prm.score_ids(params, np.array([[1, 2, 7, 3, 7]]), np.ones((1, 5), np.int32))
  assert len(scores[0]) == 2 and all(0 <= s <= 1 for s in scores[0])
