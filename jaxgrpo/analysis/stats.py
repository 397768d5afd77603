"""Paired comparisons of two methods evaluated on the same problems with the same seeds.

``a`` and ``b`` are 0/1 (or any score) arrays ``[seeds, problems]``: row s of both comes from runs that share
seed s (same initialization, data stream and sampling keys), column p is the same held-out problem.  The
difference is mean(b) − mean(a); its uncertainty has two sources, which seeds ran and which problems were
drawn, so the confidence interval resamples both (a two-way bootstrap), and the tests are exact:

- ``seed_sign_flip_p``: the per-seed differences' signs flipped in all 2^S ways (the seed is the unit; with
  S = 5 the smallest two-sided p is 2/32 = 0.0625, so at least 6 seeds are needed to reach p < 0.05);
- ``problem_sign_flip_p``: the per-problem differences (averaged over seeds) by a Monte-Carlo sign flip (the
  problem is the unit: powerful with many problems, silent about seed-to-seed variation).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedDifference:
  """mean(b) − mean(a) over seeds × problems, with its uncertainty."""

  diff: float  # mean(b) − mean(a)
  base_mean: float  # mean(a), the baseline's score (the method's is base_mean + diff)
  ci: tuple[float, float]  # two-way (seeds × problems) bootstrap percentile interval at ``level``
  level: float  # the interval's coverage, e.g. 0.95
  per_seed: tuple[float, ...]  # mean(b[s]) − mean(a[s]) for each seed s
  seed_sign_flip_p: float  # exact two-sided p over the 2^S sign flips of ``per_seed``
  problem_sign_flip_p: float  # two-sided Monte-Carlo sign-flip p over problems (seed-averaged differences)
  seeds: int  # S
  problems: int  # P


def _check(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or a.shape != b.shape or 0 in a.shape:
    raise ValueError(f"a and b must both be [seeds, problems] with the same non-empty shape; got {a.shape} and "
                     f"{b.shape}")
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    raise ValueError("a and b must be finite")
  return a, b


def sign_flip_exact(d: np.ndarray) -> float:
  """Exact two-sided p of mean(d) = 0 over the 2^len(d) sign flips of ``d`` (smallest possible: 2 / 2^len(d))."""
  d = np.asarray(d, np.float64)
  observed = abs(d.mean())
  signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
  return float(np.mean(np.abs((signs * d).mean(1)) >= observed - 1e-12))


def _sign_flip_mc(d: np.ndarray, rng: np.random.Generator, n: int) -> float:
  observed = abs(d.mean())
  signs = rng.choice((-1.0, 1.0), size=(n, len(d)))
  return float((1 + np.sum(np.abs((signs * d).mean(1)) >= observed - 1e-12)) / (n + 1))


def paired_difference(a, b, *, level: float = 0.95, n_boot: int = 10_000, n_perm: int = 20_000,
                      seed: int = 0) -> PairedDifference:
  """mean(b) − mean(a) for scores ``[seeds, problems]`` paired by seed and problem (see the module doc)."""
  a, b = _check(a, b)
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1); got {level}")
  if a.shape[0] > 16:
    raise ValueError(f"the exact seed test enumerates 2^S sign flips; S = {a.shape[0]} > 16")
  rng = np.random.default_rng(seed)
  d = b - a  # [S, P]
  s, p = d.shape
  rows = rng.integers(0, s, size=(n_boot, s))
  cols = rng.integers(0, p, size=(n_boot, p))
  # mean over the resampled seeds × resampled problems, without forming [n_boot, S, P]
  seed_counts = np.zeros((n_boot, s))
  np.add.at(seed_counts, (np.arange(n_boot)[:, None], rows), 1.0)
  prob_counts = np.zeros((n_boot, p))
  np.add.at(prob_counts, (np.arange(n_boot)[:, None], cols), 1.0)
  boots = np.einsum("bs,sp,bp->b", seed_counts, d, prob_counts) / (s * p)
  lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
  per_seed = d.mean(1)
  return PairedDifference(diff=float(d.mean()), base_mean=float(a.mean()), ci=(float(lo), float(hi)), level=level,
                          per_seed=tuple(float(x) for x in per_seed), seed_sign_flip_p=sign_flip_exact(per_seed),
                          problem_sign_flip_p=_sign_flip_mc(d.mean(0), rng, n_perm), seeds=s, problems=p)
