"""jaxgrpo: GRPO, λ-GRPO (arXiv 2509.21154) and PRPO (arXiv 2601.07182) in JAX.

The public API is small; every function is jit- and vmap-able and takes any
leading batch shape ([..., G, T] for groups of completions).  ``jaxgrpo.checked``
has eagerly validated versions for use at program boundaries.

The package, bottom layer first (a module imports only from its own layer or below; tests/test_layout.py):

    core/      pure array functions: prefix kernel, implicit PRM, advantages, losses, PRPO (re-exported here)
    parallel/  device mesh, logical-axis rules, multi-process helpers
    models/    Flax transformers, HF checkpoints both ways, LoRA, the policy distribution, tokenizers
    tasks/     prompt sources, answer grading, reward functions, PRMs
    rollout/   the sampler and the rollout engine (sample → decode → score)
    train/     config and presets, the sharded update step, the trainer, checkpoints, eval, export, plan
    analysis/  run directories in notebooks: metrics and rollout dumps as tables, curves, a group's prefix tree
    cli.py     the ``jaxgrpo`` command
"""

from jaxgrpo.core import (
  AUTHORS_CODE_STD,
  UNIFORM_STD,
  ImplicitPRM,
  TreeStats,
  advantage_metrics,
  checked,
  control_segments,
  entropy_segments,
  group_advantages,
  high_entropy_mask,
  implicit_prm,
  k3_kl,
  kl_estimate,
  kl_reward_penalty,
  lambda_weights,
  mismatch_metrics,
  normalize_process_scores,
  normalize_then_sum,
  off_policy_sequence_mask,
  overlong_penalty,
  policy_loss,
  prefix_counts,
  prefix_hashes,
  prefix_metrics,
  prpo_advantages,
  rollout_correction,
  segment_scores_to_tokens,
  step_advantages,
  tree_stats,
  tree_stats_from_counts,
)

__version__ = "0.1.0"

__all__ = [
    "AUTHORS_CODE_STD",
    "ImplicitPRM",
    "TreeStats",
    "UNIFORM_STD",
    "advantage_metrics",
    "checked",
    "control_segments",
    "entropy_segments",
    "group_advantages",
    "high_entropy_mask",
    "implicit_prm",
    "k3_kl",
    "kl_estimate",
    "kl_reward_penalty",
    "lambda_weights",
    "mismatch_metrics",
    "normalize_process_scores",
    "normalize_then_sum",
    "off_policy_sequence_mask",
    "overlong_penalty",
    "policy_loss",
    "prefix_counts",
    "prefix_hashes",
    "prefix_metrics",
    "prpo_advantages",
    "rollout_correction",
    "segment_scores_to_tokens",
    "step_advantages",
    "tree_stats",
    "tree_stats_from_counts",
]
