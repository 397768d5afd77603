"""Compile and run time of every public core function, on 1 device and with the batch axis sharded over 8.

B = 8 groups, G ∈ {6, 16, 64} completions of T ∈ {1,024, 4,096} tokens (realistic overlap: each completion copies an
earlier one up to a random cut; lengths uniform in [T/2, T]).  Each function is ``jax.jit``-compiled once per
placement (``lower().compile()`` timed), then run 5 times (median).  "8 devices" puts the batch axis on a mesh of 8
(``NamedSharding``, one group per device); on this machine they are simulated CPU devices sharing its cores, so the
8-device / 1-device ratio shows that sharding works and costs nothing extra (no gathers), not an accelerator's
speed-up.  One run, both placements side by side; the f32 matmul roof of the machine is measured in the same run.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench_api.py   # the script sets it too
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxgrpo  # noqa: E402


def make_batch(b: int, g: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 50_000, (b, g, t)).astype(np.int32)
  for i in range(1, g):  # heavy overlap: copy an earlier completion up to a random cut
    j = rng.integers(0, i, size=b)
    cut = rng.integers(0, t, size=b)
    keep = np.arange(t)[None] < cut[:, None]
    tokens[:, i] = np.where(keep, tokens[np.arange(b), j], tokens[:, i])
  lengths = rng.integers(t // 2, t + 1, (b, g))
  mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
  f = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {"tokens": tokens, "mask": mask, "rewards": rng.choice([0.0, 1.0], (b, g)).astype(np.float32),
          "logp": -np.abs(f(b, g, t)), "old": -np.abs(f(b, g, t)), "ref": -np.abs(f(b, g, t)),
          "entropies": np.abs(f(b, g, t)), "scores": rng.uniform(size=(b, g, 6)).astype(np.float32),
          "token_scores": rng.uniform(size=(b, g, t)).astype(np.float32), "step_rewards": f(b, g, t),
          "counts": np.asarray(jaxgrpo.prefix_counts(tokens, mask))}


def cases():
  """name → (function of device arrays, argument names)."""
  loss = lambda lp, o, r, a, m, w: jaxgrpo.policy_loss(lp, o, r, a, m, weights=w, kl_beta=0.04, clip_eps_high=0.28)
  return {
      "prefix_counts": (jaxgrpo.prefix_counts, ("tokens", "mask")),
      "implicit_prm": (jaxgrpo.implicit_prm, ("tokens", "mask", "rewards")),
      "tree_stats": (jaxgrpo.tree_stats, ("tokens", "mask")),
      "prefix_metrics": (jaxgrpo.prefix_metrics, ("counts", "mask")),
      "group_advantages": (jaxgrpo.group_advantages, ("rewards",)),
      "step_advantages": (jaxgrpo.step_advantages, ("step_rewards", "rewards", "mask")),
      "advantage_metrics": (jaxgrpo.advantage_metrics, ("rewards",)),
      "lambda_weights": (jaxgrpo.lambda_weights, ("counts",)),
      "policy_loss": (lambda lp, o, r, a, m, w: loss(lp, o, r, a, m, w)[0],
                      ("logp", "old", "ref", "rewards", "mask", "weights")),
      "policy_loss grad": (jax.grad(lambda lp, o, r, a, m, w: loss(lp, o, r, a, m, w)[0]),
                           ("logp", "old", "ref", "rewards", "mask", "weights")),
      "entropy_segments": (jaxgrpo.entropy_segments, ("entropies", "mask")),
      "segment_scores_to_tokens": (lambda s, sc: jaxgrpo.segment_scores_to_tokens(s, sc), ("segments", "scores")),
      "prpo_advantages": (jaxgrpo.prpo_advantages, ("token_scores", "mask", "rewards")),
  }


def matmul_roof(n: int = 1024, repeats: int = 5) -> float:
  """f32 GFLOP/s of one n×n matmul on device 0 (the machine's roof, measured now)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = min(_time(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / t / 1e9


def _time(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def bench(fn, args, repeats: int):
  jitted = jax.jit(fn)
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  runs = [_time(lambda: jax.block_until_ready(compiled(*args))) for _ in range(repeats)]
  return compile_s, statistics.median(runs)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--groups", default="6,16,64")
  p.add_argument("--lengths", default="1024,4096")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_api.json"))
  args = p.parse_args(argv)
  if jax.device_count() < 8:
    raise SystemExit("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  mesh = jax.make_mesh((8,), ("data",))
  one, eight = jax.devices()[0], NamedSharding(mesh, P("data"))
  rows = []
  roof = matmul_roof()
  for g in (int(x) for x in args.groups.split(",")):
    for t in (int(x) for x in args.lengths.split(",")):
      host = make_batch(args.batch, g, t)
      host["weights"] = np.asarray(jaxgrpo.lambda_weights(host["counts"]))
      host["segments"] = np.asarray(jaxgrpo.entropy_segments(host["entropies"], host["mask"]))
      for name, (fn, names) in cases().items():
        row = {"function": name, "G": g, "T": t, "B": args.batch}
        for label, placement in (("1", one), ("8", eight)):
          dev = [jax.device_put(host[n], placement) for n in names]
          row[f"compile_s_{label}"], row[f"run_s_{label}"] = bench(fn, dev, args.repeats)
        row["ratio_8_over_1"] = row["run_s_8"] / row["run_s_1"]
        rows.append(row)
        print(f"G={g:3d} T={t:5d} {name:26s} compile {row['compile_s_1']:.2f}/{row['compile_s_8']:.2f} s, run "
              f"{1e3 * row['run_s_1']:8.2f} / {1e3 * row['run_s_8']:8.2f} ms (8/1 = {row['ratio_8_over_1']:.2f})",
              flush=True)
  machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, f32 matmul roof {roof:.0f} GFLOP/s"
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "rows": rows}, f, indent=1)
  print(f"\nMachine: {machine}; B = {args.batch}; median of {args.repeats} runs after compilation\n")
  print("| function | G | T | compile 1 dev (s) | compile 8 dev (s) | run 1 dev (ms) | run 8 dev (ms) | 8 / 1 |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['function']} | {r['G']} | {r['T']:,} | {r['compile_s_1']:.2f} | {r['compile_s_8']:.2f} | "
          f"{1e3 * r['run_s_1']:.2f} | {1e3 * r['run_s_8']:.2f} | {r['ratio_8_over_1']:.2f} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
