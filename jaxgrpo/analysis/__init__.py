"""Run analysis for notebooks: a run directory's metrics and rollout dumps as tables (``runs``), its curves and one
group's prefix tree drawn with |λ| and advantages (``plots``), paired comparisons of two methods over seeds and
problems (``stats``) built from the runs' per-problem eval outputs (``outcomes``).  Needs the ``analysis`` extra
(pandas, matplotlib)."""

from jaxgrpo.analysis.outcomes import compare_runs, eval_steps, load_outputs, outcome_matrix
from jaxgrpo.analysis.plots import plot_curves, plot_group_tree, plot_paired
from jaxgrpo.analysis.runs import Run, group_tree, load_run
from jaxgrpo.analysis.stats import PairedDifference, paired_difference

__all__ = ["PairedDifference", "Run", "compare_runs", "eval_steps", "group_tree", "load_outputs", "load_run",
           "outcome_matrix", "paired_difference", "plot_curves", "plot_group_tree", "plot_paired"]
