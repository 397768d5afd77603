"""Prompt sources.  A source is indexable: ``source[i]`` is the i-th example of a
deterministic stream, so a run resumes from its data position exactly.

Sources: the λ-GRPO toy binary tree, synthetic arithmetic word problems (made
from a seed), JSONL files and TFDS datasets (gsm8k, math_dataset) read from a
local ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str  # text shown to the model (chat user turn, or the toy task's name)
  answer: str  # reference answer used by reward functions
  meta: dict = dataclasses.field(default_factory=dict)


class Source(Protocol):
  def __getitem__(self, index: int) -> Example: ...


# ----------------------------------------------------------------------------- toy tree


@dataclasses.dataclass(frozen=True)
class ToyTreeSource:
  """λ-GRPO's toy task: after BOS, emit 4 tokens, each L or R (16 leaves)."""

  target: str = "LLRL"

  def __getitem__(self, index: int) -> Example:
    return Example(prompt="<bos>", answer=self.target, meta={"index": index})


# ----------------------------------------------------------------------------- arithmetic

_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards"]


@dataclasses.dataclass(frozen=True)
class ArithmeticSource:
  """Two- or three-step word problems with integer answers, made from (seed, index)."""

  seed: int = 0

  def __getitem__(self, index: int) -> Example:
    rng = random.Random(self.seed * 1_000_003 + index)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    kind = rng.randrange(3)
    if kind == 0:
      c = rng.randint(1, a + b - 1)
      q = f"{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} does {name} have now?"
      steps, ans = [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"], a + b - c
    elif kind == 1:
      c = rng.randint(2, 6)
      q = f"{name} buys {c} boxes with {a} {item} each and finds {b} more. How many {item} in total?"
      steps, ans = [f"{c} * {a} = {c * a}", f"{c * a} + {b} = {c * a + b}"], c * a + b
    else:
      c = rng.randint(2, 5)
      total = a * c
      q = f"{name} shares {total} {item} equally among {c} friends, then each friend gets {b} more. How many does each friend have?"
      steps, ans = [f"{total} / {c} = {a}", f"{a} + {b} = {a + b}"], a + b
    prompt = q + " Show each calculation as 'x op y = z' on its own line, then give the final answer in \\boxed{}."
    return Example(prompt=prompt, answer=str(ans), meta={"steps": steps, "index": index})


# ----------------------------------------------------------------------------- files and TFDS


class _Shuffled:
  """Cycle through a finite list of examples, reshuffled (seeded) every epoch."""

  def __init__(self, examples: Sequence[Example], seed: int):
    if not examples:
      raise ValueError("the data source is empty")
    self.examples, self.seed = list(examples), seed

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> Example:
    epoch, i = divmod(index, len(self.examples))
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
    return self.examples[order[i]]


def jsonl_source(path: str, seed: int = 0, prompt_key: str = "prompt", answer_key: str = "answer") -> _Shuffled:
  """Examples from a JSONL file with ``prompt`` and ``answer`` fields (other fields go to meta)."""
  examples = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      missing = [k for k in (prompt_key, answer_key) if k not in row]
      if missing:
        raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
      meta = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
      examples.append(Example(str(row[prompt_key]), str(row[answer_key]), meta))
  return _Shuffled(examples, seed)


def _tfds_example(name: str, row: dict[str, Any]) -> Example:
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  if name.startswith("gsm8k"):
    answer = text(row["answer"]).split("####")[-1].strip().replace(",", "")
    return Example(text(row["question"]), answer, {"solution": text(row["answer"])})
  if name.startswith("math_dataset"):
    return Example(text(row["question"]), text(row["answer"]).strip())
  raise ValueError(f"no field mapping for TFDS dataset {name!r} (supported: gsm8k, math_dataset/*)")


def tfds_source(name: str, data_dir: str, split: str = "train", seed: int = 0, limit: int | None = None) -> _Shuffled:
  """Examples from a TFDS dataset already prepared in ``data_dir`` (no downloads)."""
  import tensorflow_datasets as tfds

  ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  rows = tfds.as_numpy(ds)
  examples = []
  for i, row in enumerate(rows):
    if limit is not None and i >= limit:
      break
    examples.append(_tfds_example(name, row))
  return _Shuffled(examples, seed)


def make_source(spec) -> Source:
  """A source from a ``DataSpec``."""
  if spec.source == "toy_tree":
    return ToyTreeSource(spec.target)
  if spec.source == "arithmetic":
    return ArithmeticSource(spec.seed)
  if spec.source == "jsonl":
    if not spec.path:
      raise ValueError("data.path must name a JSONL file for source 'jsonl'")
    return jsonl_source(spec.path, spec.seed)
  if spec.source == "tfds":
    if not spec.tfds_name or not spec.path:
      raise ValueError("data.tfds_name and data.path (the TFDS data_dir) are required for source 'tfds'")
    return tfds_source(spec.tfds_name, spec.path, spec.tfds_split, spec.seed)
  raise ValueError(f"data.source must be toy_tree | arithmetic | jsonl | tfds; got {spec.source!r}")
