"""Integer mixing for the prefix-overlap kernel's hashes and for checkpoint checksums."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def fmix32(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijective avalanche mix of uint32 values."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def array_checksum(x: jax.Array) -> jax.Array:
  """A uint32 checksum of an array's bits and their positions: Σ_i fmix32(bits_i ⊕ fmix32(i·φ)) mod 2³².

  Modular addition is associative and commutative, so the value does not depend on how the array
  is sharded or reduced; any changed element or swapped pair changes it with probability ≈ 1 − 2⁻³².
  """
  x = jnp.asarray(x).reshape(-1)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size not in _UINT:
    raise ValueError(f"array_checksum supports 1-, 2- and 4-byte dtypes; got {x.dtype}")
  bits = jax.lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32)
  pos = fmix32(jnp.arange(x.shape[0], dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + jnp.uint32(1))
  return jnp.sum(fmix32(bits ^ pos), dtype=jnp.uint32)
