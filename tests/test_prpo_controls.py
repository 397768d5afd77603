"""PRPO's control cuts (random, uniform) against a brute-force statement of the segmentation rule."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgrpo import core


def _rule(candidates, length, k, min_gap):
  """Segment ids of one completion from its k candidate positions (the rule of core.entropy_segments)."""
  seg = np.full(length, 0)
  if length < k + 1:
    return seg
  last, cuts = 0, []
  for c in sorted(candidates):
    if c - last >= min_gap:
      cuts.append(c)
      last = c
  for c in cuts:
    seg[c:] += 1
  return seg


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(1, 6), st.integers(1, 8))
def test_uniform_cuts_are_evenly_spaced_by_the_rule(lengths, k, min_gap):
  t = 40
  mask = np.array([[1] * n + [0] * (t - n) for n in lengths])
  got = np.asarray(core.control_segments("uniform", mask, k=k, min_gap=min_gap))
  for row, n in zip(got, lengths):
    want = _rule([n * j // (k + 1) for j in range(1, k + 1)], n, k, min_gap)
    np.testing.assert_array_equal(row[:n], want)
    assert (row[n:] == -1).all()


def test_random_cuts_are_uniform_over_positions_and_follow_the_rule():
  k, t, rows = 5, 20, 4000
  mask = np.ones((rows, t), np.int32)
  seg = np.asarray(core.control_segments("random", mask, k=k, min_gap=1, key=jax.random.PRNGKey(0)))
  starts = np.diff(seg, axis=1) == 1  # a cut at p + 1
  freq = starts.mean(0)  # position p ≥ 1 is a candidate with probability k / t; 0 never becomes a cut
  assert np.all(np.abs(freq - k / t) < 0.03), freq
  assert (starts.sum(1) <= k).all() and (seg[:, 0] == 0).all()
  # min_gap holds between kept cuts
  seg3 = np.asarray(core.control_segments("random", mask[:200], k=k, min_gap=3, key=jax.random.PRNGKey(1)))
  for row in seg3:
    cuts = np.flatnonzero(np.diff(row) == 1) + 1
    assert np.all(np.diff(np.concatenate([[0], cuts])) >= 3)
  other = np.asarray(core.control_segments("random", mask, k=k, min_gap=1, key=jax.random.PRNGKey(2)))
  assert not np.array_equal(other, seg)


def test_control_cuts_ignore_the_entropies_and_refuse_bad_input():
  mask = np.ones((2, 12), np.int32)
  with pytest.raises(ValueError, match="key"):
    core.control_segments("random", mask, k=2, min_gap=1)
  with pytest.raises(ValueError, match="mode"):
    core.control_segments("entropy", mask, k=2, min_gap=1)
  with pytest.raises(ValueError, match="k and min_gap"):
    core.control_segments("uniform", mask, k=0, min_gap=1)
