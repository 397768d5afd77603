"""The update step: sharded == single device (8 simulated CPU devices), minibatches inside one call ==
separate calls, non-finite updates detected on device and never applied."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

import jaxgrpo.models as M
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.train import config as config_lib
from jaxgrpo.train import step as ts


def tiny_model(**kw):
  cfg = M.ModelConfig(family="llama", vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=32, **kw)
  model = M.from_config(cfg)
  return model, M.init_params(model, jax.random.PRNGKey(0))


def make_batch(n=16, p=3, t=5, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 32, size=(n, p)).astype(np.int32)
  pmask = np.ones((n, p), np.int32)
  pmask[::3, 0] = 0  # some left padding
  lengths = rng.integers(1, t + 1, size=n)
  comp = (np.arange(t) < lengths[:, None]).astype(np.int32)
  tokens = rng.integers(1, 32, size=(n, t)).astype(np.int32)
  adv = rng.normal(size=(n, t)).astype(np.float32) * comp
  w = rng.uniform(0.2, 1.0, size=(n, t)).astype(np.float32)
  old = rng.normal(-3.0, 0.1, size=(n, t)).astype(np.float32)
  return ts.Batch(prompt_ids=ids, prompt_mask=pmask, tokens=tokens, mask=comp, advantages=adv, weights=w,
                  old_logp=old)


SGD = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))


def run_steps(mesh, steps=2, tx=None, uspec=None, batches=None):
  model, params = tiny_model()
  # SGD keeps the comparison well conditioned: Adam's first step is ~lr·sign(g), which
  # turns a 1e-9 reduction-order difference in a near-zero gradient into an lr-sized one.
  tx = tx or SGD
  spec = ts.LossSpec(kl_beta=0.05, clip_eps_high=0.28)
  uspec = uspec or ts.UpdateSpec(old_logp="batch", reference="params")
  sh = ts.state_shardings(model, tx, mesh)
  state = ts.shard_state({"params": params, "opt_state": tx.init(params)},
                         {"params": sh["params"], "opt_state": sh["opt_state"]})
  ref = ts.shard_state(params, sh["full"]) if uspec.reference == "params" else None
  update = ts.make_update_step(model, tx, spec, uspec, mesh, sh)
  metrics = []
  for s in range(steps):
    batch = batches[s] if batches else make_batch(seed=s)
    orders = np.tile(np.arange(16, dtype=np.int32), (uspec.num_iterations, 1))
    state, m = update(state, None, ref, batch, orders)
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


def test_minibatches_in_one_call_equal_separate_calls():
  """μ=2 passes × 2 minibatches in one jitted call == four single-minibatch calls on the same rows."""
  mesh = shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model, params = tiny_model()
  spec = ts.LossSpec(clip_eps_high=0.28)
  sh = ts.state_shardings(model, SGD, mesh)
  state_sh = {"params": sh["params"], "opt_state": sh["opt_state"]}
  batch = make_batch()
  orders = np.stack([np.random.default_rng(i).permutation(16) for i in range(2)]).astype(np.int32)
  us = ts.UpdateSpec(num_iterations=2, num_minibatches=2, old_logp="batch")
  fused = ts.make_update_step(model, SGD, spec, us, mesh, sh)
  s1, m = fused(ts.shard_state({"params": params, "opt_state": SGD.init(params)}, state_sh), None, None, batch, orders)
  us = ts.UpdateSpec(num_iterations=1, num_minibatches=1, old_logp="batch")
  single = ts.make_update_step(model, SGD, spec, us, mesh, sh)
  s2 = ts.shard_state({"params": params, "opt_state": SGD.init(params)}, state_sh)
  for rows in orders.reshape(4, 8):
    mb = jax.tree.map(lambda x: x[rows], batch)
    s2, _ = single(s2, None, None, mb, np.arange(8, dtype=np.int32)[None])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), jax.device_get(s1), jax.device_get(s2))
  assert int(m["skipped_updates"]) == 0 and int(m["nonfinite"]) == 0


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant", "weight_mean"])
def test_micro_batches_accumulate_to_the_same_update(aggregation):
  """Gradient accumulation over 4 micro-batches gives the one-shot minibatch gradient, for every aggregation."""
  mesh = shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model, params = tiny_model()
  spec = ts.LossSpec(aggregation=aggregation, kl_beta=0.05)
  sh = ts.state_shardings(model, SGD, mesh)
  state_sh = {"params": sh["params"], "opt_state": sh["opt_state"]}
  ref = ts.shard_state(params, sh["full"])
  out = []
  for micro in (1, 4):
    us = ts.UpdateSpec(num_iterations=1, num_minibatches=2, micro_batches=micro, old_logp="batch", reference="params")
    step = ts.make_update_step(model, SGD, spec, us,
                               mesh, sh)
    state = ts.shard_state({"params": params, "opt_state": SGD.init(params)}, state_sh)
    state, m = step(state, None, ref, make_batch(), np.arange(16, dtype=np.int32)[None])
    out.append((jax.device_get(state), jax.device_get(m)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), out[0][0], out[1][0])
  np.testing.assert_allclose(out[0][1]["loss"], out[1][1]["loss"], rtol=1e-5)
  np.testing.assert_allclose(out[0][1]["grad_norm"], out[1][1]["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_update_is_detected_and_not_applied(mode):
  """A NaN advantage in the second minibatch: flagged on device; its update is never applied, and in
  stop mode neither is any later one."""
  mesh = shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model, params = tiny_model()
  sh = ts.state_shardings(model, SGD, mesh)
  state_sh = {"params": sh["params"], "opt_state": sh["opt_state"]}
  batch = make_batch()
  adv = np.array(batch.advantages)
  adv[5, 0] = np.nan  # row 5 is in the second of 4 minibatches (rows 4-7)
  bad = dataclasses.replace(batch, advantages=adv)
  us = ts.UpdateSpec(num_iterations=1, num_minibatches=4, old_logp="batch", nonfinite=mode)
  update = ts.make_update_step(model, SGD, ts.LossSpec(), us,
                               mesh, sh)
  state, m = update(ts.shard_state({"params": params, "opt_state": SGD.init(params)}, state_sh), None, None, bad,
                    np.arange(16, dtype=np.int32)[None])
  assert ts.nonfinite_names(int(m["nonfinite"])) == ["loss", "gradients", "parameters"]
  assert bool(ts.all_finite(state))
  assert int(m["skipped_updates"]) == (3 if mode == "stop" else 1)
  # the reference: minibatch 0 only (stop), or minibatches 0, 2, 3 (skip)
  us = ts.UpdateSpec(num_iterations=1, num_minibatches=1, old_logp="batch")
  one = ts.make_update_step(model, SGD, ts.LossSpec(), us, mesh, sh)
  ref = ts.shard_state({"params": params, "opt_state": SGD.init(params)}, state_sh)
  for k in ([0] if mode == "stop" else [0, 2, 3]):
    rows = np.arange(4 * k, 4 * k + 4)
    ref, _ = one(ref, None, None, jax.tree.map(lambda x: x[rows], batch), np.arange(4, dtype=np.int32)[None])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), jax.device_get(state), jax.device_get(ref))


def test_rules_fall_back_to_replication_when_a_dim_does_not_divide():
  mesh = shard_lib.make_mesh(1, 2, 4) if jax.device_count() >= 8 else None
  if mesh is None:
    pytest.skip("needs 8 devices")
  spec = shard_lib.spec_for(("vocab", "embed"), (30, 64), mesh, shard_lib.MeshRules())
  assert tuple(spec) == (None, "fsdp")  # 30 % 4 != 0 → vocab replicated


def test_batch_axes_come_from_the_rules():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  mesh = shard_lib.make_mesh(2, 2, 2)
  assert shard_lib.batch_shards(mesh) == 4
  custom = shard_lib.MeshRules(rules=(("batch", "data"),) + shard_lib.MeshRules().rules[1:])
  assert shard_lib.batch_axes(mesh, custom) == ("data",) and shard_lib.batch_shards(mesh, custom) == 2


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="must equal the number of devices"):
    shard_lib.make_mesh(3, 1, 1, devices=jax.devices()[:2])
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    shard_lib.make_mesh(-1, -1, 1)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_micro_batches_lower_per_device_memory_on_a_data_parallel_mesh():
  """On 8 data-parallel devices each micro-batch stays spread over all of them, so 4 micro-batches cut the
  update's per-device temporaries (XLA's memory analysis of the compiled step) to well under half; a split
  into contiguous slices would run each slice on 2 of the 8 devices and save nothing."""
  cfg = M.ModelConfig(family="llama", vocab_size=2048, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=256)
  model = M.from_config(cfg)
  params = jax.eval_shape(lambda: M.init_params(model, jax.random.PRNGKey(0)))
  mesh = shard_lib.make_mesh(8, 1, 1)
  sh = ts.state_shardings(model, SGD, mesh)
  state = {"params": params, "opt_state": jax.eval_shape(SGD.init, params)}
  n, p, t = 64, 8, 128
  S = jax.ShapeDtypeStruct
  batch = ts.Batch(prompt_ids=S((n, p), np.int32), prompt_mask=S((n, p), np.int32), tokens=S((n, t), np.int32),
                   mask=S((n, t), np.int32), advantages=S((n, t), np.float32), weights=S((n, t), np.float32),
                   old_logp=S((n, t), np.float32))
  temp = {}
  for micro in (1, 4):
    us = ts.UpdateSpec(num_iterations=1, num_minibatches=1, micro_batches=micro, old_logp="batch")
    step = ts.make_update_step(model, SGD, ts.LossSpec(), us, mesh, sh)
    compiled = step.lower(state, None, None, batch, S((1, n), np.int32)).compile()
    temp[micro] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[4] < 0.5 * temp[1], temp


def test_strided_slices_round_trip():
  x = np.arange(24).reshape(12, 2)
  s = ts.strided_slices(x, 3)
  assert s.shape == (3, 4, 2) and s[1, :, 0].tolist() == [2, 8, 14, 20]
  np.testing.assert_array_equal(ts.unslice(s), x)
