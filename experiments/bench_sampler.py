"""Benchmark: group sampling throughput, jaxgrpo vs transformers generate (torch CPU), same run.

SmolLM2-135M-Instruct (f32), 8 chat prompts × G=8 completions, 128 new tokens,
temperature 1.0, no top-k/top-p, EOS disabled in both so each run produces
exactly 8 × 8 × 128 tokens.

    python experiments/bench_sampler.py [--prompts 8 --group 8 --new 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

PROMPTS = [
    "What is 17 * 23?", "Name three prime numbers.", "Explain gravity in one sentence.",
    "Write a haiku about the sea.", "What is the capital of France?", "Solve x + 5 = 12.",
    "List two uses of a paperclip.", "How many legs does a spider have?",
]


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--new", type=int, default=128)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_sampler.json"))
  args = p.parse_args()

  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  import jaxgrpo.models as M
  from jaxgrpo.models import smollm2
  from jaxgrpo.rollout import sampler

  path = smollm2.hf_checkpoint_dir()
  tok = AutoTokenizer.from_pretrained(path)
  tok.padding_side = "left"
  texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
           for q in (PROMPTS * 4)[: args.prompts]]
  batch = tok(texts, return_tensors="np", padding=True)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  n_tokens = args.prompts * args.group * args.new

  model, params = M.from_pretrained(path)

  def run_jax(seed):
    out = sampler.sample(model, params, ids, mask, jax.random.PRNGKey(seed), group_size=args.group,
                         max_new_tokens=args.new, temperature=1.0)
    jax.block_until_ready(out)
    return out

  t0 = time.perf_counter()
  out = run_jax(0)
  compile_s = time.perf_counter() - t0
  assert int(out.lengths.sum()) == n_tokens
  jax_s = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    run_jax(r + 1)
    jax_s.append(time.perf_counter() - t0)

  torch.set_num_threads(os.cpu_count())
  hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)

  def run_torch(seed):
    torch.manual_seed(seed)
    with torch.no_grad():
      return hf.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=True, temperature=1.0, top_k=0,
                         top_p=1.0, num_return_sequences=args.group, max_new_tokens=args.new,
                         min_new_tokens=args.new, pad_token_id=tok.pad_token_id)

  torch_s = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    g = run_torch(r)
    torch_s.append(time.perf_counter() - t0)
  assert g.shape == (args.prompts * args.group, ids.shape[1] + args.new)

  j, t = min(jax_s), min(torch_s)
  machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, torch {torch.__version__}"
  print(f"# SmolLM2-135M-Instruct f32 sampling, {args.prompts} prompts × G={args.group} × {args.new} new tokens "
        f"(prompt length {ids.shape[1]}) — {machine}\n")
  print("| engine | seconds | tokens/s | speed-up |")
  print("|---|---|---|---|")
  print(f"| transformers generate (torch) | {t:.2f} | {n_tokens / t:,.0f} | 1.00× |")
  print(f"| jaxgrpo sampler | {j:.2f} | {n_tokens / j:,.0f} | {t / j:.2f}× |")
  print(f"\njaxgrpo first call (compile + run): {compile_s:.1f} s")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "tokens": n_tokens, "jax_s": jax_s, "torch_s": torch_s,
               "compile_s": compile_s, "speedup": t / j}, f, indent=1)


if __name__ == "__main__":
  main()
