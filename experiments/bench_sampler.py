"""Benchmark: group sampling on SmolLM2-135M-Instruct (dequantised Q4_1), jaxgrpo's two engines vs transformers
``generate`` vs vLLM's CPU build, same prompts, same machine, one run.

Settings (G completions of each prompt, temperature 1, no top-k/top-p):
* ``fixed``: 8 chat prompts × G = 8 × 128 new tokens, EOS ignored, so every engine produces exactly 8,192 tokens;
  f32 and bf16.
* ``long256`` / ``long512``: 8 word problems × G = 8, EOS on, ``max_new_tokens`` 256 / 512: a long-tailed length
  distribution (most completions end early, a few run to the cap) — where finished rows and empty cache cost the
  static engine most; f32 and bf16.
* ``arith512``: 8 problems of the ``smollm2_arithmetic`` test split (the trainer's prompts) × G = 8, EOS on,
  ``max_new_tokens`` 512: answers of ~20–40 tokens with the odd sample that rambles to the cap — the long tail
  of an RL step with a generous cap.

jaxgrpo's params are cast to the compute dtype once before timing (as the trainer's sampler params are; an uncast
f32 checkpoint with a bf16 model would be cast again at every call).  Per engine and setting: one warm-up run
(compilation), then ``--repeats`` timed runs (the best is reported);
tokens/s counts completion tokens produced; useful/computed = tokens returned / rows decoded summed over decode
steps (static: B·G × the longest completion).  vLLM runs in its own venv (``--vllm-python``; see
``experiments/vllm_sampler.py``), skipped when not given.

    python experiments/bench_sampler.py --vllm-python /tmp/vllm_venv/bin/python
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from bench_step import roof_gflops, save_result  # the f32 matmul roof, measured the way bench_step.py measures it

CHAT = [
    "What is 17 * 23?", "Name three prime numbers.", "Explain gravity in one sentence.",
    "Write a haiku about the sea.", "What is the capital of France?", "Solve x + 5 = 12.",
    "List two uses of a paperclip.", "How many legs does a spider have?",
]
HERE = os.path.dirname(os.path.abspath(__file__))


def smollm2_tokenizer():
  """SmolLM2-135M-Instruct's checkpoint directory and its tokenizer, padding on the left (as the samplers take
  prompts)."""
  from transformers import AutoTokenizer

  from jaxgrpo.models import smollm2

  path = smollm2.hf_checkpoint_dir()
  tok = AutoTokenizer.from_pretrained(path)
  tok.padding_side = "left"
  return path, tok


def encode_chat(tok, questions) -> tuple[np.ndarray, np.ndarray]:
  """Questions as one user turn each of the chat template, left-padded: (input_ids, attention_mask) [B, P]."""
  texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
           for q in questions]
  batch = tok(texts, return_tensors="np", padding=True)
  return batch["input_ids"], batch["attention_mask"]


def sampling_params(tok, setting: dict, group: int, **extra):
  """A setting's ``SamplingParams`` (temperature 1; EOS on only where the setting says), as every engine here
  samples it."""
  from jaxgrpo.rollout import sampler

  eos = (tok.convert_tokens_to_ids(tok.eos_token),) if setting["eos"] else ()
  return sampler.SamplingParams(group_size=group, max_new_tokens=setting["new"], temperature=1.0, eos_ids=eos,
                                pad_id=tok.pad_token_id, **extra)


def _settings(tok, args):
  encode = functools.partial(encode_chat, tok)

  words = [json.loads(line)["prompt"] for line in open(os.path.join(HERE, "..", "data", "word_problems.jsonl"))]
  out = []
  dtypes = getattr(args, "dtypes", "float32,bfloat16").split(",")
  if "fixed" in args.settings:
    for dtype in dtypes:
      out.append(dict(name=f"fixed_{dtype}", kind="fixed", dtype=dtype, new=128, eos=False,
                      prompts=encode(CHAT[: args.prompts])))
  if "arith512" in args.settings:
    from jaxgrpo.tasks import sources as data_lib
    from jaxgrpo.train import presets

    cfg = presets.preset("smollm2_arithmetic")
    test = data_lib.make_eval_source(cfg.data, cfg.eval)
    out.append(dict(name="arith512_float32", kind="arith512", dtype="float32", new=512, eos=True,
                    prompts=encode([e.prompt for e in test.examples[: args.prompts]])))
  for t in (256, 512):
    if f"long{t}" in args.settings:
      for dtype in dtypes:
        out.append(dict(name=f"long{t}_{dtype}", kind=f"long{t}", dtype=dtype, new=t, eos=True,
                        prompts=encode(words[: args.prompts])))
  return out


def vllm_job(path: str, settings: list[dict], group: int, repeats: int) -> str:
  """A job file for ``vllm_sampler.py``: the settings' prompts as unpadded token ids; returns its path."""
  job = dict(model=path, repeats=repeats, max_model_len=1024,
             settings=[dict(name=s["name"], dtype=s["dtype"], group=group, new=s["new"], ignore_eos=not s["eos"],
                            prompt_ids=[[int(t) for t, m in zip(i, k) if m] for i, k in zip(*s["prompts"])])
                       for s in settings])
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(job, f)
  return f.name


def run_vllm(python: str, job: str, dtype: str) -> tuple[list[dict], str | None]:
  """``vllm_sampler.py`` on ``job``'s settings of ``dtype`` in vLLM's venv (one process per dtype): its result
  lines, and its stderr tail when it failed (else None)."""
  env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4"))
  proc = subprocess.run([python, os.path.join(HERE, "vllm_sampler.py"), job, dtype], env=env, capture_output=True,
                        text=True)
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  return rows, (proc.stderr[-3000:] if proc.returncode else None)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--settings", default="fixed,long256,long512")
  p.add_argument("--engines", default="static,continuous,transformers,vllm",
                 help="continuous_gathered: the continuous engine with SlotMask.group off (each slot's prompt KV "
                 "gathered), the earlier read")
  p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes of the fixed and long settings")
  p.add_argument("--transformers-settings", default="fixed,long256",
                 help="settings transformers generate runs in (it is the slowest engine)")
  p.add_argument("--vllm-python", default="", help="python of a venv with vllm-cpu (skipped when empty)")
  p.add_argument("--out", default=os.path.join(HERE, "results", "bench_sampler.json"))
  args = p.parse_args()

  import torch
  from transformers import AutoModelForCausalLM

  import jaxgrpo.models as M
  from jaxgrpo.rollout import continuous, sampler

  path, tok = smollm2_tokenizer()
  settings = _settings(tok, args)
  engines = args.engines.split(",")
  g = args.group
  rows = []

  def record(setting, engine, seconds, tokens, computed=None, extra=None):
    best = min(seconds)
    row = dict(setting=setting["name"], engine=engine, seconds=seconds, best_s=best, tokens=tokens,
               tokens_per_s=tokens / best, useful_frac=None if computed is None else tokens / computed, **(extra or {}))
    rows.append(row)
    print(json.dumps(row), flush=True)

  # vLLM first (its own process; it frees the cores when done)
  if "vllm" in engines and args.vllm_python:
    job = vllm_job(path, settings, g, args.repeats)
    for dtype in ("float32", "bfloat16"):
      vrows, failed = run_vllm(args.vllm_python, job, dtype)
      for r in vrows:
        record({"name": r["name"]}, "vllm", r["seconds"], int(np.mean(r["tokens"])))
      if failed:
        print(f"vLLM ({dtype}) failed:", failed, file=sys.stderr)

  torch.set_num_threads(os.cpu_count())
  models = {}
  for s in settings:
    ids, mask = s["prompts"]
    n_prompts = ids.shape[0]
    if s["dtype"] not in models:  # params cast to the compute dtype once, as the trainer's sampler params are
      model, params = M.from_pretrained(path, s["dtype"])
      models[s["dtype"]] = model, M.cast_params(params, s["dtype"])
    model, params = models[s["dtype"]]
    sp = sampling_params(tok, s, g)
    eos = sp.eos_ids
    kv = continuous.kv_bytes(model, sp, n_prompts, ids.shape[1], 0)
    for engine in engines:
      if engine == "static":
        def once(seed):
          out = sampler.sample_groups(model, params, ids, mask, jax.random.PRNGKey(seed), sp)
          jax.block_until_ready(out)
          lengths = np.asarray(out.lengths)
          return int(lengths.sum()), lengths.size * int(lengths.max()), {}
      elif engine in ("continuous", "continuous_gathered"):
        cp = (continuous.ContinuousParams(prompt_major=False) if engine == "continuous_gathered"
              else continuous.ContinuousParams())

        def once(seed, cp=cp):
          out, st = continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(seed), sp, cp=cp)
          jax.block_until_ready(out)
          return st.useful_tokens, st.slot_steps, {"host_calls": st.host_calls,
                                                   "slot_counts": sorted(set(st.slot_counts))}
      elif engine == "transformers":
        if s["kind"] not in args.transformers_settings.split(","):
          continue
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, s["dtype"])).eval()
        t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)

        def once(seed):
          torch.manual_seed(seed)
          with torch.no_grad():
            out = hf.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, num_return_sequences=g, max_new_tokens=s["new"],
                              min_new_tokens=None if s["eos"] else s["new"], pad_token_id=tok.pad_token_id,
                              eos_token_id=eos[0] if eos else None)
          comp = out[:, ids.shape[1]:].numpy()
          if eos:  # tokens up to and including the first EOS
            ended = comp == eos[0]
            first = np.where(ended.any(1), ended.argmax(1) + 1, comp.shape[1])
            return int(first.sum()), comp.shape[0] * comp.shape[1], {}
          return comp.size, comp.size, {}
      else:
        continue
      once(0)  # warm-up: compilation (and the buckets this length distribution reaches)
      seconds, tokens, computed, extra = [], [], [], {}
      for r in range(args.repeats):
        t0 = time.perf_counter()
        n_tok, n_comp, extra = once(r + 1)
        seconds.append(time.perf_counter() - t0)
        tokens.append(n_tok)
        computed.append(n_comp)
      if engine in ("static", "continuous", "continuous_gathered"):
        extra = {**extra, "kv_bytes": kv[engine.split("_")[0]]}
      record(s, engine, seconds, int(np.mean(tokens)), float(np.mean(computed)), extra)
      if engine == "transformers":
        del hf

  roof = roof_gflops()
  machine = (f"{platform.machine()}, {os.cpu_count()} cores, f32 matmul roof {roof:.0f} GFLOP/s (measured in this "
             f"run), jax {jax.__version__}, torch {torch.__version__}")
  result = {"machine": machine, "model": "SmolLM2-135M-Instruct (dequantised Q4_1)", "group": g,
            "prompts": args.prompts, "repeats": args.repeats, "rows": rows}
  save_result(args.out, result)
  print(table(result))


def table(result) -> str:
  lines = [f"# {result['model']}, {result['prompts']} prompts × G = {result['group']} — {result['machine']}\n",
           "| setting | engine | best s | tokens | tokens/s | useful / computed | vs static | vs transformers | "
           "vs vLLM |", "|---|---|---|---|---|---|---|---|---|"]
  by = {(r["setting"], r["engine"]): r for r in result["rows"]}
  for r in result["rows"]:
    ref = lambda e: by.get((r["setting"], e))
    ratio = lambda e: f"{r['tokens_per_s'] / ref(e)['tokens_per_s']:.2f}×" if ref(e) else "—"
    uf = "—" if r["useful_frac"] is None else f"{r['useful_frac']:.2f}"
    lines.append(f"| {r['setting']} | {r['engine']} | {r['best_s']:.1f} | {r['tokens']:,} | {r['tokens_per_s']:.0f} | "
                 f"{uf} | {ratio('static')} | {ratio('transformers')} | {ratio('vllm')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
