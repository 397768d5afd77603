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


class ImplicitPRM(NamedTuple):
  counts: jax.Array  # int32[..., G, T]  |λ(i,t)|, 0 on padding
  step_rewards: jax.Array  # float[..., G, T]  R(i,t), 0 on padding
  step_advantages: jax.Array  # float[..., G, T]  A(i,t), 0 on padding


@functools.partial(jax.jit, static_argnames=("scale", "ddof", "eps", "method", "seed"))
def implicit_prm(
    tokens: jax.Array,
    mask: jax.Array,
    rewards: jax.Array,
    *,
    scale: bool = True,
    ddof: int = 1,
    eps: float = 1e-4,
    method: prefix.Method = "auto",
    seed: int = 0,
) -> ImplicitPRM:
  """Counts, step rewards R(i,t) and step advantages A(i,t).

  Args:
    tokens: int[..., G, T] completion tokens; mask: [..., G, T] (right padding).
    rewards: float[..., G] outcome rewards r_i.
    scale, ddof, eps: as in ``group_advantages``; A uses the group's mean/std.
    method, seed: as in ``prefix_counts``.

  Returns:
    ImplicitPRM(counts, step_rewards, step_advantages).
  """
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.float32)
  counts, sums = prefix.group_prefix_reduce(tokens, mask, rewards, method=method, seed=seed)
  step_rewards = sums / jnp.maximum(counts, 1).astype(sums.dtype)
  step_adv = adv_lib.step_advantages(step_rewards, rewards, mask, scale=scale, ddof=ddof, eps=eps)
  return ImplicitPRM(counts=counts, step_rewards=step_rewards, step_advantages=step_adv)


class TreeStats(NamedTuple):
  num_steps: jax.Array  # int32[...]  distinct non-empty process steps (tree nodes)
  path_depth: jax.Array  # int32[..., G]  process steps from the root to the leaf
  intermediate_prop: jax.Array  # float32[..., G]  fraction of tokens with |λ| > 1
  flat: jax.Array  # bool[...]  no token shared by two completions


def tree_stats_from_counts(counts: jax.Array, mask: jax.Array) -> TreeStats:
  """Tree statistics from precomputed |λ| (see ``tree_stats``)."""
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


@functools.partial(jax.jit, static_argnames=("method", "seed"))
def tree_stats(tokens: jax.Array, mask: jax.Array, *, method: prefix.Method = "auto", seed: int = 0) -> TreeStats:
  """Prefix-tree statistics of each group.

  Returns:
    TreeStats: ``num_steps`` (distinct non-empty process steps, i.e. tree nodes
    other than an empty root; duplicates share nodes), ``path_depth`` (steps
    from the root to completion i's end), ``intermediate_prop`` (fraction of
    completion i's tokens with |λ(i,t)| > 1) and ``flat`` (every |λ| == 1).
  """
  counts = prefix.prefix_counts(tokens, mask, method=method, seed=seed)
  return tree_stats_from_counts(counts, jnp.asarray(mask))


def prefix_metrics(counts: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Batch means for logging: mean |λ|, intermediate proportion, flat-tree fraction."""
  valid = mask.astype(bool)
  n = jnp.maximum(jnp.sum(valid), 1)
  stats = tree_stats_from_counts(counts, mask)
  return {
      "lambda_mean": jnp.sum(jnp.where(valid, counts, 0)) / n,
      "intermediate_prop": jnp.mean(stats.intermediate_prop),
      "flat_tree_frac": jnp.mean(stats.flat.astype(jnp.float32)),
      "process_steps_mean": jnp.mean(stats.num_steps.astype(jnp.float32)),
  }
