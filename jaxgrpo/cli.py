"""The ``jaxgrpo`` command line."""

from __future__ import annotations

import argparse
import sys


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


def _train(args: argparse.Namespace) -> int:
  from jaxgrpo.config import load_config, preset
  from jaxgrpo.trainer import Trainer

  base = preset(args.preset) if args.preset else None
  cfg = load_config(args.config, args.set or [], base=base)
  history = Trainer(cfg).run(resume=not args.no_resume)
  if history:
    last = history[-1]
    print(f"step {cfg.steps}: reward_mean {last['reward_mean']:.4f}, loss {last['loss']:.4f}; "
          f"metrics in {cfg.output_dir}/metrics.jsonl and {cfg.output_dir}/tb")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="jaxgrpo", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="the paper's worked example: |λ|, step advantages, tree stats")
  demo.set_defaults(func=_demo)
  train = sub.add_parser("train", help="train with GRPO / λ-GRPO / PRPO")
  train.add_argument("--config", help="YAML config file (may name a 'preset:')")
  train.add_argument("--preset", help="toy | smollm2_arithmetic | lambda_grpo_paper | prpo_paper")
  train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
  train.add_argument("--no-resume", action="store_true", help="ignore checkpoints in output_dir")
  train.set_defaults(func=_train)
  sub.add_parser("toy", help="λ-GRPO vs GRPO on the toy tree task, the main job (jaxgrpo toy --help)")
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "toy":
    from jaxgrpo import toy_experiment

    return toy_experiment.main(argv[1:])
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
