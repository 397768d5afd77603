"""Benchmark: the jitted prefix-overlap kernel vs a pure-Python trie, same run.

Reports ns per completion token for the Python trie (the authors' approach) and
for both kernel strategies (sort / compare), the speed-up of the faster one,
and peak memory: XLA's temp buffer for the kernel (from the compiled
executable's memory analysis) and tracemalloc's peak for the trie.

    python experiments/bench_prefix.py            # full grid
    python experiments/bench_prefix.py --quick    # small grid
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np

import jaxgrpo


def make_groups(n_groups, g, t, seed=0, vocab=32000):
  """Groups with realistic overlap: each completion copies a random earlier
  completion up to a random cut (geometric-ish), then continues randomly."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(n_groups, g, t), dtype=np.int32)
  for i in range(1, g):
    src = rng.integers(0, i, size=n_groups)
    cut = (rng.beta(0.7, 3.0, size=n_groups) * t).astype(int)
    keep = np.arange(t)[None] < cut[:, None]
    tokens[:, i] = np.where(keep, tokens[np.arange(n_groups), src], tokens[:, i])
  lengths = rng.integers(t // 2, t + 1, size=(n_groups, g))
  mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
  return tokens, mask


def python_trie_counts(group):
  """The baseline: a dict trie per group built on the host, then read back."""
  root = {}
  for seq in group:
    node = root
    for tok in seq:
      child = node.get(tok)
      if child is None:
        child = node[tok] = [0, {}]
      child[0] += 1
      node = child[1]
  out = []
  for seq in group:
    node, row = root, []
    for tok in seq:
      c = node[tok]
      row.append(c[0])
      node = c[1]
    out.append(row)
  return out


def time_python(groups_as_lists, repeats=2):
  best = float("inf")
  gc.disable()  # kinder to the baseline: no collector pauses while the trie grows
  for _ in range(repeats):
    t0 = time.perf_counter()
    for grp in groups_as_lists:
      python_trie_counts(grp)
    best = min(best, time.perf_counter() - t0)
  gc.enable()
  tracemalloc.start()
  python_trie_counts(groups_as_lists[0])
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  return best, peak


def time_kernel(tokens, mask, method, repeats=5):
  fn = jax.jit(lambda t, m: jaxgrpo.prefix_counts(t, m, method=method))
  compiled = fn.lower(tokens, mask).compile()
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", -1) if mem is not None else -1
  out = compiled(tokens, mask)
  out.block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    compiled(tokens, mask).block_until_ready()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), temp, np.asarray(out)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--groups", type=int, default=64)
  p.add_argument("--G", type=int, nargs="+", default=[6, 16, 36, 64])
  p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
  p.add_argument("--quick", action="store_true", help="G in {6,16}, T in {256,1024}, 16 groups")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_prefix.json"))
  args = p.parse_args()
  if args.quick:
    args.G, args.T, args.groups = [6, 16], [256, 1024], 16

  machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
             f"on {jax.default_backend()}")
  print(f"# prefix-overlap kernel vs Python trie — {args.groups} groups per batch — {machine}\n")
  header = ("| G | T | tokens | trie ns/tok | sort ns/tok | compare ns/tok | best/trie speed-up "
            "| XLA temp (sort / compare) | temp B per G·T | trie peak |")
  print(header)
  print("|" + "---|" * 10)
  rows = []
  for g in args.G:
    for t in args.T:
      tokens, mask = make_groups(args.groups, g, t, seed=g * 7919 + t)
      n_tok = int(mask.sum())
      lists = [[row[m.astype(bool)].tolist() for row, m in zip(tokens[b], mask[b])] for b in range(args.groups)]
      py_s, py_peak = time_python(lists)
      res = {}
      for method in ("sort", "compare"):
        sec, temp, counts = time_kernel(jnp.asarray(tokens), jnp.asarray(mask), method)
        res[method] = (sec, temp)
        # Cross-check against the trie on the first group (the bench is also a test).
        want = python_trie_counts(lists[0])
        got = [list(counts[0, i, : len(w)]) for i, w in enumerate(want)]
        assert got == want, f"kernel disagrees with trie at G={g} T={t} ({method})"
      best = min(res, key=lambda k: res[k][0])
      row = dict(
          G=g, T=t, tokens=n_tok, trie_ns=py_s / n_tok * 1e9,
          sort_ns=res["sort"][0] / n_tok * 1e9, compare_ns=res["compare"][0] / n_tok * 1e9,
          best=best, speedup=py_s / res[best][0],
          temp_sort=res["sort"][1], temp_compare=res["compare"][1], trie_peak=py_peak,
      )
      rows.append(row)
      per_gt = max(row["temp_sort"], row["temp_compare"]) / (args.groups * g * t)
      print(
          f"| {g} | {t} | {n_tok:,} | {row['trie_ns']:.0f} | {row['sort_ns']:.1f} | {row['compare_ns']:.1f} "
          f"| {row['speedup']:.1f}× ({best}) | {row['temp_sort']/2**20:.1f} / {row['temp_compare']/2**20:.1f} MiB "
          f"| {per_gt:.0f} | {py_peak/2**20:.1f} MiB/group |",
          flush=True,
      )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "groups": args.groups, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
