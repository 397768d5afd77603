"""Hand-written kernels (XLA:CPU, through jax.ffi), each with the XLA path it replaces kept where it is used."""

from jaxgrpo.kernels.cpu import (
    MAX_GROUP,
    available,
    decode_attention,
    pair_keys,
    pair_values,
    unpair_keys,
    unpair_values,
)

__all__ = ["MAX_GROUP", "available", "decode_attention", "pair_keys", "pair_values", "unpair_keys", "unpair_values"]
