"""The paper's theorem and λ-GRPO's step form, on a real (tabular) policy.

Policy: one logit vector per distinct prefix (state), so completions that share
a prefix share the log-probabilities of their shared tokens, as with a real LM.
Gradients are taken w.r.t. the policy parameters θ, where the theorem lives.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import overlapping_group
from trie_oracle import Trie, groups_to_arrays

import jaxgrpo

jax.config.update("jax_enable_x64", False)


# Every example is padded to one shape (up to 3 groups × 6 completions × 8 tokens; padded groups and positions are
# empty, so they add nothing to a loss or its normalizer) and the losses are jitted: one compiled program serves
# every hypothesis example instead of one eager dispatch per op and shape.
B_MAX, G, T_MAX = 3, 6, 8
N_STATES = 1 + B_MAX * G * T_MAX


def tabular_policy(groups, vocab):
  """States per (b, i, t): id of the prefix y_i[:t] (root = 0 for t = 0)."""
  tokens, mask = groups_to_arrays(groups, T_MAX)
  tokens = np.pad(tokens, ((0, B_MAX - len(groups)), (0, 0), (0, 0)))
  mask = np.pad(mask, ((0, B_MAX - len(groups)), (0, 0), (0, 0)))
  B, G_, T = tokens.shape
  states = np.zeros((B, G_, T), np.int32)
  index = {(): 0}
  for b, g in enumerate(groups):
    for i, s in enumerate(g):
      for t in range(len(s)):
        states[b, i, t] = index.setdefault((b,) + tuple(s[:t]) if t else (), len(index))
  return tokens, mask, states, len(index)


def logp_fn(theta, states, tokens):
  logits = theta[states]  # [B, G, T, V]
  return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]


def random_policy(rng, tokens):
  theta = jnp.asarray(rng.normal(size=(N_STATES, 4)), jnp.float32)
  ref_theta = theta + 0.1 * jnp.asarray(rng.normal(size=theta.shape), jnp.float32)
  return theta, ref_theta, jnp.maximum(tokens - 1, 0)  # vocab ids 0..3


@functools.partial(jax.jit, static_argnames="beta")
def grpo_and_prm_losses(theta, ref_theta, states, tok, mask, rewards, beta):
  """(value, gradient) of the GRPO loss with outcome advantages and with the implicit PRM's step advantages."""
  ref_logp = logp_fn(ref_theta, states, tok)
  a = jaxgrpo.group_advantages(rewards)
  A = jaxgrpo.implicit_prm(tok + 1, mask, rewards).step_advantages

  def loss(theta, adv):
    return jaxgrpo.policy_loss(logp_fn(theta, states, tok), None, ref_logp, adv, mask, kl_beta=beta)[0]

  return jax.value_and_grad(loss)(theta, a), jax.value_and_grad(loss)(theta, A)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(overlapping_group(g=G, max_len=T_MAX, max_vocab=3), min_size=1, max_size=B_MAX),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.0, 0.04]),
)
def test_prm_objective_equals_grpo_value_and_gradient(groups, seed, beta):
  tokens, mask, states, n_states = tabular_policy(groups, 4)
  rng = np.random.default_rng(seed)
  rewards = rng.choice([0.0, 0.5, 1.0], size=tokens.shape[:2]).astype(np.float32)
  theta, ref_theta, tok = random_policy(rng, tokens)
  (l_grpo, g_grpo), (l_prm, g_prm) = grpo_and_prm_losses(theta, ref_theta, states, tok, mask, rewards, beta)
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


@functools.partial(jax.jit, static_argnames="beta")
def lambda_and_step_losses(theta, ref_theta, states, tok, mask, rewards, reps, valid, step_adv, n_tokens, beta):
  """(value, gradient) of λ-GRPO's loss and of the oracle's: one term per distinct (prefix node, position),
  at the node's representative ``reps`` (``valid`` marks the real ones among the padded)."""
  a = jaxgrpo.group_advantages(rewards)
  w = jaxgrpo.lambda_weights(jaxgrpo.prefix_counts(tok + 1, mask))

  def lambda_loss(theta):
    lp = logp_fn(theta, states, tok)
    return jaxgrpo.policy_loss(lp, None, logp_fn(ref_theta, states, tok), a, mask, weights=w, kl_beta=beta)[0]

  def step_loss(theta):
    lp = logp_fn(theta, states, tok)[reps[:, 0], reps[:, 1], reps[:, 2]]
    ref = logp_fn(ref_theta, states, tok)[reps[:, 0], reps[:, 1], reps[:, 2]]
    ratio = jnp.exp(lp - jax.lax.stop_gradient(lp))
    return jnp.sum(jnp.where(valid, -ratio * step_adv + beta * jaxgrpo.k3_kl(lp, ref), 0.0)) / n_tokens

  return jax.value_and_grad(lambda_loss)(theta), jax.value_and_grad(step_loss)(theta)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(overlapping_group(g=G, max_len=T_MAX, max_vocab=3), min_size=1, max_size=B_MAX),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.0, 0.04]),
)
def test_lambda_grpo_equals_each_step_counted_once(groups, seed, beta):
  tokens, mask, states, n_states = tabular_policy(groups, 4)
  rng = np.random.default_rng(seed)
  rewards = rng.choice([0.0, 0.5, 1.0], size=tokens.shape[:2]).astype(np.float32)
  theta, ref_theta, tok = random_policy(rng, tokens)
  a_np = np.asarray(jaxgrpo.group_advantages(rewards), np.float64)

  # Oracle: one term per distinct (prefix node, position), with the step advantage
  # A_n = mean of a_j over the node's members, normalized by Σ_i len(y_i).
  reps, step_adv = [], []
  for b, g in enumerate(groups):
    trie = Trie(g)
    first = {}
    for i, s in enumerate(g):
      for t in range(len(s)):
        first.setdefault(s[: t + 1], (b, i, t))
    for prefix, (bb, i, t) in first.items():
      reps.append((bb, i, t))
      step_adv.append(np.mean([a_np[b, j] for j in trie.members[prefix]]))
  n = len(reps)
  reps = np.asarray(reps + [(0, 0, 0)] * (B_MAX * G * T_MAX - n), np.int32).reshape(-1, 3)
  valid = np.arange(len(reps)) < n
  step_adv = np.asarray(step_adv + [0.0] * (len(reps) - n), np.float32)
  n_tokens = np.float32(max(int(mask.sum()), 1))

  (l1, g1), (l2, g2) = lambda_and_step_losses(theta, ref_theta, states, tok, mask, rewards, reps, valid, step_adv,
                                              n_tokens, beta)
  np.testing.assert_allclose(l1, l2, atol=1e-6)
  np.testing.assert_allclose(g1, g2, atol=1e-6)
