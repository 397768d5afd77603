"""jaxgrpo: GRPO, λ-GRPO (arXiv 2509.21154) and PRPO (arXiv 2601.07182) in JAX.

The public API is small; every function is jit- and vmap-able and takes any
leading batch shape ([..., G, T] for groups of completions).  ``jaxgrpo.checked``
has eagerly validated versions for use at program boundaries.
"""

from jaxgrpo import checked
from jaxgrpo.advantages import advantage_metrics, group_advantages, step_advantages
from jaxgrpo.implicit_prm import (
    ImplicitPRM,
    TreeStats,
    implicit_prm,
    prefix_metrics,
    tree_stats,
    tree_stats_from_counts,
)
from jaxgrpo.objectives import k3_kl, lambda_weights, policy_loss
from jaxgrpo.prefix import prefix_counts, prefix_hashes
from jaxgrpo.prpo import (
    AUTHORS_CODE_STD,
    UNIFORM_STD,
    entropy_segments,
    normalize_process_scores,
    prpo_advantages,
    segment_scores_to_tokens,
)

__version__ = "0.1.0"

__all__ = [
    "AUTHORS_CODE_STD",
    "ImplicitPRM",
    "TreeStats",
    "UNIFORM_STD",
    "advantage_metrics",
    "checked",
    "entropy_segments",
    "group_advantages",
    "implicit_prm",
    "k3_kl",
    "lambda_weights",
    "normalize_process_scores",
    "policy_loss",
    "prefix_counts",
    "prefix_hashes",
    "prefix_metrics",
    "prpo_advantages",
    "segment_scores_to_tokens",
    "step_advantages",
    "tree_stats",
    "tree_stats_from_counts",
]
