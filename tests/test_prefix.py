"""The prefix-overlap kernel against a brute-force trie."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import batch_of_groups
from trie_oracle import Trie, groups_to_arrays

import jaxgrpo

METHODS = ["sort", "compare"]
PAPER_GROUP = ["ABCD", "ABEFHI", "JKLM", "JKLNQST", "JKLNQU", "VWYZ"]
PAPER_REWARDS = [0.5, 0.5, 1.0, 0.0, 0.0, 0.5]


def paper_arrays():
  tokens, mask = groups_to_arrays([[tuple(ord(c) for c in s) for s in PAPER_GROUP]])
  return tokens[0], mask[0]


@pytest.mark.parametrize("method", METHODS)
def test_paper_worked_example_counts(method):
  tokens, mask = paper_arrays()
  counts = np.asarray(jaxgrpo.prefix_counts(tokens, mask, method=method))
  expected = {"A": 2, "B": 2, "J": 3, "K": 3, "L": 3, "N": 2, "Q": 2}
  for i, s in enumerate(PAPER_GROUP):
    for t, c in enumerate(s):
      assert counts[i, t] == expected.get(c, 1), (s, t, c)
  assert (counts[mask == 0] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_paper_worked_example_step_advantages(method):
  tokens, mask = paper_arrays()
  rewards = np.array(PAPER_REWARDS, np.float32)
  prm = jaxgrpo.implicit_prm(tokens, mask, rewards, method=method, eps=0.0)
  adv = np.round(np.asarray(prm.step_advantages), 2)
  want = {"JKL": -0.22, "M": 1.55, "NQ": -1.11, "ST": -1.11, "U": -1.11,
          "AB": 0.22, "CD": 0.22, "EFHI": 0.22, "VWYZ": 0.22}
  letter_adv = {c: v for span, v in want.items() for c in span}
  for i, s in enumerate(PAPER_GROUP):
    for t, c in enumerate(s):
      assert adv[i, t] == pytest.approx(letter_adv[c], abs=1e-9), (s, c)
  assert float(np.mean(PAPER_REWARDS)) == pytest.approx(0.4167, abs=1e-4)
  stats = jaxgrpo.tree_stats(tokens, mask, method=method)
  assert int(stats.num_steps) == 9
  assert np.asarray(stats.path_depth).tolist() == [2, 2, 2, 3, 3, 1]
  assert not bool(stats.flat)


def bucketed(groups, extra_pad=0):
  """The groups as arrays padded to one of two shapes per G: [3, G, 8] or [3, G, 16] (padded groups are empty and
  padded positions masked, which the kernel ignores: test_padding_token_values_are_ignored), so the hypothesis
  examples share a few compiled programs instead of compiling one per drawn shape.  Returns the arrays and T, the
  shortest length that holds every completion (plus ``extra_pad``)."""
  T = max(1, max(len(s) for g in groups for s in g)) + extra_pad
  tokens, mask = groups_to_arrays(groups, 8 if T <= 8 else 16)
  pad = ((0, 3 - len(groups)), (0, 0), (0, 0))
  return np.pad(tokens, pad), np.pad(mask, pad), T


@settings(max_examples=150, deadline=None)
@given(groups=batch_of_groups(), method=st.sampled_from(METHODS), extra_pad=st.integers(0, 3))
def test_counts_match_trie(groups, method, extra_pad):
  tokens, mask, T = bucketed(groups, extra_pad)
  counts = np.asarray(jaxgrpo.prefix_counts(tokens, mask, method=method))
  for b, g in enumerate(groups):
    np.testing.assert_array_equal(counts[b], Trie(g).counts(tokens.shape[-1]))
  assert (counts[len(groups):] == 0).all()


@settings(max_examples=100, deadline=None)
@given(groups=batch_of_groups(), method=st.sampled_from(METHODS), data=st.data())
def test_implicit_prm_matches_trie(groups, method, data):
  tokens, mask, _ = bucketed(groups)
  B, G, T = tokens.shape
  rewards = np.asarray(
      data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0]), min_size=B * G, max_size=B * G)),
      np.float32,
  ).reshape(B, G)
  prm = jaxgrpo.implicit_prm(tokens, mask, rewards, method=method)
  for b, g in enumerate(groups):
    trie = Trie(g)
    np.testing.assert_allclose(np.asarray(prm.step_rewards[b]), trie.step_rewards(rewards[b], T), atol=1e-6)
    r = rewards[b].astype(np.float64)
    s = r.std(ddof=1) if G > 1 else 0.0
    want = (trie.step_rewards(r, T) - r.mean()) / (s + 1e-4) * mask[b]
    if r.max() == r.min():
      want = np.zeros_like(want)
    np.testing.assert_allclose(np.asarray(prm.step_advantages[b]), want, atol=2e-4, rtol=1e-4)


@settings(max_examples=100, deadline=None)
@given(groups=batch_of_groups(), method=st.sampled_from(METHODS))
def test_tree_stats_match_trie(groups, method):
  tokens, mask, _ = bucketed(groups)
  stats = jaxgrpo.tree_stats(tokens, mask, method=method)
  for b, g in enumerate(groups):
    trie = Trie(g)
    assert int(stats.num_steps[b]) == trie.num_steps()
    assert np.asarray(stats.path_depth[b]).tolist() == trie.path_depths()
    counts = trie.counts(tokens.shape[-1])
    lengths = mask[b].sum(-1)
    inter = np.where(lengths > 0, ((counts > 1) & (mask[b] == 1)).sum(-1) / np.maximum(lengths, 1), 0)
    np.testing.assert_allclose(np.asarray(stats.intermediate_prop[b]), inter, atol=1e-6)
    assert bool(stats.flat[b]) == bool((counts <= 1).all())


@settings(max_examples=60, deadline=None)
@given(groups=batch_of_groups(), method=st.sampled_from(METHODS), data=st.data())
def test_a_token_cap_changes_no_count_before_it_and_no_flat_tree(groups, method, data):
  """What experiments/overlap_stats.py relies on when completions reach the cap: cutting every completion at cap
  c ≥ 1 leaves each count at positions < c as it was (|λ| at t depends on tokens ≤ t only), so a tree is flat
  after the cut iff it was before (flat ⟺ no two non-empty completions share their first token)."""
  tokens, mask, T = bucketed(groups)
  cap = data.draw(st.integers(1, T), label="cap")
  cut = mask * (np.arange(mask.shape[-1]) < cap)
  full, capped = (jaxgrpo.tree_stats(tokens, m, method=method) for m in (mask, cut))
  counts = [np.asarray(jaxgrpo.prefix_counts(tokens, m, method=method)) for m in (mask, cut)]
  np.testing.assert_array_equal(counts[0][..., :cap], counts[1][..., :cap])
  np.testing.assert_array_equal(np.asarray(full.flat), np.asarray(capped.flat))
  for b, g in enumerate(groups):
    firsts = [s[0] for s in g if s]
    assert bool(full.flat[b]) == (len(set(firsts)) == len(firsts))


@pytest.mark.parametrize("method", METHODS)
def test_edge_groups(method):
  # G = 1, all identical, strict prefixes, empty completion.
  cases = [
      [(1, 2, 3)],
      [(5, 5, 5)] * 4,
      [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
      [(), (1, 2), (1, 2)],
  ]
  for g in cases:
    tokens, mask = groups_to_arrays([g])
    counts = np.asarray(jaxgrpo.prefix_counts(tokens[0], mask[0], method=method))
    np.testing.assert_array_equal(counts, Trie(g).counts(tokens.shape[-1]))
  tokens, mask = groups_to_arrays([[(5, 5, 5)] * 4])
  assert (np.asarray(jaxgrpo.prefix_counts(tokens, mask, method=method)) == 4).all()


def test_padding_token_values_are_ignored():
  tokens, mask = groups_to_arrays([[(1, 2), (1, 2, 3)]], T=5)
  noisy = tokens.copy()
  noisy[mask == 0] = np.arange((mask == 0).sum()) + 100
  for method in METHODS:
    np.testing.assert_array_equal(
        jaxgrpo.prefix_counts(tokens, mask, method=method), jaxgrpo.prefix_counts(noisy, mask, method=method)
    )


@pytest.mark.parametrize("G", [24, 40])  # 40 takes the fori_loop path of "compare"
def test_large_vocab_and_long_sequences_agree_between_methods(G):
  rng = np.random.default_rng(G)
  T = 300
  base = rng.integers(0, 150_000, size=(G, T))
  # Heavy overlap: each row copies a random earlier row up to a random cut.
  for i in range(1, G):
    j, cut = rng.integers(0, i), rng.integers(0, T)
    base[i, :cut] = base[j, :cut]
  lengths = rng.integers(1, T + 1, size=G)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  a = np.asarray(jaxgrpo.prefix_counts(base, mask, method="sort"))
  b = np.asarray(jaxgrpo.prefix_counts(base, mask, method="compare"))
  np.testing.assert_array_equal(a, b)
  g = [tuple(r[: l]) for r, l in zip(base.tolist(), lengths)]
  np.testing.assert_array_equal(a, Trie(g).counts(T))


def test_leading_batch_shapes_jit_and_vmap():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 3, size=(2, 3, 4, 6)).astype(np.int32)
  mask = np.ones_like(tokens)
  flat = jaxgrpo.prefix_counts(tokens.reshape(6, 4, 6), mask.reshape(6, 4, 6))
  nested = jaxgrpo.prefix_counts(tokens, mask)
  np.testing.assert_array_equal(np.asarray(nested).reshape(6, 4, 6), flat)
  vmapped = jax.vmap(jax.vmap(lambda t, m: jaxgrpo.prefix_counts(t, m)))(tokens, mask)
  np.testing.assert_array_equal(vmapped, nested)
  jitted = jax.jit(lambda t, m: jaxgrpo.implicit_prm(t, m, jnp.ones(t.shape[:-1])).counts)(tokens, mask)
  np.testing.assert_array_equal(jitted, nested)


def test_hash_lanes_differ_for_different_prefixes():
  # Distinct prefixes of the same length must differ in at least one lane.
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 50_000, size=(4096, 8)).astype(np.int32)
  mask = np.ones_like(tokens)
  hi, lo = jaxgrpo.prefix_hashes(tokens, mask)
  keys = set(zip(np.asarray(hi[:, -1]).tolist(), np.asarray(lo[:, -1]).tolist()))
  assert len(keys) == len({tuple(r) for r in tokens.tolist()})


@pytest.mark.parametrize("G", [5, 40])
def test_step_rewards_agree_between_methods_and_trie(G):
  rng = np.random.default_rng(G + 1)
  tokens = rng.integers(0, 3, size=(3, G, 9)).astype(np.int32)
  lengths = rng.integers(0, 10, size=(3, G))
  mask = (np.arange(9) < lengths[..., None]).astype(np.int32)
  rewards = rng.normal(size=(3, G)).astype(np.float32)
  a = jaxgrpo.implicit_prm(tokens, mask, rewards, method="compare")
  b = jaxgrpo.implicit_prm(tokens, mask, rewards, method="sort")
  np.testing.assert_array_equal(a.counts, b.counts)
  np.testing.assert_allclose(a.step_rewards, b.step_rewards, atol=1e-5)
  for i in range(3):
    g = [tuple(r[:l]) for r, l in zip(tokens[i].tolist(), lengths[i])]
    np.testing.assert_allclose(a.step_rewards[i], Trie(g).step_rewards(rewards[i], 9), atol=1e-5)
