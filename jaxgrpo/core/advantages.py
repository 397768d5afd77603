"""Group-relative outcome advantages (GRPO) and their metrics.

Zero-variance groups (every reward equal) are normal: their advantages are exactly 0 and the gradient of anything
computed from them is finite (0), whatever the rounding of the group mean.  ``eps`` may be traced (a ``vmap`` over
it is one program); ``scale`` and ``ddof`` choose the formula and are static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxgrpo.core.arrays import as_array, check_shape


def _group_stats(rewards: jax.Array, ddof: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, std and a zero-variance flag over the group axis (-1), keepdims.

  The std of a flat group is 0, with a finite gradient: the square root only ever sees a positive variance
  (the double-``where`` pattern; sqrt'(0) = inf would otherwise make every gradient through it NaN)."""
  g = rewards.shape[-1]
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  flat = jnp.max(rewards, axis=-1, keepdims=True) == jnp.min(rewards, axis=-1, keepdims=True)
  if g - ddof > 0:
    var = jnp.sum(jnp.square(rewards - mean), axis=-1, keepdims=True) / (g - ddof)
    std = jnp.where(flat, 0.0, jnp.sqrt(jnp.where(flat, 1.0, var)))
  else:  # G == 1 with ddof == 1: the sample std is undefined; the group is flat.
    std = jnp.zeros_like(mean)
  return mean, std, flat


def _float(x):
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def group_advantages(rewards, *, scale: bool = True, ddof: int = 1, eps=1e-4) -> jax.Array:
  """a_i = (r_i − mean(r)) / (std(r) + eps) over the group axis.

  Args:
    rewards: float[..., G] outcome rewards, one group per row (a list or NumPy array is fine).
    scale: divide by the group std (GRPO) or only centre (Dr. GRPO, PRPO's β).
    ddof: 1 for the sample std (the paper's worked example, TRL/verl), 0 for
      the population std.
    eps: added to the std; may be traced.

  Returns:
    float[..., G] (integer rewards become float32). A group whose rewards are all equal gets exactly 0, with a
    finite (zero) gradient.  Jitted; call it inside your own ``jit`` as well.
  """
  rewards = as_array(rewards, "rewards")
  if rewards.ndim < 1:
    raise ValueError("rewards must have shape [..., G]; got a scalar")
  if rewards.shape[-1] < 1:
    raise ValueError(f"rewards: group size G (axis -1) must be >= 1; got shape {rewards.shape}")
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1; got {ddof}")
  return _group_advantages(rewards, eps, scale=bool(scale), ddof=int(ddof))


@functools.partial(jax.jit, static_argnames=("scale", "ddof"))
def _group_advantages(rewards, eps, *, scale, ddof):
  rewards = _float(rewards)
  mean, std, flat = _group_stats(rewards, ddof)
  centred = rewards - mean
  adv = centred / (std + eps) if scale else centred
  return jnp.where(flat, 0.0, adv)


def step_advantages(step_rewards, rewards, mask, *, scale: bool = True, ddof: int = 1, eps=1e-4) -> jax.Array:
  """A(i,t) = (R(i,t) − mean(r)) / (std(r) + eps) with the *group's* statistics.

  Args:
    step_rewards: float[..., G, T] R(i,t) (``implicit_prm``'s step rewards).
    rewards: float[..., G] the outcome rewards r_i of the same groups.
    mask: [..., G, T] 1 on completion tokens.
    scale, ddof, eps: as in ``group_advantages`` (``eps`` may be traced).

  Returns:
    float[..., G, T]: A(i,t) on completion tokens, 0 on padding and in zero-variance groups (finite gradients).
  """
  step_rewards, rewards, mask = (as_array(x, n) for x, n in ((step_rewards, "step_rewards"), (rewards, "rewards"),
                                                              (mask, "mask")))
  if step_rewards.ndim < 2:
    raise ValueError(f"step_rewards must have shape [..., G, T]; got {tuple(step_rewards.shape)}")
  check_shape(mask, "mask", step_rewards.shape, "[..., G, T] of step_rewards")
  check_shape(rewards, "rewards", step_rewards.shape[:-1], "[..., G] of step_rewards")
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1; got {ddof}")
  return _step_advantages(step_rewards, rewards, mask, eps, scale=bool(scale), ddof=int(ddof))


@functools.partial(jax.jit, static_argnames=("scale", "ddof"))
def _step_advantages(step_rewards, rewards, mask, eps, *, scale, ddof):
  mean, std, flat = _group_stats(_float(rewards), ddof)
  centred = _float(step_rewards) - mean[..., None]
  adv = centred / (std[..., None] + eps) if scale else centred
  return jnp.where(flat[..., None] | ~mask.astype(bool), 0.0, adv)


def advantage_metrics(rewards) -> dict[str, jax.Array]:
  """Batch metrics of outcome rewards [..., G] for logging.

  Returns:
    {"reward_mean": mean over every completion, "reward_std": their population std (not per group),
     "zero_std_group_frac": the fraction of groups whose rewards are all equal (no GRPO signal)} — float32 scalars.
  """
  rewards = as_array(rewards, "rewards")
  if rewards.ndim < 1 or rewards.shape[-1] < 1:
    raise ValueError(f"rewards must have shape [..., G] with G >= 1; got {tuple(rewards.shape)}")
  return _advantage_metrics(rewards)


@jax.jit
def _advantage_metrics(rewards):
  rewards = rewards.astype(jnp.float32)
  flat = jnp.max(rewards, axis=-1) == jnp.min(rewards, axis=-1)
  return {
      "reward_mean": jnp.mean(rewards),
      "reward_std": jnp.std(rewards),
      "zero_std_group_frac": jnp.mean(flat.astype(jnp.float32)),
  }
