"""The sampler↔trainer mismatch on a real model: SmolLM2-135M-Instruct (dequantised Q4_1 GGUF) on the
``smollm2_arithmetic`` preset, sampling in bf16 while training in f32, with and without TIS; f32 sampling as the
control, and an f32 sampler whose KV cache alone is bf16 (``sampling.kv_dtype``). Reports the mismatch metrics of
each step (a statement about the metrics, not about learning: one seed, a few steps).

    python experiments/mismatch_smollm2.py --steps 3
    python experiments/mismatch_smollm2.py --settings "bf16 KV cache only (f32 weights)"   # add one setting

Settings already in --out are kept unless run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from jaxgrpo.parallel import sharding
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.trainer import Trainer

SETTINGS = {
    "f32 sampler": {},
    "bf16 KV cache only (f32 weights)": {"sampling": {"kv_dtype": "bfloat16"}},
    "bf16 sampler": {"sampling": {"dtype": "bfloat16"}},
    "bf16 sampler + TIS (token, C=3)": {"sampling": {"dtype": "bfloat16"},
                                        "objective": {"rollout_correction": "tis"}},
    "bf16 sampler + MIS (sequence, C=1.05)": {"sampling": {"dtype": "bfloat16"},
                                              "objective": {"rollout_correction": "mis",
                                                            "rollout_correction_level": "sequence",
                                                            "rollout_correction_cap": 1.05}},
}
KEYS = ("mismatch/k3", "mismatch/ratio_min", "mismatch/ratio_max", "mismatch/logp_abs_diff", "mismatch/weight_mean",
        "mismatch/masked_frac", "loss", "reward_mean")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "mismatch_smollm2.json"))
  # names contain commas ("token, C=3"): one argument per name
  p.add_argument("--settings", nargs="+", default=list(SETTINGS), metavar="NAME", help="names from SETTINGS")
  args = p.parse_args(argv)
  names = args.settings
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    p.error(f"--settings: unknown {unknown}; expected names from {list(SETTINGS)}")
  results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}", "runs": {}}
  if os.path.exists(args.out):
    with open(args.out) as f:
      results["runs"] = json.load(f)["runs"]
  for name in names:
    over = SETTINGS[name]
    cfg = config_replace(presets.preset("smollm2_arithmetic"), steps=args.steps, progress=False, checkpoint_every=0,
                         output_dir=f"runs/mismatch/{name.replace(' ', '_')}", eval={"num_examples": 0},
                         mesh={"data": 1, "fsdp": 1, "tensor": 1}, **over)
    t0 = time.time()
    history = Trainer(cfg, mesh=sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])).run(resume=False,
                                                                                           overwrite=True)
    rows = [{k: h[k] for k in KEYS if k in h} for h in history if "loss" in h]
    results["runs"][name] = {"steps": rows, "seconds": time.time() - t0}
    print(name, json.dumps(rows[-1]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nMismatch per step (mean over the {args.steps} steps), SmolLM2-135M-Instruct (dequantised Q4_1), "
        f"{results['machine']}, one seed\n")
  print("| setting | mismatch/k3 | ratio min | ratio max | mean abs Δ log p | IS weight mean | masked |")
  print("|---|---|---|---|---|---|---|")
  for name in [n for n in SETTINGS if n in results["runs"]]:
    r = results["runs"][name]
    m = lambda k: np.mean([s.get(k, np.nan) for s in r["steps"]])
    print(f"| {name} | {m('mismatch/k3'):.2e} | {m('mismatch/ratio_min'):.3f} | {m('mismatch/ratio_max'):.3f} | "
          f"{m('mismatch/logp_abs_diff'):.2e} | {m('mismatch/weight_mean'):.3f} | {m('mismatch/masked_frac'):.3f} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
