"""Decode attention over the slots' KV in three layouts, attention alone (a lead, not a step measurement).

`profile_decode.py` finds half of a long decode step's op time in the slots' own KV: each layer's read window is
copied (fused slice + uint16 → bf16 conversion) out of the layer-stacked cache [L, S, KV, T, Dh] before the
attention dots read it.  This loop runs only that part of a step — 30 layers of SmolLM2-135M's decode attention
(64 slots, 3 KV heads × 3 queries, Dh 64) over a read of R positions, ``--steps`` steps in a ``fori_loop`` — for:

* ``stacked``: the engine's layout today: a [L, S, KV, T=512, Dh] bits cache, a layer scan, each layer's window
  ``[:, :, :R]`` converted to bf16;
* ``per-layer bits``: L separate [S, KV, R, Dh] bits buffers (no layer slice, no window), an unrolled layer loop;
* ``per-layer bf16``: the same in bf16 (no conversion at all).

It counts the copy fusions XLA:CPU leaves in each compiled loop and times the three, interleaved.  An
attention-only loop has mispredicted the real step before (keys stored transposed: 1.5–2× here, 0.89–0.93× in the
step; experiments/README.md §8), so this only says where to look.

    python experiments/bench_kv_layout.py --read 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_sampler import HERE
from bench_step import roof_gflops, save_result

L, S, KV, G, D, T = 30, 64, 3, 3, 64, 512
BITS = jnp.uint16


def attend(q, k, v):
  s = jnp.einsum("nkgd,nksd->nkgs", q, k, preferred_element_type=jnp.float32)
  p = jax.nn.softmax(s, -1).astype(jnp.bfloat16)
  return jnp.einsum("nkgs,nksd->nkgd", p, v, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def stacked(q, ck, cv, steps, read):
  def layer(x, kv):
    k, v = (jax.lax.bitcast_convert_type(c[:, :, :read], jnp.bfloat16) for c in kv)
    return attend(x, k, v), None

  return jax.lax.fori_loop(0, steps, lambda i, x: jax.lax.scan(layer, x, (ck, cv))[0], q)


def per_layer(q, cks, cvs, steps, read):
  del read  # the buffers are the read

  def body(i, x):
    for k, v in zip(cks, cvs):
      x = attend(x, *(jax.lax.bitcast_convert_type(c, jnp.bfloat16) if c.dtype == BITS else c for c in (k, v)))
    return x

  return jax.lax.fori_loop(0, steps, body, q)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--read", type=int, default=256)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_kv_layout.json"))
  args = p.parse_args()
  r = args.read
  rng = np.random.default_rng(0)
  bf16 = lambda *shape: jnp.asarray(rng.standard_normal(shape) * 0.1, jnp.bfloat16)
  bits = lambda x: jax.lax.bitcast_convert_type(x, BITS)
  q = bf16(S, KV, G, D)
  ck, cv = bf16(L, S, KV, T, D), bf16(L, S, KV, T, D)
  layers_k = [ck[i, :, :, :r] for i in range(L)]
  layers_v = [cv[i, :, :, :r] for i in range(L)]
  variants = {
      "stacked": (stacked, (q, bits(ck), bits(cv))),
      "per-layer bits": (per_layer, (q, [bits(x) for x in layers_k], [bits(x) for x in layers_v])),
      "per-layer bf16": (per_layer, (q, layers_k, layers_v)),
  }
  roof = roof_gflops()
  copies, times, outs = {}, {k: [] for k in variants}, {}
  for name, (fn, inputs) in variants.items():
    f = jax.jit(fn, static_argnums=(3, 4))
    hlo = f.lower(*inputs, args.steps, r).compile().as_text()
    copies[name] = sum(1 for line in hlo.splitlines() if f"bf16[{S},{KV},{r},{D}]" in line and "fusion(" in line
                       and not line.strip().startswith(("%ynn", "ynn")))
    outs[name] = np.asarray(jax.block_until_ready(f(*inputs, args.steps, r)), np.float32)
    variants[name] = (f, inputs)
  for rep in range(args.repeats):
    names = list(variants) if rep % 2 == 0 else list(variants)[::-1]
    for name in names:
      f, inputs = variants[name]
      t0 = time.perf_counter()
      jax.block_until_ready(f(*inputs, args.steps, r))
      times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
  same = {k: float(np.max(np.abs(v - outs["stacked"]))) for k, v in outs.items()}
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof:.0f} GFLOP/s (measured "
                f"in this run), jax {jax.__version__}", read=r, steps=args.steps, layers=L, slots=S,
                ms_per_step=times, median_ms_per_step={k: float(np.median(v)) for k, v in times.items()},
                copy_fusions_of_the_window=copies, max_abs_diff_vs_stacked=same)
  save_result(args.out, result)
  print(f"# 30-layer decode attention, 64 slots, read {r} — {result['machine']}")
  print("| layout | window copies in the loop | ms/step (median) | stacked / this | max |Δ| vs stacked |")
  print("|---|---:|---:|---:|---:|")
  base = result["median_ms_per_step"]["stacked"]
  for name, ms in result["median_ms_per_step"].items():
    print(f"| {name} | {copies[name]} | {ms:.1f} | {base / ms:.2f}× | {same[name]:.1e} |")


if __name__ == "__main__":
  main()
