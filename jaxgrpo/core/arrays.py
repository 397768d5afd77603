"""Arguments at the boundary of the core's functions: Python lists and NumPy arrays become one array (outside
``jit``: one argument, not one per element), shapes are checked by name at trace time."""

from __future__ import annotations

import jax
import numpy as np


def as_array(x, name: str):
  """``x`` as an array: JAX arrays and tracers pass through, NumPy arrays too; lists, tuples and scalars become a
  NumPy array.  Ragged or non-numeric input raises ValueError naming the argument."""
  if isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "__jax_array__"):
    return x
  try:
    a = np.asarray(x)
  except (ValueError, TypeError):
    raise ValueError(f"{name} must be an array or a rectangular nested list of numbers; got a ragged "
                     f"{type(x).__name__}") from None
  if a.dtype == object or a.dtype.kind not in "biuf":
    raise ValueError(f"{name} must hold numbers; got {type(x).__name__} of dtype {a.dtype}")
  return a


def optional_array(x, name: str):
  return None if x is None else as_array(x, name)


def check_ids_fit(tokens, name: str = "tokens") -> None:
  """Host-side: 64-bit ids outside int32 are truncated when they enter JAX with x64 off; refuse them by name."""
  if isinstance(tokens, np.ndarray) and tokens.dtype.itemsize == 8 and not jax.config.jax_enable_x64 and tokens.size:
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < -2**31 or hi >= 2**31:
      raise ValueError(f"{name} holds ids outside int32 ([{lo}, {hi}]) but jax_enable_x64 is off, so JAX would "
                       "truncate them and different ids would count as one: enable x64 or remap the ids")


def check_shape(x, name: str, shape: tuple, what: str) -> None:
  """Trace-time check that ``x`` has ``shape`` (``what`` says which shape that is, e.g. "[..., G, T] of mask")."""
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name} must have shape {what} = {tuple(shape)}; got {tuple(x.shape)}")
