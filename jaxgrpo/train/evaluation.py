"""Held-out evaluation: greedy pass@1 and sampled pass@k (the unbiased estimator).

pass@k for one problem with n samples of which c are correct is
1 − C(n − c, k) / C(n, k) (Chen et al., 2021), averaged over problems.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import jax
import numpy as np

from jaxgrpo.parallel import distributed as dist
from jaxgrpo.rollout.engine import RolloutEngine
from jaxgrpo.rollout.sampler import SamplingParams, sampling_form
from jaxgrpo.tasks.sources import Example, Source
from jaxgrpo.train import build
from jaxgrpo.train.config import EvalSpec, TrainConfig
from jaxgrpo.train.progress import Progress

OUTPUTS_DIR = "eval"  # a run directory's per-problem eval outputs: OUTPUTS_DIR/step_NNNNNN.jsonl


def outputs_path(run_dir: str, step: int) -> str:
  """Where a run writes the per-problem outputs of its evaluation at ``step``."""
  return os.path.join(run_dir, OUTPUTS_DIR, f"step_{step:06d}.jsonl")


def write_records(path: str, records: Sequence[dict]) -> None:
  """Per-problem eval outputs as JSONL (written whole, then renamed: a crash leaves the old file or none)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(path + ".tmp", path)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k for n samples with c correct (k ≤ n)."""
  if not 1 <= k <= n:
    raise ValueError(f"pass@k needs 1 <= k <= n; got k={k}, n={n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _batches(examples: Sequence[Example], size: int):
  for i in range(0, len(examples), size):
    chunk = list(examples[i:i + size])
    real = len(chunk)
    chunk += [chunk[-1]] * (size - real)  # pad the last batch: one compiled shape
    yield chunk, real


def _correct_counts(engine: RolloutEngine, params, task: Source, examples, key, sampling, batch_size,
                    progress: Progress, texts: list | None = None):
  """Correct completions and mean length per example; ``texts`` (greedy, G = 1) collects each example's
  completion where this process holds it (None elsewhere)."""
  counts, lengths = [], []
  for b, (chunk, real) in enumerate(_batches(examples, batch_size)):
    ro = engine.grade(engine.generate(params, chunk, jax.random.fold_in(key, b), sampling), task)
    per_prompt = engine.group_sums(ro.correct, sampling.group_size)[:real]
    mean_len = engine.group_sums(ro.lengths, sampling.group_size)[:real] / sampling.group_size
    counts.extend(per_prompt.tolist())
    lengths.extend(mean_len.tolist())
    if texts is not None:
      held = dict(zip(ro.rows, ro.texts))
      texts.extend(held.get(r) for r in range(real))
    progress.update(1)
  return np.asarray(counts), np.asarray(lengths)


def evaluate(engine: RolloutEngine, params, task: Source, examples: Sequence[Example], spec: EvalSpec, key,
             sampling: SamplingParams, show_progress: bool = True, records: list | None = None) -> dict[str, Any]:
  """Metrics of ``params`` on ``examples`` for an ``EvalSpec``: ``greedy_accuracy`` (pass@1),
  ``pass_at_k`` for each k in ``spec.pass_k`` over ``spec.num_samples`` samples, mean completion length.

  ``sampling``: the run's sampler settings (its EOS/pad ids; its length unless ``spec.max_new_tokens``).
  ``records``: a list to receive one dict per example (``index``, ``prompt``, ``answer``, and where measured
  ``greedy_correct``, ``greedy_completion``, ``sample_correct`` — correct samples of ``num_samples``): the
  per-problem outputs a paired test across problems needs."""
  base = dataclasses.replace(sampling, top_k=0, top_p=1.0, max_new_tokens=spec.max_new_tokens or
                             sampling.max_new_tokens)
  n_batches = math.ceil(len(examples) / spec.batch_size) * ((1 if spec.greedy else 0) + (spec.num_samples > 0))
  progress = Progress(n_batches, desc="eval", enabled=show_progress and dist.is_primary())
  out: dict[str, Any] = {"num_examples": float(len(examples))}
  per: dict[str, list] = {}
  try:
    if spec.greedy:
      greedy = dataclasses.replace(base, group_size=1, temperature=0.0)
      texts = [] if records is not None else None
      c, lens = _correct_counts(engine, params, task, examples, key, greedy, spec.batch_size, progress, texts)
      if records is not None:
        per["greedy_correct"], per["greedy_completion"] = [int(x) for x in c], texts
      out["greedy_accuracy"] = float(np.mean(c))
      out["greedy_length"] = float(np.mean(lens))
    if spec.num_samples:
      n = spec.num_samples
      sampled = dataclasses.replace(base, group_size=n, temperature=spec.temperature)
      c, lens = _correct_counts(engine, params, task, examples, jax.random.fold_in(key, 1 << 20), sampled,
                                max(1, spec.batch_size // n), progress)
      per["sample_correct"] = [int(x) for x in c]
      for k in spec.pass_k:
        out[f"pass_at_{k}"] = float(np.mean([pass_at_k(n, int(ci), k) for ci in c]))
      out["sample_accuracy"] = float(np.mean(c) / n)
      out["sample_length"] = float(np.mean(lens))
  finally:
    progress.close()
  if records is not None:
    for i, ex in enumerate(examples):
      records.append({"index": i, "prompt": ex.prompt, "answer": ex.answer, **{k: v[i] for k, v in per.items()}})
  return out


def evaluate_params(model, params, tokenizer, cfg: TrainConfig, task: Source, spec: EvalSpec, *, key=None,
                    show_progress: bool = True, records: list | None = None) -> dict[str, Any]:
  """``evaluate`` on a model outside a trainer (a run's checkpoint from ``export.load_run``, an HF directory):
  the rollout engine and sampler settings built from ``cfg.sampling``, ``params`` made once into the engines'
  form (``sampler.sampling_form``), ``key`` ``PRNGKey(cfg.seed)`` unless given, on the task's own examples.
  ``jaxgrpo eval`` is this function plus printing; a script evaluating a task the config cannot name (a transfer
  task) calls it too."""
  engine = RolloutEngine(model, tokenizer, prompt_multiple=cfg.sampling.prompt_multiple, trim=cfg.sampling.trim,
                         engine=cfg.sampling.engine, slots=cfg.sampling.slots,
                         read_growth=cfg.sampling.read_growth, kv_layout=cfg.sampling.kv_layout,
                         decode_kernel=cfg.sampling.decode_kernel)
  sampling = build.sampling_params(cfg.sampling, tokenizer.eos_ids, tokenizer.pad_id)
  return evaluate(engine, sampling_form(model, params), task, task.examples, spec,
                  jax.random.PRNGKey(cfg.seed) if key is None else key, sampling, show_progress=show_progress,
                  records=records)
