"""The continuous engine's completion cache sized to the read bucket vs a full-length (T) buffer (issue 21).

A decode step's attention reads each slot's completion keys/values up to the call's read length R. With a buffer of
T positions (what ``rollout.continuous`` keeps), each layer's read window [S, KV, R, Dh] is a strided slice XLA:CPU
copies out before its dots; with a buffer of exactly R positions (the engine would resize it between calls) the
layer reads its whole slice. This times one host call of the decode loop (``continuous._run``, ``--steps`` decode
steps, every slot live) both ways, on SmolLM2-135M's architecture (random weights: the time does not depend on their
values), 64 slots (8 prompts of 41 tokens × G = 8), T = 512, in bf16 and f32, interleaved, medians.

A second table isolates decode attention itself (no weights): a 30-layer loop over a stacked bits cache
[L, S, KV, T, Dh] (64 slots, 3 KV heads × 3 query heads, Dh 64) at read R, in the formulations tried — the
engine's batched bf16 dots with f32 accumulation (window sliced from a T buffer, or an R buffer), an f32
multiply-and-reduce (the bits convert fused into the reduction: no copy), the same with values stored transposed
[.., Dh, T] (the value sum then reduces the innermost axis) — against a copy of the same bytes (the memory
bandwidth this host gives a plain copy), so each can be read as effective GB/s of KV.

A third part times whole f32 sampling calls (``continuous.sample_groups``, 8 prompts of 64 tokens × G = 8 × 128
tokens, EOS off) with prompts of exactly a read bucket's length (64), with the engine's one masked column of left
padding (``_off_buckets``) and without it: a step whose prompt and completion parts have the same length took an
XLA:CPU slow path in f32.

    python experiments/bench_decode_cache.py      # ≈ 9 min; writes experiments/results/bench_decode_cache.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_bf16 import interleaved
from bench_step import roof_gflops, save_result

from jaxgrpo.models import as_bits, from_bits, from_config, from_hf_config, init_params, known
from jaxgrpo.models import transformer as tr
from jaxgrpo.rollout import continuous, sampler

B, G, P, T, SLOTS = 8, 8, 41, 512, 64  # P: bench_sampler.py's chat prompts (padded); not a read bucket


def smollm2(dtype: str):
  """SmolLM2-135M's architecture with random weights, in the samplers' parameter form."""
  model = from_config(from_hf_config(known.CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"], dtype=dtype))
  return model, sampler.decode_params(model, init_params(model, jax.random.PRNGKey(0)))


def programs(dtype: str, reads: tuple[int, ...], steps: int) -> dict:
  """{(buffer, read): (no-argument call)} for a buffer of T ("full") or R ("read") positions."""
  model, params = smollm2(dtype)
  sp = sampler.SamplingParams(group_size=G, max_new_tokens=T, temperature=1.0)
  ids = jax.random.randint(jax.random.PRNGKey(1), (B, P), 3, model.config.vocab_size)
  mesh, axes = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("rows",)), ("rows",)
  ctx = continuous._prefill(model, params, ids, jnp.ones((B, P), jnp.int32), jax.random.PRNGKey(2), G, None, mesh,
                            axes)
  out = {}
  for read in reads:
    for buffer in ("full", "read"):
      state = continuous._start(model, ctx, SLOTS, sp, mesh, axes)  # cache [D, L, S, KV, T, Dh]
      if buffer == "read":
        state = dataclasses.replace(state, cache={k: v[:, :, :, :, :read] for k, v in state.cache.items()})
      state = dataclasses.replace(state, length=jnp.full_like(state.length, read - steps))  # every read position live

      def call(state=state, read=read):
        fresh = jax.tree.map(jnp.copy, state)  # _run donates its state
        jax.block_until_ready(fresh)
        t0 = time.perf_counter()
        jax.block_until_ready(continuous._run(model, params, ctx, fresh, sp, None, steps, read, mesh, axes))
        return time.perf_counter() - t0

      call()  # compile
      out[(buffer, read)] = call
  return out


def attention(reads: tuple[int, ...], repeats: int) -> list[dict]:
  """ms per 30-layer decode-attention pass (one query per slot and head) in each formulation, and GB/s of KV."""
  L, S, KV, Gq, Dh = 30, SLOTS, 3, 3, 64
  bf16 = lambda key, shape: jax.random.normal(jax.random.PRNGKey(key), shape).astype(jnp.bfloat16)
  kc, vc = as_bits(bf16(0, (L, S, KV, T, Dh))), as_bits(bf16(1, (L, S, KV, T, Dh)))
  vt = jnp.swapaxes(vc, -1, -2)
  q = bf16(2, (S, KV, Gq, Dh))
  f32 = lambda c: from_bits(c).astype(jnp.float32)

  def dots(q, k, v):  # the engine's bf16 path itself
    p = jax.nn.softmax(tr._decode_scores(q, from_bits(k)), -1)
    return tr._decode_values(p, from_bits(v)).astype(jnp.bfloat16)

  def reduce(q, k, v):
    q, k, v = q.astype(jnp.float32), f32(k), f32(v)
    p = jax.nn.softmax(jnp.sum(q[:, :, :, None] * k[:, :, None], -1), -1)
    return jnp.sum(p[..., None] * v[:, :, None], -2).astype(jnp.bfloat16)

  def reduce_vt(q, k, vt):
    q, k, vt = q.astype(jnp.float32), f32(k), f32(vt)
    p = jax.nn.softmax(jnp.sum(q[:, :, :, None] * k[:, :, None], -1), -1)
    return jnp.sum(p[:, :, :, None] * vt[:, :, None], -1).astype(jnp.bfloat16)

  def layers(fn, r, transposed=False):
    def run(q, kc, vc):
      def body(l, x):
        k = jax.lax.dynamic_index_in_dim(kc, l, 0, False)[:, :, :r]
        v = jax.lax.dynamic_index_in_dim(vc, l, 0, False)
        return fn(x, k, v[..., :r] if transposed else v[:, :, :r])
      return jax.lax.fori_loop(0, L, body, q)
    return jax.jit(run)

  copy = jax.jit(lambda a, b: (a + jnp.uint16(1), b + jnp.uint16(1)))
  rows = []
  for r in reads:
    kr, vr = kc[:, :, :, :r], vc[:, :, :, :r]
    attend, red, red_t = layers(dots, r), layers(reduce, r), layers(reduce_vt, r, True)
    fns = {"dots, window of a T buffer": lambda: attend(q, kc, vc),
           "dots, R buffer": lambda: attend(q, kr, vr),
           "f32 multiply-reduce, window": lambda: red(q, kc, vc),
           "f32 multiply-reduce, values transposed": lambda: red_t(q, kc, vt),
           "copy of the same KV bytes (read + write)": lambda: copy(kr, vr)}
    kv_bytes = 2 * L * S * KV * r * Dh * 2
    for k, sec in interleaved(fns, repeats).items():
      ms = sec * 1e3
      rows.append(dict(read=r, formulation=k, ms=ms, kv_gb_per_s=kv_bytes / ms / 1e6))
      print(f"attention read {r:4d} {k:40s} {ms:7.1f} ms  {kv_bytes / ms / 1e6:5.1f} GB/s of KV", flush=True)
  return rows


def prompt_bucket(repeats: int) -> list[dict]:
  """Seconds per f32 sampling call with 64-token prompts, padded off the read bucket (as shipped) or not."""
  model, params = smollm2("float32")
  sp = sampler.SamplingParams(group_size=G, max_new_tokens=128, temperature=1.0)
  ids = jax.random.randint(jax.random.PRNGKey(1), (B, 64), 3, model.config.vocab_size)
  mask = jnp.ones((B, 64), jnp.int32)
  shipped = continuous._off_buckets

  def call(pad: bool, seed: int) -> float:
    continuous._off_buckets = shipped if pad else (lambda *a: 0)
    try:
      t0 = time.perf_counter()
      out, _ = continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(seed), sp)
      jax.block_until_ready(out.tokens)
      return time.perf_counter() - t0
    finally:
      continuous._off_buckets = shipped

  for pad in (True, False):
    call(pad, 0)  # compile
  times = {True: [], False: []}
  for i in range(repeats):
    for pad in ((True, False) if i % 2 == 0 else (False, True)):
      times[pad].append(call(pad, i + 1))
  rows = []
  for pad in (True, False):
    sec = float(np.median(times[pad]))
    rows.append(dict(prompt_len=64, padded=pad, seconds=sec, tokens_per_s=B * G * 128 / sec, all_s=times[pad]))
    print(f"f32 sampling, 64-token prompts, {'padded to 65' if pad else 'not padded'}: {sec:6.1f} s "
          f"({B * G * 128 / sec:5.1f} tokens/s)", flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--reads", default="64,128,256")
  ap.add_argument("--dtypes", default="bfloat16,float32")
  ap.add_argument("--steps", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_decode_cache.json"))
  args = ap.parse_args()
  reads = tuple(int(r) for r in args.reads.split(","))
  roof_before = roof_gflops()
  rows = []
  for dtype in args.dtypes.split(","):
    calls = programs(dtype, reads, args.steps)
    times = {k: [] for k in calls}
    for _ in range(args.repeats):
      for k, call in calls.items():
        times[k].append(call() / args.steps * 1e3)
    for read in reads:
      full, fit = (float(np.median(times[(b, read)])) for b in ("full", "read"))
      rows.append(dict(dtype=dtype, read=read, full_ms=full, read_ms=fit, ratio=fit / full,
                       full_all=times[("full", read)], read_all=times[("read", read)]))
      print(f"{dtype:9s} read {read:4d}: T-buffer {full:6.1f} ms/step, R-buffer {fit:6.1f} ms/step "
            f"({fit / full:.3f}x)", flush=True)
  attn = attention(reads, args.repeats)
  bucket = prompt_bucket(max(2, args.repeats // 2))
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", jax=jax.__version__,
                roof_gflops_before=roof_before, roof_gflops_after=roof_gflops(), slots=SLOTS, prompts=B, group=G,
                prompt_len=P, max_new_tokens=T, steps_per_call=args.steps, repeats=args.repeats, rows=rows,
                attention=attn, prompt_bucket=bucket)
  save_result(args.out, result)
  print(f"roof {roof_before:.0f} -> {result['roof_gflops_after']:.0f} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
  main()
