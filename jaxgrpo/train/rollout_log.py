"""Rollout dumps: every completion of a step with what training made of it, one file per step
(``rollouts/step_N.parquet`` or ``.jsonl``), for notebooks (``jaxgrpo.analysis.load_run``).

One row per completion (B prompts × G completions), keyed by ``step``, ``group`` (the prompt's index in the step)
and ``sample`` (the completion's index in its group).  Text fields are decoded with the run's tokenizer; per-token
fields are lists of the completion's length (padding dropped):

  prompt, prompt_ids            the prompt's text (the example's, before the chat template) and its token ids
  completion, completion_ids    the completion's text (special tokens skipped) and its token ids (EOS included)
  token_texts                   per token: each completion token decoded alone (for drawing prefix trees)
  length, finish_reason         tokens, and "eos" | "length"
  reward, reward/<name>         the weighted total and each part, unweighted (as the reward functions returned)
  correct, trained              the task's grade (1/0); 0 on filler rows of dynamic sampling, which do not train
  advantage                     the sequence advantage (the first token's; PRPO's vary per token: ``advantages``)
  advantages, weights           per token: the advantage and the loss weight (1/|λ| under λ-GRPO, else 1)
  lambda                        per token: |λ(i,t)|, the completions of the group sharing the prefix through t
  logprobs, entropies           per token: the sampler's log-probs and entropies
  segments, segment_scores      PRPO only: each token's segment index, and each segment's PRM score

Written by process 0 only (every process takes part in gathering the rows); atomically (a temporary file, then a
rename), so a crash never leaves half a file.  A resumed run removes the dumps of the steps its checkpoint does
not cover before it runs them again.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxgrpo.rollout.sampler import FINISH_EOS

ROLLOUTS_DIR = "rollouts"
FORMATS = ("parquet", "jsonl")
_STEP_FILE = re.compile(r"step_(\d+)\.(parquet|jsonl)$")


def rollout_rows(*, step: int, prompts: Sequence[str], group_size: int, prompt_ids: np.ndarray,
                 prompt_mask: np.ndarray, tokens: np.ndarray, mask: np.ndarray, rewards: np.ndarray,
                 reward_parts: Mapping[str, np.ndarray], correct: np.ndarray | None, keep: np.ndarray | None,
                 advantages: np.ndarray, weights: np.ndarray, counts: np.ndarray, logprobs: np.ndarray,
                 entropies: np.ndarray, finish_reason: np.ndarray, decode: Callable[[Sequence[int]], str],
                 segments: np.ndarray | None = None, segment_scores: np.ndarray | None = None) -> list[dict]:
  """The dump's rows from host arrays of one step (N = B·G rows, prompt-major; [N, T] per-token arrays; the
  prompt arrays [B, P])."""
  n = tokens.shape[0]
  if n != len(prompts) * group_size:
    raise ValueError(f"tokens has {n} rows; expected {len(prompts)} prompts × group_size {group_size}")
  rows = []
  for r in range(n):
    g = r // group_size
    length = int(mask[r].sum())
    ids = [int(x) for x in tokens[r, :length]]
    per_token = lambda a, cast=float: [cast(x) for x in a[r, :length]]
    row = {
        "step": int(step), "group": g, "sample": r % group_size, "prompt": prompts[g],
        "prompt_ids": [int(x) for x in prompt_ids[g][prompt_mask[g].astype(bool)]],
        "completion": decode(ids), "completion_ids": ids, "token_texts": [decode([i]) for i in ids],
        "length": length,
        "finish_reason": "eos" if int(finish_reason[r]) == FINISH_EOS else "length",
        "reward": float(rewards[r]), **{f"reward/{k}": float(v[r]) for k, v in reward_parts.items()},
        "correct": float(correct[r]) if correct is not None else float("nan"),
        "trained": float(keep[r]) if keep is not None else 1.0,
        "advantage": float(advantages[r, 0]) if length else 0.0,
        "advantages": per_token(advantages), "weights": per_token(weights), "lambda": per_token(counts, int),
        "logprobs": per_token(logprobs), "entropies": per_token(entropies),
    }
    if segments is not None:
      row["segments"] = per_token(segments, int)
      n_seg = int(segments[r, :length].max()) + 1 if length else 0
      row["segment_scores"] = [float(x) for x in segment_scores[r, :n_seg]]
    rows.append(row)
  return rows


def step_path(run_dir: str, step: int, fmt: str) -> str:
  return os.path.join(run_dir, ROLLOUTS_DIR, f"step_{step}.{fmt}")


def write_rollouts(run_dir: str, step: int, rows: list[dict], fmt: str = "parquet") -> str:
  """Write one step's rows (atomically) and return the file's path."""
  if fmt not in FORMATS:
    raise ValueError(f"logging.rollouts_format must be one of {list(FORMATS)}; got {fmt!r}")
  path = step_path(run_dir, step, fmt)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  if fmt == "parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp)
  else:
    with open(tmp, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)
  return path


def read_rollouts(path: str) -> list[dict[str, Any]]:
  """The rows of one dump file (parquet or jsonl)."""
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def dumped_steps(run_dir: str) -> dict[int, str]:
  """step → dump file of a run directory."""
  out = {}
  for path in glob.glob(os.path.join(run_dir, ROLLOUTS_DIR, "step_*")):
    m = _STEP_FILE.search(path)
    if m:
      out[int(m.group(1))] = path
  return dict(sorted(out.items()))


def drop_after(run_dir: str, step: int) -> list[int]:
  """Remove the dumps of steps after ``step`` (a resume runs them again) and return those steps."""
  gone = {s: path for s, path in dumped_steps(run_dir).items() if s > step}
  for path in gone.values():
    os.remove(path)
  return list(gone)
