"""core.selection (the sort-free top-k positions, k-th largest value and top-p threshold) against numpy's sort,
and the sampler's logits processing staying row-local with the rows sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgrpo.core import selection
from jaxgrpo.rollout import sampler


def _rows(draw_rows, t, levels):
  """float32 rows with many ties (values from ``levels`` integer levels), -inf padding past each row's length."""
  x = np.full((len(draw_rows), t), -np.inf, np.float32)
  for r, (length, seed) in enumerate(draw_rows):
    n = min(length, t)
    x[r, :n] = np.random.default_rng(seed).integers(0, levels, n) * 0.5 - 3.0
  return x


ROWS = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2**31 - 1)), min_size=1, max_size=4)


@settings(max_examples=50, deadline=None)  # each example compiles its own program
@given(rows=ROWS, t=st.integers(1, 300), k=st.integers(1, 6), block=st.integers(1, 9),
       levels=st.sampled_from([2, 5, 1000]))
def test_blocked_top_k_is_the_top_k_set(rows, t, k, block, levels):
  """The row-local top-k (blocks ranked by their maximum, then the candidates) picks the set jax.lax.top_k picks,
  ties to the lower index, padding (-inf) included when a row has fewer than k entries."""
  k = min(k, t)
  scores = _rows(rows, t, levels)
  want = np.sort(np.asarray(jax.lax.top_k(jnp.asarray(scores), k)[1]), axis=-1)
  got = np.sort(np.asarray(selection.top_k_positions(jnp.asarray(scores), k, block)), axis=-1)
  np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, t=st.sampled_from([1, 5, 64, 300]), k=st.integers(1, 300), block=st.sampled_from([1, 4, 128]),
       levels=st.sampled_from([2, 5, 1000]), scale=st.sampled_from([1.0, -1e-30, 1e30]))
def test_kth_largest_is_the_sorted_value(rows, t, k, block, levels, scale):
  """Both paths (blocked positions for small k, bisection on the float order otherwise) give numpy's k-th largest,
  counting repeats, with negative, tiny, huge and -inf values."""
  k = min(k, t)
  x = _rows(rows, t, levels) * np.float32(scale)
  x = np.where(np.isnan(x), -np.inf, x).astype(np.float32)
  want = np.sort(x, axis=-1)[:, t - k][:, None]
  got = np.asarray(selection.kth_largest(jnp.asarray(x), k, block))
  np.testing.assert_array_equal(got, want)


def test_order_key_orders_floats():
  x = np.array([-np.inf, -1e30, -2.5, -1e-38, -0.0, 0.0, 1e-45, 1.0, 3e38, np.inf], np.float32)
  key = np.asarray(selection.order_key(jnp.asarray(x))).astype(np.int64)
  assert (np.diff(key) > 0).all()


def _top_p_keep(z, p):
  """The sort rule in float64: in descending order keep while the mass strictly before is < p; then every token
  tied with the last kept one. Also returns how close the decision came to p (for float-rounding slack)."""
  probs = np.exp(z - z.max())
  probs /= probs.sum()
  order = np.argsort(-z, kind="stable")
  before = np.cumsum(probs[order]) - probs[order]
  kept = order[before < p]
  thr = z[kept].min()
  return z >= thr, np.min(np.abs(before - p))


@jax.jit
def _top_p_threshold(z, p):
  return z >= selection.top_p_threshold(z, p)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), v=st.integers(1, 400), p=st.floats(0.01, 0.99),
       levels=st.sampled_from([3, 50, 0]), temp=st.sampled_from([0.3, 1.0, 4.0]))
def test_top_p_threshold_keeps_the_sorted_nucleus(seed, v, p, levels, temp):
  rng = np.random.default_rng(seed)
  z = (rng.integers(0, levels, v) if levels else rng.standard_normal(v)).astype(np.float32) / np.float32(temp)
  z[rng.random(v) < 0.1] = -1e30  # tokens a top-k or allowed mask removed
  if (z == -1e30).all():
    z[0] = 0.0
  want, margin = _top_p_keep(z.astype(np.float64), p)
  padded = np.full((1, 400), -1e30, np.float32)  # one shape, one compile; the padding has probability 0
  padded[0, :v] = z
  got = np.asarray(_top_p_threshold(jnp.asarray(padded), p))[0, :v]
  if margin > 1e-5:  # away from float rounding of the mass sums
    np.testing.assert_array_equal(got, want)
  assert got[np.argmax(z)]  # the top token is always kept


def test_sampler_truncation_is_row_local_when_sharded():
  """With the rows sharded over 8 devices the compiled top-k/top-p processing gathers nothing and sorts no row
  (the blocked top-k sorts only its k block ids), and gives the single-device result."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  n = 8
  if len(jax.devices()) < n:
    pytest.skip(f"needs {n} devices (tests/conftest.py asks for 8 host devices)")
  rng = np.random.default_rng(0)
  v = 16384  # top_k 20 takes the blocked path (20²·128 <= 4·v), 200 the bisection
  logits = jnp.asarray(rng.standard_normal((16, v)).astype(np.float32) * 2)
  mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
  sharded = jax.device_put(logits, NamedSharding(mesh, PartitionSpec("data")))
  for top_k, top_p in [(20, 1.0), (200, 1.0), (0, 0.8), (40, 0.9)]:
    sp = sampler.SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
    f = jax.jit(lambda x, sp=sp: sampler.process_logits(x, sp)[1])
    hlo = f.lower(sharded).compile().as_text()
    full_sorts = [line for line in hlo.splitlines() if " sort(" in line and f",{v}]" in line]
    assert "all-gather" not in hlo and "TopK" not in hlo and not full_sorts, (top_k, top_p)
    np.testing.assert_array_equal(np.asarray(f(sharded)), np.asarray(f(logits)))
    kept = np.asarray(f(logits)) > -1e29
    if top_k:
      assert (kept.sum(-1) <= top_k).all()


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, t=st.integers(1, 300), levels=st.sampled_from([1, 2, 5, 1000]))
def test_argmax_is_the_first_maximum(rows, t, levels):
  """``selection.argmax`` (max, then the first index holding it) is ``jnp.argmax``: ties to the lower index, rows
  of -inf padding included."""
  x = jnp.asarray(_rows(rows, t, levels))
  np.testing.assert_array_equal(np.asarray(selection.argmax(x)), np.asarray(jnp.argmax(x, axis=-1)))
  assert selection.argmax(x).dtype == jnp.int32
