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
