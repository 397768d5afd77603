"""GRPO's implicit process reward model (Sullivan & Koller, arXiv 2509.21154).

Made explicit: R(i,t) is the mean outcome reward of the completions in λ(i,t),
A(i,t) its group-relative advantage.  Also the prefix-tree statistics of the
paper's "does overlap happen?" analysis.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgrpo.core import advantages as adv_lib
from jaxgrpo.core import prefix
from jaxgrpo.core.arrays import as_array, check_ids_fit, check_shape


class ImplicitPRM(NamedTuple):
  counts: jax.Array  # int32[..., G, T]  |λ(i,t)|, 0 on padding
  step_rewards: jax.Array  # float[..., G, T]  R(i,t), 0 on padding
  step_advantages: jax.Array  # float[..., G, T]  A(i,t), 0 on padding


def implicit_prm(
    tokens,
    mask,
    rewards,
    *,
    scale: bool = True,
    ddof: int = 1,
    eps=1e-4,
    method: prefix.Method = "auto",
    seed: int = 0,
) -> ImplicitPRM:
  """Counts, step rewards R(i,t) and step advantages A(i,t).

  Args:
    tokens: int[..., G, T] completion tokens; mask: [..., G, T] (right padding).
    rewards: float[..., G] outcome rewards r_i.
    scale, ddof, eps: as in ``group_advantages``; A uses the group's mean/std (``eps`` may be traced).
    method, seed: as in ``prefix_counts``.

  Returns:
    ImplicitPRM(counts int32[..., G, T], step_rewards float32[..., G, T] (mean reward of λ(i,t)),
    step_advantages float32[..., G, T]), all 0 on padding; step advantages are 0 in zero-variance groups.  The
    step rewards carry the gradient of the rewards (a mean over λ(i,t)); the counts carry none.
  """
  tokens, mask, rewards = as_array(tokens, "tokens"), as_array(mask, "mask"), as_array(rewards, "rewards")
  check_ids_fit(tokens)
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1; got {ddof}")
  return _implicit_prm(tokens, mask, rewards, eps, scale=bool(scale), ddof=int(ddof), method=method, seed=seed)


@functools.partial(jax.jit, static_argnames=("scale", "ddof", "method", "seed"))
def _implicit_prm(tokens, mask, rewards, eps, *, scale, ddof, method, seed):
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.float32)
  counts, sums = prefix.group_prefix_reduce(tokens, mask, rewards, method=method, seed=seed)
  step_rewards = sums / jnp.maximum(counts, 1).astype(sums.dtype)
  step_adv = adv_lib._step_advantages(step_rewards, rewards, mask, eps, scale=scale, ddof=ddof)
  return ImplicitPRM(counts=counts, step_rewards=step_rewards, step_advantages=step_adv)


class TreeStats(NamedTuple):
  num_steps: jax.Array  # int32[...]  distinct non-empty process steps (tree nodes)
  path_depth: jax.Array  # int32[..., G]  process steps from the root to the leaf
  intermediate_prop: jax.Array  # float32[..., G]  fraction of tokens with |λ| > 1
  flat: jax.Array  # bool[...]  no token shared by two completions


def tree_stats_from_counts(counts, mask) -> TreeStats:
  """Tree statistics from precomputed |λ| (``prefix_counts``'s int32[..., G, T]) and the mask [..., G, T]; see
  ``tree_stats`` for the fields."""
  counts, mask = as_array(counts, "counts"), as_array(mask, "mask")
  if counts.ndim < 2:
    raise ValueError(f"counts must have shape [..., G, T]; got {tuple(counts.shape)}")
  check_shape(mask, "mask", counts.shape, "[..., G, T] of counts")
  return _tree_stats_from_counts(counts, mask)


def _tree_stats_from_counts(counts, mask) -> TreeStats:
  valid = mask.astype(bool)
  # λ(i,t) ⊆ λ(i,t-1), so a new process step starts exactly where |λ| drops.
  prev = jnp.concatenate([jnp.full_like(counts[..., :1], -1), counts[..., :-1]], axis=-1)
  starts = valid & (counts != prev)
  path_depth = jnp.sum(starts, axis=-1, dtype=jnp.int32)
  # Each node is started once by each of its |λ| members: Σ 1/|λ| over starts.
  inv = jnp.where(starts, 1.0 / jnp.maximum(counts, 1).astype(jnp.float32), 0.0)
  num_steps = jnp.round(jnp.sum(inv, axis=(-2, -1))).astype(jnp.int32)
  lengths = jnp.sum(valid, axis=-1)
  shared = jnp.sum(valid & (counts > 1), axis=-1)
  inter = jnp.where(lengths > 0, shared / jnp.maximum(lengths, 1), 0.0).astype(jnp.float32)
  flat = jnp.all(counts <= 1, axis=(-2, -1))
  return TreeStats(num_steps=num_steps, path_depth=path_depth, intermediate_prop=inter, flat=flat)


def tree_stats(tokens, mask, *, method: prefix.Method = "auto", seed: int = 0) -> TreeStats:
  """Prefix-tree statistics of each group (the paper's "does overlap happen?" analysis).

  Args:
    tokens: int[..., G, T] completion tokens; mask: [..., G, T] (right padding).
    method, seed: as in ``prefix_counts``.

  Returns:
    TreeStats with ``num_steps`` int32[...] (distinct non-empty process steps, i.e. tree nodes other than an empty
    root; duplicates share nodes), ``path_depth`` int32[..., G] (steps from the root to completion i's end),
    ``intermediate_prop`` float32[..., G] (fraction of completion i's tokens with |λ(i,t)| > 1; 0 for an empty
    completion) and ``flat`` bool[...] (every |λ| == 1: no token shared by two completions).
  """
  tokens, mask = as_array(tokens, "tokens"), as_array(mask, "mask")
  check_ids_fit(tokens)
  return _tree_stats(tokens, mask, method=method, seed=seed)


@functools.partial(jax.jit, static_argnames=("method", "seed"))
def _tree_stats(tokens, mask, *, method, seed):
  counts, _ = prefix.group_prefix_reduce(tokens, mask, None, method=method, seed=seed)
  return _tree_stats_from_counts(counts, mask)


def prefix_metrics(counts, mask) -> dict[str, jax.Array]:
  """Batch means for logging, from |λ| counts int32[..., G, T] and the mask [..., G, T].

  Returns:
    float32 scalars: ``lambda_mean`` (mean |λ| over completion tokens), ``intermediate_prop`` (mean over
    completions of the fraction of tokens shared with another completion), ``flat_tree_frac`` (fraction of groups
    with no shared token) and ``process_steps_mean`` (mean number of distinct process steps per group).
  """
  counts, mask = as_array(counts, "counts"), as_array(mask, "mask")
  if counts.ndim < 2:
    raise ValueError(f"counts must have shape [..., G, T]; got {tuple(counts.shape)}")
  check_shape(mask, "mask", counts.shape, "[..., G, T] of counts")
  return _prefix_metrics(counts, mask)


@jax.jit
def _prefix_metrics(counts, mask):
  valid = mask.astype(bool)
  n = jnp.maximum(jnp.sum(valid), 1)
  stats = _tree_stats_from_counts(counts, mask)
  return {
      "lambda_mean": jnp.sum(jnp.where(valid, counts, 0)) / n,
      "intermediate_prop": jnp.mean(stats.intermediate_prop),
      "flat_tree_frac": jnp.mean(stats.flat.astype(jnp.float32)),
      "process_steps_mean": jnp.mean(stats.num_steps.astype(jnp.float32)),
  }
