"""Plots of runs (matplotlib): metric curves of one or more runs, one group's prefix tree with |λ| and
advantages, and paired comparisons as a forest plot."""

from __future__ import annotations

from typing import Sequence

from jaxgrpo.analysis.runs import Node, Run, group_tree
from jaxgrpo.analysis.stats import PairedDifference


def _plt():
  try:
    import matplotlib.pyplot as plt
  except ImportError:
    raise ImportError("jaxgrpo.analysis plots need matplotlib: pip install 'jaxgrpo[analysis]'") from None
  return plt


def plot_curves(runs: Run | dict[str, Run], keys: Sequence[str] = ("reward_mean", "accuracy"), axes=None,
                smooth: int = 1):
  """One panel per metric key, one line per run (``{label: run}`` to compare runs); ``smooth``: a rolling mean
  over that many steps.  Returns the axes."""
  plt = _plt()
  runs = runs if isinstance(runs, dict) else {runs.path: runs}
  if axes is None:
    _, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    axes = axes[0]
  for ax, key in zip(axes, keys):
    for label, run in runs.items():
      if key not in run.metrics:
        raise KeyError(f"metric {key!r} is not in {run.path} (it has: {sorted(run.metrics.columns)[:30]} ...)")
      series = run.metrics[key].dropna()
      ax.plot(series.index, series.rolling(smooth, min_periods=1).mean(), label=label)
    ax.set_xlabel("step")
    ax.set_title(key)
  if len(runs) > 1:
    axes[0].legend(fontsize=8)
  return axes


def _layout(node: Node, depth: int, max_depth: int, ys: dict, next_y: list) -> float:
  """y of each node: leaves in depth-first order, a parent at the mean of its children."""
  kids = node.children if depth < max_depth else []
  if not kids:
    ys[node.prefix] = float(next_y[0])
    next_y[0] += 1
  else:
    ys[node.prefix] = sum(_layout(c, depth + 1, max_depth, ys, next_y) for c in kids) / len(kids)
  return ys[node.prefix]


def plot_group_tree(run: Run, step: int, group: int, max_depth: int = 24, ax=None, label_tokens: bool = True):
  """Draw one group's completions as their prefix tree (the first ``max_depth`` tokens): one node per distinct
  prefix at x = its depth, its size growing with |λ| (printed when > 1), its colour the mean advantage of the
  completions through it — under GRPO exactly the implicit process reward of the prefix.  Returns the axes."""
  plt = _plt()
  rows = run.group(step, group)
  root = group_tree(rows)
  ys: dict = {}
  _layout(root, 0, max_depth, ys, [0])
  nodes, edges = [], []

  def walk(node: Node, depth: int):
    nodes.append((node, depth))
    if depth < max_depth:
      for c in node.children:
        edges.append((node.prefix, c.prefix, depth))
        walk(c, depth + 1)

  walk(root, 0)
  if ax is None:
    _, ax = plt.subplots(figsize=(min(2 + 0.55 * max_depth, 18), 1 + 0.45 * len(rows)))
  for a, b, d in edges:
    ax.plot([d, d + 1], [ys[a], ys[b]], color="0.75", lw=0.8, zorder=1)
  g = root.count
  adv = [n.advantage for n, d in nodes if d]
  lim = max(max((abs(a) for a in adv), default=1.0), 1e-6)
  sc = ax.scatter([d for n, d in nodes if d], [ys[n.prefix] for n, d in nodes if d], c=adv, cmap="coolwarm_r",
                  vmin=-lim, vmax=lim, s=[20 + 160 * n.count / g for n, d in nodes if d], zorder=2,
                  edgecolors="k", linewidths=0.3)
  for n, d in nodes:
    if not d:
      continue
    if n.count > 1:
      ax.annotate(str(n.count), (d, ys[n.prefix]), fontsize=6, ha="center", va="center", zorder=3)
    if label_tokens:
      ax.annotate(repr(n.text)[1:-1][:8], (d, ys[n.prefix]), xytext=(0, 6), textcoords="offset points", fontsize=5,
                  ha="center", color="0.3")
  for _, r in rows.iterrows():  # each completion's reward at its end of the drawing
    ax.annotate(f"r={r['reward']:.2f}", (min(len(r['completion_ids']), max_depth) + 0.4,
                                         ys[tuple(r['completion_ids'][:max_depth])]), fontsize=6, va="center")
  ax.scatter([0], [ys[()]], marker="s", color="k", s=30, zorder=2)
  ax.set_xlabel("completion token")
  ax.set_yticks([])
  ax.set_title(f"step {step}, group {group}: {g} completions, {len(nodes) - 1} distinct prefixes (numbers: |λ|)")
  plt.colorbar(sc, ax=ax, label="advantage (mean over the completions through the node)", fraction=0.03)
  return ax


def plot_paired(results: dict[str, PairedDifference], ax=None, scale: float = 100.0, unit: str = "points"):
  """A forest plot of paired comparisons (``{label: paired_difference(...)}``, e.g. one per task or method): one
  row each, its per-seed differences as dots, the mean as a diamond with its confidence interval, a line at 0;
  ``scale`` multiplies every value (100: accuracy in points).  Returns the axes."""
  plt = _plt()
  if not results:
    raise ValueError("results is empty: give {label: PairedDifference}")
  if ax is None:
    _, ax = plt.subplots(figsize=(8, 1.1 + 0.6 * len(results)))
  for y, (label, r) in enumerate(reversed(list(results.items()))):
    lo, hi = (scale * c for c in r.ci)
    ax.plot([lo, hi], [y, y], color="k", lw=2, zorder=2)
    ax.scatter([scale * r.diff], [y], marker="D", color="k", s=40, zorder=3)
    ax.scatter([scale * d for d in r.per_seed], [y + 0.18] * len(r.per_seed), color="tab:blue", s=14, alpha=0.7,
               zorder=2)
    ax.text(1.02, y, f"{scale * r.diff:+.1f} [{lo:+.1f}, {hi:+.1f}]\nseed p = {r.seed_sign_flip_p:.3f}",
            transform=ax.get_yaxis_transform(), fontsize=7, va="center")  # in the right margin
  ax.axvline(0, color="0.5", lw=0.8, ls="--")
  ax.set_yticks(range(len(results)), list(reversed(list(results))))
  ax.set_ylim(-0.6, len(results) - 0.3)
  level = next(iter(results.values())).level
  ax.set_xlabel(f"difference ({unit}): mean and {100 * level:.0f}% CI over seeds × problems; dots: seeds", fontsize=8)
  return ax
