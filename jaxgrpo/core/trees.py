"""Whole-pytree reductions used on device (the update's finiteness flags, checkpoint verification)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def all_finite(tree) -> jax.Array:
  """bool[]: True if every floating leaf of ``tree`` is finite (one reduction; integer leaves are ignored)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
