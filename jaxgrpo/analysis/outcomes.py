"""Per-problem outcomes of evaluated runs, and paired comparisons built from them.

A run evaluated with ``eval.save_outputs`` (the default) writes one JSONL file per eval step,
``<run>/eval/step_NNNNNN.jsonl``: one record per held-out problem (``index``, ``prompt``, ``answer``,
``greedy_correct``, ``greedy_completion``, ...).  ``load_outputs`` reads one as a table; ``outcome_matrix`` stacks
several runs (one per seed) into the ``[seeds, problems]`` array ``paired_difference`` takes, after checking they
were evaluated on the same problems in the same order; ``compare_runs`` pairs two methods' runs seed by seed::

    from jaxgrpo import analysis
    r = analysis.compare_runs([f"runs/grpo_s{s}" for s in range(6)], [f"runs/lambda_s{s}" for s in range(6)])
    print(r.diff, r.ci, r.seed_sign_flip_p)
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
import yaml

from jaxgrpo.analysis.runs import _pandas
from jaxgrpo.analysis.stats import PairedDifference, paired_difference
from jaxgrpo.train import metrics as metrics_lib
from jaxgrpo.train.evaluation import OUTPUTS_DIR, outputs_path
from jaxgrpo.train.run_dir import CONFIG_FILE

_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


def eval_steps(run_dir: str) -> list[int]:
  """The steps at which ``run_dir`` saved per-problem eval outputs (ascending; empty if none)."""
  d = os.path.join(run_dir, OUTPUTS_DIR)
  if not os.path.isdir(d):
    return []
  return sorted(int(m.group(1)) for m in map(_STEP_FILE.match, os.listdir(d)) if m)


def load_outputs(run_dir: str, step: int | None = None, file: str | None = None):
  """One evaluation's per-problem records as a pandas DataFrame, in the file's order: the eval at ``step`` (default:
  the last one saved), or ``file``, a JSONL path relative to ``run_dir`` (e.g. a transfer task's records)."""
  pd = _pandas()
  if file is not None:
    if step is not None:
      raise ValueError("give step or file, not both")
    path = os.path.join(run_dir, file)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such outputs file")
  else:
    steps = eval_steps(run_dir)
    if not steps:
      raise FileNotFoundError(f"{run_dir} saved no per-problem eval outputs (no {OUTPUTS_DIR}/step_N.jsonl; "
                              f"eval.save_outputs must be on)")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ValueError(f"step {step}: {run_dir} has eval outputs at steps {steps} only")
    path = outputs_path(run_dir, step)
  rows = metrics_lib.read_jsonl(path)
  if not rows:
    raise ValueError(f"{path} holds no records")
  return pd.DataFrame(rows)


def _problem_ids(table) -> list:
  """What identifies each problem of an outputs table: its index and prompt where recorded."""
  keys = [k for k in ("index", "prompt") if k in table.columns]
  return list(zip(*(table[k] for k in keys))) if keys else list(range(len(table)))


def outcome_matrix(run_dirs: Sequence[str], column: str = "greedy_correct", step: int | None = None,
                   file: str | None = None) -> np.ndarray:
  """float64 ``[len(run_dirs), problems]``: ``column`` of each run's outputs (``load_outputs(run, step, file)``),
  one row per run.  Refuses runs evaluated on different problems (compared by index and prompt, in order) or
  without ``column``, naming the run."""
  if not len(run_dirs):
    raise ValueError("run_dirs is empty: give one run directory per seed")
  rows, ids = [], None
  for run in run_dirs:
    table = load_outputs(run, step=step, file=file)
    if column not in table.columns:
      raise ValueError(f"{run}: outputs have no column {column!r} (they have {sorted(table.columns)})")
    these = _problem_ids(table)
    if ids is None:
      ids, first = these, run
    elif these != ids:
      at = next((i for i, (x, y) in enumerate(zip(ids, these)) if x != y), min(len(ids), len(these)))
      raise ValueError(f"{run} was evaluated on other problems than {first}: {len(these)} vs {len(ids)} problems, "
                       f"first difference at position {at}")
    rows.append(table[column].to_numpy(np.float64))
  return np.stack(rows)


def _run_seed(run_dir: str) -> int | None:
  """The ``seed`` in a run directory's config.yaml (None without one)."""
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return (yaml.safe_load(f) or {}).get("seed")


def compare_runs(base: Sequence[str], method: Sequence[str], *, column: str = "greedy_correct",
                 step: int | None = None, file: str | None = None, **kwargs) -> PairedDifference:
  """``method`` − ``base`` over seeds × problems: ``base[s]`` and ``method[s]`` are the runs of seed s (same
  initialization and data stream; where both runs' config.yaml record a seed, it must match), both evaluated on
  the same problems.  ``kwargs`` go to ``paired_difference``
  (``level``, ``n_boot``, ...)."""
  if len(base) != len(method):
    raise ValueError(f"base and method must list one run per seed each; got {len(base)} and {len(method)} runs")
  for a, b in zip(base, method):  # runs that record their seed (config.yaml) must pair seed with seed
    seeds = _run_seed(a), _run_seed(b)
    if None not in seeds and seeds[0] != seeds[1]:
      raise ValueError(f"{a} (seed {seeds[0]}) is paired with {b} (seed {seeds[1]}): list the runs of both methods "
                       f"in the same seed order")
  m = outcome_matrix([*base, *method], column=column, step=step, file=file)  # checks all share the problems
  return paired_difference(m[:len(base)], m[len(base):], **kwargs)
