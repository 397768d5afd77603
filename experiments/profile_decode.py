"""Where a decode step of the continuous engine spends its time, by XLA op: a ``jax.profiler`` trace of the real
decode loop, op times summed and attributed with the compiled program's own fusion names and shapes.

SmolLM2-135M-Instruct (dequantised Q4_1), 8 chat prompts × G = 8 = 64 prompt-major slots, bf16 weights and KV (the
engine's fast configuration on CPU), one host call of 8 steps then one of 16 (traced) at each completion read
length.  Ops are grouped as: ``matmul`` (XLA:CPU's ynn fusions: every dot), ``bits copy`` (fusions that convert
uint16 bits to bf16: weights sliced out of the layer stacks, the completion-KV read window, prompt KV), ``other``.
Summed op time exceeds wall time (XLA:CPU runs independent ops on both cores at once); the ms/step column is wall.
``--layouts stacked,layers`` profiles both KV layouts (``ContinuousParams.kv_layout``); for ``layers`` the read is
the buffer of earlier tokens, and each step also reads the call buffer (the 8 + 16 steps of the two calls);
``layers:cpu`` is the layers layout with the CPU decode-attention kernel (``decode_kernel``; category ``cpu kernel``).

    python experiments/profile_decode.py --reads 64,256 --layouts stacked,layers
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import platform
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_sampler import CHAT, HERE, encode_chat, smollm2_tokenizer
from bench_step import roof_gflops, save_result


def category(name: str) -> str:
  if name.startswith("ynn"):
    return "matmul"
  if "bitcast-convert" in name or "convert_bitcast" in name:
    return "bits copy"
  if "custom-call" in name or "custom_call" in name or "jaxgrpo" in name:
    return "cpu kernel"
  return "other"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reads", default="64,256")
  p.add_argument("--layouts", default="stacked")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--out", default=os.path.join(HERE, "results", "profile_decode.json"))
  args = p.parse_args()
  import jaxgrpo.models as M
  from jaxgrpo.rollout import continuous, sampler

  path, tok = smollm2_tokenizer()
  ids, mask = (jnp.asarray(x) for x in encode_chat(tok, CHAT))
  g, slots, steps = 8, 8 * len(CHAT), 16
  one, axes = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("rows",)), ("rows",)
  model, params = M.from_pretrained(path, "bfloat16")
  params = sampler.decode_params(model, M.cast_params(params, "bfloat16"))
  roof = roof_gflops()
  split = continuous._split(model, params) if "layers" in args.layouts else None
  ring = continuous.ContinuousParams.steps_per_call  # the layers layout's call buffer, as the engine sizes it
  out = []
  for variant, read in ((lay, int(r)) for lay in args.layouts.split(",") for r in args.reads.split(",")):
    layout, kernel = variant.split(":")[0], variant.endswith(":cpu")  # layers:cpu — the CPU decode-attention kernel
    ctx = continuous._prefill(model, params, ids, mask, jax.random.PRNGKey(0), g, None, one, axes, layout)
    weights = split if layout == "layers" else params
    sp = sampler.SamplingParams(group_size=g, max_new_tokens=max(read, 64), temperature=1.0,
                                pad_id=tok.pad_token_id)

    def call(n, state=None):
      if state is None and layout == "layers":  # 8 steps, then those merged into a buffer of `read` positions
        state = continuous._start(model, ctx, slots, sp, one, axes, layout, ring, kernel)
        state = continuous._run(model, weights, ctx, state, sp, None, n, 0, one, axes, g, kernel)
        return continuous._merged(state, read, one, axes, kernel)
      state = continuous._start(model, ctx, slots, sp, one, axes) if state is None else state
      return continuous._run(model, weights, ctx, state, sp, None, n, read, one, axes, g, kernel)

    def timed():
      state = jax.block_until_ready(call(8))
      t0 = time.perf_counter()
      jax.block_until_ready(call(steps, state))
      return (time.perf_counter() - t0) / steps * 1e3

    timed()
    walls = [timed() for _ in range(3)]
    hlo = continuous._run.lower(model, weights, ctx, call(8), sp, None, steps, read, one, axes, g,
                                kernel).compile().as_text()
    state = jax.block_until_ready(call(8))
    with tempfile.TemporaryDirectory() as tmp:
      jax.profiler.start_trace(tmp, create_perfetto_trace=True)
      jax.block_until_ready(call(steps, state))
      jax.profiler.stop_trace()
      trace = json.load(gzip.open(glob.glob(f"{tmp}/**/*perfetto_trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops = collections.Counter()
    for e in events:
      if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(("ThunkExecutor", "$", "Slinky")):
        ops[e["name"]] += e["dur"] / 1e3 / steps  # ms per step
    cats = collections.Counter()
    for name, ms in ops.items():
      cats[category(name)] += ms

    def describe(name):
      m = re.search(r"%" + re.escape(name) + r" = (\S+) .*?op_name=\"([^\"]*)\"", hlo)
      return (m.group(1).split("{")[0], m.group(2).split("/")[-1]) if m else ("", "")

    top = [dict(op=n, ms_per_step=ms, category=category(n), shape=describe(n)[0], source=describe(n)[1])
           for n, ms in ops.most_common(args.top)]
    out.append(dict(layout=variant, read=read, slots=slots, prompt_len=int(ids.shape[1]), wall_ms_per_step=walls,
                    summed_op_ms_per_step=sum(ops.values()), categories=dict(cats), top=top))
    print(json.dumps(out[-1]), flush=True)
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof:.0f} GFLOP/s (measured "
                f"in this run), jax {jax.__version__}", model="SmolLM2-135M-Instruct (dequantised Q4_1), bf16",
                rows=out)
  save_result(args.out, result)
  print(f"# {result['model']}, 64 prompt-major slots — {result['machine']}")
  print("| layout | read | wall ms/step (3 calls) | summed op ms/step | matmul | bits copy | other |")
  print("|---|---:|---|---:|---:|---:|---:|")
  for r in out:
    c, tot = r["categories"], r["summed_op_ms_per_step"]
    print(f"| {r['layout']} | {r['read']} | {', '.join(f'{w:.0f}' for w in r['wall_ms_per_step'])} | {tot:.0f} | " +
          " | ".join(f"{c.get(k, 0):.1f} ({c.get(k, 0) / tot:.0%})" for k in ("matmul", "bits copy", "other")) + " |")
  for r in out:
    print(f"\n## {r['layout']}, read {r['read']}: top ops, ms per step (summed op time)")
    for t in r["top"][:12]:
      print(f"  {t['ms_per_step']:6.2f}  {t['category']:9s} {t['shape']:22s} {t['source']}")


if __name__ == "__main__":
  main()
