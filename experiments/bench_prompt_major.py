"""The continuous engine's prompt-major read (``models.SlotMask.group``) against the per-slot gather, in the real
decode loop: SmolLM2-135M-Instruct (dequantised Q4_1), 8 chat prompts × G = 8 = 64 slots, one slot per sample.

With one slot per sample the slots stay prompt-major (slot s runs sample s of prompt s // G), so a decode step can
read each prompt's KV once for the G·H/KV query rows of its samples; the gathered read copies each slot's prompt KV
first (G copies per prompt per layer per step).  Both programs are timed in one process, interleaved, for each
completion read length (16 decode steps per timed call, after an 8-step call that fills the cache); the median over
``--repeats`` and the per-repeat ratio are reported.

Also the host's read bandwidth as XLA:CPU gets it, for the claim that decode attention is memory-bound: a
reduction over the bytes the slots' K and V hold at a read of 256 (30 layers × 64 slots × 3 KV heads × 256 × 64,
bf16, twice: 377 MB) against a copy of them (read + write), best of 5.

    python experiments/bench_prompt_major.py --dtypes bfloat16,float32 --repeats 5
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
from bench_sampler import CHAT, HERE, encode_chat, smollm2_tokenizer
from bench_step import roof_gflops, save_result


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dtypes", default="bfloat16,float32")
  p.add_argument("--reads", default="64,128")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_prompt_major.json"))
  args = p.parse_args()
  import jaxgrpo.models as M
  from jaxgrpo.rollout import continuous, sampler

  path, tok = smollm2_tokenizer()
  ids, mask = (jnp.asarray(x) for x in encode_chat(tok, CHAT))
  g, slots = 8, 8 * len(CHAT)
  one, axes = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("rows",)), ("rows",)
  rows = []
  for dt in args.dtypes.split(","):
    model, params = M.from_pretrained(path, dt)
    params = sampler.decode_params(model, M.cast_params(params, dt))
    sp = sampler.SamplingParams(group_size=g, max_new_tokens=128, temperature=1.0, pad_id=tok.pad_token_id)
    ctx = continuous._prefill(model, params, ids, mask, jax.random.PRNGKey(0), g, None, one, axes)

    def step_ms(read, group):
      state = continuous._start(model, ctx, slots, sp, one, axes)
      state = continuous._run(model, params, ctx, state, sp, None, 8, read, one, axes, group)
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      state = continuous._run(model, params, ctx, state, sp, None, 16, read, one, axes, group)
      jax.block_until_ready(state)
      return (time.perf_counter() - t0) / 16 * 1e3

    for read in map(int, args.reads.split(",")):
      for group in (g, 0):
        step_ms(read, group)  # compile
      times = {g: [], 0: []}
      for r in range(args.repeats):
        for group in ((g, 0) if r % 2 == 0 else (0, g)):
          times[group].append(step_ms(read, group))
      ratio = np.asarray(times[0]) / np.asarray(times[g])
      row = dict(dtype=dt, prompt_len=int(ids.shape[1]), read=read, slots=slots, prompt_major_ms=times[g],
                 gathered_ms=times[0], median_prompt_major_ms=float(np.median(times[g])),
                 median_gathered_ms=float(np.median(times[0])), ratio=ratio.tolist(),
                 median_ratio=float(np.median(ratio)))
      rows.append(row)
      print(json.dumps(row), flush=True)
  x = jnp.ones((2 * 30 * slots * 3 * 256 * 64,), jnp.bfloat16)
  bandwidth = {}
  for name, fn in (("sum (read)", jax.jit(lambda a: jnp.sum(a.astype(jnp.float32)))),
                   ("copy (read + write)", jax.jit(lambda a: a * 2))):
    jax.block_until_ready(fn(x))
    best = min(_timed(lambda: jax.block_until_ready(fn(x))) for _ in range(5))
    bandwidth[name] = dict(ms=best * 1e3, gb_per_s_read=x.nbytes / best / 1e9)
  print(json.dumps(bandwidth), flush=True)
  roof = roof_gflops()
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof:.0f} GFLOP/s (measured "
                f"in this run), jax {jax.__version__}", model="SmolLM2-135M-Instruct (dequantised Q4_1)", rows=rows,
                bandwidth_377MB=bandwidth)
  save_result(args.out, result)
  print(f"# {result['model']}, 64 slots (8 prompts × G = 8), ms per decode step — {result['machine']}")
  print("| dtype | read | gathered (median) | prompt-major (median) | gathered / prompt-major per repeat | median |")
  print("|---|---:|---:|---:|---|---:|")
  for r in rows:
    print(f"| {r['dtype']} | {r['read']} | {r['median_gathered_ms']:.1f} | {r['median_prompt_major_ms']:.1f} | "
          f"{', '.join(f'{x:.2f}' for x in r['ratio'])} | {r['median_ratio']:.2f}× |")
  for name, b in bandwidth.items():
    print(f"{name}: {b['ms']:.1f} ms for 377 MB, {b['gb_per_s_read']:.1f} GB/s read")


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


if __name__ == "__main__":
  main()
