"""jaxgrpo.analysis.stats.paired_difference against its defining formulas (brute-force enumeration)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgrpo.analysis import paired_difference


def test_exact_seed_test_equals_brute_force_enumeration():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 2, size=(5, 40)).astype(float)
  b = np.clip(a + (rng.random((5, 40)) < 0.2), 0, 1)
  r = paired_difference(a, b, n_boot=2000, n_perm=2000)
  d = (b - a).mean(1)
  count = sum(abs(np.mean(np.array(s) * d)) >= abs(d.mean()) - 1e-12 for s in itertools.product((1, -1), repeat=5))
  assert r.seed_sign_flip_p == pytest.approx(count / 32)
  assert r.diff == pytest.approx((b - a).mean()) and r.per_seed == pytest.approx(tuple(d))
  assert r.base_mean == pytest.approx(a.mean())
  assert r.seed_sign_flip_p >= 2 / 32  # S = 5 cannot reach p < 0.0625 two-sided
  assert r.ci[0] <= r.diff <= r.ci[1]


def test_identical_methods_give_zero_and_p_one():
  a = np.random.default_rng(1).integers(0, 2, size=(6, 30)).astype(float)
  r = paired_difference(a, a.copy(), n_boot=500, n_perm=500)
  assert r.diff == 0 and r.ci == (0.0, 0.0) and r.seed_sign_flip_p == 1.0 and r.problem_sign_flip_p == 1.0


def test_a_consistent_gain_is_detected_and_the_interval_covers_it():
  rng = np.random.default_rng(2)
  p = rng.uniform(0.2, 0.6, size=200)  # per-problem difficulty
  a = (rng.random((8, 200)) < p).astype(float)
  b = (rng.random((8, 200)) < p + 0.15).astype(float)
  r = paired_difference(a, b)
  assert r.seed_sign_flip_p == pytest.approx(2 / 256) and r.problem_sign_flip_p < 0.01
  assert r.ci[0] < 0.15 < r.ci[1] and r.ci[0] > 0


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(2, 30), st.integers(0, 10_000))
def test_swapping_the_methods_negates_everything(s, p, seed):
  rng = np.random.default_rng(seed)
  a, b = rng.random((s, p)), rng.random((s, p))
  x, y = paired_difference(a, b, n_boot=300, n_perm=300), paired_difference(b, a, n_boot=300, n_perm=300)
  assert x.diff == pytest.approx(-y.diff) and x.seed_sign_flip_p == pytest.approx(y.seed_sign_flip_p)
  assert x.ci[0] == pytest.approx(-y.ci[1]) and x.ci[1] == pytest.approx(-y.ci[0])


def test_bad_shapes_are_refused_by_name():
  with pytest.raises(ValueError, match=r"\[seeds, problems\]"):
    paired_difference(np.zeros((3, 4)), np.zeros((3, 5)))
  with pytest.raises(ValueError, match="finite"):
    paired_difference(np.full((2, 2), np.nan), np.zeros((2, 2)))
