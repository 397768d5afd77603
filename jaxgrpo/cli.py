"""The ``jaxgrpo`` command line: demo, train, eval, compare, export, plan, prepare-math.

Errors a user can fix (a bad config value, a busy or stale output directory, a
checkpoint that cannot be saved or restored, a non-finite step) print one
``error:`` paragraph and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


def _demo(args: argparse.Namespace) -> int:
  import numpy as np

  import jaxgrpo

  group = ["ABCD", "ABEFHI", "JKLM", "JKLNQST", "JKLNQU", "VWYZ"]
  rewards = np.array([0.5, 0.5, 1.0, 0.0, 0.0, 0.5], np.float32)
  T = max(map(len, group))
  tokens = np.zeros((len(group), T), np.int32)
  mask = np.zeros((len(group), T), np.int32)
  for i, s in enumerate(group):
    tokens[i, : len(s)] = [ord(c) for c in s]
    mask[i, : len(s)] = 1
  prm = jaxgrpo.checked.implicit_prm(tokens, mask, rewards, eps=0.0)
  stats = jaxgrpo.tree_stats(tokens, mask)
  adv = jaxgrpo.group_advantages(rewards, eps=0.0)
  print("λ-GRPO worked example (Sullivan & Koller, arXiv 2509.21154, ddof=1)")
  print(f"group mean reward {rewards.mean():.4f}; process steps {int(stats.num_steps)}; flat tree {bool(stats.flat)}\n")
  print(f"{'completion':<10} {'r':>4} {'a_i':>6}  {'depth':>5}  token:|λ|:A(i,t)")
  for i, s in enumerate(group):
    cells = " ".join(
        f"{c}:{int(prm.counts[i, t])}:{float(prm.step_advantages[i, t]):+.2f}" for t, c in enumerate(s)
    )
    print(f"{s:<10} {rewards[i]:>4.1f} {float(adv[i]):>+6.2f}  {int(stats.path_depth[i]):>5}  {cells}")
  return 0


def _config(args):
  from jaxgrpo.train.loading import load_config
  from jaxgrpo.train.presets import preset

  base = preset(args.preset) if getattr(args, "preset", None) else None
  return load_config(getattr(args, "config", None), args.set or [], base=base)


def _compile_cache(args: argparse.Namespace) -> None:
  """JAX's persistent compilation cache: a resumed run (after a kill, preemption or a crash) loads its
  compiled programs instead of compiling them again. ``--compile-cache off`` disables it; JAX's own
  ``JAX_COMPILATION_CACHE_DIR`` wins when set."""
  path = getattr(args, "compile_cache", None)
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not path or path == "off":
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def _train(args: argparse.Namespace) -> int:
  from jaxgrpo.parallel import distributed

  _compile_cache(args)
  distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed == "auto")
  cfg = _config(args)
  from jaxgrpo.train.run_dir import RunDir
  from jaxgrpo.train.trainer import Trainer

  run_dir = RunDir(cfg.output_dir, lock=distributed.is_primary())  # a busy directory is refused before any work
  history = Trainer(cfg).run(resume=not args.no_resume, overwrite=args.overwrite,
                             allow_config_change=args.allow_config_change, run_dir=run_dir, exits_after=True)
  steps = [h for h in history if "reward_mean" in h]
  if steps and distributed.is_primary():
    last = steps[-1]
    print(f"step {cfg.steps}: reward_mean {last['reward_mean']:.4f}, accuracy {last['accuracy']:.4f}, "
          f"loss {last['loss']:.4f}; metrics in {cfg.output_dir}/metrics.jsonl and {cfg.output_dir}/tb")
  evals = [h for h in history if any(k.startswith("eval/") for k in h)]
  if evals and distributed.is_primary():
    print(_eval_table(evals))
  return 0


def _eval_table(rows: list[dict]) -> str:
  keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/num_examples"})
  lines = ["| step | " + " | ".join(k[5:] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for r in rows:
    lines.append(f"| {r['step']} | " + " | ".join(f"{r[k]:.4f}" if k in r else "" for k in keys) + " |")
  return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
  from jaxgrpo import models
  from jaxgrpo.models.tokenizers import HFTokenizer
  from jaxgrpo.tasks import sources as data_lib
  from jaxgrpo.train import evaluation, export
  from jaxgrpo.train.config import apply_overrides

  if bool(args.run) == bool(args.hf):
    raise ValueError("give exactly one of --run RUN_DIR or --hf HF_DIR")
  if args.run:
    model, params, tokenizer, cfg = export.load_run(args.run, args.step)
    cfg = apply_overrides(cfg, args.set or [])
    label = f"{args.run} (step {args.step if args.step is not None else 'latest'})"
  else:
    cfg = _config(args)
    model, params = models.from_pretrained(args.hf, cfg.model.dtype)
    tokenizer = HFTokenizer(args.hf, cfg.data.system_prompt)
    label = args.hf
  ev = cfg.eval if cfg.eval.num_examples else cfg.eval.__class__(num_examples=200)
  task = data_lib.make_eval_source(cfg.data, ev)
  records = [] if args.outputs else None
  out = evaluation.evaluate_params(model, params, tokenizer, cfg, task, ev, records=records)
  if records is not None:
    evaluation.write_records(os.path.abspath(args.outputs), records)
  print(f"\n{label} on {ev.source or cfg.data.source} (held-out, {len(task)} problems)\n")
  print("| metric | value |\n|---|---|")
  for k, v in out.items():
    print(f"| {k} | {v:.4f} |")
  return 0


def _export(args: argparse.Namespace) -> int:
  from jaxgrpo.train import export

  written = export.export_run(args.run_dir, args.out_dir, args.step, dtype=args.dtype)
  for kind, path in written.items():
    print(f"{kind}: {path}")
  return 0


def _plan(args: argparse.Namespace) -> int:
  from jaxgrpo.train import plan

  cfg = _config(args)
  report = plan.plan(cfg, devices=args.devices, hbm_gib=args.hbm, prompt_len=args.prompt_len)
  print(plan.format_report(report))
  return 0 if report["fits"] else 3


def _prepare_math(args: argparse.Namespace) -> int:
  from jaxgrpo.tasks import sources as data

  n = data.math_to_jsonl(args.src_dir, args.out, args.split)
  print(f"wrote {n} problems to {args.out}")
  return 0


def _compare(args: argparse.Namespace) -> int:
  from jaxgrpo import analysis

  r = analysis.compare_runs(args.base, args.method, column=args.column, step=args.step, file=args.file,
                            level=args.level)
  what = args.file or (f"step {args.step}" if args.step is not None else "last eval")
  print(f"\nmethod − base: {args.column}, {what}, {r.seeds} seed pairs × {r.problems} problems\n")
  pct = f"{100 * r.level:.0f}% CI (seeds × problems)"
  print(f"| base | method | method − base | {pct} | per seed | seed sign-flip p | problem sign-flip p |")
  print("|---:|---:|---:|---|---|---:|---:|")
  per_seed = ", ".join(f"{d:+.3f}" for d in r.per_seed)
  print(f"| {r.base_mean:.3f} | {r.base_mean + r.diff:.3f} | {r.diff:+.3f} | [{r.ci[0]:+.3f}, {r.ci[1]:+.3f}] | "
        f"{per_seed} | {r.seed_sign_flip_p:.3f} | {r.problem_sign_flip_p:.4f} |")
  return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", help="YAML config file (may name a 'preset:')")
  p.add_argument("--preset", help="toy | smollm2_arithmetic | lambda_grpo_paper | lambda_grpo_paper_full | prpo_paper")
  p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxgrpo", description="GRPO / λ-GRPO / PRPO post-training in JAX")
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("demo", help="the paper's worked example: |λ|, step advantages, tree stats").set_defaults(func=_demo)

  train = sub.add_parser("train", help="train with GRPO / λ-GRPO / PRPO")
  _add_config_args(train)
  train.add_argument("--no-resume", action="store_true", help="do not resume (refused if checkpoints exist)")
  train.add_argument("--overwrite", action="store_true", help="delete output_dir's checkpoints/metrics, start clean")
  train.add_argument("--allow-config-change", action="store_true",
                     help="resume even though training-relevant config keys changed")
  train.add_argument("--compile-cache", default="~/.cache/jaxgrpo/xla", metavar="DIR",
                     help="persistent XLA compilation cache, so a resumed run skips compiling (off: none; "
                          "JAX_COMPILATION_CACHE_DIR wins when set)")
  dist = train.add_argument_group("multi-process (jax.distributed)")
  dist.add_argument("--coordinator", help="host:port of process 0")
  dist.add_argument("--num-processes", type=int)
  dist.add_argument("--process-id", type=int)
  dist.add_argument("--distributed", choices=("off", "auto"), default="off",
                    help="auto: detect the job from the environment (TPU pods, SLURM, Open MPI)")
  train.set_defaults(func=_train)

  ev = sub.add_parser("eval", help="evaluate a run's checkpoint or an HF directory on held-out problems")
  ev.add_argument("--run", help="a run's output_dir (its config names the task)")
  ev.add_argument("--step", type=int, help="checkpoint step (default: the newest good one)")
  ev.add_argument("--hf", help="an HF checkpoint directory (the task comes from --preset/--config/--set)")
  ev.add_argument("--outputs", help="write each problem's outcome and greedy completion to this JSONL file")
  _add_config_args(ev)
  ev.set_defaults(func=_eval)

  cmp = sub.add_parser("compare", help="two methods' evaluated runs, paired by seed and problem: the difference "
                                       "with its CI over seeds × problems and exact sign-flip tests")
  cmp.add_argument("--base", nargs="+", required=True, metavar="RUN_DIR", help="the baseline's runs, one per seed")
  cmp.add_argument("--method", nargs="+", required=True, metavar="RUN_DIR",
                   help="the method's runs, one per seed, in the same seed order")
  cmp.add_argument("--step", type=int, help="the eval step to compare (default: each run's last)")
  cmp.add_argument("--file", help="a per-problem JSONL file inside each run instead (e.g. a transfer task's)")
  cmp.add_argument("--column", default="greedy_correct", help="the per-problem score (default: greedy_correct)")
  cmp.add_argument("--level", type=float, default=0.95, help="the interval's coverage (default: 0.95)")
  cmp.set_defaults(func=_compare)

  ex = sub.add_parser("export", help="write a run's policy as an HF checkpoint (+ PEFT adapter for LoRA)")
  ex.add_argument("run_dir")
  ex.add_argument("out_dir")
  ex.add_argument("--step", type=int, help="checkpoint step (default: the newest good one)")
  ex.add_argument("--dtype", help="dtype of the saved tensors (default: the params' dtype)")
  ex.set_defaults(func=_export)

  pl = sub.add_parser("plan", help="per-device memory of the sampler and the update step, before launch")
  _add_config_args(pl)
  pl.add_argument("--devices", type=int, default=1, help="number of (simulated) devices")
  pl.add_argument("--hbm", type=float, default=80.0, help="memory per device in GiB")
  pl.add_argument("--prompt-len", type=int, help="prompt tokens per row (default: 256)")
  pl.set_defaults(func=_plan)

  pm = sub.add_parser("prepare-math", help="MATH dataset directory → JSONL (the prpo_paper preset's data)")
  pm.add_argument("src_dir", help="the MATH dataset's root (train/<subject>/<id>.json)")
  pm.add_argument("out", help="output JSONL file")
  pm.add_argument("--split", default="train")
  pm.set_defaults(func=_prepare_math)
  return parser


def _one_line(record: logging.LogRecord) -> bool:
  """Drop tracebacks from library log records (the error is reported once, as an ``error:`` line)."""
  if not os.environ.get("JAXGRPO_DEBUG"):
    record.exc_info = None
    record.exc_text = None
    record.msg = str(record.msg).splitlines()[0] if record.msg else record.msg
  return True


def _drop_closed_loop_noise(hook):
  """After a failed checkpoint write, tensorstore's callbacks hit orbax's closed event loop and print
  'RuntimeError: Event loop is closed' tracebacks (harmless); drop those, print everything else."""
  def quiet(exc_type, exc, tb):
    if exc_type is RuntimeError and str(exc) == "Event loop is closed":
      return
    hook(exc_type, exc, tb)
  return quiet


def _drop_closed_loop_unraisable(hook):
  def quiet(u):
    if u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed":
      return
    hook(u)
  return quiet


def _background_error(args) -> None:
  name = getattr(args.thread, "name", "?")
  print(f"(background thread {name}: {args.exc_type.__name__}: {args.exc_value})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = build_parser().parse_args(argv)
  if args.command == "plan":  # simulated devices: XLA reads the flag when the backend starts (not at import)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  for name in ("absl", "asyncio"):  # orbax reports background-thread failures with tracebacks: we report once
    logging.getLogger(name).addFilter(_one_line)
  if not os.environ.get("JAXGRPO_DEBUG"):
    threading.excepthook = _background_error  # e.g. orbax's writer threads after a failed save
    sys.excepthook = _drop_closed_loop_noise(sys.excepthook)
    sys.unraisablehook = _drop_closed_loop_unraisable(sys.unraisablehook)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # orbax's abandoned futures after a failed write
  from jaxgrpo.train.checkpointing import CheckpointRestoreError, CheckpointSaveError
  from jaxgrpo.train.preemption import Preempted
  from jaxgrpo.train.run_dir import RunDirError
  from jaxgrpo.train.trainer import NonFiniteError

  try:
    return args.func(args)
  except Preempted as e:
    print(f"stopped: {e}; the last completed step was saved (rerun the same command to resume)", file=sys.stderr)
    return 128 + e.signum
  except KeyboardInterrupt:
    print("interrupted; the last completed step was saved", file=sys.stderr)
    return 130
  except (ValueError, FileNotFoundError) as e:
    if os.environ.get("JAXGRPO_DEBUG"):
      raise
    print(f"error: {e}\n(set JAXGRPO_DEBUG=1 for the traceback)", file=sys.stderr)
    return EXIT_USER_ERROR
  except (RunDirError, CheckpointSaveError, CheckpointRestoreError, NonFiniteError, OSError) as e:
    if os.environ.get("JAXGRPO_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    return EXIT_RUNTIME_ERROR


if __name__ == "__main__":
  sys.exit(main())
