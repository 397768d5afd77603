"""The toy tree experiment: all seeds in one vmapped program equal the seeds run one by one."""

import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import toy_tree  # noqa: E402


def test_toy_rewards_table():
  cfg = toy_tree.ToyConfig(n_shared=2, r_neg=-1.5)
  L, R = toy_tree.L, toy_tree.R
  tokens = jnp.asarray([[L, L, R, L], [L, L, R, R], [L, L, L, L], [L, R, R, L], [R, L, R, L]])
  np.testing.assert_allclose(toy_tree.toy_rewards(tokens, cfg), [1.0, -1.5, -1.5, 0.7, 0.7])


def test_vmapped_seeds_equal_sequential_runs():
  cfg = toy_tree.ToyConfig(method="lambda_grpo", steps=8, lr=1e-3)
  together = toy_tree.run(cfg, seeds=3)
  apart = toy_tree.run(cfg, seeds=3, sequential=True)
  assert together["target_frac"].shape == (3, 8)
  np.testing.assert_array_equal(together["target_frac"], apart["target_frac"])  # same samples, seed by seed
  np.testing.assert_allclose(together["update_norm"], apart["update_norm"], rtol=1e-4)
  assert len({tuple(r) for r in together["reward_mean"]}) == 3  # the seeds differ from each other


def test_learning_rate_scale_scales_the_first_update():
  cfg = toy_tree.ToyConfig(method="lambda_grpo", steps=8, lr=1e-3)  # the program compiled above
  one = toy_tree.run(cfg, seeds=3)["update_norm"][:, 0]
  half = toy_tree.run(cfg, seeds=3, lr_scale=0.5)["update_norm"][:, 0]
  np.testing.assert_allclose(half, 0.5 * one, rtol=1e-5)


def test_tree_sampler_equals_the_naive_sampler_samples_loss_and_gradient():
  """One forward over the tree's nodes gives the same samples (same keys), loss and gradient as sampling with a
  full forward per token and recomputing the completions' log-probs."""
  import dataclasses

  import jax
  import optax
  from jax.flatten_util import ravel_pytree

  from jaxgrpo import models

  model = toy_tree.make_model("small")
  params = models.init_params(model, jax.random.PRNGKey(0))
  for method in ("grpo", "lambda_grpo"):
    cfg = toy_tree.ToyConfig(method=method)
    out = {}
    for sampler in ("naive", "tree"):
      step = toy_tree.make_step(model, optax.adam(1e-3), dataclasses.replace(cfg, sampler=sampler))
      out[sampler] = [jax.jit(step.loss_and_grads)(params, jax.random.PRNGKey(k)) for k in range(4)]
    for naive, tree in zip(out["naive"], out["tree"]):
      tokens, rewards, counts, loss, grads = tree
      np.testing.assert_array_equal(tokens, naive[0])
      np.testing.assert_array_equal(counts, naive[2])
      np.testing.assert_allclose(loss, naive[3], rtol=1e-5, atol=1e-7)
      g_naive, g_tree = np.asarray(ravel_pytree(naive[4])[0]), np.asarray(ravel_pytree(grads)[0])
      assert np.linalg.norm(g_naive) > 0
      assert np.linalg.norm(g_tree - g_naive) <= 1e-5 * np.linalg.norm(g_naive)
    assert len({tuple(np.ravel(o[0])) for o in out["tree"]}) == 4  # different keys, different samples


def test_node_rows_index_the_prefix_seen_so_far():
  L, R = toy_tree.L, toy_tree.R
  tokens = [[R, L, R, R], [L, R, R, L]]
  rows = toy_tree._node_rows(jnp.asarray(tokens))
  prefixes = np.asarray(toy_tree._tree_prefixes())
  for i, toks in enumerate(tokens):
    for t in range(toy_tree.DEPTH):  # row's first t path tokens = the completion's first t tokens, the rest L
      expect = list(toks[:t]) + [L] * (toy_tree.DEPTH - 1 - t)
      np.testing.assert_array_equal(prefixes[rows[i, t], 1:], expect[:toy_tree.DEPTH - 1])
