"""The prefix-overlap kernel: |λ(i,t)| and group sums over shared prefixes.

For a group of G completions (completion tokens only, right-padded, ``mask`` 1 on
the completion's tokens and 0 on padding), the process set λ(i,t) is the set of
completions j that have a token at position t and agree with completion i on
positions 0..t (inclusive).  Identical completions count with multiplicity; a
completion that is a strict prefix of another shares all of its tokens with it.
EOS, when it was generated, is a token of the completion (keep it in ``mask``).

How it is computed (sorted-hash comparisons, as in the design):

1. A 64-bit prefix hash per position, as two independent 32-bit lanes:
   ``h[i,t] = Σ_{s≤t} f(s, y_i[s])  (mod 2^32)`` per lane, where ``f`` is a keyed
   integer mixer (murmur3 ``fmix32`` twice, salted with the position) — a fully
   parallel map followed by a cumulative sum, no sequential scan.
2. Equal hashes counted within the group, per position, with one of two
   strategies (same results; the cost differs by backend and G):
   * ``"sort"``: sort the G hashes of each position, count equal runs, scatter
     back — O(G log G) per position;
   * ``"compare"``: compare-and-count over the group — O(G²) per position,
     accumulated member by member so no G×G×T intermediate is materialized
     (unrolled up to G = 32; above, a loop over the members inside a scan over
     blocks of positions, so the batch axis stays a batch axis and keeps its
     sharding: nothing is gathered onto one device).
   ``"auto"`` picks compare up to G = 256 on CPU (measured by
   ``experiments/bench_prefix.py``: compare wins at every G measured there) and
   up to G = 32 on GPU/TPU, where the crossover has NOT been measured (a guess;
   pass ``method`` explicitly if it matters to you).

Collision bound.  Two different prefixes of the same length collide in one lane
iff the sum of ``f`` over the positions where they differ cancels mod 2^32.
Modelling ``f`` as a random function, that happens with probability 2^-32 per
lane, so 2^-64 for the pair of lanes.  A union bound over every pair of
completions and every position gives, per group,
``P(any miscount) ≤ G(G-1)/2 · T · 2^-64`` — e.g. ≤ 4.6e-13 for G=64, T=4096,
and ≤ 4.6e-7 over a million such groups.  The bound holds for inputs not chosen
adversarially against the fixed keys (``seed`` changes them).

Token ids of 64 bits (``jax_enable_x64``) are hashed on both halves; with x64
off, NumPy int64 ids outside int32 are refused (JAX would truncate them).
Python lists and NumPy arrays are accepted (converted once, outside ``jit``).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from jaxgrpo.core.arrays import as_array, check_ids_fit
from jaxgrpo.core.hashing import fmix32

Method = Literal["auto", "sort", "compare"]

_LANE_KEYS = (0x9E3779B9, 0x85EBCA77)  # one salt per 32-bit lane
_POS_MULT = (0xC2B2AE3D, 0x27D4EB2F)

# Crossover measured on a 2-core x86 CPU (experiments/bench_prefix.py): the fused
# compare beats the sort for every G we measured there (sorting small segments
# is slow on XLA:CPU).  GPU/TPU: UNMEASURED — the value 32 is a guess (sorting is
# cheap there, so O(G log G) should win earlier); pass method= explicitly to choose.
_COMPARE_MAX_G = {"cpu": 256, "gpu": 32, "tpu": 32}
_UNROLL_MAX_G = 32
_BLOCK_ELEMENTS = 1 << 14  # G × (positions per block) of the looped compare: a block's accumulators stay in cache


def prefix_hashes(tokens, mask, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """Per-position 64-bit prefix hashes, returned as two uint32 lanes.

  Args:
    tokens: int[..., T] completion tokens (32- or, with x64, 64-bit ids).
    mask: [..., T] 1 on completion tokens, 0 on padding (right padding).
    seed: salt for the mixer; the collision bound holds for any fixed seed.

  Returns:
    (hi, lo): uint32[..., T] each; positions s ≤ t determine lane values at t.
    Padding positions contribute nothing (their hashes are meaningless and are
    never compared by the kernel: validity is compared separately).
  """
  tokens, mask = as_array(tokens, "tokens"), as_array(mask, "mask")
  check_ids_fit(tokens)
  if tokens.ndim < 1 or mask.shape != tokens.shape:
    raise ValueError(f"mask must have the shape of tokens {tuple(tokens.shape)}; got {tuple(mask.shape)}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer token ids; got dtype {tokens.dtype}")
  return _prefix_hashes(tokens, mask, seed)


def _prefix_hashes(tokens, mask, seed: int):
  """``prefix_hashes`` on checked arrays (traceable)."""
  valid = mask.astype(bool)
  pos = jnp.arange(tokens.shape[-1], dtype=jnp.uint32)
  wide = jnp.dtype(tokens.dtype).itemsize == 8
  tok = tokens.astype(jnp.uint32)  # the low 32 bits
  high = (tokens >> 32).astype(jnp.uint32) if wide else None
  lanes = []
  for key, mult in zip(_LANE_KEYS, _POS_MULT):
    k = jnp.uint32((key + 0x632BE5AB * seed) & 0xFFFFFFFF)
    mixed = fmix32(tok ^ k)
    if wide:  # both halves of a 64-bit id reach the mixer
      mixed = mixed ^ fmix32(high + k * jnp.uint32(0x27D4EB2F))
    f = fmix32(mixed + pos * jnp.uint32(mult))
    f = jnp.where(valid, f, jnp.uint32(0))
    lanes.append(jnp.cumsum(f, axis=-1, dtype=jnp.uint32))
  return lanes[0], lanes[1]


def _default_method(group_size: int) -> str:
  backend = jax.default_backend()
  return "compare" if group_size <= _COMPARE_MAX_G.get(backend, 32) else "sort"


def _match_reduce_compare(hi, lo, valid, values):
  """Compare-and-count over the group: [N, G, T] lanes → counts, sums [N, G, T].

  Accumulates one [N, G, T] comparison per group member j, so memory stays
  O(G·T) per group.  For small G the loop is unrolled (XLA fuses it into one
  elementwise pass); for large G a ``fori_loop`` over the members runs in each
  block of positions of a ``scan``, so the accumulators of a block stay in cache
  and the batch axis is never looped over.  A loop over groups (``lax.map``,
  before) gathered a sharded batch onto every device (8× the work on 8); on
  one CPU device this path measured 0.93–1.29× its time (best of 7, interleaved,
  64 groups, G = 36–64, T = 1,024–4,096).  (A broadcast [N, G, G, T] compare
  reduced over j is also fused by XLA:CPU but measured 2-6× slower at G=64.)
  """
  g = hi.shape[1]

  def member(j, carry, hi, lo, valid, values):
    counts, sums = carry
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, j, 1, axis=1)
    eq = (hi == take(hi)) & (lo == take(lo)) & take(valid)
    counts = counts + eq.astype(jnp.int32)
    if values is not None:
      sums = sums + jnp.where(eq, take(values)[..., None], 0)
    return counts, sums

  def init(shape):
    return jnp.zeros(shape, jnp.int32), None if values is None else jnp.zeros(shape, values.dtype)

  if g <= _UNROLL_MAX_G:
    carry = init(hi.shape)
    for j in range(g):
      carry = member(j, carry, hi, lo, valid, values)
    return carry

  # Large G: scan over blocks of positions (T is never a sharded axis), and in each block loop over the G members
  # with the whole batch at once.  The batch axis is never scanned over, so it keeps its sharding; a block's
  # [N, G, block] accumulators stay small.
  n, _, t = hi.shape
  block = int(min(t, max(8, _BLOCK_ELEMENTS // g)))
  pad = (-t) % block
  nb = (t + pad) // block
  blocks = lambda x: jnp.moveaxis(jnp.pad(x, ((0, 0), (0, 0), (0, pad))).reshape(n, g, nb, block), 2, 0)

  def one_block(_, xs):
    h, l, v = xs
    body = lambda j, c: member(j, c, h, l, v, values)
    return None, jax.lax.fori_loop(0, g, body, init(h.shape))

  _, (counts, sums) = jax.lax.scan(one_block, None, (blocks(hi), blocks(lo), blocks(valid)))
  unblock = lambda x: jnp.moveaxis(x, 0, 2).reshape(n, g, nb * block)[..., :t]
  return unblock(counts), None if sums is None else unblock(sums)


def _match_reduce_sort(hi, lo, valid, values):
  """Sort each position's G hashes, count equal runs, scatter back."""
  n, g, t = hi.shape
  # Put the group axis last so the sort runs over it: [N, T, G].
  key0 = jnp.swapaxes(~valid, 1, 2).astype(jnp.uint32)  # valid entries first
  key1 = jnp.swapaxes(hi, 1, 2)
  key2 = jnp.swapaxes(lo, 1, 2)
  idx = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), key1.shape)
  operands = [key0, key1, key2, idx]
  if values is not None:
    operands.append(jnp.broadcast_to(values[:, None, :], key1.shape))
  sorted_ops = jax.lax.sort(operands, dimension=2, num_keys=3, is_stable=True)
  s0, s1, s2, sidx = sorted_ops[:4]
  new_run = jnp.concatenate(
      [
          jnp.ones((n, t, 1), bool),
          (s0[..., 1:] != s0[..., :-1]) | (s1[..., 1:] != s1[..., :-1]) | (s2[..., 1:] != s2[..., :-1]),
      ],
      axis=-1,
  )
  pos = jnp.arange(g, dtype=jnp.int32)
  start = jax.lax.cummax(jnp.where(new_run, pos, 0), axis=2)
  run_end = jnp.concatenate([new_run[..., 1:], jnp.ones((n, t, 1), bool)], axis=-1)
  end = jax.lax.cummin(jnp.where(run_end, pos, g), axis=2, reverse=True)
  run_counts = end - start + 1
  inv = jnp.argsort(sidx, axis=2)  # permutation back to group order
  counts = jnp.take_along_axis(run_counts, inv, axis=2)
  sums = None
  if values is not None:
    csum = jnp.cumsum(sorted_ops[4], axis=2)
    before = jnp.where(start > 0, jnp.take_along_axis(csum, jnp.maximum(start - 1, 0), axis=2), 0)
    run_sums = jnp.take_along_axis(csum, end, axis=2) - before
    sums = jnp.swapaxes(jnp.take_along_axis(run_sums, inv, axis=2), 1, 2)
  return jnp.swapaxes(counts, 1, 2), sums


def _flatten_groups(x: jax.Array, trailing: int) -> jax.Array:
  return x.reshape((-1,) + x.shape[x.ndim - trailing:])


def check_group_shapes(tokens, mask, rewards=None) -> None:
  """Static (trace-time) shape checks; free under jit, no runtime asserts."""
  if tokens.ndim < 2:
    raise ValueError(f"tokens must have shape [..., G, T]; got shape {tokens.shape}")
  if mask.shape != tokens.shape:
    raise ValueError(f"mask must have the shape of tokens {tokens.shape}; got {mask.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer token ids; got dtype {tokens.dtype}")
  g, t = tokens.shape[-2:]
  if g < 1:
    raise ValueError(f"tokens: group size G (axis -2) must be >= 1; got shape {tokens.shape}")
  if t < 1:
    raise ValueError(f"tokens: completion length T (axis -1) must be >= 1; got shape {tokens.shape}")
  if rewards is not None and rewards.shape != tokens.shape[:-1]:
    raise ValueError(
        f"rewards must have shape [..., G] = {tokens.shape[:-1]} to match tokens {tokens.shape}; "
        f"got {rewards.shape}"
    )


def group_prefix_reduce(
    tokens,
    mask,
    values=None,
    *,
    method: Method = "auto",
    seed: int = 0,
) -> tuple[jax.Array, jax.Array | None]:
  """Counts |λ(i,t)| and, optionally, Σ_{j∈λ(i,t)} values[j] (traceable; arguments already arrays).

  Args:
    tokens: int[..., G, T]; mask: [..., G, T]; values: float[..., G] or None.

  Returns:
    counts int32[..., G, T] (0 on padding) and sums float[..., G, T] (0 on
    padding) or None when ``values`` is None.
  """
  tokens = jnp.asarray(tokens)
  mask = jnp.asarray(mask)
  check_group_shapes(tokens, mask, values)
  g = tokens.shape[-2]
  if method == "auto":
    method = _default_method(g)
  if method not in ("sort", "compare"):
    raise ValueError(f"method must be 'auto', 'sort' or 'compare'; got {method!r}")
  valid = _flatten_groups(mask.astype(bool), 2)
  hi, lo = _prefix_hashes(_flatten_groups(tokens, 2), valid, seed)
  vals = None if values is None else _flatten_groups(jnp.asarray(values), 1)
  if vals is not None and not jnp.issubdtype(vals.dtype, jnp.floating):
    vals = vals.astype(jnp.float32)
  reduce = _match_reduce_compare if method == "compare" else _match_reduce_sort
  counts, sums = reduce(hi, lo, valid, vals)
  counts = jnp.where(valid, counts, 0).reshape(tokens.shape)
  if sums is not None:
    sums = jnp.where(valid, sums, 0).reshape(tokens.shape)
  return counts, sums


def prefix_counts(tokens, mask, *, method: Method = "auto", seed: int = 0) -> jax.Array:
  """|λ(i,t)|: how many completions of the group share the prefix y_i[0..t].

  Args:
    tokens: int[..., G, T] completion tokens (prompt excluded), right-padded
      (an array, or a nested list: converted once, outside ``jit``).
    mask: [..., G, T] 1 on completion tokens (EOS included), 0 on padding. Must
      be a prefix mask per completion (ones then zeros); ``jaxgrpo.checked``
      validates that eagerly.
    method: "auto" | "sort" | "compare" (see module docstring).
    seed: hash salt.

  Returns:
    int32[..., G, T]; 0 where ``mask`` is 0, else in [1, G].  Jitted; no gradient
    (counts are integers).
  """
  tokens, mask = as_array(tokens, "tokens"), as_array(mask, "mask")
  check_ids_fit(tokens)
  return _prefix_counts(tokens, mask, method=method, seed=seed)


@functools.partial(jax.jit, static_argnames=("method", "seed"))
def _prefix_counts(tokens, mask, *, method, seed):
  counts, _ = group_prefix_reduce(tokens, mask, None, method=method, seed=seed)
  return counts
