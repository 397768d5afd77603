"""Benchmark: SmolLM2-135M forward and forward+backward, jaxgrpo (JAX) vs transformers (torch), same batch, same run.

Reports tokens/s, achieved GFLOP/s (model FLOPs: 2·N_params·tokens + attention,
×3 for forward+backward) against the ~250 GFLOP/s f32 matmul roof measured on
this 2-core CPU, and the speed-up of jaxgrpo over torch.

    python experiments/bench_forward.py [--batch 4 --seq 256 --repeats 3]
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
import optax


def model_flops_per_token(cfg, seq: int) -> float:
  d, f, l, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
  qkvo = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + cfg.num_heads * cfg.head_dim * d
  mlp = 3 * d * f
  matmul_params = l * (qkvo + mlp) + d * v
  attn = l * 2 * 2 * seq * cfg.num_heads * cfg.head_dim / 2  # QK^T and PV, causal half on average
  return 2 * matmul_params + attn


def matmul_roof(n: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of one large f32 matmul in JAX, measured now (the CPU's practical roof)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / timeit(lambda: f(a).block_until_ready(), repeats) / 1e9


def timeit(fn, repeats):
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_forward.json"))
  args = p.parse_args()

  import torch
  from transformers import AutoModelForCausalLM

  import jaxgrpo.models as M
  from jaxgrpo.models import smollm2

  path = smollm2.hf_checkpoint_dir()
  model, params = M.from_pretrained(path)
  cfg = model.config
  torch.set_num_threads(os.cpu_count())
  hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

  rng = np.random.default_rng(0)
  ids = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq))
  mask = np.ones_like(ids)
  tokens = ids.size
  flops_fwd = model_flops_per_token(cfg, args.seq) * tokens

  # --- jaxgrpo
  j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)

  def loss_fn(params):
    logits = M.logits(model, params, j_ids, j_mask)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], j_ids[:, 1:]).mean()

  fwd = jax.jit(lambda p: M.logits(model, p, j_ids, j_mask))
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
  j_fwd = timeit(lambda: fwd(params).block_until_ready(), args.repeats)
  j_bwd = timeit(lambda: jax.block_until_ready(fwd_bwd(params)), args.repeats)

  # --- transformers / torch
  t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)

  def t_forward():
    with torch.no_grad():
      hf(input_ids=t_ids, attention_mask=t_mask).logits

  def t_forward_backward():
    hf.zero_grad(set_to_none=True)
    out = hf(input_ids=t_ids, attention_mask=t_mask, labels=t_ids)
    out.loss.backward()

  hf.eval()
  t_fwd = timeit(t_forward, args.repeats)
  t_bwd = timeit(t_forward_backward, args.repeats)

  roof = matmul_roof()
  machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, torch {torch.__version__}"
  rows = []
  print(f"# SmolLM2-135M f32, batch {args.batch} × {args.seq} tokens — {machine}; "
        f"f32 matmul roof measured now: {roof:.0f} GFLOP/s (stated for this machine: ≈250)\n")
  print("| pass | jaxgrpo tok/s | jaxgrpo GFLOP/s (% of measured roof) | torch tok/s | torch GFLOP/s | "
        "jaxgrpo / torch |")
  print("|---|---|---|---|---|---|")
  for name, jt, tt, mult in (("forward", j_fwd, t_fwd, 1), ("forward+backward", j_bwd, t_bwd, 3)):
    jg, tg = flops_fwd * mult / jt / 1e9, flops_fwd * mult / tt / 1e9
    rows.append(dict(pass_=name, jax_s=jt, torch_s=tt, jax_tok_s=tokens / jt, torch_tok_s=tokens / tt,
                     jax_gflops=jg, torch_gflops=tg, speedup=tt / jt))
    print(f"| {name} | {tokens / jt:,.0f} | {jg:.0f} ({jg / roof:.0%}) | {tokens / tt:,.0f} | {tg:.0f} | "
          f"{tt / jt:.2f}× |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "roof_gflops": roof, "batch": args.batch, "seq": args.seq, "rows": rows}, f,
              indent=1)


if __name__ == "__main__":
  main()
