"""A run directory as tables: ``load_run(dir)`` → ``Run`` (its config, one row of metrics per step, every dumped
completion), and ``group_tree``: one group's completions as the prefix tree the λ-GRPO weights count."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

from jaxgrpo.train import metrics as metrics_lib
from jaxgrpo.train import rollout_log
from jaxgrpo.train.run_dir import CONFIG_FILE


def _pandas():
  try:
    import pandas
  except ImportError:
    raise ImportError("jaxgrpo.analysis needs pandas: pip install 'jaxgrpo[analysis]'") from None
  return pandas


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
  """What a run directory holds (host side, read once)."""

  path: str  # the run directory
  config: dict[str, Any]  # config.yaml as a nested dict
  metrics: Any  # pandas.DataFrame indexed by step: the training metrics, with the eval/ columns of eval steps
  rollouts: Any  # pandas.DataFrame: one row per dumped completion (``train.rollout_log``'s columns); may be empty

  @property
  def steps(self) -> list[int]:
    """The steps with a rollout dump."""
    return sorted(set(self.rollouts["step"])) if len(self.rollouts) else []

  def group(self, step: int, group: int):
    """The G completions of one group of a dumped step, in sample order."""
    rows = self.rollouts[(self.rollouts["step"] == step) & (self.rollouts["group"] == group)]
    if not len(rows):
      raise KeyError(f"no dumped group {group} at step {step} in {self.path} (dumped steps: {self.steps})")
    return rows.sort_values("sample")


def load_run(path: str) -> Run:
  """Read a run directory: config.yaml, metrics.jsonl (train and eval rows of a step merged into one row) and
  every ``rollouts/step_N`` dump."""
  pd = _pandas()
  metrics_path = os.path.join(path, metrics_lib.METRICS_FILE)
  if not os.path.exists(metrics_path):
    raise FileNotFoundError(f"{path} is not a run directory: no {metrics_lib.METRICS_FILE}")
  rows = metrics_lib.read_jsonl(metrics_path)
  metrics = pd.DataFrame(rows).groupby("step").first() if rows else pd.DataFrame()
  config = {}
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    with open(os.path.join(path, CONFIG_FILE)) as f:
      config = yaml.safe_load(f) or {}
  dumps = [pd.DataFrame(rollout_log.read_rollouts(p)) for p in rollout_log.dumped_steps(path).values()]
  rollouts = pd.concat(dumps, ignore_index=True) if dumps else pd.DataFrame()
  return Run(path=path, config=config, metrics=metrics, rollouts=rollouts)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
  """One prefix of a group's completions: the node of the trie every completion through it passes."""

  prefix: tuple[int, ...]  # the token ids from the completion's start through this node
  text: str  # this node's token, decoded
  count: int  # |λ|: the completions of the group through this node
  advantage: float  # the mean advantage of those completions at this token (GRPO: the implicit process reward)
  weight: float  # the loss weight at this token (1/|λ| under λ-GRPO)
  children: list["Node"]  # the next tokens, in first-seen order
  samples: list[int]  # the completions (sample index) through this node


def group_tree(rows) -> Node:
  """The prefix tree of one group (``Run.group``'s rows): a root (the prompt) whose descendants are the group's
  distinct completion prefixes; ``count`` equals the dumped |λ| of every token of the node."""
  root = Node(prefix=(), text="<prompt>", count=len(rows), advantage=0.0, weight=0.0, children=[],
              samples=list(rows["sample"]))
  index: dict[tuple[int, ...], dict] = {(): {"node": root, "adv": []}}
  for _, r in rows.iterrows():
    ids = list(r["completion_ids"])
    for t in range(len(ids)):
      key = tuple(ids[:t + 1])
      if key not in index:
        node = Node(prefix=key, text=r["token_texts"][t], count=0, advantage=0.0, weight=float(r["weights"][t]),
                    children=[], samples=[])
        index[key] = {"node": node, "adv": []}
        index[key[:-1]]["node"].children.append(node)
      entry = index[key]
      entry["node"].samples.append(int(r["sample"]))
      entry["adv"].append(float(r["advantages"][t]))
  return _freeze(root, index)


def _freeze(node: Node, index) -> Node:
  """The node with its count (completions through it) and mean advantage filled in, children likewise."""
  entry = index[node.prefix]
  adv = entry["adv"]
  children = [_freeze(c, index) for c in node.children]
  return dataclasses.replace(node, count=len(node.samples) if node.prefix else node.count,
                             advantage=sum(adv) / len(adv) if adv else 0.0, children=children)
