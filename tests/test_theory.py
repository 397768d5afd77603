"""The paper's theorem and λ-GRPO's step form, on a real (tabular) policy.

Policy: one logit vector per distinct prefix (state), so completions that share
a prefix share the log-probabilities of their shared tokens, as with a real LM.
Gradients are taken w.r.t. the policy parameters θ, where the theorem lives.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import overlapping_group
from trie_oracle import Trie, groups_to_arrays

import jaxgrpo

jax.config.update("jax_enable_x64", False)


def tabular_policy(groups, vocab):
  """States per (b, i, t): id of the prefix y_i[:t] (root = 0 for t = 0)."""
  tokens, mask = groups_to_arrays(groups)
  B, G, T = tokens.shape
  states = np.zeros((B, G, T), np.int32)
  index = {(): 0}
  for b, g in enumerate(groups):
    for i, s in enumerate(g):
      for t in range(len(s)):
        states[b, i, t] = index.setdefault((b,) + tuple(s[:t]) if t else (), len(index))
  return tokens, mask, states, len(index)


def logp_fn(theta, states, tokens):
  logits = theta[states]  # [B, G, T, V]
  return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(overlapping_group(g=6, max_len=8, max_vocab=3), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.0, 0.04]),
)
def test_prm_objective_equals_grpo_value_and_gradient(groups, seed, beta):
  tokens, mask, states, n_states = tabular_policy(groups, 4)
  rng = np.random.default_rng(seed)
  rewards = rng.choice([0.0, 0.5, 1.0], size=tokens.shape[:2]).astype(np.float32)
  theta = jnp.asarray(rng.normal(size=(n_states, 4)), jnp.float32)
  ref_theta = theta + 0.1 * jnp.asarray(rng.normal(size=theta.shape), jnp.float32)
  tok = jnp.maximum(tokens - 1, 0)  # vocab ids 0..3
  ref_logp = logp_fn(ref_theta, states, tok)
  a = jaxgrpo.group_advantages(rewards)
  A = jaxgrpo.implicit_prm(tokens, mask, rewards).step_advantages

  def loss(theta, adv):
    return jaxgrpo.policy_loss(logp_fn(theta, states, tok), None, ref_logp, adv, mask, kl_beta=beta)[0]

  l_grpo, g_grpo = jax.value_and_grad(loss)(theta, a)
  l_prm, g_prm = jax.value_and_grad(loss)(theta, A)
  np.testing.assert_allclose(l_prm, l_grpo, atol=1e-6)
  np.testing.assert_allclose(g_prm, g_grpo, atol=1e-6)


def test_theorem_is_not_trivial_per_token():
  # With overlap, per-token gradients w.r.t. independent log-probs differ: the
  # equality above holds only because shared tokens share their log-probs.
  tokens, mask = groups_to_arrays([[(1, 2, 3), (1, 2, 4), (5, 6, 7)]])
  rewards = np.array([[1.0, 0.0, 0.5]], np.float32)
  a = jaxgrpo.group_advantages(rewards)
  A = jaxgrpo.implicit_prm(tokens, mask, rewards).step_advantages
  g = lambda adv: jax.grad(lambda lp: jaxgrpo.policy_loss(lp, None, None, adv, mask)[0])(jnp.zeros(tokens.shape))
  assert not np.allclose(g(a), g(A))


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(overlapping_group(g=6, max_len=8, max_vocab=3), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.0, 0.04]),
)
def test_lambda_grpo_equals_each_step_counted_once(groups, seed, beta):
  tokens, mask, states, n_states = tabular_policy(groups, 4)
  rng = np.random.default_rng(seed)
  rewards = rng.choice([0.0, 0.5, 1.0], size=tokens.shape[:2]).astype(np.float32)
  theta = jnp.asarray(rng.normal(size=(n_states, 4)), jnp.float32)
  ref_theta = theta + 0.1 * jnp.asarray(rng.normal(size=theta.shape), jnp.float32)
  tok = jnp.maximum(tokens - 1, 0)
  a = jaxgrpo.group_advantages(rewards)
  counts = jaxgrpo.prefix_counts(tokens, mask)
  w = jaxgrpo.lambda_weights(counts)

  def lambda_loss(theta):
    lp = logp_fn(theta, states, tok)
    return jaxgrpo.policy_loss(lp, None, logp_fn(ref_theta, states, tok), a, mask, weights=w, kl_beta=beta)[0]

  # Oracle: one term per distinct (prefix node, position), with the step advantage
  # A_n = mean of a_j over the node's members, normalized by Σ_i len(y_i).
  reps, step_adv = [], []
  a_np = np.asarray(a, np.float64)
  for b, g in enumerate(groups):
    trie = Trie(g)
    first = {}
    for i, s in enumerate(g):
      for t in range(len(s)):
        first.setdefault(s[: t + 1], (b, i, t))
    for prefix, (bb, i, t) in first.items():
      reps.append((bb, i, t))
      step_adv.append(np.mean([a_np[b, j] for j in trie.members[prefix]]))
  reps = np.asarray(reps, np.int64).reshape(-1, 3)
  step_adv = jnp.asarray(step_adv, jnp.float32)
  n_tokens = max(int(mask.sum()), 1)

  def step_loss(theta):
    lp = logp_fn(theta, states, tok)[reps[:, 0], reps[:, 1], reps[:, 2]]
    ref = logp_fn(ref_theta, states, tok)[reps[:, 0], reps[:, 1], reps[:, 2]]
    ratio = jnp.exp(lp - jax.lax.stop_gradient(lp))
    return jnp.sum(-ratio * step_adv + beta * jaxgrpo.k3_kl(lp, ref)) / n_tokens

  l1, g1 = jax.value_and_grad(lambda_loss)(theta)
  l2, g2 = jax.value_and_grad(step_loss)(theta)
  np.testing.assert_allclose(l1, l2, atol=1e-6)
  np.testing.assert_allclose(g1, g2, atol=1e-6)
