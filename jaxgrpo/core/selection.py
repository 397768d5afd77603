"""Row-local selection along the last axis without a sort: the position of the maximum, the k largest positions, the
k-th largest value, and the top-p (nucleus) threshold.

Why not ``jax.lax.top_k`` or ``jnp.sort``: on XLA:CPU ``jax.lax.top_k`` on one device lowers to a full stable sort
of each row (≈ 0.5–0.6 s for [64, 49,152] logits here, every decode step of a top-k sampler), and with the rows
sharded XLA's SPMD partitioner does not partition the TopK custom call: it all-gathers the whole array and every
device ranks every row. What is here uses only row-local reductions, gathers and a fixed-length loop, so a sharded
batch stays sharded and the cost does not grow with a sort (experiments/bench_topk.py).

Ties go to the lower index, as in ``jax.lax.top_k``. Values are float; NaN is not supported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK = 128  # positions per block in top_k_positions' first pass


def argmax(x):
  """int32[...]: the first position of the maximum along the last axis (``jnp.argmax`` for NaN-free input), as two
  plain reductions: the maximum, then the first index holding it.  XLA:CPU lowers ``jnp.argmax`` to one variadic
  reduce that ran 2.8× slower on [64, 49,152] logits (13.7 vs 4.8 ms here) — every greedy decode step pays it."""
  n = x.shape[-1]
  best = jnp.max(x, axis=-1, keepdims=True)
  return jnp.minimum(jnp.min(jnp.where(x == best, jnp.arange(n, dtype=jnp.int32), n), axis=-1), n - 1)


def _first_max_rounds(scores, k: int):
  """Indices of the k largest ``scores`` along the last axis, ties to the lower index, as k rounds of "max,
  then the first index holding it" (plain reductions)."""
  n = scores.shape[-1]
  pos = jnp.arange(n, dtype=jnp.int32)
  taken = jnp.zeros(scores.shape, bool)  # not a -inf overwrite: -inf entries must stay distinct candidates
  picked = []
  for _ in range(k):  # k is small and static
    best = jnp.max(jnp.where(taken, -jnp.inf, scores), axis=-1, keepdims=True)
    i = jnp.min(jnp.where((scores == best) & ~taken, pos, n), axis=-1)
    picked.append(i)
    taken = taken | (pos == i[..., None])
  return jnp.stack(picked, axis=-1)


def top_k_positions(scores, k: int, block: int = BLOCK):
  """int32[..., k]: positions of the k largest ``scores`` along the last axis, ties to the lower index: the set
  ``jax.lax.top_k`` returns, in any order. ``k`` (<= the last axis) and ``block`` are static.

  Blocks of ``block`` positions are ranked by their maximum (ties to the earlier block); the k largest entries lie
  in the k best blocks (a block outside them has k better blocks, each holding an entry that ranks above all of
  its own), so only those k·block candidates, kept in position order, are ranked entry by entry. Cost ≈ k rounds
  over T / block block maxima plus k rounds over k·block candidates: for small k (the PRPO spike count, a sampler's
  top-k of tens).
  """
  t = scores.shape[-1]
  if not 1 <= k <= t:
    raise ValueError(f"k must be in [1, {t}] (the last axis of scores); got {k}")
  if t <= k * block:
    return _first_max_rounds(scores, k)
  nb = -(-t // block)
  pad = [(0, 0)] * (scores.ndim - 1) + [(0, nb * block - t)]
  blocks = jnp.pad(scores, pad, constant_values=-jnp.inf).reshape(*scores.shape[:-1], nb, block)
  chosen = jnp.sort(_first_max_rounds(jnp.max(blocks, axis=-1), k), axis=-1)  # [..., k] block ids, ascending
  cand = jnp.take_along_axis(blocks, chosen[..., None], axis=-2).reshape(*scores.shape[:-1], k * block)
  cand_pos = (chosen[..., None] * block + jnp.arange(block, dtype=jnp.int32)).reshape(*scores.shape[:-1], k * block)
  return jnp.take_along_axis(cand_pos, _first_max_rounds(cand, k), axis=-1)


def order_key(x):
  """uint32 keys with the order of the float32 values ``x`` (-0.0 just below +0.0; ±inf included)."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _bisect(key, below):
  """The smallest K between the row's smallest and largest ``key`` with ``below(K)`` true, per row ([..., 1]), for
  ``below`` monotone (false ... false true ... true) and true at the largest key: 32 halvings cover uint32."""
  lo, hi = jnp.min(key, -1, keepdims=True), jnp.max(key, -1, keepdims=True)

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + ((hi - lo) >> 1)
    ok = below(mid)
    return jnp.where(ok, lo, mid + jnp.uint32(1)), jnp.where(ok, mid, hi)

  lo, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return hi


def kth_largest(x, k: int, block: int = BLOCK):
  """float32[..., 1]: the k-th largest value of ``x`` along the last axis (counting repeats), as
  ``jax.lax.top_k(x, k)[0][..., -1:]``. ``k`` is static, 1 <= k <= the last axis.

  Small k (k²·block <= 4·T): the values at ``top_k_positions``. Otherwise a bisection on ``order_key``: the
  largest key K with at least k entries >= K, 32 counting passes over the row whatever k is.
  """
  x = jnp.asarray(x, jnp.float32)
  t = x.shape[-1]
  if not 1 <= k <= t:
    raise ValueError(f"k must be in [1, {t}] (the last axis of x); got {k}")
  if k * k * block <= 4 * t:
    return jnp.min(jnp.take_along_axis(x, top_k_positions(x, k, block), axis=-1), axis=-1, keepdims=True)
  key = order_key(x)
  # "fewer than k entries are >= K + 1" is monotone in K and true at the row's maximum key.
  kk = _bisect(key, lambda m: jnp.sum(key > m, axis=-1, keepdims=True) < k)
  return jnp.max(jnp.where(key == kk, x, -jnp.inf), axis=-1, keepdims=True)


def top_p_threshold(logits, top_p):
  """float32[..., 1]: the nucleus threshold of ``logits`` along the last axis: keep = logits >= threshold.

  The smallest value v whose strictly larger entries hold probability mass < ``top_p`` (softmax of ``logits``),
  i.e. the last value the sort-based rule keeps (tokens in descending order are kept while the mass before them
  is < top_p) — then every entry tied with it is kept too. Found by bisection on ``order_key``: 32 masked sums
  over the row instead of a sort. The masses are summed in a different order than a sorted cumsum, so a value
  whose mass-before lies within float rounding of ``top_p`` may fall either side. ``top_p`` in (0, 1], may be
  traced.
  """
  logits = jnp.asarray(logits, jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  key = order_key(logits)
  kk = _bisect(key, lambda m: jnp.sum(jnp.where(key > m, probs, 0.0), axis=-1, keepdims=True) < top_p)
  return jnp.min(jnp.where(key >= kk, logits, jnp.inf), axis=-1, keepdims=True)
