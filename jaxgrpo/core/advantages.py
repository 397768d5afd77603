"""Group-relative outcome advantages (GRPO) and their metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _group_stats(rewards: jax.Array, ddof: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, std and a zero-variance flag over the group axis (-1), keepdims."""
  g = rewards.shape[-1]
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  if g - ddof > 0:
    std = jnp.sqrt(jnp.sum(jnp.square(rewards - mean), axis=-1, keepdims=True) / (g - ddof))
  else:  # G == 1 with ddof == 1: the sample std is undefined; the group is flat.
    std = jnp.zeros_like(mean)
  flat = jnp.max(rewards, axis=-1, keepdims=True) == jnp.min(rewards, axis=-1, keepdims=True)
  return mean, std, flat


def group_advantages(
    rewards: jax.Array,
    *,
    scale: bool = True,
    ddof: int = 1,
    eps: float = 1e-4,
) -> jax.Array:
  """a_i = (r_i − mean(r)) / (std(r) + eps) over the group axis.

  Args:
    rewards: float[..., G] outcome rewards, one group per row.
    scale: divide by the group std (GRPO) or only centre (Dr. GRPO, PRPO's β).
    ddof: 1 for the sample std (the paper's worked example, TRL/verl), 0 for
      the population std.
    eps: added to the std.

  Returns:
    float[..., G]. A group whose rewards are all equal gets exactly 0 (no NaN,
    whatever the rounding of its mean).
  """
  rewards = jnp.asarray(rewards)
  if rewards.ndim < 1:
    raise ValueError("rewards must have shape [..., G]; got a scalar")
  if rewards.shape[-1] < 1:
    raise ValueError(f"rewards: group size G (axis -1) must be >= 1; got shape {rewards.shape}")
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1; got {ddof}")
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.float32)
  mean, std, flat = _group_stats(rewards, ddof)
  centred = rewards - mean
  adv = centred / (std + eps) if scale else centred
  return jnp.where(flat, 0.0, adv)


def step_advantages(
    step_rewards: jax.Array,
    rewards: jax.Array,
    mask: jax.Array,
    *,
    scale: bool = True,
    ddof: int = 1,
    eps: float = 1e-4,
) -> jax.Array:
  """A(i,t) = (R(i,t) − mean(r)) / (std(r) + eps) with the *group's* statistics.

  Args:
    step_rewards: float[..., G, T] R(i,t); rewards: float[..., G]; mask [..., G, T].
  """
  mean, std, flat = _group_stats(rewards, ddof)
  centred = step_rewards - mean[..., None]
  adv = centred / (std[..., None] + eps) if scale else centred
  return jnp.where(flat[..., None] | ~mask.astype(bool), 0.0, adv)


def advantage_metrics(rewards: jax.Array) -> dict[str, jax.Array]:
  """Reward mean/std and the fraction of zero-variance groups (no signal)."""
  rewards = jnp.asarray(rewards, jnp.float32)
  flat = jnp.max(rewards, axis=-1) == jnp.min(rewards, axis=-1)
  return {
      "reward_mean": jnp.mean(rewards),
      "reward_std": jnp.std(rewards),
      "zero_std_group_frac": jnp.mean(flat.astype(jnp.float32)),
  }
