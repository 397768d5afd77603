"""Size the arithmetic task for SmolLM2-135M-Instruct: starting accuracy and learning signal per difficulty.

For each level: greedy accuracy on the held-out eval split (200 problems, disjoint from training by
construction), and on training prompts at G = 8, the sampled accuracy, the fraction of groups whose rewards
all agree (zero variance: no GRPO signal), the fraction of completions cut by max_new_tokens, and the mean
completion length.  The target (issue 8): greedy accuracy in [15%, 50%] and < 30% zero-variance groups.

    python experiments/calibrate_arithmetic.py   # ~10 min on 2 CPU cores; writes results/calibrate_arithmetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from jaxgrpo import models
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.rollout import RolloutEngine
from jaxgrpo.tasks import rewards as rewards_lib
from jaxgrpo.tasks import sources as data_lib
from jaxgrpo.train import build, evaluation, presets
from jaxgrpo.train.config import EvalSpec
from jaxgrpo.train.config import replace as config_replace

LEVELS = [  # (name, config overrides): the difficulty levels
    ("1 op, ±, operands ≤ 10", {"data": dict(num_ops=1, max_operand=10, ops="+-")}),
    ("1 op, ±, operands ≤ 30", {"data": dict(num_ops=1, max_operand=30, ops="+-")}),
    ("1 op, ±, operands ≤ 99", {"data": dict(num_ops=1, max_operand=99, ops="+-")}),
    ("1 op, ±×, operands ≤ 12", {"data": dict(num_ops=1, max_operand=12, ops="+-*")}),
    ("2 ops, ±, operands ≤ 20", {"data": dict(num_ops=2, max_operand=20, ops="+-")}),
]
_L30 = dict(num_ops=1, max_operand=30, ops="+-")
VARIANTS = [  # (name, config overrides): wording, length and reward at the ≤ 30 level
    ("≤30, math reward, 48 tokens", {"data": _L30}),
    ("≤30, math + 0.1 format, 48 tokens",
     {"data": _L30, "rewards": dict(names=("math", "format"), weights=(1.0, 0.1))}),
    ("≤30, math reward, 64 tokens", {"data": _L30, "sampling": dict(max_new_tokens=64)}),
    ("≤30, 'Reply with the number only.'", {"data": dict(_L30, instruction="Reply with the number only.")}),
    ("≤30, short system prompt", {"data": dict(_L30, system_prompt="You are a careful calculator.")}),
]


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--eval", type=int, default=200)
  p.add_argument("--prompts", type=int, default=32, help="training prompts sampled at G = 8 per level")
  p.add_argument("--temperatures", default="1.0,0.7")
  p.add_argument("--variants", action="store_true", help="wording/length/reward variants at the chosen level")
  p.add_argument("--only", default="", help="comma-separated row numbers (0-based) of the levels/variants to run")
  p.add_argument("--out", default="")
  args = p.parse_args()
  preset = presets.preset("smollm2_arithmetic")
  path = build.checkpoint_dir(preset.model)
  model, params = models.from_pretrained(path)
  rows = []
  t_all = time.time()
  table = VARIANTS if args.variants else LEVELS
  if args.only:
    table = [table[int(i)] for i in args.only.split(",")]
  for name, over in table:
    base = config_replace(preset, **over)
    data = base.data
    tok = HFTokenizer(path, data.system_prompt)
    engine = RolloutEngine(model, tok)
    t0 = time.time()
    ev = EvalSpec(num_examples=args.eval, batch_size=100)
    try:
      eval_set = data_lib.make_eval_source(data, ev)
    except ValueError as e:  # a small problem space has fewer distinct held-out problems
      n = int(str(e).split("only ")[1].split(" ")[0])
      ev = EvalSpec(num_examples=n, batch_size=100)
      eval_set = data_lib.make_eval_source(data, ev)
    greedy = evaluation.evaluate(engine, params, eval_set, eval_set.examples, ev, jax.random.PRNGKey(0),
                                 build.sampling_params(base.sampling, tok.eos_ids, tok.pad_id), show_progress=False)
    row = {"level": name, "overrides": over, "eval_problems": len(eval_set),
           "greedy_accuracy": greedy["greedy_accuracy"], "greedy_length": greedy["greedy_length"]}
    source = data_lib.make_source(data)
    examples = [source[i] for i in range(args.prompts)]
    for temp in (float(t) for t in args.temperatures.split(",")):
      spec = build.sampling_params(config_replace(base, sampling={"temperature": temp}).sampling, tok.eos_ids,
                                   tok.pad_id)
      ro = engine.generate(params, examples, jax.random.PRNGKey(1), spec)
      ro = engine.grade(engine.score(ro, rewards_lib.make_rewards(base.rewards, data), list(base.rewards.names)),
                        source)
      r = np.asarray(ro.rewards).reshape(args.prompts, spec.group_size)
      row[f"T{temp:g}"] = {
          "sample_accuracy": float(np.asarray(ro.correct).mean()),
          "zero_variance_groups": float(np.mean(r.max(1) == r.min(1))),
          "truncated": float(np.mean(np.asarray(ro.finish_reason) != 0)),
          "mean_length": float(np.asarray(ro.lengths).mean()),
      }
    row["seconds"] = time.time() - t0
    rows.append(row)
    print(json.dumps(row), flush=True)
  out = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to f32)", "preset": "smollm2_arithmetic",
         "group_size": preset.sampling.group_size, "prompts_per_level": args.prompts, "rows": rows,
         "seconds": time.time() - t_all}
  args.out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                     "calibrate_variants.json" if args.variants else "calibrate_levels.json")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  temps = [float(t) for t in args.temperatures.split(",")]
  print("\n| level | eval problems | greedy acc | " + " | ".join(
      f"T={t:g}: sampled acc / zero-var groups / truncated / len" for t in temps) + " |")
  print("|---|---|---|" + "---|" * len(temps))
  for r in rows:
    cells = " | ".join(f"{r[f'T{t:g}']['sample_accuracy']:.2f} / {r[f'T{t:g}']['zero_variance_groups']:.2f} / "
                       f"{r[f'T{t:g}']['truncated']:.2f} / {r[f'T{t:g}']['mean_length']:.1f}" for t in temps)
    print(f"| {r['level']} | {r['eval_problems']} | {r['greedy_accuracy']:.3f} | {cells} |")


if __name__ == "__main__":
  main()
