"""``entropy_segments`` with ``jax.lax.top_k`` (before) vs the row-local blocked top-k (now), on 1 device and with
the batch sharded over 8.

XLA's SPMD partitioner does not partition the TopK custom call ``jax.lax.top_k`` lowers to: with the batch axis
sharded it all-gathers the whole [B, G, T] array and every device ranks every row (bench_api measured
``entropy_segments`` 3.6× slower on 8 simulated devices than on one). The blocked version (``jaxgrpo.core.prpo.
_top_k_positions``) uses only row-local reductions and gathers. Both variants, both placements, interleaved
repeats in one run, B = 8 groups, G ∈ {6, 64}, T ∈ {1,024, 4,096}, k = 5, min_gap = 10; the outputs are checked
equal. The 8 devices are simulated CPU devices sharing this machine's cores.

    python experiments/bench_topk.py     # ≈ 1 min here; writes experiments/results/bench_topk.json
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


@functools.partial(jax.jit, static_argnames=("k", "min_gap"))
def segments_lax_top_k(entropies, mask, *, k, min_gap):
  """The previous implementation: the same cut rule with the candidates from ``jax.lax.top_k``."""
  valid = mask.astype(bool)
  scored = jnp.where(valid, entropies.astype(jnp.float32), -jnp.inf)
  top = jax.lax.top_k(scored, min(k, scored.shape[-1]))[1]
  return prpo._segments_from_candidates(top, valid, k=k, min_gap=min_gap)


VARIANTS = {"lax.top_k (before)": segments_lax_top_k, "blocked (now)": prpo._entropy_segments}


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
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_topk.json"))
  args = p.parse_args()
  devices = jax.devices()
  if len(devices) < args.batch:
    raise SystemExit(f"needs {args.batch} devices; got {len(devices)} (XLA_FLAGS is set before jax is imported)")
  sh = NamedSharding(Mesh(np.array(devices[:args.batch]), ("data",)), P("data"))
  roof = matmul_roof()
  rows = []
  for g in (int(x) for x in args.groups.split(",")):
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
    json.dump({"machine": machine, "batch": args.batch, "repeats": args.repeats, "rows": rows}, f, indent=1)
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


if __name__ == "__main__":
  main()
