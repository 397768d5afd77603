"""Bad input gets a clear error naming the argument."""

import numpy as np
import pytest

import jaxgrpo
from jaxgrpo import checked


def good():
  tokens = np.array([[1, 2, 3], [1, 2, 0]], np.int32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  rewards = np.array([1.0, 0.0], np.float32)
  return tokens, mask, rewards


def test_good_input_passes_and_matches_core():
  tokens, mask, rewards = good()
  np.testing.assert_array_equal(checked.prefix_counts(tokens, mask), jaxgrpo.prefix_counts(tokens, mask))
  prm = checked.implicit_prm(tokens, mask, rewards)
  assert prm.counts.shape == tokens.shape


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t, m, r: (t, m[:, :2], r), r"mask must have the shape of tokens \(2, 3\)"),
        (lambda t, m, r: (t, m, r[:1]), r"rewards must have shape \[\.\.\., G\] = \(2,\)"),
        (lambda t, m, r: (t, m * 2, r), r"mask must hold only 0 and 1; found \[2\]"),
        (lambda t, m, r: (t, np.array([[0, 1, 1], [1, 1, 0]]), r), r"mask must be right-padded"),
        (lambda t, m, r: (t, m, np.array([np.nan, 1.0])), r"rewards must be finite; rewards\[0\] = nan"),
        (lambda t, m, r: (t, m, np.array([1.0, np.inf])), r"rewards must be finite; rewards\[1\] = inf"),
        (lambda t, m, r: (t[:0], m[:0], r[:0]), r"group size G \(axis -2\) must be >= 1"),
        (lambda t, m, r: (t[:, :0], m[:, :0], r), r"completion length T \(axis -1\) must be >= 1"),
        (lambda t, m, r: (t.astype(np.float32), m, r), r"tokens must be integer token ids"),
        (lambda t, m, r: (t[0], m[0], r), r"tokens must have shape \[\.\.\., G, T\]"),
    ],
)
def test_checked_errors(mutate, match):
  tokens, mask, rewards = mutate(*good())
  with pytest.raises(ValueError, match=match):
    checked.implicit_prm(tokens, mask, rewards)


def test_unchecked_core_still_checks_shapes_at_trace_time():
  tokens, mask, rewards = good()
  with pytest.raises(ValueError, match="mask must have the shape of tokens"):
    jaxgrpo.prefix_counts(tokens, mask[:, :2])
  with pytest.raises(ValueError, match="rewards must have shape"):
    jaxgrpo.implicit_prm(tokens, mask, rewards[:1])
  with pytest.raises(ValueError, match="group size G"):
    jaxgrpo.prefix_counts(tokens[:0], mask[:0])
  with pytest.raises(ValueError, match="method must be"):
    jaxgrpo.prefix_counts(tokens, mask, method="trie")


def test_checked_advantages_and_prpo_inputs():
  with pytest.raises(ValueError, match=r"rewards must be finite; rewards\[1, 0\] = nan"):
    checked.group_advantages(np.array([[1.0, 2.0], [np.nan, 0.0]]))
  with pytest.raises(ValueError, match="G >= 1"):
    checked.group_advantages(np.zeros((3, 0)))
  with pytest.raises(ValueError, match=r"token_scores must be PRM probabilities in \[0, 1\]"):
    checked.prpo_advantages(np.full((1, 2, 3), 1.5), np.ones((1, 2, 3)), np.zeros((1, 2)))
  with pytest.raises(ValueError, match="entropies must be finite"):
    checked.entropy_segments(np.array([[0.1, np.nan]]), np.ones((1, 2)))
  with pytest.raises(ValueError, match="ddof must be 0 or 1"):
    jaxgrpo.group_advantages(np.zeros((2, 3)), ddof=2)
