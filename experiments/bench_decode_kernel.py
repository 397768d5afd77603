"""The CPU decode-attention kernel (``jaxgrpo.kernels.decode_attention``) against XLA's ops for the same attention,
alone: one decode step's attention over the slots' completion KV for 30 layers (SmolLM2-135M's shapes: 64 slots, 3
KV heads × 3 query heads, head dim 64, bf16 cache, a 32-column float32 call buffer with 16 live columns), at
several live lengths, plus a plain read of the whole cache buffers (an XLA reduction over every position of the
read) as the memory reference.

XLA's side is the completion part of ``models.transformer._attend_slots`` without the kernel: bf16 batched dots
with float32 accumulation over the bucketed read (masked past the live length), the call buffer as float32 dots, one
softmax; the kernel reads the live positions only.  Both are jitted 30-layer chains (each layer's output feeds
the next query), timed alternately, median of ``--repeats``.

    python experiments/bench_decode_kernel.py --repeats 7
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

from jaxgrpo import kernels

S, KV, G, DH, J, LAYERS = 64, 3, 3, 64, 32, 30


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--lives", default="1,64,200,256", help="live completion lengths (the read is 64 or 256)")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_decode_kernel.json"))
  args = p.parse_args()
  if not kernels.available():
    raise SystemExit("the CPU kernel did not build here")
  f32, bf = jnp.float32, jnp.bfloat16
  roof = roof_gflops()
  rows = []
  for live in (int(x) for x in args.lives.split(",")):
    read = 64 if live <= 64 else 256
    key = jax.random.PRNGKey(live)
    normal = lambda i, shape, dt: jax.random.normal(jax.random.fold_in(key, i), shape, f32).astype(dt)
    k = [normal(i, (S, KV, read, DH), bf) for i in range(LAYERS)]
    v = [normal(100 + i, (S, KV, read, DH), bf) for i in range(LAYERS)]
    rk = [normal(200 + i, (S, KV, DH, J), f32) for i in range(LAYERS)]
    rv = [normal(300 + i, (S, KV, J, DH), f32) for i in range(LAYERS)]
    kp, vp = [kernels.pair_keys(x) for x in k], [kernels.pair_values(x) for x in v]
    q0 = normal(400, (S, KV, G, DH), bf)
    before = jnp.full((S,), live, jnp.int32)
    ring_from, step = jnp.full((S,), 16, jnp.int32), jnp.int32(J - 1)  # 16 live call-buffer columns
    c_valid = jnp.arange(read) < live
    r_valid = (jnp.arange(J) >= 16) & (jnp.arange(J) <= J - 1)
    neg = jnp.finfo(f32).min

    def xla_layer(q, k, v, rk, rv):
      s1 = jnp.where(c_valid, jnp.einsum("nkgd,nksd->nkgs", q, k, preferred_element_type=f32), neg)
      s2 = jnp.where(r_valid, jnp.einsum("nkgd,nkds->nkgs", q.astype(f32), rk), neg)
      probs = jax.nn.softmax(jnp.concatenate([s1, s2], -1) * 0.125, -1)
      out = jnp.einsum("nkgs,nksd->nkgd", probs[..., :read].astype(bf), v, preferred_element_type=f32)
      return (out + jnp.einsum("nkgs,nksd->nkgd", probs[..., read:], rv)).astype(bf)

    def kernel_layer(q, kp, vp, rk, rv):
      m, l, o = kernels.decode_attention(q, kp, vp, before, rk, rv, ring_from, step, 0.125)
      return (o / l[..., None]).astype(bf)

    chain = lambda layer: jax.jit(lambda q, *caches: _chain(layer, q, caches))
    fx, fk = chain(xla_layer), chain(kernel_layer)
    read_all = jax.jit(lambda a, b: sum(jnp.sum(x.astype(f32)) for x in a + b))
    runs = {"xla": lambda: fx(q0, k, v, rk, rv), "kernel": lambda: fk(q0, kp, vp, rk, rv),
            "read (reference)": lambda: read_all(k, v)}
    diff = float(jnp.max(jnp.abs(runs["xla"]().astype(f32) - runs["kernel"]().astype(f32))))
    times = {n: [] for n in runs}
    for f in runs.values():
      jax.block_until_ready(f())
    for r in range(args.repeats):
      for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
        t0 = time.perf_counter()
        jax.block_until_ready(runs[n]())
        times[n].append((time.perf_counter() - t0) * 1e3)
    med = {n: float(np.median(t)) for n, t in times.items()}
    kv_mb = 2 * LAYERS * S * KV * read * DH * 2 / 1e6  # the whole buffers (what XLA's dots read)
    rows.append(dict(live=live, read=read, ms=med, all_ms=times, kv_mb=kv_mb, max_abs_diff=diff,
                     kernel_speedup=med["xla"] / med["kernel"]))
    print(rows[-1]["live"], {n: round(x, 2) for n, x in med.items()}, f"{med['xla'] / med['kernel']:.2f}x",
          flush=True)
  machine = (f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof:.0f} GFLOP/s (measured in this "
             f"run), jax {jax.__version__}")
  save_result(args.out, dict(machine=machine, shapes=dict(slots=S, kv_heads=KV, group=G, head_dim=DH, call_buffer=J,
                                                          layers=LAYERS), rows=rows))
  print(f"# decode attention over the completion KV, 30 layers — {machine}; ms per step, median of {args.repeats}")
  print("| live positions | read | XLA ms | kernel ms | XLA / kernel | plain read of the read's KV (ms, MB) |")
  print("|---:|---:|---:|---:|---:|---|")
  for r in rows:
    print(f"| {r['live']} | {r['read']} | {r['ms']['xla']:.1f} | {r['ms']['kernel']:.1f} | "
          f"{r['kernel_speedup']:.2f}× | {r['ms']['read (reference)']:.1f} ms, {r['kv_mb']:.0f} MB |")


def _chain(layer, q, caches):
  for args in zip(*caches):
    q = layer(q, *args)
  return q


if __name__ == "__main__":
  main()
