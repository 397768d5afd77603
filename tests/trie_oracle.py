"""Brute-force prefix trie: the oracle for the prefix-overlap kernel (tests only)."""

from __future__ import annotations

import numpy as np


def completions_from_arrays(tokens, mask):
  """[G, T] arrays → list of token tuples (valid tokens only)."""
  tokens = np.asarray(tokens)
  mask = np.asarray(mask).astype(bool)
  return [tuple(int(x) for x in row[m]) for row, m in zip(tokens, mask)]


class Trie:
  """A plain dict trie over one group; each node records its member set."""

  def __init__(self, completions):
    self.completions = completions
    self.members: dict[tuple, set[int]] = {}
    for i, seq in enumerate(completions):
      for t in range(len(seq)):
        self.members.setdefault(seq[: t + 1], set()).add(i)

  def count(self, i, t):
    return len(self.members[self.completions[i][: t + 1]])

  def counts(self, T):
    out = np.zeros((len(self.completions), T), np.int64)
    for i, seq in enumerate(self.completions):
      for t in range(len(seq)):
        out[i, t] = self.count(i, t)
    return out

  def step_rewards(self, rewards, T):
    out = np.zeros((len(self.completions), T))
    for i, seq in enumerate(self.completions):
      for t in range(len(seq)):
        mem = self.members[seq[: t + 1]]
        out[i, t] = np.mean([rewards[j] for j in mem])
    return out

  def is_step_start(self, prefix):
    """A trie node starts a process step when its member set differs from its parent's."""
    return len(prefix) == 1 or self.members[prefix] != self.members[prefix[:-1]]

  def num_steps(self):
    return sum(self.is_step_start(p) for p in self.members)

  def path_depths(self):
    return [sum(self.is_step_start(seq[: t + 1]) for t in range(len(seq))) for seq in self.completions]

  def prefix_ids(self):
    """Stable integer id per distinct non-empty prefix (a 'state' of the policy)."""
    return {p: k for k, p in enumerate(sorted(self.members, key=lambda p: (len(p), p)))}


def groups_to_arrays(groups, T=None, pad_id=0):
  """list (batch) of list (group) of token sequences → tokens, mask [B, G, T]."""
  G = len(groups[0])
  T = T or max(1, max(len(s) for g in groups for s in g))
  tokens = np.full((len(groups), G, T), pad_id, np.int32)
  mask = np.zeros((len(groups), G, T), np.int32)
  for b, g in enumerate(groups):
    for i, s in enumerate(g):
      tokens[b, i, : len(s)] = s
      mask[b, i, : len(s)] = 1
  return tokens, mask
