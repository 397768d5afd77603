"""One decode step's sampling on SmolLM2's vocabulary: ``sampler.sample_token`` on [64, 49,152] float32 logits (64
decode slots), and the full-vocabulary argmax inside it (the inverse-CDF draw's fallback and the greedy token):
``jnp.argmax`` (one variadic reduce on XLA:CPU) against ``core.selection.argmax`` (max, then the first index
holding it).  Each timing is a jitted loop of 30 calls; the variants are interleaved, medians of ``--repeats``.

    python experiments/bench_sample_token.py --repeats 7
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
from bench_step import roof_gflops, save_result

from jaxgrpo.core import selection
from jaxgrpo.rollout import sampler

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_sample_token.json"))
  args = p.parse_args()
  n, v, calls = 64, 49152, 30
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(n, v)) * 3, jnp.float32)
  keys = sampler.sample_keys(jax.random.PRNGKey(0), n)
  sp = sampler.SamplingParams(group_size=8, max_new_tokens=128, temperature=1.0, pad_id=0)

  def loop(fn):  # 30 dependent calls (the carry perturbs the input), one jitted program
    def body(i, c):
      return c + jnp.sum(jnp.asarray(fn(logits + c * 1e-9, i), jnp.float32))
    return jax.jit(lambda: jax.lax.fori_loop(0, calls, body, jnp.zeros(())))

  variants = {
      "sample_token (temperature 1)": loop(lambda x, i: sampler.sample_token(
          x, None, sp, uniforms=sampler.row_uniforms(keys, jnp.full((n,), i)))[1]),
      "jnp.argmax": loop(lambda x, i: jnp.argmax(x, axis=-1)),
      "selection.argmax": loop(lambda x, i: selection.argmax(x)),
  }
  for f in variants.values():
    jax.block_until_ready(f())
  times = {k: [] for k in variants}
  for _ in range(args.repeats):
    for k, f in variants.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append((time.perf_counter() - t0) / calls * 1e3)
  roof = roof_gflops()
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof:.0f} GFLOP/s (measured "
                f"in this run), jax {jax.__version__}", shape=[n, v], ms_per_call=times,
                median_ms={k: float(np.median(t)) for k, t in times.items()})
  save_result(args.out, result)
  print(json.dumps(result["median_ms"]))
  print(f"argmax: jnp {result['median_ms']['jnp.argmax']:.2f} ms, selection "
        f"{result['median_ms']['selection.argmax']:.2f} ms per [64, 49152] call — {result['machine']}")


if __name__ == "__main__":
  main()
