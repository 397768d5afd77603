"""The core as a JAX library: traced hyper-parameters, padding that never reaches a loss, lists accepted, shapes
checked by name, a sharded batch axis kept sharded, finite gradients in flat groups, what carries a gradient,
64-bit ids, and the eager ``checked`` twins with the core's own signatures."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxgrpo
from jaxgrpo import checked


def batch(seed=0, shape=(2, 4, 6)):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
  mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
  logp = rng.normal(-1.0, 0.3, shape).astype(np.float32)
  old = (logp + rng.normal(0, 0.2, shape)).astype(np.float32)
  ref = (logp + rng.normal(0, 0.2, shape)).astype(np.float32)
  adv = rng.normal(size=shape[:-1]).astype(np.float32)
  w = rng.uniform(0.2, 1.0, shape).astype(np.float32)
  return logp, old, ref, adv, mask, w


# ----------------------------------------------------------------------------- 1. traced hyper-parameters


def test_a_vmap_over_beta_and_clip_range_is_one_program_equal_to_a_loop():
  logp, old, ref, adv, mask, w = batch()
  betas = jnp.array([0.0, 0.04, 0.1])
  highs = jnp.array([0.2, 0.28, 0.5])

  def loss(beta, hi):
    return jaxgrpo.policy_loss(logp, old, ref, adv, mask, weights=w, kl_beta=beta, clip_eps_low=0.1,
                               clip_eps_high=hi)[0]

  swept = jax.vmap(loss)(betas, highs)
  looped = [loss(float(b), float(h)) for b, h in zip(betas, highs)]
  np.testing.assert_allclose(swept, looped, rtol=1e-6)
  jitted = jax.jit(lambda lo: jaxgrpo.policy_loss(logp, old, ref, adv, mask, clip_eps_low=lo, kl_beta=0.04)[0])
  np.testing.assert_allclose(jitted(0.2), jaxgrpo.policy_loss(logp, old, ref, adv, mask, kl_beta=0.04)[0], rtol=1e-6)


def test_traced_eps_in_advantages_and_the_implicit_prm():
  tokens = np.array([[1, 2, 3], [1, 2, 4], [5, 6, 7]], np.int32)
  mask = np.ones_like(tokens)
  r = np.array([1.0, 0.0, 0.5], np.float32)
  eps = jnp.array([0.0, 1e-4, 0.1])
  a = jax.vmap(lambda e: jaxgrpo.group_advantages(r, eps=e))(eps)
  A = jax.vmap(lambda e: jaxgrpo.implicit_prm(tokens, mask, r, eps=e).step_advantages)(eps)
  for i, e in enumerate(np.asarray(eps)):
    np.testing.assert_allclose(a[i], jaxgrpo.group_advantages(r, eps=float(e)), rtol=1e-6)
    np.testing.assert_allclose(A[i], jaxgrpo.implicit_prm(tokens, mask, r, eps=float(e)).step_advantages, rtol=1e-6)


def test_a_traced_beta_without_a_reference_is_refused_by_name():
  logp, old, ref, adv, mask, w = batch()
  with pytest.raises(ValueError, match=r"ref_logp is required when kl_beta != 0 \(kl_beta is traced here"):
    jax.jit(lambda b: jaxgrpo.policy_loss(logp, None, None, adv, mask, kl_beta=b)[0])(0.0)
  with pytest.raises(ValueError, match="clip_eps_low must be >= 0"):
    jaxgrpo.policy_loss(logp, None, None, adv, mask, clip_eps_low=-0.1)


# ----------------------------------------------------------------------------- 2. padding never reaches the loss


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), junk=st.sampled_from([-np.inf, np.inf, np.nan, -1e30, 1e30]),
       beta=st.sampled_from([0.0, 0.04]), per_token=st.booleans(),
       aggregation=st.sampled_from(["token_mean", "seq_mean", "constant", "weight_mean"]))
def test_values_at_padding_never_reach_the_loss_or_its_gradient(seed, junk, beta, per_token, aggregation):
  logp, old, ref, adv, mask, w = batch(seed)
  if per_token:
    adv = np.broadcast_to(adv[..., None], logp.shape).copy()
  pad = mask == 0
  dirty = [x.copy() for x in (logp, old, ref, w)]
  for x in dirty:
    x[pad] = junk
  adv_dirty = adv.copy()
  if per_token:
    adv_dirty[pad] = junk

  def f(lp, o, r, a, ww):
    return jaxgrpo.policy_loss(lp, o, r, a, mask, weights=ww, kl_beta=beta, aggregation=aggregation)

  (clean, m_clean), g_clean = jax.value_and_grad(f, has_aux=True)(logp, old, ref, adv, w)
  (noisy, m_noisy), g_noisy = jax.value_and_grad(f, has_aux=True)(*dirty[:3], adv_dirty, dirty[3])
  assert np.isfinite(noisy) and np.isfinite(g_noisy).all()
  np.testing.assert_allclose(noisy, clean, rtol=1e-6)
  np.testing.assert_allclose(g_noisy, g_clean, rtol=1e-6, atol=1e-9)
  assert (np.asarray(g_noisy)[pad] == 0).all()
  for k in m_clean:
    np.testing.assert_allclose(m_noisy[k], m_clean[k], rtol=1e-6, err_msg=k)


def test_the_issues_example_minus_infinity_log_probs_on_padding():
  logp, old, ref, adv, mask, w = batch(3)
  lp, o = np.where(mask, logp, -np.inf), np.where(mask, old, -np.inf)
  loss, _ = jaxgrpo.policy_loss(lp, o, None, adv, mask)
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, jaxgrpo.policy_loss(logp, old, None, adv, mask)[0], rtol=1e-6)


# ----------------------------------------------------------------------------- 3. lists and NumPy arrays


def _list_cases():
  tokens = [[[1, 2, 3], [1, 2, 0]]]
  mask = [[[1, 1, 1], [1, 1, 0]]]
  rewards = [[1.0, 0.0]]
  counts = np.asarray(jaxgrpo.prefix_counts(np.array(tokens), np.array(mask))).tolist()
  logp = [[[-0.5, -1.0, -0.2], [-0.3, -0.4, 0.0]]]
  scores = [[[0.2, 0.8], [0.5, 0.5]]]
  seg = [[[0, 0, 1], [0, 1, -1]]]
  tok_scores = [[[0.2, 0.2, 0.8], [0.5, 0.5, 0.0]]]
  step_rewards = [[[0.5, 0.5, 1.0], [0.5, 0.5, 0.0]]]
  return {
      "prefix_counts": (jaxgrpo.prefix_counts, (tokens, mask)),
      "prefix_hashes": (jaxgrpo.prefix_hashes, (tokens, mask)),
      "implicit_prm": (jaxgrpo.implicit_prm, (tokens, mask, rewards)),
      "tree_stats": (jaxgrpo.tree_stats, (tokens, mask)),
      "tree_stats_from_counts": (jaxgrpo.tree_stats_from_counts, (counts, mask)),
      "prefix_metrics": (jaxgrpo.prefix_metrics, (counts, mask)),
      "group_advantages": (jaxgrpo.group_advantages, (rewards,)),
      "step_advantages": (jaxgrpo.step_advantages, (step_rewards, rewards, mask)),
      "advantage_metrics": (jaxgrpo.advantage_metrics, (rewards,)),
      "lambda_weights": (jaxgrpo.lambda_weights, (counts,)),
      "k3_kl": (jaxgrpo.k3_kl, (logp, logp)),
      "policy_loss": (jaxgrpo.policy_loss, (logp, None, None, rewards, mask)),
      "entropy_segments": (jaxgrpo.entropy_segments, (logp, mask)),
      "segment_scores_to_tokens": (jaxgrpo.segment_scores_to_tokens, (seg, scores)),
      "normalize_process_scores": (jaxgrpo.normalize_process_scores, (tok_scores, mask)),
      "prpo_advantages": (jaxgrpo.prpo_advantages, (tok_scores, mask, rewards)),
      "checked.prefix_counts": (checked.prefix_counts, (tokens, mask)),
      "checked.implicit_prm": (checked.implicit_prm, (tokens, mask, rewards)),
      "checked.tree_stats": (checked.tree_stats, (tokens, mask)),
      "checked.group_advantages": (checked.group_advantages, (rewards,)),
      "checked.entropy_segments": (checked.entropy_segments, ([[0.1, 0.9, 0.3]], [[1, 1, 1]])),
      "checked.segment_scores_to_tokens": (checked.segment_scores_to_tokens, (seg, scores)),
      "checked.prpo_advantages": (checked.prpo_advantages, (tok_scores, mask, rewards)),
      "checked.policy_loss": (checked.policy_loss, (logp, None, None, rewards, mask)),
  }


@pytest.mark.parametrize("name", list(_list_cases()))
def test_every_public_function_takes_lists_like_arrays(name):
  fn, args = _list_cases()[name]
  from_lists = fn(*args)
  from_numpy = fn(*[None if a is None else np.asarray(a) for a in args])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), from_lists, from_numpy)


def test_a_ragged_list_is_refused_naming_the_argument():
  with pytest.raises(ValueError, match="tokens must be an array or a rectangular nested list"):
    jaxgrpo.prefix_counts([[1, 2], [1]], [[1, 1], [1]])
  with pytest.raises(ValueError, match="rewards must hold numbers"):
    jaxgrpo.group_advantages(["a", "b"])


# ----------------------------------------------------------------------------- 4. shapes named


@pytest.mark.parametrize("call, match", [
    (lambda s, m, r: jaxgrpo.prpo_advantages(s, m[0], r), r"mask must have shape \[\.\.\., G, T\] of token_scores"),
    (lambda s, m, r: jaxgrpo.prpo_advantages(s, np.pad(m, ((0, 0), (0, 0), (0, 1))), r),
     r"mask must have shape \[\.\.\., G, T\] of token_scores = \(2, 3, 4\); got \(2, 3, 5\)"),
    (lambda s, m, r: jaxgrpo.prpo_advantages(s, m, r[:, :2]), r"rewards must have shape \[\.\.\., G\] of token_sc"),
    (lambda s, m, r: jaxgrpo.prefix_metrics(m.astype(np.int32), m[:, :2]), r"mask must have shape \[\.\.\., G, T\]"),
    (lambda s, m, r: jaxgrpo.step_advantages(s, r, m[..., :3]), r"mask must have shape \[\.\.\., G, T\] of step_rew"),
    (lambda s, m, r: jaxgrpo.step_advantages(s, r[:1], m), r"rewards must have shape \[\.\.\., G\] of step_rewards"),
    (lambda s, m, r: jaxgrpo.normalize_process_scores(s, m[..., 1:]), r"mask must have shape \[\.\.\., G, T\]"),
    (lambda s, m, r: checked.prpo_advantages(s, m[:, :, ::-1], r), r"mask must be right-padded"),
])
def test_mismatched_shapes_are_refused_naming_the_argument(call, match):
  rng = np.random.default_rng(0)
  scores = rng.uniform(size=(2, 3, 4)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]] * 2, np.int32).reshape(2, 3, 4)
  rewards = rng.normal(size=(2, 3)).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    call(scores, mask, rewards)


# ----------------------------------------------------------------------------- 5. a sharded batch stays sharded


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("g", [6, 64])  # 64: the looped compare path
def test_the_kernel_keeps_a_sharded_batch_axis_sharded(g):
  mesh = jax.make_mesh((8,), ("data",))
  sh = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(g)
  tokens = rng.integers(0, 3, (16, g, 64)).astype(np.int32)
  mask = (np.arange(64) < rng.integers(1, 65, (16, g, 1))).astype(np.int32)
  rewards = rng.normal(size=(16, g)).astype(np.float32)
  t, m, r = (jax.device_put(x, sh) for x in (tokens, mask, rewards))
  fns = {"prefix_counts": lambda t, m, r: jaxgrpo.prefix_counts(t, m, method="compare"),
         "implicit_prm": lambda t, m, r: jaxgrpo.implicit_prm(t, m, r, method="compare"),
         "tree_stats": lambda t, m, r: jaxgrpo.tree_stats(t, m, method="compare")}
  for name, fn in fns.items():
    hlo = jax.jit(fn).lower(t, m, r).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo, name
    out = jax.jit(fn)(t, m, r)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6),
                 out, fn(tokens, mask, rewards))
  counts = jax.jit(fns["prefix_counts"])(t, m, r)
  assert counts.sharding.spec[0] == "data"


# ----------------------------------------------------------------------------- 6. finite gradients in flat groups


def test_gradients_are_finite_when_a_groups_rewards_are_all_equal():
  g = jax.grad(lambda r: (jaxgrpo.group_advantages(r) * jnp.arange(3.0)).sum())(jnp.ones(3))
  assert np.isfinite(g).all() and (np.asarray(g) == 0).all()
  tokens = jnp.array([[1, 2, 3], [1, 2, 4], [5, 6, 7]])
  mask = jnp.ones_like(tokens)
  g = jax.grad(lambda r: jaxgrpo.implicit_prm(tokens, mask, r).step_advantages.sum())(jnp.full(3, 0.5))
  assert np.isfinite(g).all()
  scores = jnp.full((3, 3), 0.7)
  for outcome in ("std", "centered"):
    g = jax.grad(lambda r: (jaxgrpo.prpo_advantages(scores, mask, r, outcome=outcome) * jnp.arange(9.0).reshape(3, 3)
                            ).sum())(jnp.ones(3))
    assert np.isfinite(g).all(), outcome
  g = jax.grad(lambda s: jaxgrpo.normalize_process_scores(s, mask, normalization="relative").sum())(scores)
  assert np.isfinite(g).all()


# ----------------------------------------------------------------------------- 7. what carries a gradient


def test_only_the_log_probs_carry_a_gradient():
  logp, old, ref, adv, mask, w = batch(5)
  grads = jax.grad(lambda lp, a, ww, o, r: jaxgrpo.policy_loss(lp, o, r, a, mask, weights=ww, kl_beta=0.1)[0],
                   argnums=(0, 1, 2, 3, 4))(logp, adv, w, old, ref)
  assert np.abs(grads[0]).sum() > 0
  for g in grads[1:]:
    assert (np.asarray(g) == 0).all()
  counts = jnp.array([[3.0, 2.0, 1.0, 0.0]])
  assert (np.asarray(jax.grad(lambda c: jaxgrpo.lambda_weights(c).sum())(counts)) == 0).all()


# ----------------------------------------------------------------------------- 8, 9. the sampler inside jit; 64-bit ids


def test_the_sampler_inside_jit_says_to_call_it_outside():
  import jaxgrpo.models as M
  from jaxgrpo.rollout import sampler

  model = M.from_config(M.ModelConfig(family="gpt2", vocab_size=8, hidden_size=8, num_layers=1, num_heads=2,
                                      num_kv_heads=2, head_dim=4, intermediate_size=16, max_position_embeddings=8))
  params = M.init_params(model, jax.random.PRNGKey(0))
  ids, mask = jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
  with pytest.raises(ValueError, match="call it outside jax.jit"):
    jax.jit(lambda i: sampler.sample(model, params, i, mask, jax.random.PRNGKey(0), max_new_tokens=2).tokens)(ids)


def test_64_bit_ids_are_hashed_on_all_their_bits_or_refused():
  tokens = np.array([[[7, 1], [7 + 2**32, 1]]], np.int64)
  mask = np.ones_like(tokens)
  with pytest.raises(ValueError, match="outside int32 .* jax_enable_x64 is off"):
    jaxgrpo.prefix_counts(tokens, mask)
  with jax.enable_x64(True):
    counts = np.asarray(jaxgrpo.prefix_counts(tokens, mask))
    same = np.asarray(jaxgrpo.prefix_counts(np.array([[[7, 1], [7, 1]]], np.int64), mask))
  assert counts.tolist() == [[[1, 1], [1, 1]]] and same.tolist() == [[[2, 2], [2, 2]]]


# ----------------------------------------------------------------------------- 10. the checked twins


@pytest.mark.parametrize("name", ["prefix_counts", "implicit_prm", "tree_stats", "group_advantages",
                                  "entropy_segments", "segment_scores_to_tokens", "prpo_advantages", "policy_loss"])
def test_checked_functions_have_the_cores_signature(name):
  core, eager = getattr(jaxgrpo, name), getattr(checked, name)
  strip = lambda fn: [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
  assert strip(eager) == strip(core)


def test_checked_policy_loss_names_bad_values():
  logp, old, ref, adv, mask, w = batch()
  np.testing.assert_allclose(checked.policy_loss(logp, old, ref, adv, mask, kl_beta=0.04)[0],
                             jaxgrpo.policy_loss(logp, old, ref, adv, mask, kl_beta=0.04)[0])
  bad = logp.copy()
  bad[0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"logp must be finite on completion tokens; logp\[0, 0, 0\] = nan"):
    checked.policy_loss(bad, None, None, adv, mask)
  with pytest.raises(ValueError, match=r"old_logp must be log-probabilities \(<= 0\)"):
    checked.policy_loss(logp, -old, None, adv, mask)
  with pytest.raises(ValueError, match="weights must be >= 0"):
    checked.policy_loss(logp, None, None, adv, mask, weights=-w)
  with pytest.raises(ValueError, match="kl_beta must be a finite number >= 0"):
    checked.policy_loss(logp, None, ref, adv, mask, kl_beta=-1.0)
