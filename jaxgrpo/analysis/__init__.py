"""Run analysis for notebooks: a run directory's metrics and rollout dumps as tables (``runs``), its curves and one
group's prefix tree drawn with |λ| and advantages (``plots``).  Needs the ``analysis`` extra (pandas, matplotlib)."""

from jaxgrpo.analysis.plots import plot_curves, plot_group_tree
from jaxgrpo.analysis.runs import Run, group_tree, load_run

__all__ = ["Run", "group_tree", "load_run", "plot_curves", "plot_group_tree"]
