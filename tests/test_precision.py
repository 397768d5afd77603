"""Accelerator-scale training: f32 master weights with bf16 compute, rematerialization, chunked attention and
log-probs — each equal to the plain computation where it must be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgrpo.models as M
from jaxgrpo.models import policy
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.train import config as config_lib
from jaxgrpo.train import step as ts

CFG = dict(family="llama", vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
           intermediate_size=128, max_position_embeddings=64)


def model_and_params(**kw):
  model = M.from_config(M.ModelConfig(**{**CFG, **kw}))
  return model, M.init_params(model, jax.random.PRNGKey(0))


def batch(n=8, p=4, t=12, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, t + 1, size=n)
  mask = (np.arange(t) < lengths[:, None]).astype(np.int32)
  return ts.Batch(prompt_ids=rng.integers(1, 64, (n, p)).astype(np.int32), prompt_mask=np.ones((n, p), np.int32),
                  tokens=rng.integers(1, 64, (n, t)).astype(np.int32), mask=mask,
                  advantages=rng.normal(size=(n, t)).astype(np.float32) * mask, weights=mask.astype(np.float32),
                  old_logp=np.zeros((n, t), np.float32))


def one_step(model, params, lr):
  mesh = shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx = ts.make_optimizer(config_lib.OptimSpec(learning_rate=lr))
  sh = ts.state_shardings(model, tx, mesh)
  state_sh = {"params": sh["params"], "opt_state": sh["opt_state"]}
  step = ts.make_update_step(model, tx, ts.LossSpec(), ts.UpdateSpec(), mesh, sh)
  state = ts.shard_state({"params": params, "opt_state": tx.init(params)}, state_sh)
  new, _ = step(state, None, None, batch(), np.arange(8, dtype=np.int32)[None])
  return jax.device_get(new["params"])


def changed_fraction(before, after):
  leaves = zip(jax.tree.leaves(before), jax.tree.leaves(after))
  changed = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in leaves)
  return changed / sum(np.size(x) for x in jax.tree.leaves(before))


def test_bf16_compute_with_f32_master_weights_moves_the_weights_like_f32():
  """lr 1e-6, one AdamW step from the same weights on the same batch.

  f32 compute / f32 weights: the reference.  bf16 compute / f32 master weights: ≥ 99% of the entries the
  reference moves move too, and the update is the reference's up to bf16 gradient noise: relative
  difference < 15% of its norm (measured ≈ 9.5%: Adam's first step is ≈ lr·sign(g), so tiny gradient
  entries whose sign bf16 flips move the other way), cosine > 0.99.  bf16 master weights: an update of
  ~1e-6 on weights of ~0.02 is below half a bf16 ulp, so most entries do not move at all."""
  model32, params = model_and_params()
  p32 = one_step(model32, params, 1e-6)
  model_mixed, _ = model_and_params(dtype=jnp.bfloat16)  # params stay float32
  assert model_mixed.config.param_dtype == "float32" and model_mixed.config.dtype == "bfloat16"
  p_mixed = one_step(model_mixed, params, 1e-6)
  model_bf16, _ = model_and_params(dtype="bfloat16", param_dtype="bfloat16")
  params_bf16 = M.cast_params(params, jnp.bfloat16)
  p_bf16 = one_step(model_bf16, params_bf16, 1e-6)

  f32, mixed, bf16 = (changed_fraction(a, b) for a, b in ((params, p32), (params, p_mixed), (params_bf16, p_bf16)))
  assert f32 > 0.95 and mixed > 0.99 * f32, (f32, mixed)
  delta = lambda new, old: np.concatenate([np.ravel(np.asarray(a, np.float32) - np.asarray(b, np.float32))
                                           for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old))])
  d32, dmix = delta(p32, params), delta(p_mixed, params)
  rel = np.linalg.norm(dmix - d32) / np.linalg.norm(d32)
  cos = float(dmix @ d32 / (np.linalg.norm(dmix) * np.linalg.norm(d32)))
  assert rel < 0.15 and cos > 0.99, (rel, cos)
  assert bf16 < 0.2, bf16  # bf16 master weights: the update rounds away
  print(f"\nentries moved by one lr=1e-6 step: f32 {f32:.4f}, bf16 compute + f32 master {mixed:.4f} "
        f"(update rel. diff {rel:.3f}, cosine {cos:.4f}), bf16 master {bf16:.4f}")


def test_dtypes_accepted_as_strings_or_jnp_dtypes_and_bf16_checkpoints_load_losslessly(tmp_path):
  model, params = model_and_params()
  M.save_pretrained(model, params, str(tmp_path / "bf16"), dtype=jnp.bfloat16)
  m1, p1 = M.from_pretrained(str(tmp_path / "bf16"), dtype=jnp.bfloat16)  # f32 master weights by default
  m2, p2 = M.from_pretrained(str(tmp_path / "bf16"), dtype="bfloat16", param_dtype=jnp.bfloat16)
  assert m1.config.dtype == m2.config.dtype == "bfloat16" and m1.config.param_dtype == "float32"
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p1))
  # bf16 → f32 is exact: casting the master weights back gives the checkpoint's values bit for bit
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b)), p1, p2)
  with pytest.raises(ValueError, match="dtype must be one of"):
    M.ModelConfig(**CFG, dtype=jnp.int32)


def _loss(model, params, ids, mask):
  logits = model.apply({"params": params}, ids, M.positions_from_mask(mask), M.causal_mask(mask)).logits
  return jnp.mean(jax.nn.log_softmax(logits)[..., 5] * mask)


# Module-level jitted gradients: one program per model config, shared by the parametrized tests (the plain model's
# gradient compiles once for all four options; eagerly every op was dispatched as its own program).
_grad = jax.jit(jax.grad(_loss, argnums=1), static_argnums=0)


@pytest.mark.parametrize("options", [dict(remat="full"), dict(remat="dots_saveable"),
                                     dict(attention_chunk=5), dict(attention_chunk=8, remat="full")])
def test_remat_and_attention_chunks_give_the_same_gradients(options):
  model, params = model_and_params()
  ids = jax.random.randint(jax.random.PRNGKey(1), (3, 24), 0, 64)
  mask = jnp.ones((3, 24), jnp.int32).at[0, :5].set(0)
  other = M.from_config(model.config.replace(**options))
  g0 = _grad(model, params, ids, mask)
  g1 = _grad(other, params, ids, mask)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0))
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  assert err <= 1e-6 * max(scale, 1.0), (err, scale)
  np.testing.assert_allclose(M.logits(other, params, ids, mask), M.logits(model, params, ids, mask), atol=1e-5)


def _logprob_objective(p, model, ids, mask, chunk):
  logp, ent = policy.completion_logprobs(model, p, ids, mask, 12, 0.7, None, chunk=chunk, with_entropy=True)
  return jnp.sum(logp * jnp.linspace(0.5, 1.5, 12)) + 0.1 * jnp.sum(ent), (logp, ent)


_logprob_value_and_grad = jax.jit(jax.value_and_grad(_logprob_objective, has_aux=True), static_argnums=(1, 4))


@pytest.mark.parametrize("chunk", [4, 5])
def test_chunked_completion_logprobs_equal_unchunked_values_and_gradients(chunk):
  model, params = model_and_params()
  ids = jax.random.randint(jax.random.PRNGKey(2), (4, 20), 0, 64)
  mask = jnp.ones((4, 20), jnp.int32)
  (v0, (l0, e0)), g0 = _logprob_value_and_grad(params, model, ids, mask, 0)
  (v1, (l1, e1)), g1 = _logprob_value_and_grad(params, model, ids, mask, chunk)
  np.testing.assert_allclose(l1, l0, atol=1e-6)
  np.testing.assert_allclose(e1, e0, atol=1e-6)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0))
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  assert err <= 1e-6 * max(scale, 1.0), (err, scale)


def test_chunked_logprobs_never_hold_the_full_logits():
  """XLA's temporaries for the loss's gradient: unchunked they include [N, T, V] float32 logits (several
  copies); chunked the logits term shrinks by T / chunk."""
  cfg = dict(CFG, vocab_size=4096)
  model = M.from_config(M.ModelConfig(**cfg))
  params = jax.eval_shape(lambda: M.init_params(model, jax.random.PRNGKey(0)))
  ids = jax.ShapeDtypeStruct((4, 72), jnp.int32)

  def temp(chunk):
    f = lambda p, i: jnp.sum(policy.completion_logprobs(model, p, i, jnp.ones_like(i), 64, 1.0, None, chunk)[0])
    return jax.jit(jax.grad(f)).lower(params, ids).compile().memory_analysis().temp_size_in_bytes

  full_logits = 4 * 64 * 4096 * 4
  assert temp(0) > 2 * full_logits
  assert temp(8) < temp(0) - 1.5 * full_logits


def test_mixed_precision_is_the_paper_presets_default():
  from jaxgrpo.train import presets

  for name in ("lambda_grpo_paper", "lambda_grpo_paper_full", "prpo_paper"):
    m = presets.preset(name).model
    assert (m.dtype, m.param_dtype) == ("bfloat16", "float32")


def _f32_stacks(hlo: str, params) -> list[str]:
  """The stacked weight shapes [L, ...] that a compiled program holds as float32 arrays."""
  shapes = {tuple(x.shape) for x in jax.tree.leaves(params["layers"])}
  return [s for s in shapes if f"f32[{','.join(map(str, s))}]" in hlo]


def test_bf16_weights_and_cache_as_bits_compute_the_same_and_skip_xla_cpus_float32_round_trip():
  """On XLA:CPU a dynamic slice of a bf16 array runs in float32: a layer scan over stacked bf16 weights converted
  every stack to f32 outside the decode loop and each slice back to bf16 inside it (measured on SmolLM2: more time
  than the matmuls).  ``as_bits`` carries bf16 leaves as uint16 and the model reads them back: the same numbers,
  and the compiled decode loop holds no f32 copy of any weight stack (with plain bf16 params it does: the check
  can fail)."""
  from jaxgrpo.rollout import continuous, sampler

  model, params = model_and_params(dtype="bfloat16", num_layers=3)
  bf16 = M.cast_params(params, jnp.bfloat16)
  bits = M.as_bits(bf16)
  assert {x.dtype for x in jax.tree.leaves(bits)} == {jnp.dtype(jnp.uint16)}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(M.from_bits(b))), bf16, bits)
  ids = np.arange(1, 9, dtype=np.int32)[None].repeat(2, 0)
  ones = np.ones_like(ids)
  logits = [np.asarray(M.logits(model, p, ids, ones)) for p in (bf16, bits)]
  np.testing.assert_array_equal(*logits)
  if jax.default_backend() != "cpu":
    return
  assert sampler.decode_params(model, params) is not params  # f32 master weights: cast and carried as bits once
  assert sampler.decode_params(model, bits) is bits  # already in decode form: no copy
  # sampling_form (the trainer's and evaluate_params' one pass): f32 master weights straight to the decode form
  formed = sampler.sampling_form(model, params)
  jax.tree.map(lambda a, b: (np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                             np.testing.assert_equal(a.dtype, b.dtype)), formed, bits)
  sp = sampler.SamplingParams(group_size=2, max_new_tokens=8, temperature=1.0, pad_id=0)
  key = jax.random.PRNGKey(0)
  outs = [sampler.sample_groups(model, p, ids, ones, key, sp) for p in (params, bf16, bits)]
  for o in outs[1:]:
    np.testing.assert_array_equal(np.asarray(o.tokens), np.asarray(outs[0].tokens))
    np.testing.assert_array_equal(np.asarray(o.logprobs), np.asarray(outs[0].logprobs))
  # the compiled decode loops (both engines): f32 weight stacks with bf16 params, none with their bits
  one = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("rows",))
  ctx = continuous._prefill(model, bits, jnp.asarray(ids), jnp.asarray(ones), key, 2, None, one, ("rows",))
  state = continuous._start(model, ctx, 4, sp, one, ("rows",))
  hlo = {name: continuous._run.lower(model, p, ctx, state, sp, None, 4, 8, one, ("rows",)).compile().as_text()
         for name, p in (("bf16", bf16), ("bits", bits))}
  assert _f32_stacks(hlo["bf16"], params) and not _f32_stacks(hlo["bits"], params)
  cache = sampler.init_cache(model, 4, 16)
  assert cache["k"].dtype == jnp.uint16 and M.from_bits(cache["k"]).dtype == jnp.bfloat16


@pytest.mark.parametrize("engine", ["static", "continuous"])
def test_bf16_decoding_matches_a_bf16_teacher_forced_forward(engine):
  """The bf16 decode paths (batched dots with f32 accumulation over a KV cache kept as bits) against the full
  forward pass, a different code path (one causal attention over the whole sequence), both in bf16: the sampled
  tokens' log-probs agree to bf16 precision, and both are close to the f32 model's."""
  from jaxgrpo.rollout import continuous, sampler

  model16, params = model_and_params(dtype="bfloat16")
  model32 = M.from_config(M.ModelConfig(**CFG))
  params = jax.tree.map(lambda x: x * 4 if x.ndim > 1 else x, params)  # peakier distributions than normal(0.02)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 64, (3, 5)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, :2] = 0
  sp = sampler.SamplingParams(group_size=4, max_new_tokens=12, temperature=1.0, pad_id=0)
  key = jax.random.PRNGKey(3)
  if engine == "static":
    out = sampler.sample_groups(model16, params, ids, mask, key, sp)
  else:
    out, _ = continuous.sample_groups(model16, params, ids, mask, key, sp,
                                      cp=continuous.ContinuousParams(steps_per_call=4, read_block=8))
  gaps = {"bf16": [], "f32": []}
  for g in range(4):
    comp = np.asarray(out.tokens[:, g])
    full_ids = jnp.asarray(np.concatenate([ids, comp], 1))
    full_mask = jnp.asarray(np.concatenate([mask, np.ones_like(comp)], 1))
    for name, model in (("bf16", model16), ("f32", model32)):
      logits = M.logits(model, params, full_ids, full_mask)[:, ids.shape[1] - 1:-1]
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits), comp[..., None], -1)[..., 0]
      gaps[name].append(np.abs(np.asarray(logp) - np.asarray(out.logprobs[:, g])))
  bf16_gap, f32_gap = np.concatenate(gaps["bf16"]), np.concatenate(gaps["f32"])
  assert np.median(bf16_gap) < 0.01 and bf16_gap.max() < 0.08, (np.median(bf16_gap), bf16_gap.max())
  assert f32_gap.max() < 0.25 and np.median(f32_gap) < 0.03, (np.median(f32_gap), f32_gap.max())
