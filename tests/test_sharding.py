"""A sharded update step equals the single-device step (8 simulated CPU devices)."""

import jax
import numpy as np
import optax
import pytest

import jaxgrpo.models as M
from jaxgrpo import config as config_lib
from jaxgrpo import sharding as shard_lib
from jaxgrpo import train_step as ts


def tiny_model():
  cfg = M.ModelConfig(family="llama", vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=32)
  model = M.from_config(cfg)
  return model, M.init_params(model, jax.random.PRNGKey(0))


def make_batch(n=16, p=3, t=5, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 32, size=(n, p + t)).astype(np.int32)
  attn = np.ones((n, p + t), np.int32)
  attn[::3, 0] = 0  # some left padding
  lengths = rng.integers(1, t + 1, size=n)
  comp = (np.arange(t) < lengths[:, None]).astype(np.float32)
  attn[:, p:] = comp
  adv = rng.normal(size=(n, t)).astype(np.float32) * comp
  w = rng.uniform(0.2, 1.0, size=(n, t)).astype(np.float32)
  old = rng.normal(-3.0, 0.1, size=(n, t)).astype(np.float32)
  ref = rng.normal(-3.0, 0.1, size=(n, t)).astype(np.float32)
  return ts.Batch(ids, attn, comp, adv, w, old, ref)


def run_steps(mesh, steps=2, tx=None):
  model, params = tiny_model()
  # SGD keeps the comparison well conditioned: Adam's first step is ~lr·sign(g), which
  # turns a 1e-9 reduction-order difference in a near-zero gradient into an lr-sized one.
  tx = tx or optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))
  spec = ts.LossSpec(kl_beta=0.05, use_old_logp=True, clip_eps_high=0.28)
  sh = ts.state_shardings(model, params, tx, mesh)
  state = ts.shard_state({"params": params, "opt_state": tx.init(params)}, sh)
  update = ts.make_update_step(model, tx, spec, mesh, sh)
  metrics = []
  for s in range(steps):
    state, m = update(state, make_batch(seed=s))
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics), sh


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)])
def test_sharded_step_equals_single_device(shape):
  single, m1, _ = run_steps(shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  sharded, m8, sh = run_steps(shard_lib.make_mesh(*shape))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), sharded, single)
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-6)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  if shape == (2, 2, 2):  # parameters really are split where the rules say
    q = sh["params"]["layers"]["attn"]["q_kernel"].spec
    assert tuple(q) == (None, "fsdp", "tensor", None)
    assert tuple(sh["params"]["embed"].spec) == ("tensor", "fsdp")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_adamw_state_is_sharded_like_params():
  _, _, sh = run_steps(shard_lib.make_mesh(2, 2, 2), steps=1,
                       tx=ts.make_optimizer(config_lib.OptimSpec(learning_rate=1e-3)))
  mu = sh["opt_state"][1][0].mu  # clip_by_global_norm, then adamw's ScaleByAdamState
  assert mu["layers"]["attn"]["q_kernel"].spec == sh["params"]["layers"]["attn"]["q_kernel"].spec


def test_rules_fall_back_to_replication_when_a_dim_does_not_divide():
  mesh = shard_lib.make_mesh(1, 2, 4) if jax.device_count() >= 8 else None
  if mesh is None:
    pytest.skip("needs 8 devices")
  spec = shard_lib.spec_for(("vocab", "embed"), (30, 64), mesh, shard_lib.MeshRules())
  assert tuple(spec) == (None, "fsdp")  # 30 % 4 != 0 → vocab replicated


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="must equal the number of devices"):
    shard_lib.make_mesh(3, 1, 1, devices=jax.devices()[:2])
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    shard_lib.make_mesh(-1, -1, 1)
