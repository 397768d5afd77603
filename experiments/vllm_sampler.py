"""vLLM's CPU build on the same prompts as ``bench_sampler.py`` (run by it, in vLLM's own venv; not importable here).

Reads a JSON job file {"model": dir, "settings": [{"name", "prompt_ids", "group", "new", "ignore_eos", "dtype"}],
"repeats": n} and prints one JSON line per setting: seconds of each timed run (after one warm-up run) and the
completion tokens produced.  Prompts go in as token ids (the same ids jaxgrpo and transformers get); each prompt
is one request with n = G samples (vLLM shares the prompt's KV blocks between them).

No per-request ``seed``: vLLM 0.32's CPU worker rewinds a seeded request's generator with ``set_offset``, which CPU
``torch.Generator``s lack ("CPU Generator does not use offset"), and the engine core dies — what killed the
long-tailed runs (EOS on) before. The engine's own ``seed`` fixes the draws instead.

    VLLM_CPU_KVCACHE_SPACE=4 /path/to/vllm-venv/bin/python experiments/vllm_sampler.py job.json [float32|bfloat16]
"""

import json
import sys
import time


def once(llm, s, SamplingParams, TokensPrompt):
  """One timed generate call of setting ``s``: (seconds, completion tokens)."""
  prompts = [TokensPrompt(prompt_token_ids=ids) for ids in s["prompt_ids"]]
  sp = SamplingParams(n=s["group"], temperature=1.0, top_p=1.0, top_k=-1, max_tokens=s["new"],
                      ignore_eos=s["ignore_eos"])
  t0 = time.perf_counter()
  outs = llm.generate(prompts, sp, use_tqdm=False)
  dt = time.perf_counter() - t0
  return dt, sum(len(c.token_ids) for o in outs for c in o.outputs)


def main():
  job = json.load(open(sys.argv[1]))
  from vllm import LLM, SamplingParams
  from vllm.inputs import TokensPrompt

  by_dtype = {}
  only = sys.argv[2] if len(sys.argv) > 2 else None  # one dtype per process (one engine per process is safest)
  for s in job["settings"]:
    if only is None or s["dtype"] == only:
      by_dtype.setdefault(s["dtype"], []).append(s)
  for dtype, settings in by_dtype.items():
    llm = LLM(model=job["model"], dtype=dtype, seed=0, enforce_eager=False, max_model_len=job["max_model_len"],
              max_num_seqs=job.get("max_num_seqs", 256))
    for s in settings:
      once(llm, s, SamplingParams, TokensPrompt)  # warm-up
      runs = [once(llm, s, SamplingParams, TokensPrompt) for _ in range(job["repeats"])]
      print(json.dumps({"name": s["name"], "dtype": dtype, "seconds": [r[0] for r in runs],
                        "tokens": [r[1] for r in runs]}), flush=True)
    del llm


if __name__ == "__main__":
  main()
