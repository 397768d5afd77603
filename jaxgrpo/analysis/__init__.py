"""Run analysis for notebooks: a run directory's metrics and rollout dumps as tables (``runs``), its curves and one
group's prefix tree drawn with |λ| and advantages (``plots``), paired comparisons of two methods over seeds and
problems (``stats``).  Needs the ``analysis`` extra (pandas, matplotlib)."""

from jaxgrpo.analysis.plots import plot_curves, plot_group_tree
from jaxgrpo.analysis.runs import Run, group_tree, load_run
from jaxgrpo.analysis.stats import PairedDifference, paired_difference

__all__ = ["PairedDifference", "Run", "group_tree", "load_run", "paired_difference", "plot_curves",
           "plot_group_tree"]
