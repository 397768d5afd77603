"""Shared-prefix training on real rollouts: positions computed, update time and XLA peak memory for
``objective.share_prefix`` = none / prompt / tree, on the same rollouts, in one run — and that the three give the same
loss and gradients on them.

Rollouts: SmolLM2-135M-Instruct (dequantised Q4_1 GGUF), the ``smollm2_arithmetic`` preset (4 prompts × 8
completions of ≤ 48 tokens):
  (a) the preset's rollouts from the initial policy;
  (b) the same task with a few-shot system prompt (P ≈ 300 tokens), sampled anew — with full remat and 128-query
      attention blocks for every mode (the plain update needs ≈ 57 GB without them here);
  (c) rollouts of a policy after ``--trained-steps`` GRPO steps of the preset (lr 1e-5), where completions overlap
      more (lower entropy).
Update = the trainer's own jitted update (forward, backward, AdamW) on one device; times are medians of
``--repeats`` runs after compilation, the three modes interleaved run by run (this host's speed drifts).  Peak memory
is XLA's compiled temp allocation (``memory_analysis``).  The f32 matmul roof is measured in the same run.

    python experiments/bench_shared_prefix.py            # ≈ 30 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_step import roof_gflops  # the f32 matmul roof, measured the way bench_step.py measures it

from jaxgrpo.parallel import sharding
from jaxgrpo.train import packing, presets
from jaxgrpo.train import step as ts
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.trainer import Trainer

FEW_SHOT = "You are a careful calculator. Answer with the number only, as in these examples.\n" + "\n".join(
    f"Q: What is {a} {op} {b}? A: {a + b if op == '+' else a - b}"
    for a, b, op in [(12, 7, "+"), (25, 9, "-"), (3, 28, "+"), (30, 14, "-"), (17, 17, "+"), (8, 21, "-"),
                     (26, 4, "+"), (19, 11, "-"), (5, 5, "+"), (29, 2, "-"), (14, 15, "+"), (22, 13, "-"),
                     (7, 30, "+"), (18, 6, "-"), (11, 23, "+"), (27, 16, "-"), (9, 12, "+"), (24, 20, "-"),
                     (1, 29, "+"), (13, 3, "-"), (16, 10, "+"), (28, 25, "-"), (2, 18, "+"), (21, 8, "-"),
                     (6, 26, "+"), (20, 19, "-"), (10, 27, "+"), (23, 1, "-")])


def make_trainer(tmp: str, name: str, **sections) -> Trainer:
  cfg = config_replace(presets.preset("smollm2_arithmetic"), name=name, output_dir=os.path.join(tmp, name),
                       progress=False, checkpoint_every=0, eval={"num_examples": 0},
                       mesh={"data": 1, "fsdp": 1, "tensor": 1})
  cfg = config_replace(cfg, **sections)
  return Trainer(cfg, mesh=sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def rollout_batch(trainer: Trainer, seed: int) -> ts.Batch:
  examples = [trainer.source[i] for i in range(trainer.cfg.data.prompts_per_step)]
  ro = trainer.score(trainer.sample(examples, jax.random.PRNGKey(seed)))
  adv, w, _ = trainer.advantages(ro)
  return trainer.batch(ro, adv, w)


@functools.partial(jax.jit, static_argnums=(0, 3))
def loss_and_grad(model, params, batch, spec):
  return jax.value_and_grad(lambda p: ts.loss_fn(p, None, batch, None, None, model, spec)[0])(params)


def measure(trainer: Trainer, batch: ts.Batch, repeats: int) -> dict:
  host = {f.name: np.asarray(getattr(batch, f.name)) for f in dataclasses.fields(ts.Batch)}
  g = trainer.cfg.sampling.group_size
  plain = packing.tokens_unpacked(host["prompt_mask"], host["mask"])
  batches = {"none": batch}
  info = {"none": {"positions_computed": plain, "positions_unique": plain}}
  for mode in ("prompt", "tree"):
    pk = packing.pack(**host, group_size=g, mode=mode)
    batches[mode] = jax.device_put(pk.batch)
    info[mode] = {"positions_computed": pk.tokens_computed, "positions_unique": pk.tokens_unique,
                  "rows_x_length": list(pk.batch.tokens.shape)}
  lengths = host["mask"].sum(1)
  out = {"B_x_G": int(host["mask"].shape[0]), "prompt_len_mean": float(host["prompt_mask"].sum(1).mean()),
         "completion_len_mean": float(lengths.mean()), "padded_row": int(host["prompt_mask"].shape[1]
                                                                          + host["mask"].shape[1])}
  # equality on these rollouts: loss and gradient of the packed batches against the plain one
  params = trainer.state["params"]
  l0, g0 = loss_and_grad(trainer.model, params, batch, trainer.loss_spec)
  for mode in ("prompt", "tree"):
    l1, g1 = loss_and_grad(trainer.model, params, batches[mode], trainer.loss_spec)
    info[mode]["loss_abs_diff"] = abs(float(l1) - float(l0))
    info[mode]["grad_max_abs_diff"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                          zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
    info[mode]["grad_max_abs"] = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g0))
  del g0
  orders = {m: np.arange(b.tokens.shape[0], dtype=np.int32)[None] for m, b in batches.items()}
  state = trainer.state
  for mode, b in batches.items():
    t0 = time.perf_counter()
    compiled = trainer.update_fn.lower(state, trainer.frozen, trainer.ref_params, b, orders[mode]).compile()
    info[mode]["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    info[mode]["xla_temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else None
    state, m = trainer.update_fn(state, trainer.frozen, trainer.ref_params, b, orders[mode])  # warm
    jax.block_until_ready(m)
  times = {m: [] for m in batches}
  for _ in range(repeats):  # interleaved
    for mode, b in batches.items():
      t0 = time.perf_counter()
      state, m = trainer.update_fn(state, trainer.frozen, trainer.ref_params, b, orders[mode])
      jax.block_until_ready(m)
      times[mode].append(time.perf_counter() - t0)
  trainer.state = state
  for mode in batches:
    info[mode]["update_s"] = statistics.median(times[mode])
    info[mode]["update_s_all"] = times[mode]
    info[mode]["speedup_vs_none"] = statistics.median(times["none"]) / info[mode]["update_s"]
  out["modes"] = info
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--trained-steps", type=int, default=12)
  p.add_argument("--scenarios", default="a,b,c", help="which to run (the others are kept from --out)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_shared_prefix.json"))
  args = p.parse_args(argv)
  roof = roof_gflops()
  res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, f32 matmul roof "
                    f"{roof:.0f} GFLOP/s (measured in this run)", "scenarios": {}}
  which = set(args.scenarios.split(","))
  if which != {"a", "b", "c"} and os.path.exists(args.out):
    with open(args.out) as f:
      res["scenarios"] = json.load(f)["scenarios"]

  def save():
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)

  with tempfile.TemporaryDirectory() as tmp:
    if "a" in which:
      tr = make_trainer(tmp, "a")
      res["scenarios"]["(a) preset rollouts, initial policy"] = measure(tr, rollout_batch(tr, 0), args.repeats)
      save()
      del tr
    if "b" in which:
      tr = make_trainer(tmp, "b", data={"system_prompt": FEW_SHOT}, model={"remat": "full", "attention_chunk": 128})
      res["scenarios"]["(b) few-shot system prompt (remat, 128-query blocks)"] = measure(
          tr, rollout_batch(tr, 0), args.repeats)
      save()
      del tr
    if "c" in which:
      tr = make_trainer(tmp, "c", steps=args.trained_steps + 1)
      for _ in range(args.trained_steps):
        tr.train_step()
      res["scenarios"][f"(c) after {args.trained_steps} GRPO steps (lr 1e-5)"] = measure(
          tr, rollout_batch(tr, 1), args.repeats)
      save()
  print(f"\n{res['machine']}; one device; update = forward + backward + AdamW, median of {args.repeats}\n")
  print("| rollouts | P (mean) | completion (mean) | mode | positions computed | update (s) | × vs none | "
        "XLA temp (MiB) | max |Δ grad| |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, sc in res["scenarios"].items():
    for mode, m in sc["modes"].items():
      diff = "" if mode == "none" else f"{m['grad_max_abs_diff']:.1e}"
      mem = "" if m["xla_temp_bytes"] is None else f"{m['xla_temp_bytes'] / 2 ** 20:.0f}"
      print(f"| {name} | {sc['prompt_len_mean']:.0f} | {sc['completion_len_mean']:.1f} | {mode} | "
            f"{m['positions_computed']:,} | {m['update_s']:.2f} | {m['speedup_vs_none']:.2f} | {mem} | {diff} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
