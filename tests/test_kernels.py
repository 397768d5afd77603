"""The CPU decode-attention kernel (``jaxgrpo.kernels``): a float64 NumPy softmax over exactly the live positions
is its oracle (hypothesis over shapes, lengths and call-buffer windows, both its AVX512-BF16 blocks and its plain
loops), positions past a slot's length cannot leak into it (NaN there stays out), its layouts round-trip, bad
shapes are refused by name, and in the continuous engine it samples as XLA's path does."""

import dataclasses

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the CPU kernel did not build here (no compiler?)")


def oracle(q, k, v, before, rk, rv, ring_from, step, scale):
  """float64 softmax statistics over each slot's live positions: k, v [S, KV, R, Dh]; rk [S, KV, Dh, J]."""
  f64 = lambda x: np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  q, k, v, rk, rv = map(f64, (q, k, v, rk, rv))
  s, kv, g, dh = q.shape
  m, l, o = np.zeros((s, kv, g)), np.zeros((s, kv, g)), np.zeros((s, kv, g, dh))
  for i in range(s):
    cols = np.arange(min(max(int(before[i]), 0), k.shape[2]))
    ring = [j for j in range(rk.shape[3]) if ring_from[i] <= j <= step]
    keys = np.concatenate([k[i][:, cols], rk[i].transpose(0, 2, 1)[:, ring]], axis=1)
    vals = np.concatenate([v[i][:, cols], rv[i][:, ring]], axis=1)
    if keys.shape[1] == 0:
      m[i] = -np.inf
      continue
    sc = np.einsum("kgd,knd->kgn", q[i], keys) * scale
    m[i] = sc.max(-1)
    e = np.exp(sc - m[i][..., None])
    l[i], o[i] = e.sum(-1), np.einsum("kgn,knd->kgd", e, vals)
  return m, l, o


def inputs(rng, s, kv, g, dh, r, j):
  q = jnp.asarray(rng.normal(size=(s, kv, g, dh)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(s, kv, r, dh)), jnp.bfloat16)
  v = jnp.asarray(rng.normal(size=(s, kv, r, dh)), jnp.bfloat16)
  rk = jnp.asarray(rng.normal(size=(s, kv, dh, j)), jnp.float32)
  rv = jnp.asarray(rng.normal(size=(s, kv, j, dh)), jnp.float32)
  return q, k, v, rk, rv


def run(q, k, v, before, rk, rv, ring_from, step, scale=0.125):
  fn = jax.jit(lambda *a: kernels.decode_attention(*a, scale=scale))
  return [np.asarray(x) for x in fn(q, kernels.pair_keys(k), kernels.pair_values(v), jnp.asarray(before, jnp.int32),
                                    rk, rv, jnp.asarray(ring_from, jnp.int32), step)]


def check(got, want, v, rv):
  m, l, o = got
  wm, wl, wo = want
  np.testing.assert_array_equal(np.isfinite(m), np.isfinite(wm))
  live = np.isfinite(wm)
  np.testing.assert_allclose(m[live], wm[live], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l, wl, rtol=2e-5)
  # the cached values are weighted by bf16-rounded probabilities (as XLA's bf16 path): relative error ≤ 2^-8 of
  # the largest |value| times l
  vmax = max([float(np.abs(np.asarray(x, np.float32)).max()) for x in (v, rv) if x.size] + [1e-6])
  assert np.all(np.abs(o - wo) <= 2 ** -8 * vmax * wl[..., None] + 1e-6)
  assert np.all(l[~live] == 0) and np.all(o[~live] == 0)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(s=st.integers(1, 4), kv=st.integers(1, 3), g=st.integers(1, kernels.MAX_GROUP),
                  dh=st.sampled_from([2, 8, 24, 32, 64, 96]), r=st.integers(0, 40).map(lambda x: 2 * x),
                  j=st.integers(1, 40), seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_the_kernel_is_the_softmax_over_each_slots_live_positions(s, kv, g, dh, r, j, seed, data):
  rng = np.random.default_rng(seed)
  q, k, v, rk, rv = inputs(rng, s, kv, g, dh, r, j)
  before = data.draw(st.lists(st.integers(-2, r + 2), min_size=s, max_size=s))
  ring_from = data.draw(st.lists(st.integers(0, j + 1), min_size=s, max_size=s))
  step = data.draw(st.integers(0, j - 1))
  got = run(q, k, v, before, rk, rv, ring_from, step)
  check(got, oracle(q, k, v, before, rk, rv, ring_from, step, 0.125), v, rv)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 255, 256])
def test_the_vector_blocks_at_smollm2s_shapes_and_every_block_edge(n):
  """Dh = 64, 3 query heads per KV head, R = 256 and a 32-column call buffer (the AVX512-BF16 path), the live
  length on and around the 32-position block edges, odd and even."""
  rng = np.random.default_rng(n)
  q, k, v, rk, rv = inputs(rng, 5, 3, 3, 64, 256, 32)
  before = [n, max(n - 1, 0), 0, n, min(n + 1, 256)]
  ring_from, step = [0, 3, 32, 31, 5], 17
  got = run(q, k, v, before, rk, rv, ring_from, step)
  check(got, oracle(q, k, v, before, rk, rv, ring_from, step, 0.125), v, rv)


def test_nothing_past_a_slots_length_reaches_its_output():
  """NaN in every key and value position the slots do not read (past ``before``, outside the call-buffer window):
  the outputs stay finite and equal those of clean buffers (odd lengths included: the pair loads are masked)."""
  rng = np.random.default_rng(0)
  q, k, v, rk, rv = inputs(rng, 4, 2, 3, 64, 64, 32)
  before, ring_from, step = [0, 7, 33, 64], [2, 0, 10, 32], 20
  pos = np.arange(64)[None, None, :, None] >= np.asarray(before)[:, None, None, None]
  col = np.arange(32)
  off = ~((col[None, :] >= np.asarray(ring_from)[:, None]) & (col[None, :] <= step))  # [S, J]
  poison = lambda x, where: jnp.where(where, jnp.nan, x)
  bad = run(q, poison(k, pos), poison(v, pos), before, poison(rk, off[:, None, None, :]),
            poison(rv, off[:, None, :, None]), ring_from, step)
  clean = run(q, k, v, before, rk, rv, ring_from, step)
  for a, b in zip(bad, clean):
    np.testing.assert_array_equal(np.isnan(a), np.zeros_like(a, bool))
    np.testing.assert_array_equal(a, b)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(lead=st.lists(st.integers(1, 3), max_size=2), r=st.integers(0, 6).map(lambda x: 2 * x),
                  dh=st.integers(1, 4).map(lambda x: 2 * x))
def test_the_pair_layouts_round_trip_and_hold_each_position_once(lead, r, dh):
  x = jnp.arange(np.prod(lead, dtype=int) * r * dh, dtype=jnp.float32).reshape(*lead, r, dh)
  kp, vp = kernels.pair_keys(x), kernels.pair_values(x)
  assert kp.shape == (*lead, dh // 2, r, 2) and vp.shape == (*lead, r // 2, dh, 2)
  np.testing.assert_array_equal(kernels.unpair_keys(kp), x)
  np.testing.assert_array_equal(kernels.unpair_values(vp), x)
  if r:  # position i, dims (2p, 2p+1) at kp[..., p, i, :]; positions (2u, 2u+1), dim c at vp[..., u, c, :]
    np.testing.assert_array_equal(kp[..., 0, r - 1, :], x[..., r - 1, :2])
    np.testing.assert_array_equal(vp[..., 0, dh - 1, :], x[..., :2, dh - 1])


def test_bad_shapes_and_dtypes_are_refused_by_name():
  rng = np.random.default_rng(0)
  q, k, v, rk, rv = inputs(rng, 2, 1, 3, 8, 4, 4)
  kp, vp, b, rf = kernels.pair_keys(k), kernels.pair_values(v), jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match="query heads per KV head"):
    kernels.decode_attention(jnp.zeros((2, 1, 9, 8)), kp, vp, b, rk, rv, rf, 0, 1.0)
  with pytest.raises(ValueError, match="kp and vp must be bfloat16"):
    kernels.decode_attention(q, kp.astype(jnp.float32), vp, b, rk, rv, rf, 0, 1.0)
  with pytest.raises(ValueError, match=r"kp \[S, KV, Dh/2, R, 2\]"):
    kernels.decode_attention(q, k, vp, b, rk, rv, rf, 0, 1.0)
  with pytest.raises(ValueError, match=r"rk \[S, KV, Dh, J\]"):
    kernels.decode_attention(q, kp, vp, b, rk.swapaxes(-1, -2), rv, rf, 0, 1.0)


@pytest.mark.parametrize("group", [0, 4])
def test_the_slot_attention_with_the_kernel_matches_xlas_and_the_float64_softmax(group):
  """``models.transformer._attend_slots`` with ``SlotMask.kernel`` (the completion part in the kernel, combined with
  the prompt's part in XLA) and without (XLA's bf16 ops), on the same bf16 cache with a call buffer: both within
  bf16 rounding of a float64 softmax over [valid prompt | live cached | call-buffer window], prompt-major or
  gathered prompts."""
  from jaxgrpo.models.transformer import SlotMask, _attend_slots
  rng = np.random.default_rng(group)
  b, g, kv, hg, dh, p, r, j = 3, 4, 2, 3, 64, 7, 40, 8
  n = b * g
  bf = jnp.bfloat16
  arr = lambda *shape, dt=bf: jnp.asarray(rng.normal(size=shape), dt)
  pk, pv, k, v = arr(b, kv, p, dh), arr(b, kv, p, dh), arr(n, kv, r, dh), arr(n, kv, r, dh)
  rk, rv = arr(n, kv, dh, j).astype(bf).astype(jnp.float32), arr(n, kv, j, dh).astype(bf).astype(jnp.float32)
  q = arr(n, kv, hg, dh)
  valid = jnp.asarray(rng.random((b, p)) > 0.3).at[:, -1].set(True)
  step, ring_from = 5, jnp.asarray(rng.integers(0, 7, n))
  length = jnp.asarray(rng.integers(0, r + 1, n)) + (step - ring_from)  # before = length − (step − ring_from)
  mask = SlotMask(prompt_of=jnp.arange(n) // g, prompt_valid=valid, length=length, read=r, group=group,
                  step=jnp.asarray(step), ring_from=ring_from)
  base = {"prompt_k": pk, "prompt_v": pv, "ring_k": rk, "ring_v": rv}
  xla = _attend_slots(q, None, None, {**base, "k": k, "v": v}, mask, 0.125, bf)
  ker = _attend_slots(q, None, None, {**base, "k": kernels.pair_keys(k), "v": kernels.pair_values(v)},
                      dataclasses.replace(mask, kernel=True), 0.125, bf)
  f = lambda x: np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  want = np.zeros((n, kv, hg, dh))
  before = np.asarray(length - (step - ring_from))
  for s in range(n):
    keys = np.concatenate([f(pk)[s // g][:, np.asarray(valid[s // g])], f(k)[s][:, :before[s]],
                           f(rk)[s].transpose(0, 2, 1)[:, int(ring_from[s]):step + 1]], axis=1)
    vals = np.concatenate([f(pv)[s // g][:, np.asarray(valid[s // g])], f(v)[s][:, :before[s]],
                           f(rv)[s][:, int(ring_from[s]):step + 1]], axis=1)
    sc = np.einsum("kgd,knd->kgn", f(q)[s], keys) * 0.125
    e = np.exp(sc - sc.max(-1, keepdims=True))
    want[s] = np.einsum("kgn,knd->kgd", e / e.sum(-1, keepdims=True), vals)
  err = lambda x: np.abs(f(x) - want).max()
  assert err(ker) < 2e-2 and err(xla) < 2e-2  # bf16 output rounding and bf16-rounded probabilities
  assert err(ker) <= 1.5 * err(xla) + 1e-3  # no less accurate than XLA's path
