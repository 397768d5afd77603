"""One-step-off rollouts (`async_rollouts: true`) vs the synchronous loop: wall time per step on SmolLM2-135M-Instruct
(dequantised Q4_1 GGUF), the `smollm2_arithmetic` preset shortened, same machine, runs interleaved.

The overlap here is bounded by the hardware: sampling and the update both run on the same CPU cores (XLA:CPU uses
every core for each), so the thread that samples step k+1 competes with step k's update instead of running beside
it; on separate devices (a sampler device and a trainer device) the step would take ≈ max(sample, update).

  python experiments/bench_async.py [--steps 5] [--pairs 2]

Prints a table (per-step wall time after the first two steps, which compile), each pair's one-step-off /
synchronous ratio (and their range), the f32 matmul roof before and after, and writes
experiments/results/bench_async.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import numpy as np  # noqa: E402
from bench_step import roof_gflops  # noqa: E402  (the f32 matmul roof, as bench_step.py measures it)

from jaxgrpo.parallel import sharding  # noqa: E402
from jaxgrpo.train import presets  # noqa: E402
from jaxgrpo.train.config import replace  # noqa: E402
from jaxgrpo.train.trainer import Trainer  # noqa: E402


def one_run(async_rollouts: bool, steps: int, out: str) -> dict:
  import jax

  cfg = replace(presets.preset("smollm2_arithmetic"), steps=steps, progress=False, output_dir=out,
                checkpoint_every=0, log_rollouts_every=0, async_rollouts=async_rollouts,
                eval={"num_examples": 0})
  trainer = Trainer(cfg, mesh=sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  stamps = []
  trainer.on_step = lambda step, m: stamps.append((time.perf_counter(), m))
  t0 = time.perf_counter()
  trainer.run(resume=False, overwrite=True)
  walls = np.diff([t0] + [t for t, _ in stamps])
  ms = [m for _, m in stamps]
  return {"async": async_rollouts, "step_wall": walls.tolist(),
          "sample": [m.get("time_sample", float("nan")) for m in ms],
          "update": [m.get("time_update", float("nan")) for m in ms],
          "wait": [m.get("async/wait_s", 0.0) for m in ms]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--pairs", type=int, default=2)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_async.json"))
  args = ap.parse_args()
  roof_before = roof_gflops()
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for p in range(args.pairs):
      for mode in ((False, True) if p % 2 == 0 else (True, False)):  # interleaved, order alternating
        runs.append(one_run(mode, args.steps, os.path.join(tmp, f"r{len(runs)}")))
  table = []
  for mode in (False, True):
    rs = [r for r in runs if r["async"] == mode]
    wall = np.concatenate([r["step_wall"][2:] for r in rs])
    sample = np.concatenate([r["sample"][2:] for r in rs])
    update = np.concatenate([r["update"][2:] for r in rs])
    table.append({"mode": "one-step-off" if mode else "synchronous", "steps_timed": int(wall.size),
                  "wall_per_step_s": float(wall.mean()), "sample_s": float(np.nanmean(sample)),
                  "update_s": float(np.nanmean(update))})
  sync, asyn = table
  # Paired: pair p's one-step-off wall per step over its synchronous one (runs are interleaved within a pair).
  ratios = []
  for p in range(args.pairs):
    pair = runs[2 * p: 2 * p + 2]
    w = {r["async"]: float(np.mean(r["step_wall"][2:])) for r in pair}
    ratios.append(w[True] / w[False])
  paired = {"ratios": ratios, "mean": float(np.mean(ratios)), "range": [min(ratios), max(ratios)]}
  roof = {"before_gflops": roof_before, "after_gflops": roof_gflops()}
  print("| loop | steps timed | wall per step | sample | update |")
  print("|---|---|---|---|---|")
  for row in table:
    print(f"| {row['mode']} | {row['steps_timed']} | {row['wall_per_step_s']:.2f} s | {row['sample_s']:.2f} s | "
          f"{row['update_s']:.2f} s |")
  print(f"one-step-off / synchronous wall per step: {asyn['wall_per_step_s'] / sync['wall_per_step_s']:.3f}; "
        f"max(sample, update) / (sample + update) of the synchronous loop: "
        f"{max(sync['sample_s'], sync['update_s']) / (sync['sample_s'] + sync['update_s']):.3f}")
  print(f"per pair: {', '.join(f'{r:.3f}' for r in ratios)}; mean {paired['mean']:.3f}; f32 matmul roof "
        f"{roof['before_gflops']:.0f} → {roof['after_gflops']:.0f} GFLOP/s (before → after)")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"runs": runs, "table": table, "paired": paired, "roof": roof, "steps": args.steps,
               "pairs": args.pairs, "host": f"{os.cpu_count()} CPU cores"}, f, indent=1)


if __name__ == "__main__":
  main()
