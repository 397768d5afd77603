"""What every 2026 trainer has, as core functions, each against a reference written from its defining formula:
GSPO and GSPO-token ratios, k1/k2/k3 KL, the entropy bonus, rollout-mismatch correction (TIS, MIS; token and
sequence), DAPO's soft overlong punishment, GDPO's normalize-then-sum, the KL folded into the reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxgrpo


def batch(seed=0, shape=(3, 4, 7)):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
  mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.float32)
  logp = rng.normal(-1.0, 0.3, shape).astype(np.float32)
  old = (logp + rng.normal(0, 0.15, shape)).astype(np.float32)
  ref = (logp + rng.normal(0, 0.2, shape)).astype(np.float32)
  adv = rng.normal(size=shape[:-1]).astype(np.float32)
  return logp, old, ref, adv, mask


# ----------------------------------------------------------------------------- GSPO


def gspo_reference(logp, old, adv, mask, lo, hi):
  """GSPO (Zheng et al., 2025): s_i = (π_θ(y_i)/π_old(y_i))^(1/|y_i|), J = mean_i min(s_i A_i, clip(s_i) A_i)."""
  n = jnp.maximum(mask.sum(-1), 1)
  s = jnp.exp(jnp.sum((logp - old) * mask, -1) / n)
  per_seq = -jnp.minimum(s * adv, jnp.clip(s, 1 - lo, 1 + hi) * adv)
  nonempty = mask.sum(-1) > 0
  return jnp.sum(jnp.where(nonempty, per_seq, 0)) / jnp.maximum(nonempty.sum(), 1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), lo=st.sampled_from([3e-4, 0.2]), hi=st.sampled_from([4e-4, 0.28]))
def test_gspo_equals_its_formula_in_value_and_gradient(seed, lo, hi):
  logp, old, _, adv, mask = batch(seed)
  ours = lambda lp: jaxgrpo.policy_loss(lp, old, None, adv, mask, clip_eps_low=lo, clip_eps_high=hi,
                                        aggregation="seq_mean", ratio_level="sequence")[0]
  ref = lambda lp: gspo_reference(lp, old, adv, mask, lo, hi)
  np.testing.assert_allclose(ours(logp), ref(logp), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.grad(ours)(logp), jax.grad(ref)(logp), rtol=1e-4, atol=1e-7)


def test_gspo_token_equals_gspo_with_sequence_advantages():
  logp, old, _, adv, mask = batch(3)
  kw = dict(clip_eps_low=0.2, clip_eps_high=0.28, aggregation="seq_mean")
  seq = lambda lp: jaxgrpo.policy_loss(lp, old, None, adv, mask, ratio_level="sequence", **kw)[0]
  tok = lambda lp: jaxgrpo.policy_loss(lp, old, None, adv, mask, ratio_level="sequence_token", **kw)[0]
  np.testing.assert_allclose(tok(logp), seq(logp), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(tok)(logp), jax.grad(seq)(logp), rtol=1e-5, atol=1e-8)


def test_one_token_sequences_make_gspo_token_level_ppo():
  logp, old, _, adv, mask = batch(4, shape=(5, 6, 1))
  mask = np.ones_like(mask)
  kw = dict(clip_eps_low=0.2, clip_eps_high=0.28, aggregation="seq_mean")
  for level in ("sequence", "sequence_token"):
    f = lambda lp, lv=level: jaxgrpo.policy_loss(lp, old, None, adv, mask, ratio_level=lv, **kw)[0]
    ppo = lambda lp: jaxgrpo.policy_loss(lp, old, None, adv, mask, **kw)[0]
    np.testing.assert_allclose(f(logp), ppo(logp), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(logp), jax.grad(ppo)(logp), rtol=1e-5, atol=1e-8)


def test_meaningless_gspo_combinations_are_refused_by_name():
  logp, old, _, adv, mask = batch()
  with pytest.raises(ValueError, match="needs per-sequence advantages .* need ratio_level='sequence_token'"):
    jaxgrpo.policy_loss(logp, old, None, np.broadcast_to(adv[..., None], logp.shape), mask, ratio_level="sequence")
  with pytest.raises(ValueError, match=r"token weights \(λ-GRPO\) have nothing to weigh"):
    jaxgrpo.policy_loss(logp, old, None, adv, mask, weights=mask, ratio_level="sequence")


# ----------------------------------------------------------------------------- KL estimators and the entropy bonus


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_in_the_loss_match_their_formulas(estimator):
  logp, old, ref, adv, mask = batch(5)
  d = ref.astype(np.float64) - logp
  per = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.exp(d) - d - 1}[estimator]
  np.testing.assert_allclose(jaxgrpo.kl_estimate(logp, ref, estimator), per, rtol=1e-5, atol=1e-7)
  loss, m = jaxgrpo.policy_loss(logp, old, ref, adv, mask, kl_beta=0.1, kl_estimator=estimator)
  np.testing.assert_allclose(m["kl_loss"], (per * mask).sum() / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(loss, m["pg_loss"] + 0.1 * m["kl_loss"], rtol=1e-5)


def test_the_entropy_bonus_is_subtracted_and_differentiated():
  logp, old, _, adv, mask = batch(6)
  ent = np.abs(np.random.default_rng(0).normal(size=logp.shape)).astype(np.float32)
  base, _ = jaxgrpo.policy_loss(logp, old, None, adv, mask)
  loss, m = jaxgrpo.policy_loss(logp, old, None, adv, mask, entropies=ent, entropy_coef=0.01)
  np.testing.assert_allclose(loss, base - 0.01 * (ent * mask).sum() / mask.sum(), rtol=1e-5)
  g = jax.grad(lambda e: jaxgrpo.policy_loss(logp, old, None, adv, mask, entropies=e, entropy_coef=0.01)[0])(ent)
  np.testing.assert_allclose(g, -0.01 * mask / mask.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="entropies are required when entropy_coef != 0"):
    jaxgrpo.policy_loss(logp, old, None, adv, mask, entropy_coef=0.01)


# ----------------------------------------------------------------------------- rollout correction


@pytest.mark.parametrize("method", ["tis", "mis"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rollout_correction_weights_match_their_definition(method, level):
  rng = np.random.default_rng(7)
  old = rng.normal(-1, 0.3, (4, 9)).astype(np.float32)
  sampler = (old + rng.normal(0, 0.8, old.shape)).astype(np.float32)
  mask = (np.arange(9) < rng.integers(1, 10, (4, 1))).astype(np.float32)
  cap = 2.0
  log_r = (old - sampler).astype(np.float64)
  if level == "sequence":
    log_r = np.broadcast_to(((log_r * mask).sum(-1) / mask.sum(-1))[:, None], log_r.shape)
  r = np.exp(log_r)
  want = np.minimum(r, cap) if method == "tis" else np.where((r >= 1 / cap) & (r <= cap), r, 0.0)
  w, m = jaxgrpo.rollout_correction(old, sampler, mask, method=method, level=level, cap=cap)
  np.testing.assert_allclose(w, want * mask, rtol=1e-5)
  np.testing.assert_allclose(m["mismatch/masked_frac"], ((want == 0) & (mask == 1)).sum() / mask.sum(), rtol=1e-6)
  # the corrected loss is the policy loss with the weights multiplied in (they compose with λ weights)
  adv = rng.normal(size=4).astype(np.float32)
  lam = rng.uniform(0.2, 1, old.shape).astype(np.float32)
  corrected = jaxgrpo.policy_loss(old, None, None, adv, mask, weights=lam * w)[0]
  ratio_one = -(lam * want * mask * adv[:, None]).sum() / mask.sum()  # μ = 1: the PPO ratio is 1
  np.testing.assert_allclose(corrected, ratio_one, rtol=1e-5)
  with pytest.raises(ValueError, match="cap must be > 1"):
    jaxgrpo.rollout_correction(old, sampler, mask, cap=1.0)


def test_mismatch_metrics_are_zero_when_sampler_and_trainer_agree():
  old = np.random.default_rng(1).normal(-1, 0.3, (3, 5)).astype(np.float32)
  mask = np.ones_like(old)
  m = jaxgrpo.mismatch_metrics(old, old, mask)
  assert float(m["mismatch/k3"]) == 0 and float(m["mismatch/ratio_max"]) == 1 == float(m["mismatch/ratio_min"])
  m = jaxgrpo.mismatch_metrics(old, old + 0.1, mask)
  r = np.exp(-0.1)
  np.testing.assert_allclose(m["mismatch/k3"], r - np.log(r) - 1, rtol=1e-4)


# ----------------------------------------------------------------------------- reward shaping


def test_overlong_penalty_is_daopos_piecewise_linear_function_in_tokens():
  lengths = np.arange(0, 21)
  got = np.asarray(jaxgrpo.overlong_penalty(lengths, max_new_tokens=20, buffer=8, penalty=0.5))
  want = np.where(lengths <= 12, 0.0, np.where(lengths <= 20, (12 - lengths) / 8 * 0.5, -0.5))
  np.testing.assert_allclose(got, want, atol=1e-7)
  with pytest.raises(ValueError, match=r"buffer must be in \[1, max_new_tokens = 20\)"):
    jaxgrpo.overlong_penalty(lengths, 20, 20)


def test_normalize_then_sum_is_gdpo_and_a_flat_reward_contributes_zero():
  rng = np.random.default_rng(2)
  parts = np.stack([rng.choice([0.0, 1.0], (3, 6)), np.full((3, 6), 0.7), rng.normal(size=(3, 6))], -1)
  parts = parts.astype(np.float32)
  w = np.array([1.0, 0.5, 0.2], np.float32)
  got = np.asarray(jaxgrpo.normalize_then_sum(parts, w))
  want = sum(w[k] * np.asarray(jaxgrpo.group_advantages(parts[..., k])) for k in range(3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  only_flat = np.asarray(jaxgrpo.normalize_then_sum(parts[..., 1:2], w[1:2]))
  assert (only_flat == 0).all()
  g = jax.grad(lambda p: jaxgrpo.normalize_then_sum(p, w).sum())(jnp.asarray(parts))
  assert np.isfinite(g).all()


def test_the_kl_penalty_in_the_reward_sums_the_token_estimates():
  logp, old, ref, adv, mask = batch(8)
  r = np.random.default_rng(3).normal(size=logp.shape[:-1]).astype(np.float32)
  for est in ("k1", "k3"):
    got = jaxgrpo.kl_reward_penalty(r, logp, ref, mask, 0.05, est)
    per = np.asarray(jaxgrpo.kl_estimate(logp, ref, est)) * mask
    np.testing.assert_allclose(got, r - 0.05 * per.sum(-1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- high-entropy tokens (80/20)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), rho=st.sampled_from([1.0, 0.8, 0.5, 0.2, 0.05]),
       ties=st.booleans())
def test_the_high_entropy_mask_keeps_the_tokens_at_or_above_the_batch_quantile(seed, rho, ties):
  """Against its definition, in NumPy: τ = the (1 − ρ) quantile (linear, numpy's default) of the valid tokens'
  entropies over the whole batch; keep = valid & H ≥ τ.  Ties (entropies on a coarse grid) keep all tied tokens."""
  rng = np.random.default_rng(seed)
  _, _, _, _, mask = batch(seed, shape=(2, 3, 9))
  ent = rng.gamma(2.0, 0.5, mask.shape).astype(np.float32)
  if ties:  # coarse ties, and ties one float32 ulp apart (where a float32 interpolation can round past them)
    ent = np.round(ent * 2) / 2 + np.where(rng.random(ent.shape) < 0.5, 0, np.spacing(np.float32(1.0))).astype(
        np.float32)
  ent[mask == 0] = 99.0  # padding never counts, however large
  keep, tau = jaxgrpo.high_entropy_mask(ent, mask, rho)
  want_tau = np.quantile(ent[mask > 0].astype(np.float64), 1 - rho)  # in float64: no rounding past a tie
  np.testing.assert_allclose(float(tau), want_tau, rtol=1e-6)
  want = (mask > 0) & (ent.astype(np.float64) >= want_tau)
  np.testing.assert_array_equal(np.asarray(keep), want.astype(np.float32))
  assert np.asarray(keep).sum() >= min(1, mask.sum())  # the maximum always stays
  if rho == 1.0:
    np.testing.assert_array_equal(np.asarray(keep), mask)
  else:  # about the top ρ of the tokens (more with ties)
    assert np.asarray(keep).sum() >= np.floor(rho * mask.sum())


def test_the_masked_loss_is_the_8020_objective_and_masked_tokens_get_no_gradient():
  """At μ = 1 (ratio 1) the DAPO loss with the mask as token weights is −Σ_t 1[H ≥ τ]·A / Σ|o| (arXiv
  2506.01939, eq. 4: the indicator in the sum, every token in the denominator); masked tokens' log-probs get a
  zero gradient, kept ones the unmasked loss's."""
  logp, _, _, adv, mask = batch(3)
  ent = np.random.default_rng(3).gamma(2.0, 0.5, mask.shape).astype(np.float32)
  keep, _ = jaxgrpo.high_entropy_mask(ent, mask, 0.2)
  keep = np.asarray(keep)
  assert 0 < keep.sum() < mask.sum()
  loss_fn = lambda lp, w: jaxgrpo.policy_loss(lp, None, None, adv, mask, weights=w)[0]
  want = -np.sum(keep * adv[..., None]) / mask.sum()
  np.testing.assert_allclose(float(loss_fn(logp, keep)), want, rtol=1e-5)
  g = np.asarray(jax.grad(loss_fn)(logp, keep))
  g_all = np.asarray(jax.grad(loss_fn)(logp, mask))
  np.testing.assert_array_equal(g[keep == 0], 0.0)
  np.testing.assert_allclose(g[keep > 0], g_all[keep > 0], rtol=1e-6)


def test_the_high_entropy_mask_refuses_bad_input_by_name_and_traces_rho():
  ent, mask = np.ones((2, 5), np.float32), np.ones((2, 5), np.float32)
  for bad in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="keep_frac must be in \\(0, 1\\]"):
      jaxgrpo.high_entropy_mask(ent, mask, bad)
  with pytest.raises(ValueError, match="same shape"):
    jaxgrpo.high_entropy_mask(ent, mask[:, :4], 0.5)
  ent = np.arange(10, dtype=np.float32).reshape(2, 5)
  kept = jax.vmap(lambda r: jaxgrpo.high_entropy_mask(ent, mask, r)[0].sum())(jnp.array([1.0, 0.5, 0.1]))
  np.testing.assert_array_equal(np.asarray(kept), [10, 5, 1])  # 10 distinct entropies: exactly the top ρ
  keep, tau = jaxgrpo.high_entropy_mask(ent, np.zeros_like(mask), 0.5)  # nothing valid: nothing kept
  assert np.asarray(keep).sum() == 0 and np.isnan(float(tau))


# ----------------------------------------------------------------------------- off-policy sequence masking


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), delta=st.sampled_from([0.0, 0.05, 0.2, 1.0]), per_token=st.booleans())
def test_the_off_policy_mask_is_deepseek_v32s_definition(seed, delta, per_token):
  """M(i,t) = 0 iff A(i,t) < 0 and mean_s log(π_sampler/π_θ) over completion i's tokens > δ (NumPy, by loops)."""
  logp, sampler, _, adv, mask = batch(seed)
  if per_token:
    adv = np.random.default_rng(seed).normal(size=logp.shape).astype(np.float32)
  m, metrics = jaxgrpo.off_policy_sequence_mask(logp, sampler, adv, mask, delta)
  want = np.zeros_like(mask)
  kls = []
  for idx in np.ndindex(mask.shape[:-1]):
    n = int(mask[idx].sum())
    kl = np.sum((sampler[idx] - logp[idx])[:n]) / n
    kls.append(kl)
    for t in range(n):
      a = adv[idx][t] if per_token else adv[idx]
      want[idx][t] = 0.0 if (a < 0 and kl > delta) else 1.0
  np.testing.assert_array_equal(np.asarray(m), want)
  # the fraction is float32 arithmetic on both sides (1 − 59/60 lands 1.0e-6 apart relative)
  np.testing.assert_allclose(float(metrics["off_policy/masked_frac"]), 1 - want.sum() / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["off_policy/seq_kl_mean"]), np.mean(kls), rtol=1e-5, atol=1e-7)


def test_pg_mask_gates_the_policy_term_only():
  """ℓ = w·[M·PG + β·KL]: with M the policy term of masked tokens is gone (value and gradient), the KL term and the
  denominator are not touched."""
  logp, old, ref, adv, mask = batch(4)
  m = (np.random.default_rng(4).random(mask.shape) < 0.5).astype(np.float32) * mask
  loss = lambda lp, pm, beta: jaxgrpo.policy_loss(lp, old, ref, adv, mask, kl_beta=beta, pg_mask=pm)
  full, fm = loss(logp, None, 0.1)
  gated, gm = loss(logp, m, 0.1)
  np.testing.assert_allclose(float(gm["kl_loss"]), float(fm["kl_loss"]), rtol=1e-6)
  ratio = np.exp(logp - old)
  pg = -np.minimum(ratio * adv[..., None], np.clip(ratio, 0.8, 1.2) * adv[..., None])
  np.testing.assert_allclose(float(gm["pg_loss"]), np.sum(m * pg) / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(gated), float(gm["pg_loss"]) + 0.1 * float(fm["kl_loss"]), rtol=1e-5)
  g = np.asarray(jax.grad(lambda lp: loss(lp, m, 0.0)[0])(logp))
  np.testing.assert_array_equal(g[(mask > 0) & (m == 0)], 0.0)
  assert np.abs(g[m > 0]).max() > 0
  with pytest.raises(ValueError, match="pg_mask must have the shape of logp"):
    jaxgrpo.policy_loss(logp, old, ref, adv, mask, pg_mask=m[..., :3])
  with pytest.raises(ValueError, match="threshold must be >= 0"):
    jaxgrpo.off_policy_sequence_mask(logp, old, adv, mask, -0.1)


# ----------------------------------------------------------------------------- CISPO


@pytest.mark.parametrize("level", ["token", "sequence_token"])
def test_cispo_equals_its_formula_in_value_and_gradient(level):
  """MiniMax-M1 (arXiv 2506.13585, eq. 4): J = Σ_i,t sg(r̂(i,t))·A(i,t)·log π_θ(i,t) / Σ_i |o_i|, r̂ = clip(r, 1 − ε_low,
  1 + ε_high); with ratio_level sequence_token r is the sequence's geometric-mean ratio (per token its value)."""
  logp, old, _, adv, mask = batch(7)
  lo, hi = 0.2, 0.28

  def reference(lp):
    if level == "token":
      r = jnp.exp(lp - old)
    else:
      r = jnp.exp(jnp.sum((lp - old) * mask, -1, keepdims=True) / jnp.maximum(mask.sum(-1, keepdims=True), 1))
    w = jax.lax.stop_gradient(jnp.clip(r, 1 - lo, 1 + hi))
    return -jnp.sum(w * adv[..., None] * lp * mask) / mask.sum()

  ours = lambda lp: jaxgrpo.policy_loss(lp, old, None, adv, mask, clip_eps_low=lo, clip_eps_high=hi,
                                        ratio_level=level, surrogate="cispo")[0]
  np.testing.assert_allclose(float(ours(logp)), float(reference(logp)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(logp)), np.asarray(jax.grad(reference)(logp)), rtol=1e-5,
                             atol=1e-8)


def test_cispo_keeps_the_gradient_ppo_clips_away_and_equals_ppo_on_policy():
  logp, _, _, adv, mask = batch(8)
  adv = np.abs(adv)  # positive advantages: PPO cuts the gradient off where the ratio exceeds 1 + ε_high
  old = logp - 0.5 * mask  # every ratio e^0.5 ≈ 1.65 > 1.28
  grad = lambda s, o: np.asarray(jax.grad(lambda lp: jaxgrpo.policy_loss(lp, o, None, adv, mask, clip_eps_high=0.28,
                                                                         surrogate=s)[0])(logp))
  np.testing.assert_array_equal(grad("clip", old), 0.0)
  cispo = grad("cispo", old)
  np.testing.assert_allclose(cispo, -1.28 * adv[..., None] * mask / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(grad("cispo", None), grad("clip", None), rtol=1e-6)  # μ = 1: r = 1, both −A/Σ|o|
  _, m = jaxgrpo.policy_loss(logp, old, None, adv, mask, clip_eps_high=0.28, surrogate="cispo")
  assert float(m["clip_frac_high"]) == 1.0  # every weight truncated
  with pytest.raises(ValueError, match="surrogate must be one of"):
    jaxgrpo.policy_loss(logp, old, None, adv, mask, surrogate="ppo")
  with pytest.raises(ValueError, match="use ratio_level='token' or 'sequence_token'"):
    jaxgrpo.policy_loss(logp, old, None, adv, mask, surrogate="cispo", ratio_level="sequence")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_the_importance_weighted_kl_is_deepseek_v32s_estimate_in_value_and_gradient(estimator):
  """KL term = (π_θ/π_old)·k(π_θ, π_ref) per token, the ratio differentiated (DeepSeek-V3.2, eq. 8)."""
  logp, old, ref, adv, mask = batch(9)
  beta = 0.3
  k = lambda lp: (lp - ref) if estimator == "k1" else jnp.exp(ref - lp) - (ref - lp) - 1
  weighted = lambda lp: jnp.sum(jnp.exp(lp - old) * k(lp) * mask) / mask.sum()  # the reference KL terms
  plain = lambda lp: jnp.sum(k(lp) * mask) / mask.sum()
  loss = lambda lp, iw, o=old: jaxgrpo.policy_loss(lp, o, ref, adv, mask, kl_beta=beta, kl_estimator=estimator,
                                                   kl_importance_weight=iw)
  np.testing.assert_allclose(float(loss(logp, True)[1]["kl_loss"]), float(weighted(logp)), rtol=1e-5)
  np.testing.assert_allclose(float(loss(logp, False)[1]["kl_loss"]), float(plain(logp)), rtol=1e-5)
  # the policy term is untouched: the losses differ by β·(weighted − plain), in value and in gradient
  diff = lambda lp: loss(lp, True)[0] - loss(lp, False)[0]
  np.testing.assert_allclose(float(diff(logp)), beta * float(weighted(logp) - plain(logp)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(diff)(logp)),
                             beta * np.asarray(jax.grad(lambda lp: weighted(lp) - plain(lp))(logp)), rtol=1e-4,
                             atol=1e-7)
  # on-policy (π_old = π_θ): the same value as the plain estimate
  np.testing.assert_allclose(float(loss(logp, True, None)[0]), float(loss(logp, False, None)[0]), rtol=1e-6)
