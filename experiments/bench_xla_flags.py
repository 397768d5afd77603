"""Do XLA:CPU's matmul-library switches make a bf16 dot faster than f32 here? (issue 21: the vLLM-bf16 gap)

Times a jitted ``a @ b`` at SmolLM2's decode shapes (64 rows = 8 prompts × G = 8; d_model 576, MLP 1536, the
49,152-token LM head; and a 512-row prefill-like block) in f32 and bf16, each flag set in a fresh process (XLA
reads the flags when the backend starts). GFLOP/s per cell, one ≥ 1 s timing after a warm-up.

    python experiments/bench_xla_flags.py        # ≈ 2 min; writes experiments/results/bench_xla_flags.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

FLAG_SETS = ("", "--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true",
             "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
             "--xla_cpu_experimental_ynn_fusion_type=dot", "--xla_cpu_use_xnnpack=false")
SHAPES = ((64, 576, 1536), (64, 576, 49152), (512, 576, 1536))

CHILD = """
import json, time
import jax, jax.numpy as jnp
res = {}
for dt in ("float32", "bfloat16"):
  for (m, k, n) in %r:
    a = jnp.ones((m, k), dt)
    b = jnp.full((k, n), 0.01, dt)
    f = jax.jit(lambda a, b: (a @ b).astype(jnp.float32).sum())
    f(a, b).block_until_ready()
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0:
      f(a, b).block_until_ready()
      reps += 1
    res[f"{dt} {m}x{k}x{n}"] = 2 * m * k * n / ((time.perf_counter() - t) / reps) / 1e9
print(json.dumps(res))
""" % (SHAPES,)


def main() -> int:
  out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "gflops": {}}
  for flags in FLAG_SETS:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
      out["gflops"][flags or "(default)"] = {"error": done.stderr.strip().splitlines()[-1]}
      continue
    out["gflops"][flags or "(default)"] = json.loads(done.stdout.strip().splitlines()[-1])
  cols = [f"{dt} {m}x{k}x{n}" for dt in ("float32", "bfloat16") for m, k, n in SHAPES]
  print("| XLA_FLAGS | " + " | ".join(cols) + " |")
  print("|---|" + "---:|" * len(cols))
  for flags, r in out["gflops"].items():
    cells = [f"{r[c]:.1f}" if c in r else "error" for c in cols]
    print(f"| `{flags}` | " + " | ".join(cells) + " |")
  path = os.path.join(os.path.dirname(__file__), "results", "bench_xla_flags.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  print(f"\n{path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
