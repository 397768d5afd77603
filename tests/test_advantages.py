import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxgrpo


@settings(max_examples=80, deadline=None)
@given(
    r=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 8)),
                 elements=st.floats(-2, 2, width=32)),
    ddof=st.sampled_from([0, 1]),
    scale=st.booleans(),
)
def test_group_advantages_match_numpy(r, ddof, scale):
  got = np.asarray(jaxgrpo.group_advantages(r, ddof=ddof, scale=scale, eps=1e-4))
  r64 = r.astype(np.float64)
  mean = r64.mean(-1, keepdims=True)
  g = r.shape[-1]
  std = r64.std(-1, ddof=ddof, keepdims=True) if g > ddof else np.zeros_like(mean)
  want = (r64 - mean) / (std + 1e-4) if scale else r64 - mean
  want = np.where(r64.max(-1, keepdims=True) == r64.min(-1, keepdims=True), 0.0, want)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  assert np.isfinite(got).all()


def test_zero_variance_groups_are_exactly_zero():
  r = jnp.array([[0.1] * 6, [1.0] * 6, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]])
  adv = np.asarray(jaxgrpo.group_advantages(r))
  assert (adv[:2] == 0).all()
  assert np.abs(adv[2]).min() > 0.5
  assert (np.asarray(jaxgrpo.group_advantages(jnp.array([[3.0]]))) == 0).all()  # G = 1
  m = jaxgrpo.advantage_metrics(r)
  assert float(m["zero_std_group_frac"]) == pytest.approx(2 / 3)


def test_paper_outcome_advantages_ddof1():
  r = jnp.array([0.5, 0.5, 1.0, 0.0, 0.0, 0.5])
  adv = np.asarray(jaxgrpo.group_advantages(r, eps=0.0))
  # mean 0.4167, sample std 0.3764
  np.testing.assert_allclose(adv, (np.array(r) - 0.41666667) / 0.37638633, rtol=1e-5)
