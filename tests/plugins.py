"""Reward and PRM functions that tests name from configs as ``plugins:...`` (tests/ is on sys.path)."""

import os

import numpy as np

from jaxgrpo.tasks.rewards import toy_tree_reward

_toy = toy_tree_reward("LLRL", 1, -1.0, 0.7)
_calls = {"n": 0}


def toy_numpy_scalar(prompt, completion, example):
  """The toy reward as a numpy float32 scalar (rewards accept numpy/jax scalars)."""
  return np.float32(_toy(prompt, completion, example))


def toy_failing_after(prompt, completion, example):
  """The toy reward, raising once JAXGRPO_TEST_FAIL_AFTER calls have been made in this process."""
  _calls["n"] += 1
  limit = int(os.environ.get("JAXGRPO_TEST_FAIL_AFTER", "0"))
  if limit and _calls["n"] > limit:
    raise RuntimeError("reward service unavailable (test)")
  return _toy(prompt, completion, example)


def share_of_l(example, segments):
  """A PRM: each segment's share of 'L' tokens."""
  return [s.count("L") / max(len(s), 1) for s in segments]


def text_length(prompt, completion, example):
  """A reward that varies inside any group of random completions (so even a random model gets a gradient)."""
  return len(completion) / 100.0


def starts_ll(prompt, completion, example):
  """1 if the completion starts with "LL": with G = 4 about a third of the groups have zero variance."""
  return float(completion.startswith("LL"))


def constant_one(prompt, completion, example):
  """A reward that is the same for every completion (constant in every group)."""
  return 1.0
