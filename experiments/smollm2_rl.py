"""GRPO vs λ-GRPO vs PRPO vs PRPO + λ on SmolLM2-135M-Instruct, synthetic arithmetic (issue 8).

Every run starts from the same checkpoint with the same seed and data stream, trains for the same number of
steps with the `smollm2_arithmetic` preset, and is evaluated (greedy pass@1 on 200 held-out problems, disjoint
from training by construction) at step 0, every --eval-every steps and at the end.  Runs are resumable: each
lives in its own output_dir and an interrupted sweep continues where it stopped (rerun the same command).

    python experiments/smollm2_rl.py                                   # the experiment (≈ 90 min on 2 cores)
    python experiments/smollm2_rl.py --methods grpo --lrs 3e-6,1e-5,3e-5 --steps 12 --out runs/smollm2_lr_sweep

The issue-23 protocol (commuted forms on one side of the split, the lr chosen on the validation split, then
the test split with paired seeds; per-problem outputs land in each run's eval/ directory):

    python experiments/smollm2_rl.py --split-by commuted --max-operand 50 --eval-split validation \
        --methods grpo,lambda_grpo --lrs 3e-6,1e-5,3e-5 --seeds 100,101 --steps 20 --eval-every 10 \
        --out runs/smollm2_val --results experiments/results/smollm2_val.json
    python experiments/smollm2_rl.py --split-by commuted --max-operand 50 --methods grpo,lambda_grpo \
        --method-lrs grpo=<chosen>,lambda_grpo=<chosen> --seeds 0,1,2,3,4,5 --steps 20 --eval-every 10 \
        --transfer verbal,word_problems --out runs/smollm2_test --results experiments/results/smollm2_seeds.json

``--transfer`` also evaluates every final checkpoint, and the untrained model, on held-out tasks of another surface
form (``transfer_task``: the test problems with the operators in words; the word problems), paired the same way.

The rule, fixed before the validation runs: each method takes the lr with the highest final validation accuracy
averaged over seeds 100 and 101 (a tie goes to the smaller lr); on the test split each method is paired with
GRPO at GRPO's own chosen lr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.metrics import read_jsonl
from jaxgrpo.train.trainer import Trainer

METHODS = {  # name → objective overrides
    "grpo": {"name": "grpo"},
    "lambda_grpo": {"name": "lambda_grpo"},
    "prpo": {"name": "prpo", "prm": "arithmetic"},
    "prpo_lambda": {"name": "prpo", "prm": "arithmetic", "lambda_weights": True},
    # issue 23's PRPO controls: the same PRM and prior, cuts not placed by entropy; the GRPO-advantage outcome
    "prpo_random": {"name": "prpo", "prm": "arithmetic", "prpo_cuts": "random"},
    "prpo_uniform": {"name": "prpo", "prm": "arithmetic", "prpo_cuts": "uniform"},
    "prpo_std": {"name": "prpo", "prm": "arithmetic", "prpo_outcome": "std"},
}
LABELS = {"grpo": "GRPO", "lambda_grpo": "λ-GRPO", "prpo": "PRPO (rule PRM)", "prpo_lambda": "PRPO + λ",
          "prpo_random": "PRPO, random cuts", "prpo_uniform": "PRPO, uniform cuts", "prpo_std": "PRPO, std outcome"}


def config(method: str, lr: float, args, seed: int):
  base = presets.preset("smollm2_arithmetic")
  tag = f"{method}_lr{lr:g}_s{seed}"
  return tag, config_replace(
      base, name=tag, steps=args.steps, seed=seed, output_dir=os.path.join(args.out, tag),
      checkpoint_every=args.checkpoint_every, progress=False, objective=METHODS[method],
      optim={"learning_rate": lr},
      eval={"num_examples": args.eval_examples, "every": args.eval_every, "split": args.eval_split},
      data={"prompts_per_step": args.prompts, "split_by": args.split_by,
            "max_operand": args.max_operand or base.data.max_operand},
      model={"lora": {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}} if args.lora_rank else {})


WORD_PROBLEMS = os.path.join(os.path.dirname(__file__), "..", "data", "word_problems.jsonl")
TRANSFER_TASKS = ("verbal", "word_problems")
VERBAL_OPS = {"+": "plus", "-": "minus", "*": "times"}


def transfer_task(name: str, cfg, n: int):
  """A held-out task of another surface form. ``verbal``: the test split's own problems with the operators in
  words ("What is 17 plus 23?"), so each problem pairs with its symbolic form; ``word_problems``: prose with
  several operations (data/word_problems.jsonl)."""
  import dataclasses

  from jaxgrpo.tasks import sources as data_lib

  if name == "word_problems":
    ev = dataclasses.replace(cfg.eval, source="jsonl", path=os.path.abspath(WORD_PROBLEMS), num_examples=n)
    return data_lib.make_eval_source(cfg.data, ev)
  if name == "verbal":
    test = data_lib.make_eval_source(cfg.data, dataclasses.replace(cfg.eval, split="test", num_examples=n))
    spoken = lambda expr: " ".join(VERBAL_OPS.get(t, t) for t in expr.split(" "))
    return data_lib.FixedExamples([dataclasses.replace(e, prompt=e.prompt.replace(
        e.meta["expression"], spoken(e.meta["expression"]), 1)) for e in test.examples], test.task)
  raise ValueError(f"unknown transfer task {name!r}; known: {TRANSFER_TASKS}")


def transfer_file(name: str) -> str:
  return f"transfer_{name}.jsonl"


def transfer_path(name: str, run_dir: str | None, out: str) -> str:
  """Where a run's transfer outputs live, or (``run_dir`` None) the untrained model's, under --out."""
  return os.path.join(run_dir, transfer_file(name)) if run_dir else os.path.join(out, "base_" + transfer_file(name))


def transfer_eval(name: str, run_dir: str | None, cfg, args) -> list[dict]:
  """Greedy per-problem outcomes on a transfer task (``transfer_task``) of a run's final checkpoint, or of the
  untrained model (``run_dir`` None; written under --out as base_transfer_NAME.jsonl). Resumable: a file already
  written for the same number of problems is read back."""
  import dataclasses

  from jaxgrpo import models
  from jaxgrpo.models.tokenizers import HFTokenizer
  from jaxgrpo.train import build, evaluation, export

  path = transfer_path(name, run_dir, args.out)
  if os.path.exists(path):
    records = read_jsonl(path)
    if len(records) == args.transfer_examples:
      return records
  if run_dir:
    model, params, tok, cfg = export.load_run(run_dir)
  else:
    ckpt = build.checkpoint_dir(cfg.model)
    model, params = models.from_pretrained(ckpt, cfg.model.dtype)
    tok = HFTokenizer(ckpt, cfg.data.system_prompt)
  task = transfer_task(name, cfg, args.transfer_examples)
  ev = dataclasses.replace(cfg.eval, num_examples=args.transfer_examples, every=0, save_outputs=False,
                           max_new_tokens=args.transfer_max_new_tokens if name == "word_problems" else 0)
  records: list[dict] = []
  evaluation.evaluate_params(model, params, tok, cfg, task, ev, show_progress=False, records=records)
  evaluation.write_records(path, records)
  return records


def summarize(run_dir: str) -> dict:
  rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  evals = [r for r in rows if "eval/greedy_accuracy" in r]
  train = [r for r in rows if "loss" in r]
  pick = lambda k: [float(r[k]) for r in train if k in r]
  return {
      "eval_steps": [r["step"] for r in evals], "eval_accuracy": [r["eval/greedy_accuracy"] for r in evals],
      "eval_length": [r["eval/greedy_length"] for r in evals],
      "train_accuracy": pick("accuracy"), "reward_mean": pick("reward_mean"), "lambda_mean": pick("lambda_mean"),
      "intermediate_prop": pick("intermediate_prop"), "entropy_mean": pick("entropy_mean"),
      "zero_std_group_frac": pick("zero_std_group_frac"), "completion_len_mean": pick("completion_len_mean"),
      "time_step": pick("time_step"), "prm_score_mean": pick("prm_score_mean"),
  }


def finished(run_dir: str, steps: int) -> bool:
  """The run evaluated at its last step (so it need not be built again, even where its checkpoints are gone:
  experiments/results/smollm2_val keeps only the metrics and per-problem outputs of finished runs)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  return os.path.exists(path) and any(r.get("step") == steps and "eval/greedy_accuracy" in r for r in read_jsonl(path))


def transfer_outputs(name: str):
  """The per-problem records of transfer task ``name`` in a run directory (None where not evaluated)."""
  def read(run_dir: str) -> list[dict] | None:
    path = os.path.join(run_dir, transfer_file(name))
    return read_jsonl(path) if os.path.exists(path) else None
  return read


def paired_report(results: dict, args, transfer: str | None = None, label: str = "") -> dict:
  """Each method against its baseline at the same lr — GRPO, or PRPO for PRPO's controls — paired by seed and
  problem (jaxgrpo.analysis.compare_runs) on each run's last evaluation, or on transfer task ``transfer``."""
  from jaxgrpo.analysis import compare_runs, eval_steps

  out = {}
  by = {(r["method"], r["lr"], r["seed"]): r for r in results["runs"].values()}
  for (method, lr) in sorted({(m, l) for m, l, _ in by}):
    base = "prpo" if method.startswith("prpo_") else "grpo"
    if method == base:
      continue
    base_lr = args.method_lrs.get(base, lr)  # with --method-lrs each method against its base at the base's lr
    seeds = sorted(s for m, l, s in by if (m, l) == (method, lr) and (base, base_lr, s) in by)
    dirs = {name: [os.path.join(args.out, f"{name}_lr{name_lr:g}_s{s}") for s in seeds]
            for name, name_lr in ((base, base_lr), (method, lr))}
    file = transfer_file(transfer) if transfer else None
    if not seeds or not all(os.path.exists(os.path.join(d, file)) if file else eval_steps(d)
                            for d in dirs[base] + dirs[method]):
      continue
    r = compare_runs(dirs[base], dirs[method], file=file)
    key = f"{method}_vs_{base}_lr{lr:g}" if base_lr == lr else f"{method}_lr{lr:g}_vs_{base}_lr{base_lr:g}"
    out[key] = {"lr": lr, "base_lr": base_lr, "seeds": seeds, "diff": r.diff, "ci95": r.ci, "per_seed": r.per_seed,
                "seed_sign_flip_p": r.seed_sign_flip_p, "problem_sign_flip_p": r.problem_sign_flip_p,
                "problems": r.problems}
    lrs = f"lr {lr:g}" if base_lr == lr else f"lr {lr:g} vs {base_lr:g}"
    print(f"{LABELS[method]} − {LABELS[base]} ({lrs}, {len(seeds)} seeds × {r.problems} problems, "
          f"{label or args.eval_split + ' split'}): {100 * r.diff:+.1f} points, 95% CI [{100 * r.ci[0]:+.1f}, "
          f"{100 * r.ci[1]:+.1f}], seed sign-flip p = {r.seed_sign_flip_p:.3f}, problem sign-flip p = "
          f"{r.problem_sign_flip_p:.4f}")
  return out


def lr_choice(results: dict) -> dict:
  """The rule fixed before the validation runs: per method, the lr with the highest final eval accuracy averaged
  over the seeds it has (a tie goes to the smaller lr). Reported with the seed count behind each mean."""
  table: dict = {}
  for r in results["runs"].values():
    table.setdefault(r["method"], {}).setdefault(r["lr"], []).append(r["eval_accuracy"][-1])
  out = {}
  for method, by_lr in table.items():
    means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
    best = min(means, key=lambda lr: (-means[lr], lr))
    out[method] = {"chosen_lr": best, "mean_final_accuracy": {f"{lr:g}": means[lr] for lr in sorted(means)},
                   "seeds": {f"{lr:g}": len(by_lr[lr]) for lr in sorted(by_lr)}}
    cells = ", ".join(f"{lr:g}: {means[lr]:.3f} ({len(by_lr[lr])} seeds)" for lr in sorted(means))
    print(f"{LABELS[method]}: final {results['args']['eval_split']} accuracy by lr {cells} → lr {best:g}")
  return out


def plot(results: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
  colors = {"grpo": "tab:red", "lambda_grpo": "tab:blue", "prpo": "tab:green", "prpo_lambda": "tab:purple",
            "prpo_random": "tab:olive", "prpo_uniform": "tab:cyan", "prpo_std": "tab:brown"}
  for tag, r in results["runs"].items():
    style = "-" if r["lr"] == results["args"]["lr_main"] else ":"
    label = f"{LABELS[r['method']]} (lr {r['lr']:g}, seed {r['seed']})"
    axes[0].plot(r["eval_steps"], r["eval_accuracy"], style, marker="o", color=colors[r["method"]], label=label)
    k = 5
    acc = np.asarray(r["train_accuracy"])
    if len(acc) >= k:
      axes[1].plot(np.arange(k, len(acc) + 1), np.convolve(acc, np.ones(k) / k, mode="valid"), style,
                   color=colors[r["method"]], label=label)
    steps = np.arange(1, len(r["entropy_mean"]) + 1)
    axes[2].plot(steps, r["entropy_mean"], style, color=colors[r["method"]])
    axes[2].plot(steps, r["intermediate_prop"], "--", color=colors[r["method"]], alpha=0.6)
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("held-out greedy accuracy (200 problems)")
  axes[1].set_xlabel("step")
  axes[1].set_ylabel("training accuracy (sampled, 5-step mean)")
  axes[2].set_xlabel("step")
  axes[2].set_title("entropy in nats (solid), intermediate proportion (dashed)", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--methods", default="grpo,lambda_grpo,prpo,prpo_lambda")
  p.add_argument("--lrs", default="", help="comma-separated learning rates (default: the preset's)")
  p.add_argument("--method-lrs", default="",
                 help="each method at its own lr, e.g. grpo=1e-5,lambda_grpo=3e-5 (instead of --methods × --lrs)")
  p.add_argument("--seeds", default="0")
  p.add_argument("--steps", type=int, default=0, help="default: the preset's")
  p.add_argument("--prompts", type=int, default=0, help="prompts per step (default: the preset's)")
  p.add_argument("--eval-every", type=int, default=0, help="default: the preset's")
  p.add_argument("--eval-examples", type=int, default=200)
  p.add_argument("--checkpoint-every", type=int, default=5)
  p.add_argument("--out", default="runs/smollm2_rl")
  p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "smollm2_rl.json"))
  p.add_argument("--split-by", choices=("expression", "commuted"), default="expression",
                 help="arithmetic split: by expression text (old runs) or commuted form (b + a on a's side)")
  p.add_argument("--eval-split", choices=("test", "validation"), default="test",
                 help="validation (needs --split-by commuted) to choose the learning rate; test to compare")
  p.add_argument("--max-operand", type=int, default=0, help="default: the preset's (30)")
  p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (0: full fine-tuning; alpha = 2 × rank)")
  p.add_argument("--transfer", default="", help=f"also evaluate each final checkpoint (and the untrained model) "
                 f"greedily on these held-out tasks of another surface form: {','.join(TRANSFER_TASKS)}")
  p.add_argument("--transfer-examples", type=int, default=200, help="problems per transfer task")
  p.add_argument("--transfer-max-new-tokens", type=int, default=256, help="the word problems' cap")
  p.add_argument("--report-only", action="store_true",
                 help="no training: summarize the runs that exist under --out (e.g. an unfinished sweep)")
  args = p.parse_args()
  base = presets.preset("smollm2_arithmetic")
  args.steps = args.steps or base.steps
  args.prompts = args.prompts or base.data.prompts_per_step
  args.eval_every = args.eval_every or base.eval.every
  lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [base.optim.learning_rate]
  args.method_lrs = {m: float(x) for m, x in (kv.split("=") for kv in args.method_lrs.split(",") if kv)}
  if args.method_lrs:
    unknown = sorted(set(args.method_lrs) - set(METHODS))
    if unknown:
      p.error(f"--method-lrs: unknown methods {unknown}; known: {sorted(METHODS)}")
    runs = list(args.method_lrs.items())
    args.methods = ",".join(args.method_lrs)
  else:
    runs = [(m, lr) for lr in lrs for m in args.methods.split(",")]
  args.lr_main = runs[0][1]
  seeds = [int(s) for s in args.seeds.split(",")]
  transfers = [t for t in args.transfer.split(",") if t]
  unknown_t = sorted(set(transfers) - set(TRANSFER_TASKS))
  if unknown_t:
    p.error(f"--transfer: unknown tasks {unknown_t}; known: {list(TRANSFER_TASKS)}")
  os.makedirs(args.out, exist_ok=True)
  results = {"args": vars(args), "runs": {}}
  t0 = time.time()
  for seed in seeds:
    for method, lr in runs:
      tag, cfg = config(method, lr, args, seed)
      t_run = time.time()
      if args.report_only:
        if not os.path.exists(os.path.join(cfg.output_dir, "metrics.jsonl")):
          continue
      elif not finished(cfg.output_dir, args.steps):
        Trainer(cfg).run()  # resumes from the run's own checkpoints if it was interrupted
      s = summarize(cfg.output_dir)
      s["steps_done"] = len(s["train_accuracy"])
      for name in transfers:  # report-only reads what was evaluated; otherwise evaluates (or reads back)
        done = (transfer_outputs(name)(cfg.output_dir) if args.report_only
                else transfer_eval(name, cfg.output_dir, cfg, args))
        if done is not None:
          s[f"transfer_{name}_accuracy"] = float(np.mean([r["greedy_correct"] for r in done]))
      results["runs"][tag] = {"method": method, "lr": lr, "seed": seed, **s}
      print(f"{tag}: eval accuracy {s['eval_accuracy'][0]:.3f} → {s['eval_accuracy'][-1]:.3f} "
            f"({time.time() - t_run:.0f} s this invocation)", flush=True)
  results["seconds"] = time.time() - t0
  results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results, "w") as f:
    json.dump(results, f, indent=1)
  plot(results, args.results.replace(".json", ".png"))
  print("\n| method | lr | seed | steps | eval acc step 0 | eval acc end | Δ (points) | best | train acc first 5 → "
        "last 5 | s/step |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results["runs"].values():
    acc = r["eval_accuracy"]
    tr = r["train_accuracy"]
    print(f"| {LABELS[r['method']]} | {r['lr']:g} | {r['seed']} | {r['steps_done']} | {acc[0]:.3f} | {acc[-1]:.3f} | "
          f"{100 * (acc[-1] - acc[0]):+.1f} | {max(acc):.3f} | {np.mean(tr[:5]):.3f} → {np.mean(tr[-5:]):.3f} | "
          f"{np.mean(r['time_step']):.1f} |")
  if args.eval_split == "validation":  # the lr is chosen there only; on the test split the lrs are given
    results["lr_choice"] = lr_choice(results)
  paired = paired_report(results, args)
  if paired:
    results["paired"] = paired
  for name in transfers if results["runs"] else ():
    if args.report_only and not os.path.exists(transfer_path(name, None, args.out)):
      continue  # report-only evaluates nothing
    base_records = transfer_eval(name, None, config(*runs[0], args, seeds[0])[1], args)
    key = f"transfer_{name}_accuracy"
    results[f"base_{key}"] = float(np.mean([r["greedy_correct"] for r in base_records]))
    trained = ", ".join(f"{tag} {r[key]:.3f}" for tag, r in results["runs"].items() if key in r)
    print(f"\n{name} (transfer, {len(base_records)} problems): untrained {results[f'base_{key}']:.3f}; {trained}")
    paired_t = paired_report(results, args, transfer=name, label=f"{name}, transfer")
    if paired_t:
      results[f"paired_transfer_{name}"] = paired_t
  with open(args.results, "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nplot: {args.results.replace('.json', '.png')}; {results['seconds']:.0f} s ({results['machine']})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
