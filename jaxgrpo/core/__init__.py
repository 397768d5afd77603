"""The core: pure, jit- and vmap-able array functions of the GRPO family (no model, no trainer).

Prefix-overlap kernel (``prefix``), GRPO's implicit PRM (``implicit_prm``), group advantages (``advantages``), the
clipped policy loss with λ weights and the high-entropy token mask (``objectives``), PRPO's segments and advantages
(``prpo``), eagerly validated entry points (``checked``), the sampler ↔ trainer mismatch and its correction
(``mismatch``), reward shaping (``shaping``: overlong punishment, multi-reward normalization, KL in the reward),
argument handling (``arrays``), integer hashing (``hashing``), sort-free top-k / top-p selection (``selection``) and
pytree reductions (``trees``). Nothing here imports from the rest of jaxgrpo.
"""

from jaxgrpo.core import checked
from jaxgrpo.core.advantages import advantage_metrics, group_advantages, step_advantages
from jaxgrpo.core.implicit_prm import (
  ImplicitPRM,
  TreeStats,
  implicit_prm,
  prefix_metrics,
  tree_stats,
  tree_stats_from_counts,
)
from jaxgrpo.core.mismatch import CORRECTIONS, mismatch_metrics, off_policy_sequence_mask, rollout_correction
from jaxgrpo.core.objectives import (
  AGGREGATIONS,
  KL_ESTIMATORS,
  RATIO_LEVELS,
  SURROGATES,
  Aggregation,
  high_entropy_mask,
  k3_kl,
  kl_estimate,
  lambda_weights,
  policy_loss,
)
from jaxgrpo.core.prefix import prefix_counts, prefix_hashes
from jaxgrpo.core.prpo import (
  AUTHORS_CODE_STD,
  UNIFORM_STD,
  control_segments,
  entropy_segments,
  normalize_process_scores,
  prpo_advantages,
  segment_scores_to_tokens,
)
from jaxgrpo.core.shaping import REWARD_NORMALIZATIONS, kl_reward_penalty, normalize_then_sum, overlong_penalty

__all__ = [
    "AGGREGATIONS",
    "AUTHORS_CODE_STD",
    "Aggregation",
    "CORRECTIONS",
    "KL_ESTIMATORS",
    "RATIO_LEVELS",
    "REWARD_NORMALIZATIONS",
    "SURROGATES",
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
