"""The two sampling engines on a data-parallel mesh of D devices: is ``continuous`` faster than ``static`` there
too (``sampling.engine: auto`` picks it only on one device)?

D host devices (``--xla_force_host_platform_device_count``, set here before jax starts), one mesh axis ``data``;
``static`` shards the B·G rows over it (``row_sharding``), ``continuous`` runs each device's own slots and queue on
its share of the prompts (``continuous.sample_groups(mesh=...)``); the weights are replicated.  SmolLM2-135M-Instruct
(dequantised Q4_1), 8 prompts × G = 8, temperature 1, bf16 weights and KV; ``fixed`` (chat prompts, 128 tokens, EOS
ignored) and ``long256`` (word problems, EOS on, 256 tokens).  Both engines compiled first, then ``--repeats`` rounds
of one call each with the same key, the order alternating; per round the ratio static / continuous wall time.

On this machine D devices share its cores (XLA:CPU runs each device's ops on one shared thread pool), so this
measures the engines' relative cost on a mesh, not a multi-chip speed-up.

    python experiments/bench_engine_mesh.py --devices 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", type=int, default=2)
  p.add_argument("--settings", default="fixed,long256")
  p.add_argument("--dtypes", default="bfloat16")
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--engines", default="static@D,continuous@D",
                 help="ENGINE@DEVICES, comma-separated (D: --devices), the first the baseline; e.g. "
                      "continuous@1,continuous@2 compares one device with two in one process")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  import jax
  import numpy as np
  from bench_sampler import HERE, _settings, sampling_params, smollm2_tokenizer
  from bench_step import roof_gflops, save_result

  import jaxgrpo.models as M
  from jaxgrpo.rollout import continuous, sampler

  assert len(jax.devices()) == args.devices, jax.devices()
  engines = [(e.split("@")[0], int(e.split("@")[1].replace("D", str(args.devices)))) for e in args.engines.split(",")]
  names = [f"{e}@{d}" for e, d in engines]
  meshes = {d: jax.sharding.Mesh(np.asarray(jax.devices()[:d]), ("data",)) for _, d in engines}
  sh = {d: (jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec("data")),
            jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec())) for d, m in meshes.items()}
  path, tok = smollm2_tokenizer()
  g = 8
  roof = roof_gflops()
  rows = []
  for s in _settings(tok, args):
    model, params = M.from_pretrained(path, s["dtype"])
    params = M.cast_params(params, s["dtype"])
    placed = {d: (jax.device_put(params, repl), *(jax.device_put(np.asarray(x), rows) for x in s["prompts"]))
              for d, (rows, repl) in sh.items()}
    sp = sampling_params(tok, s, g)

    def call(name, seed):
      engine, d = name.split("@")
      d = int(d)
      prm, ids, mask = placed[d]
      key = jax.random.PRNGKey(seed)
      t0 = time.perf_counter()
      if engine == "static":
        out = sampler.sample_groups(model, prm, ids, mask, key, sp, row_sharding=sh[d][0])
      else:
        out, _ = continuous.sample_groups(model, prm, ids, mask, key, sp, mesh=meshes[d], axes=("data",))
      jax.block_until_ready(out)
      wall = time.perf_counter() - t0
      return wall, int(np.asarray(out.lengths).sum()), np.asarray(out.tokens)

    for name in names:
      call(name, 1000)  # compile
    walls, tokens, same = {n: [] for n in names}, {n: [] for n in names}, []
    for r in range(args.repeats):
      toks = {}
      for name in (names if r % 2 == 0 else names[::-1]):
        wall, n, toks[name] = call(name, r)
        walls[name].append(wall)
        tokens[name].append(n)
      same.append({n: float(np.mean(toks[names[0]] == toks[n])) for n in names[1:]})
      print(json.dumps(dict(setting=s["name"], round=r, walls={k: v[-1] for k, v in walls.items()})), flush=True)
    tps = {k: [n / w for n, w in zip(tokens[k], walls[k])] for k in walls}
    ratios = {k: (np.asarray(tps[k]) / np.asarray(tps[names[0]])).tolist() for k in names[1:]}
    rows.append(dict(setting=s["name"], baseline=names[0], walls=walls, tokens=tokens, same_tokens_as_baseline=same,
                     tokens_per_s=tps, tokens_per_s_ratio_vs_baseline=ratios,
                     median_ratio={k: float(np.median(v)) for k, v in ratios.items()}))
    print(json.dumps(rows[-1]), flush=True)
  roof_end = roof_gflops()
  result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores shared by {args.devices} host devices, f32 "
                f"matmul roof {roof:.0f} → {roof_end:.0f} GFLOP/s (start and end of this run), jax {jax.__version__}",
                model="SmolLM2-135M-Instruct (dequantised Q4_1)", devices=args.devices, prompts=args.prompts, group=g,
                repeats=args.repeats, rows=rows)
  save_result(args.out or os.path.join(HERE, "results", f"bench_engine_mesh_{args.devices}dev.json"), result)
  print(f"# {result['model']}, {args.prompts} prompts × G = {g}, host devices = {args.devices} — {result['machine']}")
  print("| setting | engine@devices | median s | median tokens/s | tokens/s / baseline's, per round | median |")
  print("|---|---|---:|---:|---|---:|")
  for r in rows:
    for k in names:
      per = r["tokens_per_s_ratio_vs_baseline"].get(k)
      print(f"| {r['setting']} | {k} | {np.median(r['walls'][k]):.1f} | {np.median(r['tokens_per_s'][k]):.0f} | "
            f"{', '.join(f'{x:.2f}' for x in per) if per else '(baseline)'} | "
            f"{f'{np.median(per):.2f}×' if per else '1.00×'} |")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main()
