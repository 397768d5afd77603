"""How the continuous engine's completion-cache reads grow (``ContinuousParams.read_growth``), whole calls.

Each host call of the continuous engine reads the first ``read`` positions of the slots' completion cache, ``read``
being the longest live completion plus the call's steps, rounded up to a bucket (one compilation per bucket).  With
powers of two (``pow2``, the default) a read is up to 2× what the call needs; ``half_octave`` (2^k and 3·2^k) at
most 1.5×; ``linear`` with ``read_block`` 32 (multiples of 32, the call's 32 steps) the need exactly.  Decode
attention's cost grows with the read (experiments/README.md §8), so tighter reads should cost less per step, at the
price of more compilations.

SmolLM2-135M-Instruct (dequantised Q4_1), 8 word problems × G = 8, EOS on, ``max_new_tokens`` 256 (the ``long256``
setting of bench_sampler.py), one process: every policy compiled first (its first call's time reported as
compile + run), then ``--repeats`` rounds, each round one call per policy with the same key, the order rotating;
per round the ratio of each policy's tokens/s to the first policy's (the samples differ a little between
policies: a different read changes the attention sums' rounding, which flips near-tie tokens, so the token counts
differ too) and of the wall times.

    python experiments/bench_read_growth.py --dtypes bfloat16,float32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
from bench_sampler import HERE, _settings, sampling_params, smollm2_tokenizer
from bench_step import roof_gflops, save_result


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dtypes", default="bfloat16")
  p.add_argument("--setting", default="long256", choices=("long256", "long512", "fixed"))
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--policies", default="pow2:64,half_octave:64,linear:32",
                 help="read_growth:read_block pairs, the first the baseline")
  p.add_argument("--variants", default="",
                 help="instead of --policies: ContinuousParams settings to compare, ';'-separated, each "
                      "'field=value,...' (e.g. 'kv_layout=stacked;kv_layout=layers'), the first the baseline")
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_read_growth.json"))
  args = p.parse_args()
  import jaxgrpo.models as M
  from jaxgrpo.rollout import continuous

  path, tok = smollm2_tokenizer()
  args.settings = args.setting
  if args.variants:
    policies = tuple((v, dict(_setting(kv) for kv in v.split(","))) for v in args.variants.split(";"))
  else:
    policies = tuple((f"{g}:{b}", dict(read_growth=g, read_block=int(b)))
                     for g, b in (x.split(":") for x in args.policies.split(",")))
  base_name = policies[0][0]
  roof_start = roof_gflops()
  rows = []
  for setting in _settings(tok, args):
    if setting["dtype"] not in args.dtypes.split(","):
      continue
    model, params = M.from_pretrained(path, setting["dtype"])
    params = M.cast_params(params, setting["dtype"])
    ids, mask = (np.asarray(x) for x in setting["prompts"])
    sp = sampling_params(tok, setting, args.group)

    def call(policy, seed):
      cp = continuous.ContinuousParams(**policy[1])
      t0 = time.perf_counter()
      out, stats = continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(seed), sp, cp=cp)
      jax.block_until_ready(out)
      return time.perf_counter() - t0, stats, np.asarray(out.tokens)

    first = {}
    for policy in policies:
      wall, stats, _ = call(policy, 1000)
      first[policy[0]] = wall
    walls = {pol[0]: [] for pol in policies}
    info = {}
    same = []
    for r in range(args.repeats):
      order = policies[r % len(policies):] + policies[:r % len(policies)]
      toks = {}
      for policy in order:
        wall, stats, tokens = call(policy, r)
        walls[policy[0]].append(wall)
        toks[policy[0]] = tokens
        info.setdefault(policy[0], []).append(dict(useful=stats.useful_tokens, reads=list(stats.reads),
                                                   slot_counts=list(stats.slot_counts),
                                                   decode_steps=stats.decode_steps))
      same.append({k: float(np.mean(v == toks[base_name])) for k, v in toks.items()})
      print(json.dumps(dict(round=r, walls={k: v[-1] for k, v in walls.items()}, same_tokens=same[-1])), flush=True)
    base = np.asarray(walls[base_name])
    for growth, fields in policies:
      w = np.asarray(walls[growth])
      useful = [i["useful"] for i in info[growth]]
      mean_read = float(np.mean([np.average(i["reads"]) for i in info[growth]]))
      rows.append(dict(setting=setting["name"], variant=growth, params=fields, first_call_s=first[growth],
                       walls=w.tolist(), median_wall=float(np.median(w)),
                       tokens_per_s=[u / x for u, x in zip(useful, w)], wall_ratio_vs_base=(base / w).tolist(),
                       median_wall_ratio_vs_base=float(np.median(base / w)), mean_read_per_call=mean_read,
                       reads=info[growth][0]["reads"], same_tokens_as_base=[s[growth] for s in same]))
    for row in rows[-len(policies):]:  # the samples differ between policies (rounding flips near-ties): tokens/s
      ratio = np.asarray(row["tokens_per_s"]) / np.asarray(rows[-len(policies)]["tokens_per_s"])
      row.update(tokens_per_s_ratio_vs_base=ratio.tolist(),
                 median_tokens_per_s_ratio_vs_base=float(np.median(ratio)))
      print(json.dumps(row), flush=True)
  roof_end = roof_gflops()
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof_start:.0f} → "
                f"{roof_end:.0f} GFLOP/s (start and end of this run), jax {jax.__version__}",
                model="SmolLM2-135M-Instruct (dequantised Q4_1)", prompts=args.prompts, group=args.group,
                repeats=args.repeats, baseline=base_name, rows=rows)
  save_result(args.out, result)
  print(f"# {result['model']}, {args.prompts} prompts × G = {args.group} — {result['machine']}")
  print("| setting | variant | reads of the first round | mean read | first call (s) | median wall (s) | "
        f"tokens/s (median) | tokens/s / {base_name}'s, per round | median |")
  print("|---|---|---|---:|---:|---:|---:|---|---:|")
  for r in rows:
    print(f"| {r['setting']} | {r['variant']} | {', '.join(map(str, r['reads']))} | "
          f"{r['mean_read_per_call']:.0f} | {r['first_call_s']:.1f} | {r['median_wall']:.1f} | "
          f"{np.median(r['tokens_per_s']):.0f} | {', '.join(f'{x:.2f}' for x in r['tokens_per_s_ratio_vs_base'])} | "
          f"{r['median_tokens_per_s_ratio_vs_base']:.2f}× |")


def _setting(kv: str) -> tuple[str, object]:
  """'field=value' → (field, value as int when it is one)."""
  key, value = kv.split("=")
  return key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()


if __name__ == "__main__":
  main()
