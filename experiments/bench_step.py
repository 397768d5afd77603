"""One SmolLM2-135M-Instruct training step: where its time goes, and what each change bought, in one run.

1. Profile (the smollm2_arithmetic preset): sampling, host work (decode + rewards), advantages, and the update
   split into the forward pass, the backward pass and the optimizer (each timed alone on the step's batch).
2. Ratios, each measured in this run against the variant before it:
   * "exact prompt lengths, full buffer": prompts padded to the batch's longest (a new shape, so a new
     compilation, whenever the prompts' length changes) and the update on all max_new_tokens positions —
     what the trainer did before;
   * "+ prompts padded to a multiple of 8" (few shapes: no recompilation);
   * "+ completion buffer trimmed" (the update skips the all-padding tail);
   * μ = 2 × 2 minibatches: π_old recomputed by a forward pass vs taken from the sampler;
   * LoRA (r = 16, all linear layers) vs full fine-tuning: step time and optimizer-state bytes;
   * λ-GRPO vs GRPO: the prefix-overlap kernel's share of the step.

    python experiments/bench_step.py [--steps 3]    # ≈ 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxgrpo
from jaxgrpo.train import presets
from jaxgrpo.train import step as ts
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.trainer import Trainer


def save_result(path: str, result: dict) -> None:
  """A benchmark's result record written as indented JSON (its directory made if needed)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as fh:
    json.dump(result, fh, indent=1)


def roof_gflops() -> float:
  x = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(10):
    f(x).block_until_ready()
  return 2 * 2048 ** 3 / ((time.perf_counter() - t0) / 10) / 1e9


def make(tmp, name, **sections):
  base = presets.preset("smollm2_arithmetic")
  cfg = config_replace(base, name=name, output_dir=os.path.join(tmp, name), progress=False, checkpoint_every=0,
                        eval={"num_examples": 0}, data={"prompts_per_step": 2})
  return Trainer(config_replace(cfg, **sections))


def timed_steps(trainer, steps: int) -> dict:
  trainer.train_step()  # warm-up (compilation)
  hist = [trainer.train_step() for _ in range(steps)]
  keys = ("time_sample", "time_score", "time_update", "time_step", "completion_len_mean", "lambda_mean")
  return {k: float(np.mean([h[k] for h in hist])) for k in keys}


def profile(trainer) -> dict:
  """One step split into stages, each stage timed alone (best of 3) on that step's data."""
  examples = [trainer.source[trainer.data_pos + i] for i in range(trainer.cfg.data.prompts_per_step)]
  key = jax.random.PRNGKey(0)
  best = lambda f: min(_t(f) for _ in range(3))
  out = {"sample": best(lambda: jax.block_until_ready(trainer.sample(examples, key).tokens))}
  ro = trainer.sample(examples, key)
  out["decode_and_rewards"] = best(lambda: trainer.score(ro))
  ro = trainer.score(ro)
  out["advantages"] = best(lambda: jax.block_until_ready(trainer.advantages(ro)[0]))
  adv, w, _ = trainer.advantages(ro)
  n = ro.num_rows
  prompts = jnp.repeat(ro.prompt_ids, ro.group_size, axis=0), jnp.repeat(ro.prompt_mask, ro.group_size, axis=0)
  batch = ts.Batch(prompt_ids=prompts[0], prompt_mask=prompts[1], tokens=ro.tokens, mask=ro.mask, advantages=adv,
                   weights=w, old_logp=ro.logprobs)
  model, spec = trainer.model, trainer.loss_spec
  params = trainer.state["params"]
  fwd = jax.jit(lambda p, b: jnp.sum(ts.batch_logprobs(model, p, b, spec)))
  grad = jax.jit(lambda p, b: jax.grad(lambda q: ts.loss_fn(q, None, b, None, None, model, spec)[0])(p))
  out["forward"] = best(lambda: jax.block_until_ready(fwd(params, batch)))
  out["forward+backward"] = best(lambda: jax.block_until_ready(grad(params, batch)))
  orders = np.arange(n, dtype=np.int32)[None]

  def full_update():
    trainer.state, m = trainer.update_fn(trainer.state, trainer.frozen, trainer.ref_params, batch, orders)
    jax.block_until_ready(m)

  out["update (fwd+bwd+optimizer)"] = best(full_update)
  out["optimizer and the rest"] = out["update (fwd+bwd+optimizer)"] - out["forward+backward"]
  out["backward"] = out["forward+backward"] - out["forward"]
  out["tokens"] = int(n * (ro.tokens.shape[1] + ro.prompt_ids.shape[1]))
  return out


def _t(f):
  t0 = time.perf_counter()
  f()
  return time.perf_counter() - t0


def opt_bytes(trainer) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(trainer.state["opt_state"])))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_step.json"))
  args = p.parse_args()
  roof = roof_gflops()
  machine = (f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, f32 matmul roof measured now "
             f"{roof:.0f} GFLOP/s")
  res = {"machine": machine, "roof_gflops": roof}
  with tempfile.TemporaryDirectory() as tmp:
    prof = profile(make(tmp, "profile"))
    res["profile"] = prof
    chain = [
        ("exact prompt lengths, full buffer", dict(sampling={"prompt_multiple": 1, "trim": False})),
        ("+ prompts padded to a multiple of 8", dict(sampling={"prompt_multiple": 8, "trim": False})),
        ("+ completion buffer trimmed (the preset)", dict()),
    ]
    res["chain"] = []
    for name, over in chain:
      res["chain"].append({"variant": name, **timed_steps(make(tmp, name.split()[0] + str(len(res["chain"])),
                                                                 **over), args.steps)})
      print(res["chain"][-1], flush=True)
    res["old_logp"] = []
    for recompute in (True, False):
      t = make(tmp, f"mu2_{recompute}", objective={"num_iterations": 2, "num_minibatches": 2,
                                                   "recompute_old_logp": recompute})
      assert t.update_spec.old_logp == ("recompute" if recompute else "batch")
      res["old_logp"].append({"variant": "π_old recomputed" if recompute else "π_old from the sampler",
                              **timed_steps(t, args.steps)})
      print(res["old_logp"][-1], flush=True)
    res["lora"] = []
    for rank in (0, 16):
      t = make(tmp, f"lora{rank}", model={"lora": {"rank": rank, "alpha": 2.0 * max(rank, 1)}})
      row = {"variant": "full fine-tuning" if not rank else f"LoRA r={rank} (q,k,v,o,gate,up,down)",
             "optimizer_state_bytes": opt_bytes(t),
             "trainable_params": int(sum(x.size for x in jax.tree.leaves(t.state["params"]))),
             **timed_steps(t, args.steps)}
      res["lora"].append(row)
      print(row, flush=True)
    t = make(tmp, "lambda", objective={"name": "lambda_grpo"})
    lam = timed_steps(t, args.steps)
    ro = t.sample([t.source[i] for i in range(2)], jax.random.PRNGKey(1))
    tok, mask = ro.tokens.reshape(2, 8, -1), ro.mask.reshape(2, 8, -1)
    fn = jax.jit(lambda a, b: jaxgrpo.lambda_weights(jaxgrpo.prefix_counts(a, b)))
    fn(tok, mask).block_until_ready()
    kernel = min(_t(lambda: fn(tok, mask).block_until_ready()) for _ in range(20))
    res["lambda"] = {"lambda_grpo": lam, "kernel_s": kernel, "kernel_share": kernel / lam["time_step"]}

  print(f"\n# SmolLM2-135M-Instruct f32, arithmetic, 2 prompts × G=8 × ≤48 new tokens — {machine}\n")
  print("## Where a step's time goes (each stage alone, best of 3; the preset's step)\n")
  print("| stage | seconds | share of sample + update |")
  print("|---|---|---|")
  total = prof["sample"] + prof["decode_and_rewards"] + prof["advantages"] + prof["update (fwd+bwd+optimizer)"]
  for k in ("sample", "decode_and_rewards", "advantages", "forward", "backward", "optimizer and the rest"):
    print(f"| {k} | {prof[k]:.2f} | {prof[k] / total:.0%} |")
  gf = 6 * 106e6 * prof["tokens"] / prof["forward+backward"] / 1e9
  print(f"\nforward+backward: {prof['tokens']} tokens in {prof['forward+backward']:.1f} s ≈ {gf:.0f} GFLOP/s "
        f"(non-embedding matmuls), {gf / roof:.0%} of the roof measured now")
  print("\n## Changes, each against the row before (same run)\n")
  print("| variant | sample s | update s | step s | vs previous |")
  print("|---|---|---|---|---|")
  prev = None
  for r in res["chain"]:
    ratio = "" if prev is None else f"{prev / r['time_step']:.2f}× faster"
    print(f"| {r['variant']} | {r['time_sample']:.1f} | {r['time_update']:.1f} | {r['time_step']:.1f} | {ratio} |")
    prev = r["time_step"]
  a, b = res["old_logp"]
  print(f"| μ=2 × 2 minibatches, {a['variant']} | {a['time_sample']:.1f} | {a['time_update']:.1f} | "
        f"{a['time_step']:.1f} | |")
  print(f"| μ=2 × 2 minibatches, {b['variant']} | {b['time_sample']:.1f} | {b['time_update']:.1f} | "
        f"{b['time_step']:.1f} | {a['time_step'] / b['time_step']:.2f}× faster |")
  print("\n## LoRA vs full fine-tuning (same run)\n")
  print("| variant | trainable params | optimizer state | update s | step s |")
  print("|---|---|---|---|---|")
  for r in res["lora"]:
    print(f"| {r['variant']} | {r['trainable_params'] / 1e6:.2f} M | {r['optimizer_state_bytes'] / 2**20:.1f} MiB | "
          f"{r['time_update']:.1f} | {r['time_step']:.1f} |")
  lr = res["lambda"]
  print(f"\nλ-GRPO's extra work (prefix counts + 1/|λ| weights on the step's [2, 8, T] rollout): "
        f"{lr['kernel_s'] * 1e3:.3f} ms = {lr['kernel_share']:.5%} of the λ-GRPO step")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
