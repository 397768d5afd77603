import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgrpo


def random_batch(seed=0, shape=(2, 4, 7)):
  rng = np.random.default_rng(seed)
  logp = jnp.asarray(rng.normal(-1.0, 0.3, shape), jnp.float32)
  old = logp + jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32)
  ref = logp + jnp.asarray(rng.normal(0, 0.2, shape), jnp.float32)
  lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
  mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.float32)
  adv = jnp.asarray(rng.normal(size=shape[:-1]), jnp.float32)
  w = jnp.asarray(rng.uniform(0.1, 1.0, shape), jnp.float32)
  return logp, old, ref, adv, jnp.asarray(mask), w


def numpy_loss(logp, old, ref, adv, mask, w, lo, hi, beta, agg, normalizer=None):
  logp, old, ref, adv, mask, w = (np.asarray(x, np.float64) for x in (logp, old, ref, adv, mask, w))
  if adv.ndim == logp.ndim - 1:
    adv = adv[..., None]
  ratio = np.exp(logp - old)
  surr = np.minimum(ratio * adv, np.clip(ratio, 1 - lo, 1 + hi) * adv)
  kl = np.exp(ref - logp) - (ref - logp) - 1
  per = w * (-surr + beta * kl) * mask
  if agg == "token_mean":
    return per.sum() / mask.sum()
  if agg == "seq_mean":
    return np.mean(per.sum(-1) / mask.sum(-1))
  if agg == "constant":
    return per.sum() / (normalizer if normalizer else mask.size)
  if agg == "weight_mean":
    return per.sum() / (w * mask).sum()


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "constant", "weight_mean"])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_policy_loss_matches_numpy(agg, per_token_adv):
  logp, old, ref, adv, mask, w = random_batch()
  if per_token_adv:
    adv = adv[..., None] + 0.1 * jnp.arange(logp.shape[-1])
  loss, metrics = jaxgrpo.policy_loss(
      logp, old, ref, adv, mask, weights=w, clip_eps_low=0.2, clip_eps_high=0.28, kl_beta=0.04, aggregation=agg
  )
  want = numpy_loss(logp, old, ref, adv, mask, w, 0.2, 0.28, 0.04, agg)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["pg_loss"] + 0.04 * metrics["kl_loss"], loss, rtol=1e-5)


def test_constant_normalizer_value():
  logp, old, ref, adv, mask, w = random_batch(1)
  loss, _ = jaxgrpo.policy_loss(logp, old, None, adv, mask, aggregation="constant", normalizer=123.0)
  want = numpy_loss(logp, old, ref, adv, mask, np.ones(logp.shape), 0.2, 0.2, 0.0, "constant", 123.0)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_clipping_zeroes_gradient_and_is_counted():
  logp = jnp.log(jnp.array([[0.5, 0.5, 0.5, 0.5]]))
  old = jnp.log(jnp.array([[0.3, 0.3, 0.7, 0.7]]))  # ratios 1.67, 1.67, 0.71, 0.71
  adv = jnp.array([[1.0, -1.0, 1.0, -1.0]])
  mask = jnp.ones((1, 4))
  grad_fn = jax.grad(lambda lp: jaxgrpo.policy_loss(lp, old, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)[0])
  g = np.asarray(grad_fn(logp))
  # ratio > 1.28 with A > 0 and ratio < 0.8 with A < 0 are clipped: zero gradient.
  assert g[0, 0] == 0 and g[0, 3] == 0
  assert g[0, 1] != 0 and g[0, 2] != 0
  _, m = jaxgrpo.policy_loss(logp, old, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
  assert float(m["clip_frac_high"]) == pytest.approx(0.25)
  assert float(m["clip_frac_low"]) == pytest.approx(0.25)


def test_mu1_ratio_is_one_and_gradient_is_advantage():
  logp = jnp.array([[-1.0, -2.0, -0.5]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  loss, m = jaxgrpo.policy_loss(logp, None, None, jnp.array([2.0]), mask)
  assert float(m["ratio_mean"]) == pytest.approx(1.0)
  assert float(loss) == pytest.approx(-2.0)
  g = jax.grad(lambda lp: jaxgrpo.policy_loss(lp, None, None, jnp.array([2.0]), mask)[0])(logp)
  np.testing.assert_allclose(g, [[-1.0, -1.0, 0.0]])


def test_kl_k3_nonnegative_and_zero_at_equality():
  x = jnp.linspace(-3, 0, 7)
  assert (np.asarray(jaxgrpo.k3_kl(x, x[::-1])) >= 0).all()
  np.testing.assert_allclose(jaxgrpo.k3_kl(x, x), 0.0, atol=1e-7)


def test_lambda_weights_shrink_and_weight_mean_restores_scale():
  tokens = jnp.array([[[1, 2, 3], [1, 2, 4], [1, 5, 6]]])
  mask = jnp.ones_like(tokens)
  counts = jaxgrpo.prefix_counts(tokens, mask)
  w = jaxgrpo.lambda_weights(counts)
  np.testing.assert_allclose(w[0, :, 0], 1 / 3)
  logp = jnp.zeros(tokens.shape)
  adv = jnp.ones(tokens.shape[:-1])
  grpo, _ = jaxgrpo.policy_loss(logp, None, None, adv, mask)
  lam, _ = jaxgrpo.policy_loss(logp, None, None, adv, mask, weights=w)
  matched, _ = jaxgrpo.policy_loss(logp, None, None, adv, mask, weights=w, aggregation="weight_mean")
  assert abs(float(lam)) < abs(float(grpo))
  np.testing.assert_allclose(matched, grpo, rtol=1e-6)


def test_shape_errors_name_the_argument():
  logp, old, ref, adv, mask, w = random_batch()
  with pytest.raises(ValueError, match="advantages"):
    jaxgrpo.policy_loss(logp, old, ref, adv[:, :2], mask)
  with pytest.raises(ValueError, match="mask"):
    jaxgrpo.policy_loss(logp, old, ref, adv, mask[..., :3])
  with pytest.raises(ValueError, match="old_logp"):
    jaxgrpo.policy_loss(logp, old[..., :3], ref, adv, mask)
  with pytest.raises(ValueError, match="ref_logp"):
    jaxgrpo.policy_loss(logp, old, None, adv, mask, kl_beta=0.1)
  with pytest.raises(ValueError, match="aggregation"):
    jaxgrpo.policy_loss(logp, old, ref, adv, mask, aggregation="mean")
