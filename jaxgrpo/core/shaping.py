"""Reward shaping before the advantages: DAPO's soft overlong punishment, multi-reward normalization (GDPO) and the
KL penalty folded into the reward (verl's ``use_kl_in_reward``).

All are per-completion functions of arrays, jittable, with any leading batch shape ([..., G] per group).
"""

from __future__ import annotations

import functools
import typing
from typing import Literal

import jax
import jax.numpy as jnp

from jaxgrpo.core.advantages import _group_stats
from jaxgrpo.core.arrays import as_array, check_shape
from jaxgrpo.core.objectives import KLEstimator, kl_estimate

RewardNormalization = Literal["sum_then_normalize", "normalize_then_sum"]  # declared once, here
REWARD_NORMALIZATIONS: tuple[str, ...] = typing.get_args(RewardNormalization)


def overlong_penalty(lengths, max_new_tokens: int, buffer: int, penalty=1.0) -> jax.Array:
  """DAPO's soft overlong punishment, counted in tokens (not characters).

  0 for a completion of at most ``max_new_tokens − buffer`` tokens, then linear down to −``penalty`` at
  ``max_new_tokens`` (a truncated completion, which has exactly ``max_new_tokens`` tokens, gets −``penalty``).

  Args:
    lengths: int[...] completion lengths in tokens (EOS included).
    max_new_tokens: the completion cap L_max; buffer: L_cache, in [1, max_new_tokens); penalty: ≥ 0 (may be traced).

  Returns:
    float32[...] rewards to add to the outcome reward (≤ 0).
  """
  lengths = jnp.asarray(as_array(lengths, "lengths"))
  if not 1 <= buffer < max_new_tokens:
    raise ValueError(f"buffer must be in [1, max_new_tokens = {max_new_tokens}); got {buffer}")
  start = max_new_tokens - buffer
  over = jnp.clip(lengths.astype(jnp.float32) - start, 0.0, float(buffer))
  return -penalty * over / buffer


def normalize_then_sum(parts, weights, *, ddof: int = 1, eps=1e-4) -> jax.Array:
  """GDPO's multi-reward advantage: each reward normalized within its group, then the weighted sum.

  a_i = Σ_k w_k · (r_ik − mean_k) / (std_k + eps); a reward that is constant in a group contributes exactly 0 to
  that group (with a finite gradient), so one flat reward never drowns the others or yields NaN.

  Args:
    parts: float[..., G, K] the K unweighted rewards of each completion.
    weights: float[K] their weights.
    ddof, eps: the group std's (as ``group_advantages``).

  Returns:
    float32[..., G] advantages (compare ``group_advantages`` of the weighted sum: "sum_then_normalize").
  """
  parts, weights = jnp.asarray(as_array(parts, "parts")), jnp.asarray(as_array(weights, "weights"))
  if parts.ndim < 2:
    raise ValueError(f"parts must have shape [..., G, K]; got {tuple(parts.shape)}")
  check_shape(weights, "weights", parts.shape[-1:], "[K] of parts")
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1; got {ddof}")
  return _normalize_then_sum(parts, weights, eps, ddof=ddof)


@functools.partial(jax.jit, static_argnames=("ddof",))
def _normalize_then_sum(parts, weights, eps, *, ddof):
  r = jnp.moveaxis(parts.astype(jnp.float32), -1, 0)  # [K, ..., G]
  mean, std, flat = _group_stats(r, ddof)
  per = jnp.where(flat, 0.0, (r - mean) / (std + eps))
  return jnp.tensordot(weights.astype(jnp.float32), per, axes=(0, 0))


def kl_reward_penalty(rewards, logp, ref_logp, mask, beta, estimator: KLEstimator = "k1") -> jax.Array:
  """Outcome rewards with the KL to the reference folded in: r_i − β · Σ_t KL(i,t) (verl's ``use_kl_in_reward``
  for GRPO, where the token-level rewards are summed per completion before the group normalization).

  Args:
    rewards: float[...] outcome rewards; logp, ref_logp: float[..., T] log π_old and log π_ref of the sampled
      tokens; mask: [..., T]; beta: ≥ 0 (may be traced); estimator: k1 | k2 | k3 (``kl_estimate``).

  Returns:
    float32[...]: the penalized rewards (a constant: no gradient flows to the log-probs).
  """
  rewards, logp = jnp.asarray(as_array(rewards, "rewards")), jnp.asarray(as_array(logp, "logp"))
  ref_logp, mask = jnp.asarray(as_array(ref_logp, "ref_logp")), jnp.asarray(as_array(mask, "mask"))
  check_shape(ref_logp, "ref_logp", logp.shape, "[..., T] of logp")
  check_shape(mask, "mask", logp.shape, "[..., T] of logp")
  check_shape(rewards, "rewards", logp.shape[:-1], "[...] of logp")
  valid = mask.astype(bool)
  kl = jnp.where(valid, kl_estimate(jnp.where(valid, logp, 0.0), jnp.where(valid, ref_logp, 0.0), estimator), 0.0)
  return jax.lax.stop_gradient(rewards.astype(jnp.float32) - beta * jnp.sum(kl, axis=-1))
