"""Reward functions: (prompt, completion, example) → float, and scoring with checks."""

from __future__ import annotations

import functools
import math
import re
from typing import Callable, Sequence

import numpy as np

from jaxgrpo.data import Example

RewardFn = Callable[[str, str, Example], float]


def toy_tree_reward(target: str = "LLRL", n_shared: int = 1, r_neg: float = -1.0, r_other: float = 0.7) -> RewardFn:
  """λ-GRPO's toy task: +1 for the target leaf, r_neg for leaves sharing its first
  ``n_shared`` tokens, r_other for every other leaf."""
  if len(target) != 4 or set(target) - {"L", "R"}:
    raise ValueError(f"target must be 4 characters of L/R; got {target!r}")

  def reward(prompt: str, completion: str, example: Example) -> float:
    if completion == target:
      return 1.0
    if completion[:n_shared] == target[:n_shared]:
      return r_neg
    return r_other

  return reward


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def format_reward(prompt: str, completion: str, example: Example) -> float:
  """1 if the completion gives a final answer in \\boxed{...}, else 0."""
  return 1.0 if _BOXED.search(completion) else 0.0


@functools.lru_cache(maxsize=1)
def _math_verify():
  from math_verify import parse, verify  # lazy: optional dependency

  return parse, verify


def math_reward(prompt: str, completion: str, example: Example) -> float:
  """1 if the completion's final answer equals the reference (math-verify), else 0."""
  parse, verify = _math_verify()
  gold = parse("$" + example.answer + "$") if "\\boxed" not in example.answer else parse(example.answer)
  pred = parse(completion)
  if not pred:
    return 0.0
  try:
    return 1.0 if verify(gold, pred) else 0.0
  except Exception:  # math-verify can raise on exotic expressions: count as wrong
    return 0.0


def make_rewards(spec, data_spec) -> list[tuple[RewardFn, float]]:
  """Reward functions and weights from a ``RewardSpec``."""
  if len(spec.names) != len(spec.weights):
    raise ValueError(f"rewards.names ({len(spec.names)}) and rewards.weights ({len(spec.weights)}) differ in length")
  table = {
      "toy_tree": lambda: toy_tree_reward(data_spec.target, data_spec.n_shared, data_spec.r_neg, data_spec.r_other),
      "math": lambda: math_reward,
      "format": lambda: format_reward,
  }
  out = []
  for name, w in zip(spec.names, spec.weights):
    if name not in table:
      raise ValueError(f"unknown reward {name!r}; choose from {sorted(table)}")
    out.append((table[name](), float(w)))
  return out


def score_components(
    rewards: Sequence[tuple[RewardFn, float]],
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    examples: Sequence[Example],
) -> tuple[np.ndarray, list[np.ndarray]]:
  """(weighted total float32[B, G], unweighted value of each reward function [B, G]).

  A NaN, inf or missing reward raises ValueError naming the reward function and the example."""
  b, g = len(completions), len(completions[0]) if completions else 0
  parts = []
  for fn, _ in rewards:
    name = getattr(fn, "__name__", repr(fn))
    part = np.zeros((b, g), np.float64)
    for i in range(b):
      for j in range(g):
        r = fn(prompts[i], completions[i][j], examples[i])
        if r is None or not isinstance(r, (int, float, np.floating, np.integer)) or not math.isfinite(float(r)):
          raise ValueError(
              f"reward {name!r} returned {r!r} for example {examples[i].meta.get('index', i)} "
              f"(prompt {prompts[i][:60]!r}), completion {j}: rewards must be finite numbers"
          )
        part[i, j] = float(r)
    parts.append(part)
  total = sum((w * p for (_, w), p in zip(rewards, parts)), np.zeros((b, g)))
  return total.astype(np.float32), parts


def score(rewards, prompts, completions, examples) -> np.ndarray:
  """Weighted sum of the rewards: float32[B, G] (see ``score_components``)."""
  return score_components(rewards, prompts, completions, examples)[0]
