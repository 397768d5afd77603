"""Update-step memory vs completion length at SmolLM2-135M size: before (no remat, unchunked) and after
(remat + chunked attention + chunked log-probs), from XLA's memory analysis of the compiled update step.

For each T the trainer's own update program (`train_step.make_update_program`) is compiled for one
sequence of P = 64 prompt + T completion tokens, f32, one device; nothing is executed.  The slope of the
temporaries in T is fitted for the real vocabulary V = 49,152 and for a doubled one: "after" must grow
linearly in T with a slope that does not move with V; "before" pays the [T, V] logits (and the [T, T]
attention scores) per layer of the backward pass.

    python experiments/bench_memory.py      # ~10 min on 2 cores (compilation only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from jaxgrpo.train import plan as plan_lib
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace

GIB = 1024 ** 3
VARIANTS = {
    "before": dict(model={"remat": "none", "attention_chunk": 0}, objective={"logprob_chunk": 0}),
    "after": dict(model={"remat": "full", "attention_chunk": 256}, objective={"logprob_chunk": 256}),
}


def temp_bytes(variant: str, t: int, vocab: int) -> tuple[int, float]:
  from jaxgrpo.models import known

  known.CONFIGS["bench/SmolLM2-wide-vocab"] = dict(known.CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"],
                                                   vocab_size=vocab)
  name = "HuggingFaceTB/SmolLM2-135M-Instruct" if vocab == 49152 else "bench/SmolLM2-wide-vocab"
  cfg = config_replace(presets.preset("smollm2_arithmetic"), model={"checkpoint": name, **VARIANTS[variant]["model"]},
                        objective=VARIANTS[variant]["objective"], sampling={"group_size": 1, "max_new_tokens": t},
                        data={"prompts_per_step": 1}, eval={"num_examples": 0}, mesh={"data": 1})
  t0 = time.time()
  r = plan_lib.plan(cfg, devices=1, prompt_len=64)
  return r["bytes"]["update_temporaries"], time.time() - t0


def slope(ts, ys):
  a = np.vstack([np.asarray(ts, float), np.ones(len(ts))]).T
  (m, c), res, *_ = np.linalg.lstsq(a, np.asarray(ys, float), rcond=None)
  fit = a @ np.array([m, c])
  r2 = 1 - np.sum((np.asarray(ys) - fit) ** 2) / np.sum((np.asarray(ys) - np.mean(ys)) ** 2)
  return m, r2


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--lengths", default="256,512,1024,2048,4096")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_memory.json"))
  args = p.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  rows = {}
  for variant in ("before", "after"):
    for vocab in (49152, 98304):
      key = f"{variant}/V={vocab}"
      rows[key] = []
      for t in lengths:
        b, s = temp_bytes(variant, t, vocab)
        rows[key].append(b)
        print(f"{key} T={t}: {b / GIB:.3f} GiB temporaries (compiled in {s:.0f} s)", flush=True)
  machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} (XLA:CPU buffer assignment)"
  print(f"\n# SmolLM2-135M update step, 1 sequence, P=64 + T, f32, temporaries from XLA memory analysis — {machine}\n")
  print("| variant | vocab | " + " | ".join(f"T={t}" for t in lengths) + " | slope (KiB / token) | R² of a line |")
  print("|---|---|" + "---|" * len(lengths) + "---|---|")
  fits = {}
  for key, ys in rows.items():
    m, r2 = slope(lengths, ys)
    fits[key] = {"slope_bytes_per_token": m, "r2": r2}
    variant, vocab = key.split("/V=")
    print(f"| {variant} | {int(vocab):,} | " + " | ".join(f"{y / GIB:.2f} GiB" for y in ys) +
          f" | {m / 1024:.1f} | {r2:.4f} |")
  for variant in ("before", "after"):
    a, b = fits[f"{variant}/V=49152"]["slope_bytes_per_token"], fits[f"{variant}/V=98304"]["slope_bytes_per_token"]
    print(f"\n{variant}: doubling V changes the slope by {(b - a) / 1024:+.1f} KiB/token "
          f"({(b - a) / 49152:.2f} bytes per token per extra vocabulary entry)")
  ratio = [rows["before/V=49152"][i] / rows["after/V=49152"][i] for i in range(len(lengths))]
  print("\nbefore / after: " + ", ".join(f"T={t}: {r:.1f}×" for t, r in zip(lengths, ratio)))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "lengths": lengths, "temporaries": rows, "fits": fits}, f, indent=1)


if __name__ == "__main__":
  main()
