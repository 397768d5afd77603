"""``entropy_segments`` with ``jax.lax.top_k`` (before) vs the row-local blocked top-k (now), on 1 device and with
the batch sharded over 8; and the sampler's top-k / top-p truncation with ``jax.lax.top_k`` + ``jnp.sort`` (before)
vs ``jaxgrpo.core.selection`` (now) on SmolLM2-sized logits.

XLA's SPMD partitioner does not partition the TopK custom call ``jax.lax.top_k`` lowers to: with the batch axis
sharded it all-gathers the whole [B, G, T] array and every device ranks every row (bench_api measured
``entropy_segments`` 3.6× slower on 8 simulated devices than on one). The blocked version
(``jaxgrpo.core.selection.top_k_positions``) uses only row-local reductions and gathers. Both variants, both
placements, interleaved repeats in one run, B = 8 groups, G ∈ {6, 64}, T ∈ {1,024, 4,096}, k = 5, min_gap = 10;
the outputs are checked equal. The 8 devices are simulated CPU devices sharing this machine's cores.

Sampler: ``process_logits`` on [64, 49,152] f32 logits (8 prompts × G = 8, SmolLM2's vocabulary), one decode step's
truncation, for top_k ∈ {20, 50, 1,000}, top_p ∈ {0.9, 0.95} and both together; before = the previous code
(``jax.lax.top_k`` for the k-th value — on XLA:CPU a full sort per row — and a full ``jnp.sort`` for top-p). The
truncated logits are checked equal (top-p: the kept sets may differ only where the mass before a token lies within
float rounding of top_p; the count of differing entries is recorded).

End to end (``--e2e``): the static sampler on SmolLM2-135M-Instruct (dequantised Q4_1), 8 chat prompts × G = 8 ×
64 new tokens, EOS ignored, with the previous truncation patched in (``sampler.process_logits`` replaced) vs now,
for top_k 0 / 50 and top_p 0.95; the two variants back to back, best of 2 after a compiling run whose tokens are
compared.

    python experiments/bench_topk.py         # ≈ 1 min here; writes experiments/results/bench_topk.json
    python experiments/bench_topk.py --e2e --skip-segments --out experiments/results/bench_topk_e2e.json  # ≈ 8 min
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxgrpo.core import prpo  # noqa: E402
from jaxgrpo.rollout import sampler  # noqa: E402


@functools.partial(jax.jit, static_argnames=("k", "min_gap"))
def segments_lax_top_k(entropies, mask, *, k, min_gap):
  """The previous implementation: the same cut rule with the candidates from ``jax.lax.top_k``."""
  valid = mask.astype(bool)
  scored = jnp.where(valid, entropies.astype(jnp.float32), -jnp.inf)
  top = jax.lax.top_k(scored, min(k, scored.shape[-1]))[1]
  return prpo._segments_from_candidates(top, valid, k=k, min_gap=min_gap)


VARIANTS = {"lax.top_k (before)": segments_lax_top_k, "blocked (now)": prpo._entropy_segments}


def truncate_before(logits, *, top_k, top_p):
  """The sampler's truncation as it was: ``jax.lax.top_k`` for the k-th value, a full sort for top-p."""
  neg = sampler._NEG
  if top_k:
    logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][..., -1:], neg, logits)
  if top_p < 1.0:
    desc = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(desc, axis=-1)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p
    logits = jnp.where(logits < jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True), neg, logits)
  return logits


def truncate_now(logits, *, top_k, top_p):
  """The sampler's truncation now (``sampler.process_logits`` at temperature 1)."""
  return sampler.process_logits(logits, sampler.SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p))[1]


SAMPLER_VARIANTS = {"lax.top_k + sort (before)": truncate_before, "core.selection (now)": truncate_now}


def bench_sampler(sh, repeats, rows_n=64, vocab=49152):
  rng = np.random.default_rng(0)
  logits = (rng.standard_normal((rows_n, vocab)) * 2.5).astype(np.float32)  # a spread like a 135M model's
  placements = {"1": jnp.asarray(logits), "8": jax.device_put(logits, sh)}
  out = []
  for top_k, top_p in [(20, 1.0), (50, 1.0), (1000, 1.0), (0, 0.9), (0, 0.95), (50, 0.95)]:
    fns = {name: jax.jit(functools.partial(f, top_k=top_k, top_p=top_p)) for name, f in SAMPLER_VARIANTS.items()}
    gathers, times, results = {}, {}, {}
    for name, f in fns.items():
      for d, a in placements.items():
        gathers[(name, d)] = f.lower(a).compile().as_text().count("all-gather")
        results[(name, d)] = np.asarray(f(a)) > -1e29
        times[(name, d)] = []
    ref = results[("lax.top_k + sort (before)", "1")]
    differ = max(int((r != ref).sum()) for r in results.values())
    if top_p == 1.0:
      assert differ == 0, "top-k variants disagree"
    for _ in range(repeats):
      for name, f in fns.items():
        for d, a in placements.items():
          times[(name, d)].append(_timed(f, a))
    for name in fns:
      t1, t8 = (statistics.median(times[(name, d)]) * 1e3 for d in "18")
      out.append({"variant": name, "top_k": top_k, "top_p": top_p, "ms_1_device": t1, "ms_8_devices": t8,
                  "all_gathers_8_devices": gathers[(name, "8")], "kept_entries_differing": differ,
                  "kept_per_row_mean": float(ref.sum(-1).mean())})
  return out


def bench_end_to_end(repeats: int, new_tokens: int = 64):
  """The static sampler with the old truncation patched in vs now (see the module docstring)."""
  from transformers import AutoTokenizer

  import jaxgrpo.models as M
  from jaxgrpo.models import smollm2

  path = smollm2.hf_checkpoint_dir()
  tok = AutoTokenizer.from_pretrained(path)
  tok.padding_side = "left"
  questions = ["What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis briefly.",
               "Give three tips for sleeping well.", "What is 17 times 23?", "Name a famous painter.",
               "List two uses of a paperclip.", "How many legs does a spider have?"]
  texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
           for q in questions]
  batch = tok(texts, return_tensors="np", padding=True)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  model, params = M.from_pretrained(path, "float32")
  now = sampler.process_logits

  def before(logits, sp, allowed=None):
    pol = sampler.policy.policy_logits(logits, sp.temperature, allowed)
    return pol, truncate_before(pol, top_k=sp.top_k if 0 < sp.top_k < logits.shape[-1] else 0, top_p=sp.top_p)

  rows = []
  for top_k, top_p in [(0, 1.0), (50, 1.0), (0, 0.95)]:
    sp = sampler.SamplingParams(group_size=8, max_new_tokens=new_tokens, temperature=1.0, top_k=top_k, top_p=top_p,
                                eos_ids=(), pad_id=tok.pad_token_id)
    times, toks = {}, {}
    for name, fn in (("before", before), ("now", now)):  # the patch acts at trace time: a fresh cache per variant
      sampler.process_logits = fn
      jax.clear_caches()
      try:
        toks[name] = np.asarray(sampler.sample_groups(model, params, ids, mask, jax.random.PRNGKey(0), sp).tokens)
        times[name] = []
        for _ in range(repeats):
          t0 = time.perf_counter()
          jax.block_until_ready(sampler.sample_groups(model, params, ids, mask, jax.random.PRNGKey(0), sp))
          times[name].append(time.perf_counter() - t0)
      finally:
        sampler.process_logits = now
    n = 8 * 8 * new_tokens
    same = bool((toks["before"] == toks["now"]).all())
    rows.append({"top_k": top_k, "top_p": top_p, "tokens": n, "same_tokens": same,
                 "before_s": min(times["before"]), "now_s": min(times["now"]), "seconds": times})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def matmul_roof(n: int = 1024, repeats: int = 5) -> float:
  """f32 GFLOP/s of one n×n matmul on device 0, measured in this run."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(f, a) for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def _timed(f, *args, **kw) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(f(*args, **kw))
  return time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--groups", default="6,64")
  p.add_argument("--lengths", default="1024,4096")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--skip-segments", action="store_true", help="only the sampler's truncation")
  p.add_argument("--e2e", action="store_true", help="also the SmolLM2 sampler end to end (≈ 8 min)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_topk.json"))
  args = p.parse_args()
  devices = jax.devices()
  if len(devices) < args.batch:
    raise SystemExit(f"needs {args.batch} devices; got {len(devices)} (XLA_FLAGS is set before jax is imported)")
  sh = NamedSharding(Mesh(np.array(devices[:args.batch]), ("data",)), P("data"))
  roof = matmul_roof()
  rows = []
  sampler_rows = bench_sampler(sh, args.repeats)
  e2e_rows = bench_end_to_end(2) if args.e2e else []
  for g in ([] if args.skip_segments else (int(x) for x in args.groups.split(","))):
    for t in (int(x) for x in args.lengths.split(",")):
      rng = np.random.default_rng(0)
      ent = rng.gamma(1.0, 1.0, (args.batch, g, t)).astype(np.float32)
      lengths = rng.integers(t // 2, t + 1, (args.batch, g))
      mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
      placements = {"1": (jnp.asarray(ent), jnp.asarray(mask)),
                    "8": (jax.device_put(ent, sh), jax.device_put(mask, sh))}
      outs, times, gathers = {}, {}, {}
      for name, f in VARIANTS.items():
        for d, a in placements.items():
          gathers[(name, d)] = f.lower(*a, k=5, min_gap=10).compile().as_text().count("all-gather")
          outs[(name, d)] = np.asarray(f(*a, k=5, min_gap=10))
          times[(name, d)] = []
      ref = outs[("lax.top_k (before)", "1")]
      assert all((o == ref).all() for o in outs.values()), "variants disagree"
      for _ in range(args.repeats):  # interleaved: every variant and placement once per round
        for name, f in VARIANTS.items():
          for d, a in placements.items():
            times[(name, d)].append(_timed(f, *a, k=5, min_gap=10))
      for name in VARIANTS:
        t1, t8 = (statistics.median(times[(name, d)]) * 1e3 for d in "18")
        rows.append({"variant": name, "G": g, "T": t, "ms_1_device": t1, "ms_8_devices": t8, "ratio_8_over_1": t8 / t1,
                     "all_gathers_8_devices": gathers[(name, "8")]})
  machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, f32 matmul roof {roof:.0f} GFLOP/s"
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "batch": args.batch, "repeats": args.repeats, "rows": rows,
               "sampler_rows": sampler_rows, "end_to_end_rows": e2e_rows}, f, indent=1)
  print(f"{machine}; B = {args.batch}, median of {args.repeats}, interleaved")
  print("| variant | G | T | 1 device (ms) | 8 devices (ms) | 8 / 1 | all-gathers (8 devices) | blocked vs lax.top_k |")
  print("|---|---|---|---|---|---|---|---|")
  base = {(r["G"], r["T"]): r for r in rows if r["variant"].startswith("lax")}
  for r in rows:
    b = base[(r["G"], r["T"])]
    speed = (f"{b['ms_1_device'] / r['ms_1_device']:.2f}× / {b['ms_8_devices'] / r['ms_8_devices']:.2f}×"
             if r is not b else "")
    print(f"| {r['variant']} | {r['G']} | {r['T']} | {r['ms_1_device']:.2f} | {r['ms_8_devices']:.2f} | "
          f"{r['ratio_8_over_1']:.2f} | {r['all_gathers_8_devices']} | {speed} |")
  print("\nSampler truncation, [64, 49152] f32 logits")
  print("| variant | top_k | top_p | kept/row | 1 device (ms) | 8 devices (ms) | all-gathers (8) | now vs before |")
  print("|---|---|---|---|---|---|---|---|")
  for i in range(0, len(sampler_rows), 2):
    b, r = sampler_rows[i], sampler_rows[i + 1]
    for x in (b, r):
      speed = (f"{b['ms_1_device'] / r['ms_1_device']:.1f}× / {b['ms_8_devices'] / r['ms_8_devices']:.1f}×"
               if x is r else "")
      print(f"| {x['variant']} | {x['top_k']} | {x['top_p']} | {x['kept_per_row_mean']:.0f} | {x['ms_1_device']:.2f} | "
            f"{x['ms_8_devices']:.2f} | {x['all_gathers_8_devices']} | {speed} |")
  if e2e_rows:
    print("\nStatic sampler end to end, SmolLM2, 8 prompts × G = 8 × 64 tokens, best of 2")
    print("| top_k | top_p | before (s) | now (s) | before / now | tokens equal |")
    print("|---|---|---|---|---|---|")
    for r in e2e_rows:
      print(f"| {r['top_k']} | {r['top_p']} | {r['before_s']:.2f} | {r['now_s']:.2f} | "
            f"{r['before_s'] / r['now_s']:.2f}× | {r['same_tokens']} |")


if __name__ == "__main__":
  main()
