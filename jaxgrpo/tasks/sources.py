"""Prompt sources: the task's examples and what counts as a correct completion.

A source is indexable: ``source[i]`` is the i-th example of a deterministic
stream, so a run resumes from its data position exactly.  ``is_correct(example,
completion)`` defines the task's accuracy (used for training metrics and for
evaluation), so the training loop needs no task-specific code.

Sources: the λ-GRPO toy binary tree, synthetic arithmetic (difficulty set by the
number of operations, the operand range and the operators; a train split and a
held-out eval split that are disjoint by construction), JSONL files and TFDS
datasets (gsm8k, math_dataset) read from a local ``data_dir``, and local Hugging Face ``datasets`` (parquet, arrow,
JSON lines, CSV, or a ``save_to_disk`` directory; nothing from a hub).  The toy task also
brings its tokenizer (``ToyTokenizer``: BOS, L, R; only L and R may be sampled).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import random
import typing
from typing import Any, Literal, Protocol, Sequence

import numpy as np

from jaxgrpo.tasks.answers import answer_matches, last_boxed

SourceName = Literal["toy_tree", "arithmetic", "jsonl", "tfds", "hf"]  # the prompt sources ``make_source`` builds
AnswerFormat = Literal["auto", "plain", "gsm8k", "boxed"]  # how a dataset's answer field holds the reference
ANSWER_FORMATS: tuple[str, ...] = typing.get_args(AnswerFormat)
# ``datasets`` packaged builders that read local files (``data.path`` = the builder, ``data.data_files`` = the files)
HF_BUILDERS = {"parquet": (".parquet",), "json": (".jsonl", ".json"), "arrow": (".arrow",), "csv": (".csv",)}
SOURCES: tuple[str, ...] = typing.get_args(SourceName)


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt of a task (host side)."""

  prompt: str  # text shown to the model (chat user turn, or the toy task's name)
  answer: str  # reference answer used by reward functions
  meta: dict = dataclasses.field(default_factory=dict)  # anything else the source knows (index, expression, line)


class Source(Protocol):
  def __getitem__(self, index: int) -> Example: ...

  def is_correct(self, example: Example, completion: str) -> bool: ...


class MathTask:
  """Correct = the final answer matches the reference answer."""

  def is_correct(self, example: Example, completion: str) -> bool:
    return answer_matches(example.answer, completion)


# ----------------------------------------------------------------------------- toy tree


@dataclasses.dataclass(frozen=True)
class ToyTreeSource:
  """λ-GRPO's toy task: after BOS, emit 4 tokens, each L or R (16 leaves).  Correct = the target leaf."""

  target: str = "LLRL"

  def __getitem__(self, index: int) -> Example:
    return Example(prompt="<bos>", answer=self.target, meta={"index": index})

  def is_correct(self, example: Example, completion: str) -> bool:
    return completion == example.answer


@dataclasses.dataclass(frozen=True)
class ToyTokenizer:
  """The toy task's vocabulary {0: BOS/PAD, 1: L, 2: R}; only L and R may be sampled."""

  vocab_size: int = 3
  pad_id: int = 0
  eos_ids: tuple[int, ...] = ()  # completions end at the tree's depth (max_new_tokens), not at a token
  allowed_ids = (1, 2)  # L, R (``models.policy``'s form of an allowed-token set)

  def encode_prompt(self, prompt: str) -> list[int]:
    return [0]

  def render_prompt(self, prompt: str) -> str:
    return "<bos>"

  def decode(self, ids: Sequence[int]) -> str:
    return "".join({1: "L", 2: "R"}.get(int(i), "?") for i in ids)


# ----------------------------------------------------------------------------- arithmetic

EVAL_PERCENT = 20  # share of the arithmetic problem space reserved for evaluation (the test split)
VALIDATION_PERCENT = 10  # split_by="commuted" only: the next share, for choosing hyperparameters
SPLIT_BY = ("expression", "commuted")


def commuted_key(expression: str) -> str:
  """One key for an arithmetic problem and its commuted forms (``b + a`` for ``a + b``).

  Problems are left-to-right chains ``a op b op c ...`` (parentheses only force that order).  A chain of
  ``+``/``-`` only is keyed by its multiset of signed terms (``7 - 2 + 5`` = ``7 + 5 - 2`` = ``5 + 7 - 2``), a
  chain of ``*`` only by its multiset of factors; a mixed chain by its first pair sorted when that operator
  commutes, the rest kept in order.
  """
  tokens = expression.replace("(", " ").replace(")", " ").split()
  operands, ops = tokens[0::2], tokens[1::2]
  if len(operands) != len(ops) + 1 or not set(ops) <= set("+-*"):
    raise ValueError(f"not an arithmetic chain 'a op b [op c ...]': {expression!r}")
  if set(ops) <= set("+-"):
    terms = [("+", operands[0])] + list(zip(ops, operands[1:]))
    return "+-:" + " ".join(sorted(f"{o}{int(x)}" for o, x in terms))
  if set(ops) == {"*"}:
    return "*:" + " ".join(sorted(str(int(x)) for x in operands))
  first = sorted((int(operands[0]), int(operands[1]))) if ops[0] in "+*" else [int(operands[0]), int(operands[1])]
  rest = " ".join(f"{o} {int(x)}" for o, x in zip(ops[1:], operands[2:]))
  return f"mixed:{first[0]} {ops[0]} {first[1]} {rest}".strip()


def _bucket(expression: str, split_by: str = "expression") -> int:
  key = commuted_key(expression) if split_by == "commuted" else expression
  return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def _split_of(bucket: int, split_by: str) -> str:
  if bucket < EVAL_PERCENT:
    return "eval"
  if split_by == "commuted" and bucket < EVAL_PERCENT + VALIDATION_PERCENT:
    return "validation"
  return "train"


@dataclasses.dataclass(frozen=True)
class ArithmeticSource(MathTask):
  """Integer arithmetic problems ``a op b [op c ...]`` from (seed, index), evaluated left to right.

  Difficulty: ``num_ops`` operations, operands in [1, max_operand], operators
  from ``ops`` (subset of "+-*"); results are never negative.  The problem
  space is split by a hash of the expression: EVAL_PERCENT% of all problems
  belong to the ``eval`` (test) split and never appear in ``train``.  The eval
  split yields distinct problems (``len`` tells how many exist).

  ``split_by="expression"`` hashes the expression text (commuted forms such as
  ``b + a`` may fall on the other side); ``"commuted"`` hashes ``commuted_key``
  so a problem and its commuted forms share a side, and reserves a further
  VALIDATION_PERCENT% as a ``validation`` split (for choosing hyperparameters
  apart from the test split), disjoint from both.
  """

  seed: int = 0
  split: str = "train"  # train | eval | validation (split_by="commuted" only)
  num_ops: int = 1
  max_operand: int = 30
  ops: str = "+-"
  instruction: str = "Put the final answer in \\boxed{}."
  split_by: str = "expression"  # expression | commuted: what the split hashes

  def __post_init__(self):
    if self.split_by not in SPLIT_BY:
      raise ValueError(f"split_by must be one of {list(SPLIT_BY)}; got {self.split_by!r}")
    if self.split not in ("train", "eval", "validation"):
      raise ValueError(f"split must be 'train', 'eval' or 'validation'; got {self.split!r}")
    if self.split == "validation" and self.split_by != "commuted":
      raise ValueError("the arithmetic validation split exists only with split_by='commuted' (config key "
                       "'data.split_by'); with 'expression' it would overlap the training problems")

  def _candidate(self, rng: random.Random) -> tuple[str, int, list[str]] | None:
    value = rng.randint(1, self.max_operand)
    text, steps = str(value), []
    for k in range(self.num_ops):
      op = rng.choice(self.ops)
      x = rng.randint(1, self.max_operand)
      new = value + x if op == "+" else value - x if op == "-" else value * x
      if new < 0:
        return None
      steps.append(f"{value} {op} {x} = {new}")
      text = f"({text}) {op} {x}" if op == "*" and k > 0 else f"{text} {op} {x}"  # left to right
      value = new
    return text, value, steps

  def _draw(self, index: int, attempt_start: int = 0) -> tuple[Example, int]:
    attempt = attempt_start
    while True:
      if attempt - attempt_start > 10_000:
        raise ValueError(f"no {self.split} problem found in 10,000 draws at this difficulty (num_ops={self.num_ops}, "
                         f"max_operand={self.max_operand}, ops={self.ops!r}): the problem space is too small")
      rng = random.Random(f"{self.seed}/{self.split}/{index}/{attempt}")
      attempt += 1
      cand = self._candidate(rng)
      if cand is None or _split_of(_bucket(cand[0], self.split_by), self.split_by) != self.split:
        continue
      text, value, steps = cand
      prompt = f"What is {text}? {self.instruction}".strip()
      meta = {"expression": text, "steps": steps, "index": index}
      return Example(prompt=prompt, answer=str(value), meta=meta), attempt

  def __getitem__(self, index: int) -> Example:
    if self.split != "train":
      return self.eval_examples(index + 1)[index]
    return self._draw(index)[0]

  @functools.lru_cache(maxsize=4)
  def eval_examples(self, n: int) -> tuple[Example, ...]:
    """The first n distinct problems of this (held-out) split (raises if it has fewer).

    Distinct by expression; with split_by="commuted" also by ``commuted_key`` (no two commuted forms).
    """
    out, seen, index, misses = [], set(), 0, 0
    while len(out) < n:
      ex, _ = self._draw(index)
      index += 1
      key = commuted_key(ex.meta["expression"]) if self.split_by == "commuted" else ex.meta["expression"]
      if key in seen:
        misses += 1
        if misses > 50 * n + 1000:
          raise ValueError(f"the arithmetic {self.split} split has only {len(out)} distinct problems at this "
                           f"difficulty (num_ops={self.num_ops}, max_operand={self.max_operand}, ops={self.ops!r}); "
                           f"ask for fewer eval examples or a harder task")
        continue
      seen.add(key)
      out.append(dataclasses.replace(ex, meta={**ex.meta, "index": len(out)}))
    return tuple(out)


# ----------------------------------------------------------------------------- files and TFDS


class _Shuffled(MathTask):
  """Cycle through a finite list of examples, reshuffled (seeded) every epoch."""

  def __init__(self, examples: Sequence[Example], seed: int, name: str = "data source"):
    if not examples:
      raise ValueError(f"{name} is empty")
    self.examples, self.seed = list(examples), seed

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> Example:
    epoch, i = divmod(index, len(self.examples))
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
    return self.examples[order[i]]


def read_jsonl(path: str, prompt_key: str = "prompt", answer_key: str = "answer") -> list[Example]:
  """Examples from a JSONL file; errors name the file and the line (malformed JSON, non-UTF-8,
  a missing or null field, a row that is not an object)."""
  examples = []
  try:
    f = open(path, "rb")
  except OSError as e:
    raise FileNotFoundError(f"JSONL file {path}: {e.strerror}") from None
  with f:
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: each line must be a JSON object; got {type(row).__name__}")
      missing = [k for k in (prompt_key, answer_key) if row.get(k) is None]
      if missing:
        raise ValueError(f"{path}:{lineno}: missing or null field(s) {missing}")
      meta = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
      examples.append(Example(str(row[prompt_key]), str(row[answer_key]), {**meta, "line": lineno}))
  return examples


def jsonl_source(path: str, seed: int = 0, prompt_key: str = "prompt", answer_key: str = "answer") -> _Shuffled:
  """A shuffled stream over a JSONL file with ``prompt`` and ``answer`` fields (other fields go to meta)."""
  return _Shuffled(read_jsonl(path, prompt_key, answer_key), seed, name=f"JSONL file {path}")


def _tfds_example(name: str, row: dict[str, Any]) -> Example:
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  if name.startswith("gsm8k"):
    answer = reference_answer(text(row["answer"]), "gsm8k", f"TFDS {name}")
    return Example(text(row["question"]), answer, {"solution": text(row["answer"])})
  if name.startswith("math_dataset"):
    return Example(text(row["question"]), text(row["answer"]).strip())
  raise ValueError(f"no field mapping for TFDS dataset {name!r} (supported: gsm8k, math_dataset/*)")


def tfds_examples(name: str, data_dir: str, split: str = "train", limit: int | None = None) -> list[Example]:
  """Examples of a TFDS dataset already prepared in ``data_dir`` (no downloads)."""
  import tensorflow_datasets as tfds

  ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  examples = []
  for i, row in enumerate(tfds.as_numpy(ds)):
    if limit is not None and i >= limit:
      break
    examples.append(_tfds_example(name, row))
  return examples


def tfds_source(name: str, data_dir: str, split: str = "train", seed: int = 0, limit: int | None = None) -> _Shuffled:
  return _Shuffled(tfds_examples(name, data_dir, split, limit), seed, name=f"TFDS {name} split {split}")


# ----------------------------------------------------------------------------- HF datasets (local files only)


def reference_answer(text: str, answer_format: str = "auto", where: str = "answer") -> str:
  """The reference answer held in a dataset's answer field: GSM8K's ``solution #### 42`` → ``42`` (thousands
  commas removed), MATH's solution → its last ``\\boxed{}``, ``plain`` → the stripped text; ``auto`` picks by what
  the text contains.  ``where`` names the row in errors."""
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(f"data.answer_format must be one of {list(ANSWER_FORMATS)}; got {answer_format!r}")
  fmt = answer_format
  if fmt == "auto":
    fmt = "gsm8k" if "####" in text else "boxed" if "\\boxed{" in text else "plain"
  if fmt == "gsm8k":
    if "####" not in text:
      raise ValueError(f"{where}: data.answer_format = gsm8k but the answer has no '#### <answer>' line: {text[:80]!r}")
    return text.split("####")[-1].strip().replace(",", "")
  if fmt == "boxed":
    boxed = last_boxed(text)
    if boxed is None:
      raise ValueError(f"{where}: data.answer_format = boxed but the answer has no \\boxed{{}}: {text[:80]!r}")
    return boxed
  return text.strip()


def load_hf_dataset(path: str, data_files: Sequence[str] = (), split: str = "train", key: str = "data"):
  """A ``datasets.Dataset`` from local files through ``datasets.load_dataset`` (``save_to_disk`` directories through
  ``load_from_disk``).  ``path``: a file (its builder from the extension), a directory (its files' format inferred,
  or a saved dataset), or a packaged builder name (``parquet``/``json``/``arrow``/``csv``) with ``data_files``.
  Nothing is read from a hub: any other ``path`` is refused.  ``key`` names the config section in errors."""
  try:
    import datasets
  except ImportError:
    raise ImportError(f"{key}.source = hf needs the `datasets` package: pip install 'jaxgrpo[hf]'") from None
  files = [os.path.expanduser(f) for f in data_files]
  if path in HF_BUILDERS:
    if not files:
      raise ValueError(f"config key '{key}.data_files' must name the local files for {key}.path = {path!r}")
    matched = [m for f in files for m in (glob.glob(f) or [None]) if m]
    if not matched:
      raise FileNotFoundError(f"config key '{key}.data_files': no file matches {files}")
    builder, files = path, matched
  elif os.path.isfile(path):
    ext = os.path.splitext(path)[1]
    builder = next((b for b, exts in HF_BUILDERS.items() if ext in exts), None)
    if builder is None:
      raise ValueError(f"config key '{key}.path' = {path!r}: unknown file type {ext!r} (known: "
                       f"{sorted(e for exts in HF_BUILDERS.values() for e in exts)})")
    files = [path]
  elif os.path.isdir(path):
    saved = [os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "dataset_info.json", "state.json")]
    if saved[0] or (saved[1] and saved[2]):  # a DatasetDict or a Dataset written by save_to_disk
      ds = datasets.load_from_disk(path)
      if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
          raise ValueError(f"{path}: no split {split!r} (config key '{key}.split'); it has {sorted(ds)}")
        ds = ds[split]
      return ds
    builder = path
  else:
    raise FileNotFoundError(f"config key '{key}.path' = {path!r} is not a local file, directory or one of "
                            f"{sorted(HF_BUILDERS)} (jaxgrpo downloads nothing)")
  kwargs = {"data_files": files} if files else {}
  try:
    return datasets.load_dataset(builder, split=split, **kwargs)
  except ValueError as e:  # an unknown split names the ones there are
    if "corresponds to no data" in str(e):
      raise ValueError(f"{path}: split {split!r} is empty (config key '{key}.split')") from None
    raise ValueError(f"{path}: cannot load split {split!r} (config key '{key}.split'): {e}") from None


class HFSource(MathTask):
  """A ``datasets.Dataset`` as a prompt stream: row ``order[i]`` of a seeded permutation per epoch (the dataset stays
  memory-mapped; an example is built when it is asked for), so a run resumes at its data position exactly.  Every
  other column of the row goes to ``Example.meta`` (with ``row``: the row index)."""

  def __init__(self, ds, prompt_field: str = "prompt", answer_field: str = "answer", answer_format: str = "auto",
               seed: int = 0, shuffle: bool = True, name: str = "dataset", key: str = "data"):
    if len(ds) == 0:
      raise ValueError(f"{name} is empty (no rows in the split)")
    missing = [f"'{key}.{k}' = {v!r}" for k, v in (("prompt_field", prompt_field), ("answer_field", answer_field))
               if v not in ds.column_names]
    if missing:
      raise ValueError(f"{name} has no column for config key(s) {', '.join(missing)}; its columns: {ds.column_names}")
    if answer_format not in ANSWER_FORMATS:
      raise ValueError(f"config key '{key}.answer_format' must be one of {list(ANSWER_FORMATS)}; got {answer_format!r}")
    self.ds, self.prompt_field, self.answer_field, self.answer_format = ds, prompt_field, answer_field, answer_format
    self.seed, self.shuffle, self.name = seed, shuffle, name

  def __len__(self) -> int:
    return len(self.ds)

  @functools.lru_cache(maxsize=2)
  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.ds))

  def row(self, r: int) -> Example:
    """The example of row ``r`` (in the dataset's own order)."""
    row = self.ds[int(r)]
    prompt, answer = row[self.prompt_field], row[self.answer_field]
    where = f"{self.name} row {r}"
    if not isinstance(prompt, str) or not prompt:
      kind = "a list of chat messages" if isinstance(prompt, list) else repr(prompt)[:40]
      raise ValueError(f"{where}: field '{self.prompt_field}' must be non-empty text (the user turn); got {kind}")
    if answer is None:
      raise ValueError(f"{where}: field '{self.answer_field}' is null")
    meta = {k: v for k, v in row.items() if k not in (self.prompt_field, self.answer_field)}
    return Example(prompt, reference_answer(str(answer), self.answer_format, where),
                   {**meta, "solution": str(answer), "row": int(r)})

  def __getitem__(self, index: int) -> Example:
    epoch, i = divmod(index, len(self.ds))
    return self.row(self._order(epoch)[i] if self.shuffle else i)


def hf_source(spec, split: str | None = None, key: str = "data", shuffle: bool = True, path=None,
              data_files=None) -> HFSource:
  """The ``HFSource`` a ``DataSpec`` names (``split``/``path``/``data_files`` override it: the eval split)."""
  path = path or spec.path
  split = split or spec.split
  ds = load_hf_dataset(path, data_files if data_files is not None else spec.data_files, split, key)
  return HFSource(ds, spec.prompt_field, spec.answer_field, spec.answer_format, spec.seed, shuffle,
                  name=f"dataset {path} split {split!r}", key=key)


class FixedExamples(MathTask):
  """A finite list of examples (an eval set), indexable in order."""

  def __init__(self, examples: Sequence[Example], task: Source | None = None):
    self.examples = list(examples)
    self.task = task

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> Example:
    return self.examples[index]

  def is_correct(self, example: Example, completion: str) -> bool:
    return self.task.is_correct(example, completion) if self.task is not None else super().is_correct(example,
                                                                                                       completion)


def math_to_jsonl(src_dir: str, out_path: str, split: str = "train") -> int:
  """Convert the MATH dataset (Hendrycks et al.; ``<src_dir>/<split>/<subject>/<id>.json`` with ``problem``
  and ``solution``) to JSONL rows {prompt, answer, level, type}; the answer is the solution's last
  \\boxed{}.  Problems without one are skipped.  Returns the number of rows written."""
  files = sorted(glob.glob(os.path.join(src_dir, split, "*", "*.json")))
  if not files:
    raise FileNotFoundError(f"{src_dir}: no {split}/<subject>/<id>.json files (the MATH dataset's layout)")
  n = 0
  with open(out_path, "w") as out:
    for path in files:
      with open(path) as f:
        row = json.load(f)
      answer = last_boxed(row.get("solution", ""))
      if not row.get("problem") or answer is None:
        continue
      out.write(json.dumps({"prompt": row["problem"], "answer": answer, "level": row.get("level"),
                            "type": row.get("type"), "source": os.path.relpath(path, src_dir)}) + "\n")
      n += 1
  return n


def make_source(spec) -> Source:
  """The training stream from a ``DataSpec``."""
  if spec.source == "toy_tree":
    return ToyTreeSource(spec.target)
  if spec.source == "arithmetic":
    return ArithmeticSource(spec.seed, "train", spec.num_ops, spec.max_operand, spec.ops, spec.instruction,
                            split_by=spec.split_by)
  if spec.source == "jsonl":
    return jsonl_source(spec.path, spec.seed)
  if spec.source == "tfds":
    return tfds_source(spec.tfds_name, spec.path, spec.tfds_split, spec.seed)
  if spec.source == "hf":
    return hf_source(spec)
  raise ValueError(f"data.source must be {' | '.join(SOURCES)}; got {spec.source!r}")


def make_eval_source(data, ev) -> FixedExamples:
  """The held-out examples for an ``EvalSpec`` (``ev.num_examples`` of them, in a fixed order).

  Synthetic sources use their eval split (disjoint from training by construction); JSONL needs
  ``eval.path`` (a held-out file), TFDS reads ``eval.tfds_split``.  The toy task has one prompt:
  its evaluation is the target frequency on that prompt.
  """
  kind = ev.source or data.source
  n = ev.num_examples
  if kind == "toy_tree":
    task = ToyTreeSource(data.target)
    return FixedExamples([task[i] for i in range(n)], task)
  if kind == "arithmetic":
    if ev.split not in ("test", "validation"):
      raise ValueError(f"config key 'eval.split' must be 'test' or 'validation' for the arithmetic task; "
                       f"got {ev.split!r}")
    src = ArithmeticSource(data.seed, "eval" if ev.split == "test" else "validation", data.num_ops,
                           data.max_operand, data.ops, data.instruction, split_by=data.split_by)
    return FixedExamples(src.eval_examples(n), src)
  if kind == "jsonl":
    if not ev.path:
      raise ValueError("config key 'eval.path' must name a held-out JSONL file to evaluate a JSONL source "
                       "(the training file is never reused for evaluation)")
    if data.source == "jsonl" and ev.path == data.path:
      raise ValueError(f"config key 'eval.path' names the training file {ev.path}: use a held-out file")
    examples = read_jsonl(ev.path)
  elif kind == "tfds":
    if ev.tfds_split == data.tfds_split and (ev.source is None or ev.source == data.source):
      raise ValueError(f"config key 'eval.tfds_split' = {ev.tfds_split!r} is the training split: use a held-out one")
    examples = tfds_examples(data.tfds_name, ev.path or data.path, ev.tfds_split, limit=n)
  elif kind == "hf":
    path = ev.path or data.path
    files = tuple(ev.data_files) or (data.data_files if path == data.path else ())
    if data.source == "hf" and path == data.path and tuple(files) == tuple(data.data_files) and ev.split == data.split:
      raise ValueError(f"config key 'eval.split' = {ev.split!r} is the training split of {path}: use a held-out one "
                       "(or eval.path / eval.data_files naming held-out files)")
    src = hf_source(data, split=ev.split, key="eval", shuffle=False, path=path, data_files=files)
    examples = [src.row(i) for i in range(min(n, len(src)))]
  else:
    raise ValueError(f"eval.source must be {' | '.join(SOURCES)}; got {kind!r}")
  if len(examples) < n:
    raise ValueError(f"eval.num_examples = {n} but the eval data has only {len(examples)} examples")
  return FixedExamples(examples[:n])
