"""Named configurations.

* ``toy``: λ-GRPO's toy tree task (Table 1 of arXiv 2509.21154) with a small GPT-2-architecture model made here.
* ``smollm2_arithmetic``: SmolLM2-135M-Instruct (offline) on synthetic arithmetic, sized for a 2-core CPU.
* ``lambda_grpo_paper``: the λ-GRPO paper's downstream setting (DeepSeek-R1-Distill-Qwen-1.5B, OpenRS,
  4 × 6 completions of up to 4,096 tokens, lr 1e-6), with LoRA r=64, α=128 on every linear layer as in the
  authors' trainer; ``lambda_grpo_paper_full`` fine-tunes every weight.
* ``prpo_paper``: PRPO's setting (Qwen2.5-Math-1.5B on the MATH training set, 128 × 8 completions of up to
  2,048 tokens, a Qwen2.5-Math-PRM checkpoint as the PRM).

The paper presets need accelerators and local copies of the checkpoints and data (``model.checkpoint``,
``data.path``, ``objective.prm_path``); ``jaxgrpo plan --preset NAME`` works without them.
"""

from __future__ import annotations

from jaxgrpo.train.config import (
  DataSpec,
  EvalSpec,
  LoraSpec,
  ModelSpec,
  ObjectiveSpec,
  OptimSpec,
  RewardSpec,
  SamplingSpec,
  TrainConfig,
)

PRESETS = ("toy", "smollm2_arithmetic", "lambda_grpo_paper", "lambda_grpo_paper_full", "prpo_paper")

# The λ-GRPO authors' system prompt asks for the final answer in \boxed{}.
BOXED_SYSTEM_PROMPT = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves "
                       "it. The Assistant first thinks about the reasoning process and then provides the final answer "
                       "in \\boxed{}.")


def preset(name: str) -> TrainConfig:
  """The named configuration (see the module docstring)."""
  if name == "toy":
    return TrainConfig(name="toy", steps=250, output_dir="runs/toy", checkpoint_every=0)
  if name == "smollm2_arithmetic":
    # Calibrated in experiments/calibrate_arithmetic.py: one + or − of operands in [1, 30] starts
    # SmolLM2-135M-Instruct at 30.5% greedy accuracy on the held-out split; with the 0.1 format bonus 11% of
    # groups have zero reward variance at G = 8, T = 1.0 (39% with the math reward alone). Learning rate: 3e-6
    # took held-out accuracy 0.305 → 0.38 in 20 GRPO steps, 1e-5 took it to 0.61 (experiments/README.md §2).
    return TrainConfig(
        name="smollm2_arithmetic", steps=60, output_dir="runs/smollm2_arithmetic", checkpoint_every=10,
        log_rollouts_every=10,
        model=ModelSpec(checkpoint="smollm2"),
        sampling=SamplingSpec(group_size=8, max_new_tokens=48, temperature=1.0),
        objective=ObjectiveSpec(name="grpo", kl_beta=0.0, num_minibatches=1, prpo_k=3, prpo_min_gap=4),
        optim=OptimSpec(learning_rate=1e-5, max_grad_norm=1.0),
        data=DataSpec(source="arithmetic", prompts_per_step=4, num_ops=1, max_operand=30, ops="+-"),
        eval=EvalSpec(num_examples=200, every=10, greedy=True, batch_size=100),
        rewards=RewardSpec(names=("math", "format"), weights=(1.0, 0.1)),
    )
  if name in ("lambda_grpo_paper", "lambda_grpo_paper_full"):
    lora = LoraSpec(rank=64, alpha=128.0) if name == "lambda_grpo_paper" else LoraSpec()
    return TrainConfig(
        name=name, steps=1000, output_dir=f"runs/{name}", checkpoint_every=100,
        model=ModelSpec(checkpoint="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", dtype="bfloat16",
                        param_dtype="float32", remat="full", attention_chunk=512, lora=lora),
        sampling=SamplingSpec(group_size=6, max_new_tokens=4096, temperature=0.75),
        objective=ObjectiveSpec(name="lambda_grpo", kl_beta=0.0, logprob_chunk=512),
        optim=OptimSpec(learning_rate=1e-6),
        data=DataSpec(source="jsonl", prompts_per_step=4, path="data/openrs.jsonl", system_prompt=BOXED_SYSTEM_PROMPT),
        rewards=RewardSpec(names=("math",), weights=(1.0,)),
    )
  if name == "prpo_paper":
    return TrainConfig(
        name="prpo_paper", steps=1000, output_dir="runs/prpo_paper", checkpoint_every=100,
        model=ModelSpec(checkpoint="Qwen/Qwen2.5-Math-1.5B", dtype="bfloat16", param_dtype="float32", remat="full",
                        attention_chunk=512),
        sampling=SamplingSpec(group_size=8, max_new_tokens=2048, temperature=1.0),
        objective=ObjectiveSpec(name="prpo", kl_beta=0.001, clip_eps_low=0.2, clip_eps_high=0.2, prm="neural",
                                prm_path="checkpoints/Qwen2.5-Math-PRM-7B", logprob_chunk=512,
                                # 1,024 rows in one update: 4 micro-batches bring the planned peak on 8 × 80 GiB
                                # from 161 to 72 GiB per device (`jaxgrpo plan`; README, memory plan)
                                micro_batches=4),
        optim=OptimSpec(learning_rate=1e-6),
        data=DataSpec(source="jsonl", path="data/math_train.jsonl", prompts_per_step=128,
                      system_prompt="Please reason step by step, and put your final answer within \\boxed{}."),
        rewards=RewardSpec(names=("math",), weights=(1.0,)),
    )
  raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
