"""λ-GRPO vs GRPO on the paper's toy binary-tree task (arXiv 2509.21154, Table 1).

A depth-4 binary tree: after BOS the policy emits 4 tokens, each L or R.  The
target leaf gets +1, leaves sharing its first n tokens get r_neg, all others
+0.7.  Metric: fraction of sampled completions equal to the target over the last
50 steps, averaged over seeds.  The model is a small GPT-2-architecture network
made from a config (the paper used GPT-2 small).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from jaxgrpo.config import preset
from jaxgrpo.trainer import Trainer

PAPER = {  # (n, r_neg): (GRPO, λ-GRPO) from the paper's Table 1
    (1, -0.5): (0.3995, 0.5663), (2, -0.5): (0.1980, 0.4292),
    (1, -1.0): (0.0000, 0.7535), (2, -1.0): (0.0488, 0.3612),
    (1, -1.5): (0.2000, 0.4463), (2, -1.5): (0.0000, 0.3820),
}


def run_one(n: int, r_neg: float, objective: str, seed: int, steps: int, lr: float, out_dir: str):
  base = preset("toy")
  cfg = dataclasses.replace(
      base, name=f"{objective}_n{n}_r{r_neg}_s{seed}", steps=steps, seed=seed, progress=False,
      output_dir=os.path.join(out_dir, f"{objective}_n{n}_r{r_neg}_s{seed}"),
      objective=dataclasses.replace(base.objective, name=objective),
      optim=dataclasses.replace(base.optim, learning_rate=lr),
      data=dataclasses.replace(base.data, n_shared=n, r_neg=r_neg, seed=seed),
  )
  history = Trainer(cfg).run(resume=False)
  return [m["target_frac"] for m in history]


def main(argv=None) -> int:
  import argparse

  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--steps", type=int, default=250)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--lr", type=float, default=3e-5)
  p.add_argument("--settings", default="1:-0.5,2:-0.5,1:-1.0,2:-1.0,1:-1.5,2:-1.5")
  p.add_argument("--out", default="runs/toy_experiment")
  args = p.parse_args(argv)
  settings = [(int(a), float(b)) for a, b in (s.split(":") for s in args.settings.split(","))]
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  curves = {}
  from tqdm.auto import tqdm

  jobs = [(n, r, o, s) for n, r in settings for o in ("grpo", "lambda_grpo") for s in range(args.seeds)]
  for n, r, o, s in tqdm(jobs, desc="toy runs"):
    curves[(n, r, o, s)] = run_one(n, r, o, s, args.steps, args.lr, args.out)
  rows = []
  print(f"\nλ-GRPO vs GRPO on the toy tree — {args.seeds} seeds × {args.steps} steps, lr {args.lr}, "
        f"G=16; target-leaf frequency over the last 50 steps (paper's GPT-2 small in brackets)\n")
  print("| n | r_neg | GRPO | λ-GRPO | paper GRPO | paper λ-GRPO |")
  print("|---|---|---|---|---|---|")
  for n, r in settings:
    res = {o: float(np.mean([np.mean(curves[(n, r, o, s)][-50:]) for s in range(args.seeds)]))
           for o in ("grpo", "lambda_grpo")}
    paper = PAPER.get((n, r), (float("nan"), float("nan")))
    rows.append({"n": n, "r_neg": r, **res, "paper_grpo": paper[0], "paper_lambda_grpo": paper[1]})
    print(f"| {n} | {r} | {res['grpo']:.4f} | {res['lambda_grpo']:.4f} | {paper[0]:.4f} | {paper[1]:.4f} |")
  elapsed = time.time() - t0
  print(f"\n{len(jobs)} runs in {elapsed:.0f} s")
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"rows": rows, "args": vars(args), "seconds": elapsed,
               "curves": {f"{k[0]}|{k[1]}|{k[2]}|{k[3]}": v for k, v in curves.items()}}, f)
  plot_path = os.path.join(args.out, "toy_target_frequency.png")
  _plot(curves, settings, args.seeds, plot_path)
  print(f"plot: {plot_path}")
  return 0


def _plot(curves, settings, seeds, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, (len(settings) + 1) // 2, figsize=(4 * ((len(settings) + 1) // 2), 6), squeeze=False)
  for ax, (n, r) in zip(axes.flat, settings):
    for o, color in (("grpo", "tab:red"), ("lambda_grpo", "tab:blue")):
      c = np.mean([curves[(n, r, o, s)] for s in range(seeds)], axis=0)
      k = 10
      smooth = np.convolve(c, np.ones(k) / k, mode="valid")
      ax.plot(np.arange(len(smooth)) + k, smooth, color=color, label="GRPO" if o == "grpo" else "λ-GRPO")
    ax.set_title(f"n={n}, r_neg={r}")
    ax.set_xlabel("step")
    ax.set_ylabel("target frequency")
    ax.set_ylim(0, 1)
  axes.flat[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  raise SystemExit(main())
