"""bf16 on XLA:CPU: what makes it fast, at SmolLM2's decode shapes (issue 21: the vLLM-bf16 gap).

Two findings the samplers now rely on, each measured against its baseline in the same process, interleaved:

1. **A bf16 dot is fast only with a float32 result.** ``jnp.dot(a, b)`` on bf16 operands (bf16 result) runs below
   the f32 dot; the same operands with ``preferred_element_type=float32`` take XLA:CPU's AVX512-BF16 path
   (``models.transformer.mm`` does this for every matmul of the model, then casts to the compute dtype).
2. **A layer scan over stacked bf16 weights converts them to float32.** XLA:CPU slices bf16 arrays in float32: the
   whole stack is converted to f32 outside the loop and each layer's slice back to bf16 inside it, every step.
   Carrying the same bytes as uint16 (``models.as_bits``; ``sampler.decode_params``) removes the conversions.
   A third variant, per-layer arrays in an unrolled loop (no stack, no slice), measures what per-layer weight
   buffers would add on top (the slices of a stack are still copies).

The reference where torch is installed (a benchmark-only dependency): torch's bf16 matmul (oneDNN; it uses AMX
where the CPU has it, as vLLM-CPU does) on the same dots and the same MLP loop in eager mode, timed interleaved.

Shapes: 64 rows (8 prompts × G = 8) × d_model 576 × MLP 1536 and the 49,152-token LM head; the scan is 30 layers of
an MLP (up 576→1536, tanh, down 1536→576) inside an 8-step decode-like loop.  Median of ``--repeats`` interleaved
timings after a warm-up; the f32 matmul roof (2048², bench_step.py's) measured in the same run.

    python experiments/bench_bf16.py        # ≈ 2 min; writes experiments/results/bench_bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_step import roof_gflops

from jaxgrpo.models import as_bits, from_bits

DOTS = ((64, 576, 1536), (64, 1536, 576), (64, 576, 49152))
LAYERS, ROWS, D, F, STEPS = 30, 64, 576, 1536, 8


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
  """Median seconds of each no-argument function, timed in turn ``repeats`` times after one warm-up call each."""
  for f in fns.values():
    jax.block_until_ready(f())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(v)) for name, v in times.items()}


def dots(repeats: int) -> list[dict]:
  rows = []
  for m, k, n in DOTS:
    a32 = jax.random.normal(jax.random.PRNGKey(0), (m, k))
    b32 = jax.random.normal(jax.random.PRNGKey(1), (k, n)) * 0.02
    a16, b16 = a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)
    plain = jax.jit(lambda a, b: a @ b)
    wide = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
    fns = {"f32": lambda: plain(a32, b32), "bf16 → bf16": lambda: plain(a16, b16),
           "bf16 → f32 → bf16 (mm)": lambda: wide(a16, b16)}
    torch = _torch()
    if torch is not None:  # the reference: torch's bf16 matmul (oneDNN, AMX where the CPU has it), as vLLM-CPU uses
      ta, tb = (torch.from_numpy(np.asarray(t, np.float32)).to(torch.bfloat16) for t in (a32, b32))
      fns["torch bf16 (oneDNN)"] = lambda: torch.matmul(ta, tb)
    sec = interleaved(fns, repeats)
    rows.append({"shape": f"{m}x{k}x{n}", **{name: 2 * m * k * n / s / 1e9 for name, s in sec.items()}})
  return rows


def _torch():
  """torch with as many threads as cores, or None where it is not installed (a benchmark-only reference)."""
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count())
  return torch


def layer_scan(repeats: int) -> dict:
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  up32 = jax.random.normal(k[0], (LAYERS, D, F)) * 0.02
  down32 = jax.random.normal(k[1], (LAYERS, F, D)) * 0.02
  x32 = jax.random.normal(k[2], (ROWS, D))
  up16, down16, x16 = (t.astype(jnp.bfloat16) for t in (up32, down32, x32))
  up_bits, down_bits = as_bits(up16), as_bits(down16)

  def mm(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)

  @jax.jit
  def decode(x, up, down):
    def layer(h, w):
      u, d = (from_bits(t) for t in w)
      return h + mm(jnp.tanh(mm(h, u)), d), None
    return jax.lax.fori_loop(0, STEPS, lambda i, h: jax.lax.scan(layer, h, (up, down))[0], x)

  @jax.jit
  def decode_unrolled(x, ups, downs):  # per-layer arrays, no stack: what per-layer buffers would give (the ceiling)
    def step(i, h):
      for u, d in zip(ups, downs):
        h = h + mm(jnp.tanh(mm(h, u)), d)
      return h
    return jax.lax.fori_loop(0, STEPS, step, x)

  ups16, downs16 = list(up16), list(down16)
  fns = {"f32": lambda: decode(x32, up32, down32), "bf16 stacks": lambda: decode(x16, up16, down16),
         "bf16 stacks as bits": lambda: decode(x16, up_bits, down_bits),
         "bf16 per-layer arrays (unrolled)": lambda: decode_unrolled(x16, ups16, downs16)}
  torch = _torch()
  if torch is not None:  # the same loop in torch eager (per-layer tensors): the bf16 reference at these shapes
    t_ups, t_downs = ([torch.from_numpy(np.asarray(t, np.float32)).to(torch.bfloat16) for t in w]
                      for w in (up32, down32))
    t_x = torch.from_numpy(np.asarray(x32)).to(torch.bfloat16)

    def torch_decode():
      h = t_x
      with torch.no_grad():
        for _ in range(STEPS):
          for u, d in zip(t_ups, t_downs):
            h = h + torch.matmul(torch.tanh(torch.matmul(h, u)), d)
      return h
    fns["torch bf16 per-layer tensors (oneDNN)"] = torch_decode
  hlo = {name: decode.lower(*args).compile().as_text() for name, args in
         (("bf16 stacks", (x16, up16, down16)), ("bf16 stacks as bits", (x16, up_bits, down_bits)))}
  f32_stacks = {name: f"f32[{LAYERS},{D},{F}]" in text for name, text in hlo.items()}
  same = bool(np.array_equal(np.asarray(fns["bf16 stacks"](), np.float32),
                             np.asarray(fns["bf16 stacks as bits"](), np.float32)))
  same_unrolled = bool(np.array_equal(np.asarray(fns["bf16 stacks"](), np.float32),
                                      np.asarray(fns["bf16 per-layer arrays (unrolled)"](), np.float32)))
  sec = interleaved(fns, repeats)
  flops = 2 * 2 * ROWS * D * F * LAYERS * STEPS
  return {"ms_per_step": {n: 1e3 * s / STEPS for n, s in sec.items()},
          "gflops": {n: flops / s / 1e9 for n, s in sec.items()},
          "f32_weight_stack_in_program": f32_stacks, "bits_output_identical": same,
          "unrolled_output_identical": same_unrolled}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=9)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_bf16.json"))
  args = p.parse_args()
  roof = roof_gflops()
  flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
  isa = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no bf16 ISA flag"
  torch = _torch()
  out = {"machine": f"{platform.machine()} ({isa}), {os.cpu_count()} cores, jax {jax.__version__}"
                    f"{f', torch {torch.__version__}' if torch else ''}, f32 matmul roof {roof:.0f} GFLOP/s (2048², "
                    f"measured in this run)",
         "repeats": args.repeats, "dots": dots(args.repeats), "layer_scan": layer_scan(args.repeats)}
  print(out["machine"])
  names = ["f32", "bf16 → bf16", "bf16 → f32 → bf16 (mm)"] + (["torch bf16 (oneDNN)"] if _torch() else [])
  print("\n| dot (GFLOP/s) | " + " | ".join(names) + " | mm vs f32 | mm vs bf16 → bf16 | mm vs torch |")
  print("|---|" + "---:|" * (len(names) + 3))
  for r in out["dots"]:
    vs_torch = f"{r[names[2]] / r[names[3]]:.2f}×" if len(names) > 3 else "—"
    print(f"| {r['shape']} | " + " | ".join(f"{r[n]:.1f}" for n in names)
          + f" | {r[names[2]] / r['f32']:.2f}× | {r[names[2]] / r[names[1]]:.2f}× | {vs_torch} |")
  s = out["layer_scan"]
  print(f"\n| {LAYERS}-layer MLP scan in a decode loop | ms/step | GFLOP/s | f32 weight stack in the program |")
  print("|---|---:|---:|---|")
  for n, ms in s["ms_per_step"].items():
    print(f"| {n} | {ms:.1f} | {s['gflops'][n]:.1f} | {s['f32_weight_stack_in_program'].get(n, '—')} |")
  print(f"bits: output identical to bf16 stacks: {s['bits_output_identical']}; bits vs f32 "
        f"{s['ms_per_step']['f32'] / s['ms_per_step']['bf16 stacks as bits']:.2f}×, vs bf16 stacks "
        f"{s['ms_per_step']['bf16 stacks'] / s['ms_per_step']['bf16 stacks as bits']:.2f}×; per-layer arrays "
        f"(output identical: {s['unrolled_output_identical']}) vs bits "
        f"{s['ms_per_step']['bf16 stacks as bits'] / s['ms_per_step']['bf16 per-layer arrays (unrolled)']:.2f}×")
  ref = s["ms_per_step"].get("torch bf16 per-layer tensors (oneDNN)")
  if ref:
    print(f"torch's loop vs the bits scan (the samplers' form): {s['ms_per_step']['bf16 stacks as bits'] / ref:.2f}× "
          f"the time")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"\n{args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
