import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxgrpo
from jaxgrpo.core import prpo


def reference_segments(ent, length, k, m):
  """The spec's rule, written the obvious way."""
  seg = np.full(len(ent), -1)
  if length < k + 1:
    seg[:length] = 0
    return seg
  order = sorted(range(length), key=lambda p: (-ent[p], p))[:k]
  cuts, last = [], 0
  for p in sorted(order):
    if p - last >= m:
      cuts.append(p)
      last = p
  bounds = [0] + cuts + [length]
  for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
    seg[a:b] = s
  return seg


@settings(max_examples=200, deadline=None)
@given(
    ent=st.lists(st.floats(0, 5, width=32), min_size=1, max_size=40),
    frac=st.floats(0, 1),
    k=st.integers(1, 6),
    m=st.integers(1, 12),
)
def test_entropy_segments_follow_the_rule(ent, frac, k, m):
  T = len(ent)
  length = int(round(frac * T))
  ent = np.asarray(ent, np.float32)
  ent_rounded = np.round(ent, 1)  # produce ties on purpose
  mask = (np.arange(T) < length).astype(np.int32)
  got = np.asarray(jaxgrpo.entropy_segments(ent_rounded, mask, k=k, min_gap=m))
  np.testing.assert_array_equal(got, reference_segments(ent_rounded, length, k, m))


def test_entropy_segments_long_completions_and_sharded():
  """Past k·128 positions the blocked path runs; with the batch sharded over the devices the compiled program
  gathers nothing (jax.lax.top_k's custom call made XLA all-gather the whole batch) and the ids are the same."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from jaxgrpo.core import prpo as prpo_lib

  rng = np.random.default_rng(0)
  n, t = 8, 1500
  ent = np.round(rng.gamma(1.0, 1.0, (n, t)), 1).astype(np.float32)
  lengths = rng.integers(0, t + 1, n)
  lengths[:2] = [t, 3]
  mask = (np.arange(t) < lengths[:, None]).astype(np.int32)
  want = np.stack([reference_segments(ent[i], lengths[i], 5, 10) for i in range(n)])
  np.testing.assert_array_equal(np.asarray(jaxgrpo.entropy_segments(ent, mask, k=5, min_gap=10)), want)
  if len(jax.devices()) < n:
    pytest.skip(f"needs {n} devices (tests/conftest.py asks for 8 host devices)")
  mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
  sh = NamedSharding(mesh, PartitionSpec("data"))
  e, m = jax.device_put(ent, sh), jax.device_put(mask, sh)
  hlo = prpo_lib._entropy_segments.lower(e, m, k=5, min_gap=10).compile().as_text()
  assert "all-gather" not in hlo and "TopK" not in hlo
  np.testing.assert_array_equal(np.asarray(jaxgrpo.entropy_segments(e, m, k=5, min_gap=10)), want)


def test_entropy_segments_paper_defaults():
  T = 40
  ent = np.zeros(T, np.float32)
  ent[[3, 12, 15, 25, 38]] = [5, 4, 3, 2, 1]  # 3 is < 10 from the start, 15 < 10 after 12
  seg = np.asarray(jaxgrpo.entropy_segments(ent, np.ones(T), k=5, min_gap=10))
  starts = [0] + [t for t in range(1, T) if seg[t] != seg[t - 1]]
  assert starts == [0, 12, 25, 38]
  # A short completion (L < k + 1) is one segment.
  seg = np.asarray(jaxgrpo.entropy_segments(ent[:5], np.ones(5), k=5, min_gap=1))
  assert (seg == 0).all()


def test_segments_of_an_empty_completion_axis_are_empty_not_an_error():
  for seg in (prpo.entropy_segments(jnp.zeros((3, 0)), jnp.zeros((3, 0), jnp.int32)),
              prpo.control_segments("uniform", jnp.zeros((3, 0), jnp.int32)),
              prpo.control_segments("random", jnp.zeros((2, 3, 0), jnp.int32), key=jax.random.PRNGKey(0))):
    assert seg.dtype == jnp.int32 and seg.shape[-1] == 0 and seg.shape[0] in (2, 3)


def test_fixed_prior_and_outcome_shift():
  scores = jnp.array([[[1.0, 1.0, 0.0], [0.5, 0.5, 0.5]]])
  mask = jnp.array([[[1, 1, 1], [1, 1, 0]]])
  rewards = jnp.array([[1.0, -1.0]])
  adv = np.asarray(jaxgrpo.prpo_advantages(scores, mask, rewards))
  z = (np.asarray(scores) - 0.5) / jaxgrpo.UNIFORM_STD
  beta = np.array([1.0, -1.0])  # r - mean(r), no std division (authors' code)
  want = (z + beta[None, :, None]) * np.asarray(mask)
  np.testing.assert_allclose(adv, want, rtol=1e-6)
  adv_code = np.asarray(jaxgrpo.prpo_advantages(scores, mask, rewards, prior_std=jaxgrpo.AUTHORS_CODE_STD))
  np.testing.assert_allclose(adv_code[0, 0, 0], 0.5 / np.sqrt(1 / 24) + 1.0, rtol=1e-6)
  adv_std = np.asarray(jaxgrpo.prpo_advantages(scores, mask, rewards, outcome="std", eps=0.0))
  np.testing.assert_allclose(adv_std[0, 0, 0], 0.5 / jaxgrpo.UNIFORM_STD + 1 / np.sqrt(2), rtol=1e-5)


def test_relative_normalization_uses_group_token_stats():
  scores = jnp.array([[[0.2, 0.4, 0.9], [0.6, 0.8, 0.3]]])
  mask = jnp.array([[[1, 1, 0], [1, 1, 1]]])
  z = np.asarray(jaxgrpo.normalize_process_scores(scores, mask, normalization="relative"))
  valid = np.array([0.2, 0.4, 0.6, 0.8, 0.3])
  np.testing.assert_allclose(z[0, 1, 0], (0.6 - valid.mean()) / (valid.std() + 1e-6), rtol=1e-5)
  assert z[0, 0, 2] == 0


def test_segment_scores_to_tokens_and_lambda_combination():
  ent = np.zeros((1, 2, 30), np.float32)
  ent[0, 0, 15] = 3.0
  ent[0, 1, 20] = 3.0
  mask = np.ones((1, 2, 30), np.int32)
  seg = jaxgrpo.entropy_segments(ent, mask, k=1, min_gap=10)
  scores = jnp.array([[[0.9, 0.1], [0.2, 0.8]]])
  tok_scores = np.asarray(jaxgrpo.segment_scores_to_tokens(seg, scores))
  assert (tok_scores[0, 0, :15] == pytest.approx(0.9)) and (tok_scores[0, 0, 15:] == pytest.approx(0.1))
  assert (tok_scores[0, 1, :20] == pytest.approx(0.2)) and (tok_scores[0, 1, 20:] == pytest.approx(0.8))
  # λ weights × PRPO token advantages in one loss.
  tokens = np.ones((1, 2, 30), np.int32)
  tokens[0, 1, 10:] = 2  # shared first 10 tokens
  w = jaxgrpo.lambda_weights(jaxgrpo.prefix_counts(tokens, mask))
  adv = jaxgrpo.prpo_advantages(jnp.asarray(tok_scores), mask, jnp.array([[1.0, 0.0]]))
  logp = jnp.zeros((1, 2, 30))
  loss, _ = jaxgrpo.policy_loss(logp, None, None, adv, mask, weights=w)
  want = -np.sum(np.asarray(adv) * np.asarray(w)) / 60
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(w[0, 0, 9]) == 0.5 and float(w[0, 0, 10]) == 1.0
