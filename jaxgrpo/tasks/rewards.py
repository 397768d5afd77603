"""Reward functions: (prompt, completion, example) → float, and scoring with checks.

Built in: ``toy_tree`` (λ-GRPO's toy task), ``math`` (the final answer — last \\boxed{}, else last number —
matches the reference; see ``tasks.answers.answer_matches``) and ``format`` (a non-empty \\boxed{} answer).  Any other
name of the form ``module:function`` is imported: a function ``(prompt, completion, example) -> float``
(e.g. ``rewards.names=[mypkg.rw:length_bonus]``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Callable, Sequence

import numpy as np

from jaxgrpo.tasks.answers import answer_matches, boxed_contents
from jaxgrpo.tasks.sources import Example

RewardFn = Callable[[str, str, Example], float]


def toy_tree_reward(target: str = "LLRL", n_shared: int = 1, r_neg: float = -1.0, r_other: float = 0.7) -> RewardFn:
  """λ-GRPO's toy task: +1 for the target leaf, r_neg for leaves sharing its first
  ``n_shared`` tokens, r_other for every other leaf."""
  if len(target) != 4 or set(target) - {"L", "R"}:
    raise ValueError(f"target must be 4 characters of L/R; got {target!r}")

  def toy_tree(prompt: str, completion: str, example: Example) -> float:
    if completion == target:
      return 1.0
    if completion[:n_shared] == target[:n_shared]:
      return r_neg
    return r_other

  return toy_tree


def format_reward(prompt: str, completion: str, example: Example) -> float:
  """1 if the completion gives a final answer in a non-empty \\boxed{...}, else 0."""
  return 1.0 if any(b.strip() for b in boxed_contents(completion)) else 0.0


def math_reward(prompt: str, completion: str, example: Example) -> float:
  """1 if the completion's final answer equals the reference (``tasks.answers.answer_matches``), else 0."""
  return 1.0 if answer_matches(example.answer, completion) else 0.0


def load_object(spec: str, what: str):
  """``module:attribute`` → the attribute (a reward function, a PRM, ...), with errors that name ``spec``."""
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise ValueError(f"{what} {spec!r} must be a built-in name or 'module:function'")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e})") from None
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise ValueError(f"{what} {spec!r} is not callable")
  return obj


def make_rewards(spec, data_spec) -> list[tuple[RewardFn, float]]:
  """Reward functions and weights from a ``RewardSpec`` (built-in names or ``module:function``)."""
  table = {
      "toy_tree": lambda: toy_tree_reward(data_spec.target, data_spec.n_shared, data_spec.r_neg, data_spec.r_other),
      "math": lambda: math_reward,
      "format": lambda: format_reward,
  }
  out = []
  for name, w in zip(spec.names, spec.weights):
    if name in table:
      out.append((table[name](), float(w)))
    elif ":" in name:
      out.append((load_object(name, "reward"), float(w)))
    else:
      raise ValueError(f"unknown reward {name!r}; choose from {sorted(table)} or name a 'module:function'")
  return out


def reward_name(fn: RewardFn) -> str:
  return getattr(fn, "__name__", type(fn).__name__)


def score_rows(
    rewards: Sequence[tuple[RewardFn, float]],
    examples: Sequence[Example],
    completions: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
  """Score one completion per row: (weighted total float32[n], unweighted parts float64[len(rewards), n]).

  A NaN, inf, missing or non-numeric reward raises ValueError naming the reward function, the example
  and the completion."""
  parts = np.zeros((len(rewards), len(completions)), np.float64)
  for k, (fn, _) in enumerate(rewards):
    for i, (ex, text) in enumerate(zip(examples, completions)):
      r = fn(ex.prompt, text, ex)
      if not _finite_scalar(r):
        raise ValueError(
            f"reward {reward_name(fn)!r} returned {r!r} for example {ex.meta.get('index', i)} "
            f"(prompt {ex.prompt[:60]!r}), completion {text[:60]!r}: rewards must be finite numbers"
        )
      parts[k, i] = float(r)
  weights = np.asarray([w for _, w in rewards], np.float64)
  return (weights @ parts).astype(np.float32), parts


def score_components(
    rewards: Sequence[tuple[RewardFn, float]],
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    examples: Sequence[Example],
) -> tuple[np.ndarray, list[np.ndarray]]:
  """(weighted total float32[B, G], unweighted value of each reward function [B, G]) for B groups of G."""
  b, g = len(completions), len(completions[0]) if completions else 0
  rows_ex = [dataclasses.replace(e, prompt=p) for e, p in zip(examples, prompts) for _ in range(g)]
  total, parts = score_rows(rewards, rows_ex, [c for group in completions for c in group])
  return total.reshape(b, g), [p.reshape(b, g) for p in parts]


def _finite_scalar(r) -> bool:
  """A finite real number: Python, numpy or jax scalar (0-d array), bool included."""
  if r is None or isinstance(r, (str, bytes)):
    return False
  try:
    a = np.asarray(r)
  except Exception:
    return False
  return a.ndim == 0 and (np.issubdtype(a.dtype, np.number) or a.dtype == bool) and \
      not np.issubdtype(a.dtype, np.complexfloating) and math.isfinite(float(a))


def score(rewards, prompts, completions, examples) -> np.ndarray:
  """Weighted sum of the rewards: float32[B, G] (see ``score_components``)."""
  return score_components(rewards, prompts, completions, examples)[0]
