"""The core: pure, jit- and vmap-able array functions of the GRPO family (no model, no trainer).

Prefix-overlap kernel (``prefix``), GRPO's implicit PRM (``implicit_prm``), group advantages (``advantages``), the
clipped policy loss with λ weights (``objectives``), PRPO's segments and advantages (``prpo``), eagerly validated
entry points (``checked``), integer hashing (``hashing``) and pytree reductions (``trees``).  Nothing here imports
from the rest of jaxgrpo.
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
from jaxgrpo.core.objectives import AGGREGATIONS, Aggregation, k3_kl, lambda_weights, policy_loss
from jaxgrpo.core.prefix import prefix_counts, prefix_hashes
from jaxgrpo.core.prpo import (
  AUTHORS_CODE_STD,
  UNIFORM_STD,
  entropy_segments,
  normalize_process_scores,
  prpo_advantages,
  segment_scores_to_tokens,
)

__all__ = [
    "AGGREGATIONS",
    "AUTHORS_CODE_STD",
    "Aggregation",
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
