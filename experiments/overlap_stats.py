"""Does prefix overlap happen in real rollouts?  λ-GRPO's "flat tree" analysis on SmolLM2-135M-Instruct.

For each task (the synthetic arithmetic task; the word problems shipped in data/word_problems.jsonl), group
size G ∈ {6, 16, 36} and temperature ∈ {0.7, 1.0}: sample groups, run the prefix-overlap kernel, and report the
fraction of flat trees (no token shared by two completions), the intermediate proportion (share of a
completion's tokens with |λ| > 1), mean |λ|, path depth, and mean |λ| by token position.  The paper: 12 of
6,700 trees flat at G=6, 0 of 1,100 at G=36.  The kernel's time is reported next to the sampling time.

    python experiments/overlap_stats.py     # ≈ 15 min on 2 cores; writes experiments/results/overlap_stats.json

Issue 23's size (≥ 200 groups per cell at G = 6, ≥ 50 at 16, ≥ 25 at 36; 3 sampling seeds; a cap < 5% of
completions reach; the base model and a trained checkpoint). Resumable: cells already in --out are kept.

    python experiments/overlap_stats.py --groups 6:200,16:50,36:25 --seeds 0,1,2 \
        --max-new-tokens arithmetic:64,word_problems:256 --models base,runs/smollm2_val/grpo_lr1e-05_s100 \
        --out experiments/results/overlap_stats_full.json
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

import jaxgrpo
from jaxgrpo import models
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.rollout import FINISH_LENGTH, RolloutEngine
from jaxgrpo.tasks import sources as data_lib
from jaxgrpo.train import build, presets
from jaxgrpo.train.config import replace as config_replace

PAPER = {6: (12, 6700), 36: (0, 1100)}
WORD_PROBLEMS = os.path.join(os.path.dirname(__file__), "..", "data", "word_problems.jsonl")


@jax.jit
def _stats(tokens, mask):
  counts = jaxgrpo.prefix_counts(tokens, mask)
  return counts, jaxgrpo.tree_stats_from_counts(counts, mask)


def analyse(tokens: np.ndarray, mask: np.ndarray) -> tuple[dict, float]:
  """Overlap statistics of groups [B, G, T] and the kernel's wall time (compiled, best of 3)."""
  t, m = jnp.asarray(tokens), jnp.asarray(mask)
  jax.block_until_ready(_stats(t, m))
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    counts, st = jax.block_until_ready(_stats(t, m))
    best = min(best, time.perf_counter() - t0)
  counts, valid = np.asarray(counts), np.asarray(mask).astype(bool)
  by_pos = [float(counts[..., i][valid[..., i]].mean()) if valid[..., i].any() else None
            for i in range(counts.shape[-1])]
  return {
      "groups": int(tokens.shape[0]), "flat_groups": int(np.sum(np.asarray(st.flat))),
      "flat_frac": float(np.mean(np.asarray(st.flat))),
      "intermediate_prop": float(np.mean(np.asarray(st.intermediate_prop))),
      "lambda_mean": float(counts[valid].mean()), "path_depth": float(np.mean(np.asarray(st.path_depth))),
      "process_steps": float(np.mean(np.asarray(st.num_steps))), "lambda_by_position": by_pos,
      "completion_len": float(valid.sum(-1).mean()),
  }, best


def _load(model_arg: str, base):
  """(label, model, params, tokenizer): ``base`` (the untrained instruct model) or a jaxgrpo run directory (its
  newest good checkpoint, e.g. a GRPO run of experiments/smollm2_rl.py)."""
  if model_arg == "base":
    path = build.checkpoint_dir(base.model)
    model, params = models.from_pretrained(path)
    return "base", model, params, HFTokenizer(path)
  from jaxgrpo.train.export import load_run

  model, params, tok, _ = load_run(model_arg)
  return os.path.basename(os.path.normpath(model_arg)), model, params, tok


def _cell_key(r: dict) -> tuple:
  return (r["model"], r["task"], r["group_size"], r["temperature"], r["seed"])


def pooled(rows: list[dict]) -> list[dict]:
  """One row per (model, task, G, T) over its sampling seeds: flat trees pooled with a Wilson 95% CI; the
  per-seed means of the other statistics with their spread (sd over seeds)."""
  from scipy.stats import binomtest

  cells: dict = {}
  for r in rows:
    cells.setdefault(_cell_key(r)[:4], []).append(r)
  out = []
  for (model, task, g, temp), rs in cells.items():
    flat, groups = sum(r["flat_groups"] for r in rs), sum(r["groups"] for r in rs)
    ci = binomtest(flat, groups).proportion_ci(method="wilson")
    stat = lambda k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs], ddof=1)) if len(rs) > 1
                      else float("nan"))
    out.append({"model": model, "task": task, "group_size": g, "temperature": temp, "seeds": len(rs),
                "groups": groups, "flat_groups": flat, "flat_frac": flat / groups,
                "flat_ci95": [float(ci.low), float(ci.high)], "intermediate_prop": stat("intermediate_prop"),
                "lambda_mean": stat("lambda_mean"), "path_depth": stat("path_depth"),
                "completion_len": stat("completion_len"), "cap_frac": stat("cap_frac")})
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--groups", default="6:48,16:18,36:8", help="G:number of prompts (groups) per setting")
  p.add_argument("--temperatures", default="0.7,1.0")
  p.add_argument("--tasks", default="arithmetic,word_problems")
  p.add_argument("--max-new-tokens", default="64",
                 help="one cap for every task, or per task: arithmetic:64,word_problems:256")
  p.add_argument("--seeds", default="0", help="sampling seeds (the same prompts, different sampling keys)")
  p.add_argument("--models", default="base",
                 help="comma-separated: base (the untrained instruct model) and/or jaxgrpo run directories")
  p.add_argument("--chunk", type=int, default=96, help="completions per sampling call (bounds the KV cache)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "overlap_stats.json"))
  p.add_argument("--fresh", action="store_true", help="ignore the cells already in --out (default: resume)")
  args = p.parse_args()
  if ":" in args.max_new_tokens:
    caps = {task: int(n) for task, n in (kv.split(":") for kv in args.max_new_tokens.split(","))}
    missing = sorted(set(args.tasks.split(",")) - set(caps))
    if missing:
      p.error(f"--max-new-tokens: no cap for tasks {missing}")
  else:
    caps = {task: int(args.max_new_tokens) for task in args.tasks.split(",")}
  cap_of = caps.__getitem__
  base = presets.preset("smollm2_arithmetic")
  sources = {"arithmetic": data_lib.make_source(base.data), "word_problems": data_lib.jsonl_source(WORD_PROBLEMS)}
  done = {}
  if os.path.exists(args.out) and not args.fresh:
    prev = json.load(open(args.out))
    done = {_cell_key(r): r for r in prev.get("rows", []) if "seed" in r and "model" in r}
    print(f"resuming: {len(done)} cells already in {args.out}", flush=True)
  rows, t_all = list(done.values()), time.time()
  total = lambda k: sum(r[k] for r in rows)  # over the rows kept (a cell sampled afresh replaces its old row)

  def save():
    out = {"model_family": "SmolLM2-135M-Instruct (dequantised Q4_1)", "max_new_tokens": args.max_new_tokens,
           "rows": rows, "pooled": pooled(rows), "sample_seconds": total("sample_seconds"),
           "kernel_seconds": total("kernel_seconds"),
           "seconds": time.time() - t_all,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
      json.dump(out, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    return out

  groups = [(int(a), int(b)) for a, b in (s.split(":") for s in args.groups.split(","))]
  for model_arg in args.models.split(","):
    label, model, params, tok = _load(model_arg, base)
    engine = RolloutEngine(model, tok, trim=False)
    for seed in (int(x) for x in args.seeds.split(",")):
      for task in args.tasks.split(","):
        src = sources[task]
        for g, n in groups:
          for temp in (float(x) for x in args.temperatures.split(",")):
            key = (label, task, g, temp, seed)
            prev = done.get(key)
            if prev is not None and (prev["groups"], prev.get("max_new_tokens")) == (n, cap_of(task)):
              continue
            if prev is not None:  # asked again at another size or cap: sampled afresh
              rows.remove(prev)
            spec = config_replace(base, sampling={"group_size": g, "temperature": temp,
                                                   "max_new_tokens": cap_of(task)}).sampling
            spec = build.sampling_params(spec, tok.eos_ids, tok.pad_id)
            per_call = max(1, args.chunk // g)
            t0 = time.perf_counter()
            parts = []
            for i, lo in enumerate(range(0, n, per_call)):
              examples = [src[j] for j in range(lo, min(lo + per_call, n))]
              k = jax.random.fold_in(jax.random.PRNGKey(seed), g * 1000 + int(temp * 10) * 100 + i)
              ro = engine.generate(params, examples, k, spec)
              parts.append((np.asarray(ro.tokens).reshape(len(examples), g, -1),
                            np.asarray(ro.mask).reshape(len(examples), g, -1), np.asarray(ro.entropies),
                            np.asarray(ro.finish_reason)))
            width = max(t.shape[-1] for t, *_ in parts)
            pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])])
            tokens = np.concatenate([pad(t) for t, *_ in parts])
            mask = np.concatenate([pad(m) for _, m, *_ in parts])
            ent = np.concatenate([pad(e.reshape(m.shape))[pad(m).astype(bool)] for _, m, e, _ in parts])
            cap = np.concatenate([f.reshape(-1) for *_, f in parts]) == FINISH_LENGTH
            sample_s = time.perf_counter() - t0
            stats, kernel_s = analyse(tokens, mask)
            row = {"model": label, "task": task, "group_size": g, "temperature": temp, "seed": seed,
                   "max_new_tokens": cap_of(task), **stats, "cap_frac": float(cap.mean()),
                   "sample_seconds": sample_s, "kernel_seconds": kernel_s, "entropy_mean": float(ent.mean())}
            rows.append(row)
            save()
            print(f"{label} seed {seed} {task} G={g} T={temp}: flat {stats['flat_groups']}/{stats['groups']}, "
                  f"intermediate {stats['intermediate_prop']:.3f}, mean |λ| {stats['lambda_mean']:.2f}, cap hit "
                  f"{cap.mean():.1%} (sampling {sample_s:.1f} s, kernel {1e3 * kernel_s:.2f} ms)", flush=True)
  out = save()
  print("\n| model | task | G | T | seeds | groups | flat trees [95% CI] | intermediate prop. | mean \\|λ\\| | "
        "tokens/completion | cap hit | paper flat |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  sd = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}" if np.isfinite(v[1]) else f"{v[0]:.3f}"
  for r in out["pooled"]:
    paper = PAPER.get(r["group_size"])
    paper_s = f"{paper[0]} / {paper[1]:,}" if paper else ""
    lo, hi = r["flat_ci95"]
    print(f"| {r['model']} | {r['task']} | {r['group_size']} | {r['temperature']} | {r['seeds']} | {r['groups']} | "
          f"{r['flat_groups']} ({r['flat_frac']:.1%}) [{lo:.1%}, {hi:.1%}] | {sd(r['intermediate_prop'])} | "
          f"{sd(r['lambda_mean'])} | {r['completion_len'][0]:.1f} | {r['cap_frac'][0]:.1%} | {paper_s} |")
  n_groups, kernel_total, sample_total = total("groups"), total("kernel_seconds"), total("sample_seconds")
  print(f"\nkernel (prefix counts + tree stats, all {n_groups} groups): {kernel_total * 1e3:.1f} ms"
        f" = {kernel_total / max(kernel_total + sample_total, 1e-9):.4%} of the analysis; "
        f"sampling {sample_total:.0f} s")
  plot(out, args.out.replace(".json", ".png"))


def plot(out: dict, path: str) -> None:
  """Mean |λ| by token position, averaged over the sampling seeds: one panel per (model, task)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = out["rows"]
  panels = sorted({(r.get("model", "base"), r["task"]) for r in rows})
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
  for ax, (model, task) in zip(axes[0], panels):
    cells: dict = {}
    for r in rows:
      if (r.get("model", "base"), r["task"]) == (model, task):
        cells.setdefault((r["group_size"], r["temperature"]), []).append(r["lambda_by_position"])
    for (g, temp), curves in sorted(cells.items()):
      n = min(len([y for y in c if y is not None]) for c in curves)
      ys = np.mean([[y for y in c if y is not None][:n] for c in curves], axis=0)
      ax.plot(range(n), ys, label=f"G={g}, T={temp} ({len(curves)} seeds)", ls="-" if temp == 1.0 else "--")
    ax.set_yscale("log")
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("mean |λ| (completions sharing the prefix)")
    ax.set_title(f"{task}, {model}", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  main()
