"""Training configuration: frozen dataclasses, validated when built, loadable from YAML.

    cfg = jaxgrpo.train.load_config("run.yaml", overrides=["objective.name=lambda_grpo", "steps=100"])
    cfg = jaxgrpo.train.preset("toy")

Every value is checked when the config is made (from code, YAML or ``--set``),
not at the first trace: unknown keys, wrong types (including non-integer
counts), out-of-range values and enum-like fields outside their choices raise
``ValueError`` naming the key.  Paths have ``~`` expanded.  Settings that run
but cannot learn (temperature 0, a group of one) warn.

The choices of enum-like fields are declared once, in the module that implements them (the aggregations in
``core.objectives``, PRPO's in ``core.prpo``, model families and dtypes in ``models.config``, data sources in
``tasks.sources``); the sampling rules are the sampler's own (``rollout.sampler.check_sampling``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import warnings
from typing import Any, Literal

import yaml

from jaxgrpo.core.mismatch import Correction, CorrectionLevel
from jaxgrpo.core.objectives import Aggregation, KLEstimator, RatioLevel, Surrogate
from jaxgrpo.core.prpo import Cuts, Normalization, Outcome
from jaxgrpo.core.shaping import RewardNormalization
from jaxgrpo.models import policy
from jaxgrpo.models.config import DTYPES, LORA_TARGETS, REMAT_POLICIES, Family
from jaxgrpo.models.tokenizers import RESERVED_TEMPLATE_KWARGS
from jaxgrpo.rollout.sampler import check_kv_dtype, check_sampling
from jaxgrpo.tasks.sources import AnswerFormat, SourceName
from jaxgrpo.train.packing import SharePrefix

Objective = Literal["grpo", "lambda_grpo", "prpo"]
Schedule = Literal["constant", "cosine", "linear"]
Optimizer = Literal["adamw", "sgd"]
NonFinite = Literal["stop", "skip"]
SamplerEngine = Literal["auto", "static", "continuous"]
ReadGrowth = Literal["pow2", "half_octave", "linear"]
KvLayout = Literal["layers", "stacked"]
DecodeKernel = Literal["auto", "xla", "cpu"]
ArithmeticSplit = Literal["expression", "commuted"]


def _require(ok: bool, key: str, expected: str, value) -> None:
  if not ok:
    raise ValueError(f"config key {key!r} must be {expected}; got {value!r}")


def _expand(path: str | None) -> str | None:
  return None if path is None else os.path.expanduser(path)


def _check_literals(spec, prefix: str) -> None:
  """Enum-like fields (typed ``Literal[...]``) must hold one of their choices."""
  for f in dataclasses.fields(spec):
    t = typing.get_type_hints(type(spec))[f.name]
    if typing.get_origin(t) is Literal:
      v = getattr(spec, f.name)
      _require(v in typing.get_args(t), prefix + f.name, f"one of {list(typing.get_args(t))}", v)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """LoRA adapters on the named projections (rank 0 = off: full fine-tuning).  Dropout is not applied (0)."""

  rank: int = 0  # adapter rank r (0: no adapters, every weight is trained)
  alpha: float = 16.0  # the adapters' scale is alpha / rank (PEFT's lora_alpha)
  dropout: float = 0.0  # must be 0: LoRA dropout is not implemented
  targets: tuple[str, ...] = LORA_TARGETS  # which projections get adapters: q k v o gate up down

  def __post_init__(self):
    _require(self.rank >= 0, "model.lora.rank", ">= 0 (0 = off)", self.rank)
    _require(self.alpha > 0, "model.lora.alpha", "> 0", self.alpha)
    _require(self.dropout == 0, "model.lora.dropout", "0 (LoRA dropout is not implemented)", self.dropout)
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    _require(not bad and len(self.targets) > 0, "model.lora.targets", f"a non-empty subset of {list(LORA_TARGETS)}",
             list(self.targets))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Either an HF checkpoint directory, ``smollm2`` (the offline SmolLM2-135M-Instruct), or a config made here
  (the fields after ``lora``: only for a model made from a config, which is wired to the toy task)."""

  checkpoint: str | None = None  # a local HF directory | "smollm2" | None (then build from the fields below)
  dtype: str = "float32"  # compute dtype (activations, matmuls, the sampler's weights)
  param_dtype: str = "float32"  # master weights and optimizer state (keep float32: bf16 updates round away)
  remat: str = "none"  # none | full | a jax.checkpoint policy name (dots_saveable, ...) on each scanned layer
  attention_chunk: int = 0  # query block size of full-sequence attention (0 = unchunked)
  lora: LoraSpec = LoraSpec()  # adapters (rank 0 = full fine-tuning)
  family: Family = "gpt2"  # architecture of a model made from a config
  vocab_size: int = 3  # the toy task's vocabulary (BOS, L, R)
  hidden_size: int = 64  # model width D
  num_layers: int = 2  # transformer blocks
  num_heads: int = 4  # attention heads (key/value heads too)
  intermediate_size: int = 256  # MLP width
  max_position_embeddings: int = 16  # longest prompt + completion

  def __post_init__(self):
    object.__setattr__(self, "checkpoint", _expand(self.checkpoint))
    _check_literals(self, "model.")
    _require(self.dtype in DTYPES, "model.dtype", f"one of {list(DTYPES)}", self.dtype)
    _require(self.param_dtype in DTYPES, "model.param_dtype", f"one of {list(DTYPES)}", self.param_dtype)
    _require(self.remat in REMAT_POLICIES, "model.remat", f"one of {list(REMAT_POLICIES)}", self.remat)
    _require(self.attention_chunk >= 0, "model.attention_chunk", ">= 0", self.attention_chunk)
    for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
      _require(getattr(self, k) >= 1, f"model.{k}", ">= 1", getattr(self, k))
    if self.hidden_size % self.num_heads:
      raise ValueError(f"config key 'model.hidden_size' ({self.hidden_size}) must be divisible by 'model.num_heads' "
                       f"({self.num_heads})")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """How each step's completions are drawn (the sampler's rules: ``rollout.sampler.check_sampling``)."""

  group_size: int = 16  # G completions per prompt
  max_new_tokens: int = 4  # T, the completion buffer (completions are cut there: finish_reason "length")
  temperature: float = 1.0  # sampling temperature, part of the policy (0 = greedy: no learning signal)
  top_k: int = 0  # sample from the k most likely tokens only (0 = off; the update then recomputes π_old)
  top_p: float = 1.0  # nucleus sampling (1 = off; below 1 the update recomputes π_old)
  prompt_multiple: int = 8  # prompts left-padded to a multiple of this (fewer shapes: fewer compilations)
  trim: bool = True  # drop the all-padding tail of the completion buffer before the update
  dtype: str | None = None  # the sampler's compute dtype (None: model.dtype); bfloat16 beside f32 training = mismatch
  engine: SamplerEngine = "auto"  # static | continuous (slots + queue, data-parallel) | auto (1 device: continuous)
  # continuous engine's decode slots (0: one per sample, data.prompts_per_step × group_size; then the slots are
  # prompt-major and read each prompt's KV once per group: 1.11–1.17× per decode step on SmolLM2/CPU)
  slots: int = 0
  # how the continuous engine's completion-cache reads grow (one compilation per read length): pow2 (up to 2× the
  # need) | half_octave (2^k and 3·2^k: up to 1.5×, twice the compilations) | linear (multiples of 64)
  read_growth: ReadGrowth = "half_octave"
  # where the continuous engine keeps the slots' KV: layers (a buffer per layer sized to the read plus a per-call
  # buffer, the layers unrolled: nothing copied per decode step) | stacked ([L, S, KV, T, Dh], a layer scan that
  # copies each layer's read window every step; the earlier layout)
  kv_layout: KvLayout = "layers"
  # the layers layout's decode attention over the completion KV: auto (jaxgrpo.kernels' C++ kernel on XLA:CPU with
  # a bf16 KV cache where it builds, else XLA's ops) | xla | cpu (the kernel; refused where it cannot run)
  decode_kernel: DecodeKernel = "auto"
  kv_dtype: str | None = None  # the KV cache's dtype (None: the sampler's compute dtype); bfloat16 halves the cache

  def __post_init__(self):
    _check_literals(self, "sampling.")
    _require(self.slots >= 0, "sampling.slots", ">= 0 (0 = one per sample)", self.slots)
    if self.kv_dtype is not None:
      check_kv_dtype(self.kv_dtype, "config key 'sampling.kv_dtype'")
    if self.dtype is not None:
      _require(self.dtype in DTYPES, "sampling.dtype", f"one of {list(DTYPES)} or null (the model's)", self.dtype)
    check_sampling(group_size=self.group_size, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                   top_k=self.top_k, top_p=self.top_p, name=lambda field: f"config key 'sampling.{field}'")
    _require(self.prompt_multiple >= 1, "sampling.prompt_multiple", ">= 1", self.prompt_multiple)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """The objective: advantages (GRPO / λ-GRPO / PRPO), token weights, the clipped loss and how updates are made."""

  name: Objective = "grpo"  # grpo | lambda_grpo (1/|λ| token weights) | prpo (entropy segments + a PRM)
  lambda_weights: bool = False  # add λ-GRPO's 1/|λ| weights to any objective (e.g. PRPO + λ)
  aggregation: Aggregation = "token_mean"  # token_mean (DAPO) | seq_mean (GRPO) | constant (Dr. GRPO) | weight_mean
  scale_rewards: bool = True  # divide advantages by the group's reward std (False: Dr. GRPO, centred only)
  ddof: int = 1  # the group std's delta degrees of freedom (1: sample std, as TRL/verl; 0: population)
  eps: float = 1e-4  # added to the group std
  clip_eps_low: float = 0.2  # PPO clip: the ratio is clipped below at 1 − clip_eps_low
  clip_eps_high: float = 0.2  # ... and above at 1 + clip_eps_high (DAPO's clip-higher: 0.28)
  kl_beta: float = 0.0  # coefficient of the k3 KL to the reference policy (0: no reference model)
  num_iterations: int = 1  # μ: update passes over each batch
  num_minibatches: int = 1  # optimizer steps per pass
  micro_batches: int = 1  # gradient accumulation inside each minibatch (same update, less memory)
  logprob_chunk: int = 0  # completion positions per LM-head chunk in the loss (0 = unchunked)
  recompute_old_logp: bool = False  # recompute π_old with a forward pass instead of using the sampler's
  ratio_level: RatioLevel = "token"  # PPO ratio per token | per sequence (GSPO) | sequence_token (GSPO-token)
  # the policy term: clip (PPO's clipped surrogate) | cispo (MiniMax-M1: clip(ratio, 1 − clip_eps_low,
  # 1 + clip_eps_high) as a constant weight on log π, so no token's gradient is cut off; TRL's epsilon_high is
  # 1 + clip_eps_high here, and clip_eps_low >= 1 leaves the ratio unbounded below, as in the paper)
  surrogate: Surrogate = "clip"
  kl_estimator: KLEstimator = "k3"  # k1 | k2 | k3 estimate of KL(π_θ‖π_ref) (kl_beta > 0)
  kl_in_reward: bool = False  # the KL as a penalty folded into the rewards (r − β·Σ_t KL) instead of a loss term
  # the KL loss term times π_θ/π_old per token: DeepSeek-V3.2's unbiased KL estimate from π_old's samples (TRL's
  # use_bias_correction_kl); matters when μ > 1, minibatches or stale rollouts make π_θ ≠ π_old
  kl_importance_weight: bool = False
  entropy_coef: float = 0.0  # entropy bonus c_H ≥ 0 (entropies come from the loss's own log-prob pass)
  mask_truncated: bool = False  # completions cut at max_new_tokens are left out of the loss (DAPO)
  # ρ in (0, 1]: the policy gradient flows only through the step's highest-entropy ρ of completion tokens (the
  # "80/20" paper, arXiv 2506.01939; TRL's name; the sampler's entropies, one threshold per step: the other tokens'
  # advantages are 0, their KL term and the denominator stay); 1 = all
  top_entropy_quantile: float = 1.0
  # δ ≥ 0: DeepSeek-V3.2's off-policy sequence masking (TRL's name): a completion with negative advantage whose mean
  # per-token log(π_sampler/π_θ) exceeds δ leaves the policy-gradient term (not the KL term); null = off
  off_policy_mask_threshold: float | None = None
  rollout_correction: Correction = "none"  # sampler↔trainer mismatch: none | tis (truncate) | mis (mask)
  rollout_correction_level: CorrectionLevel = "token"  # weight per token, or the sequence's geometric mean
  rollout_correction_cap: float = 3.0  # C > 1: tis truncates the weight at C; mis zeroes it outside [1/C, C]
  # what the update computes once per group (train.packing): none | prompt (the prompt) | tree (every shared prefix)
  # | auto (per step, whichever computes the fewest positions; none when packing saves nothing)
  share_prefix: SharePrefix = "auto"
  # PRPO
  prpo_k: int = 5  # entropy spikes considered per completion
  prpo_min_gap: int = 10  # minimum tokens between kept cuts (position 0 counts as a cut)
  prpo_cuts: Cuts = "entropy"  # where the k candidate cuts come from: entropy spikes (the paper) | random
  #   positions | uniform (evenly spaced): the controls, same min_gap rule
  prpo_normalization: Normalization = "fixed"  # fixed prior (the paper) | relative (group statistics; collapses)
  # σ0 of the fixed prior: 1/√12, the paper's (core.prpo.UNIFORM_STD, to the last bit: saved configs keep this
  # literal); the authors' code uses √(1/24)
  prpo_prior_std: float = 0.28867513459481287
  prpo_outcome: Outcome = "centered"  # β_i = r_i − mean(r) (the authors' code) | std (the GRPO advantage)
  prm: str = "arithmetic"  # arithmetic | neural (needs prm_path) | module:function
  prm_path: str | None = None  # a Qwen2.5-Math-PRM-style HF directory for prm=neural
  prm_separator: str = "<extra_0>"  # the neural PRM's step separator token

  def __post_init__(self):
    object.__setattr__(self, "prm_path", _expand(self.prm_path))
    _check_literals(self, "objective.")
    _require(self.ddof in (0, 1), "objective.ddof", "0 or 1", self.ddof)
    _require(self.eps >= 0, "objective.eps", ">= 0", self.eps)
    _require(self.clip_eps_low >= 0, "objective.clip_eps_low", ">= 0", self.clip_eps_low)
    _require(self.clip_eps_high >= 0, "objective.clip_eps_high", ">= 0", self.clip_eps_high)
    _require(self.kl_beta >= 0, "objective.kl_beta", ">= 0", self.kl_beta)
    _require(self.num_iterations >= 1, "objective.num_iterations", ">= 1", self.num_iterations)
    _require(self.num_minibatches >= 1, "objective.num_minibatches", ">= 1", self.num_minibatches)
    _require(self.micro_batches >= 1, "objective.micro_batches", ">= 1", self.micro_batches)
    _require(self.logprob_chunk >= 0, "objective.logprob_chunk", ">= 0", self.logprob_chunk)
    _require(self.entropy_coef >= 0, "objective.entropy_coef", ">= 0", self.entropy_coef)
    _require(self.rollout_correction_cap > 1, "objective.rollout_correction_cap", "> 1", self.rollout_correction_cap)
    if self.kl_in_reward:
      _require(self.kl_beta > 0, "objective.kl_beta", "> 0 when objective.kl_in_reward is true", self.kl_beta)
    if self.kl_importance_weight:
      _require(self.kl_beta > 0 and not self.kl_in_reward, "objective.kl_importance_weight",
               "false without a KL loss term (kl_beta > 0, kl_in_reward false)", self.kl_importance_weight)
    if self.off_policy_mask_threshold is not None:
      _require(self.off_policy_mask_threshold >= 0, "objective.off_policy_mask_threshold",
               ">= 0 (a mean log-ratio in nats) or null (off)", self.off_policy_mask_threshold)
    _require(0 < self.top_entropy_quantile <= 1, "objective.top_entropy_quantile",
             "in (0, 1] (the fraction of tokens kept; 1 = all)", self.top_entropy_quantile)
    if self.top_entropy_quantile < 1:
      _require(self.ratio_level != "sequence", "objective.ratio_level",
               "'token' or 'sequence_token' with objective.top_entropy_quantile < 1 (a sequence-level term has no "
               "tokens to mask)", self.ratio_level)
    if self.ratio_level == "sequence":
      _require(self.surrogate == "clip", "objective.surrogate",
               "'clip' with objective.ratio_level = sequence (CISPO weighs each token's log-prob: use "
               "'sequence_token')", self.surrogate)
      _require(self.name != "prpo", "objective.ratio_level",
               "'token' or 'sequence_token' for objective.name = prpo (its advantages are per token; GSPO's "
               "sequence ratio needs one per completion)", self.ratio_level)
      _require(not self.uses_lambda, "objective.ratio_level",
               "'token' or 'sequence_token' with λ weights (a sequence-level term has no tokens to weigh)",
               self.ratio_level)
      _require(self.rollout_correction == "none" or self.rollout_correction_level == "sequence",
               "objective.rollout_correction_level", "'sequence' with objective.ratio_level = sequence (one "
               "importance weight per completion, like its ratio)", self.rollout_correction_level)
    _require(self.prpo_k >= 1, "objective.prpo_k", ">= 1", self.prpo_k)
    _require(self.prpo_min_gap >= 1, "objective.prpo_min_gap", ">= 1", self.prpo_min_gap)
    _require(self.prpo_prior_std > 0, "objective.prpo_prior_std", "> 0 (the fixed prior's σ0)", self.prpo_prior_std)
    _require(self.prm in ("arithmetic", "neural") or ":" in self.prm, "objective.prm",
             "'arithmetic', 'neural' or 'module:function'", self.prm)
    if self.name == "prpo" and self.prm == "neural":
      _require(bool(self.prm_path), "objective.prm_path", "a PRM checkpoint directory when objective.prm = neural",
               self.prm_path)

  @property
  def uses_lambda(self) -> bool:
    return self.name == "lambda_grpo" or self.lambda_weights

  @property
  def optimizer_steps_per_batch(self) -> int:
    return self.num_iterations * self.num_minibatches


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """The optimizer (optax) and its learning-rate schedule."""

  optimizer: Optimizer = "adamw"  # adamw | sgd
  learning_rate: float = 1e-3  # peak learning rate
  schedule: Schedule = "constant"  # constant | cosine | linear (decay to 0 at the last step), after the warmup
  warmup_steps: int = 0  # linear warmup from 0
  weight_decay: float = 0.0  # AdamW's decoupled weight decay
  b1: float = 0.9  # Adam's first-moment decay
  b2: float = 0.999  # Adam's second-moment decay
  max_grad_norm: float = 1.0  # global-norm gradient clipping (0 = no clipping)

  def __post_init__(self):
    _check_literals(self, "optim.")
    _require(self.learning_rate > 0, "optim.learning_rate", "> 0", self.learning_rate)
    _require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
    _require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
    _require(0 <= self.b1 < 1, "optim.b1", "in [0, 1)", self.b1)
    _require(0 <= self.b2 < 1, "optim.b2", "in [0, 1)", self.b2)
    _require(self.max_grad_norm >= 0, "optim.max_grad_norm", ">= 0 (0 = off)", self.max_grad_norm)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Where the prompts come from (``tasks.sources``), and the synthetic tasks' parameters."""

  source: SourceName = "toy_tree"  # toy_tree | arithmetic | jsonl | tfds | hf (local HF `datasets` files)
  prompts_per_step: int = 1  # B prompts per step (B × G completions)
  seed: int = 0  # the stream's seed (arithmetic problems, JSONL/TFDS/HF epoch shuffles)
  path: str | None = None  # jsonl file; TFDS data_dir; hf: a local file or directory, or parquet|json|arrow|csv
  tfds_name: str | None = None  # e.g. gsm8k
  tfds_split: str = "train"  # the TFDS split trained on
  data_files: tuple[str, ...] = ()  # hf: the local files (globs) for a builder path (datasets' data_files)
  split: str = "train"  # hf: the split trained on
  prompt_field: str = "prompt"  # hf: the column holding the user turn (text)
  answer_field: str = "answer"  # hf: the column holding the reference answer
  answer_format: AnswerFormat = "auto"  # hf: plain | gsm8k ("#### 42") | boxed (MATH's \boxed{}) | auto (by content)
  system_prompt: str | None = None  # chat system turn (None or "": no system turn, the template's own default)
  chat_template_kwargs: dict = dataclasses.field(default_factory=dict)  # extra variables of the chat template
  #   (e.g. {enable_thinking: false} for Qwen3); each must be a variable the template reads
  dynamic_sampling: bool = False  # DAPO: drop zero-variance groups, sample more prompts to fill the step
  max_sampling_rounds: int = 4  # sampler calls per step at most (each takes prompts_per_step new prompts)
  # toy tree task
  target: str = "LLRL"  # the target leaf (+1)
  n_shared: int = 1  # leaves sharing the target's first n_shared tokens get r_neg
  r_neg: float = -1.0  # their reward
  r_other: float = 0.7  # every other leaf's reward
  # arithmetic task: difficulty
  num_ops: int = 1  # operations per problem
  max_operand: int = 30  # operands drawn from [1, max_operand]
  ops: str = "+-"  # operators drawn from this set (subset of "+-*")
  instruction: str = "Put the final answer in \\boxed{}."  # appended to every arithmetic prompt
  split_by: ArithmeticSplit = "expression"  # arithmetic: what the train/test split hashes — the expression text,
  #   or "commuted": commuted forms (b + a) on one side, and a validation split (eval.split: validation)

  def __post_init__(self):
    object.__setattr__(self, "path", _expand(self.path))
    _check_literals(self, "data.")
    _require(self.prompts_per_step >= 1, "data.prompts_per_step", ">= 1", self.prompts_per_step)
    _require(self.max_sampling_rounds >= 1, "data.max_sampling_rounds", ">= 1", self.max_sampling_rounds)
    _require(len(self.target) == 4 and not set(self.target) - {"L", "R"}, "data.target", "4 characters of L/R",
             self.target)
    _require(0 <= self.n_shared <= 4, "data.n_shared", "in [0, 4]", self.n_shared)
    _require(1 <= self.num_ops <= 4, "data.num_ops", "in [1, 4]", self.num_ops)
    _require(self.max_operand >= 2, "data.max_operand", ">= 2", self.max_operand)
    _require(bool(self.ops) and not set(self.ops) - set("+-*"), "data.ops", "a non-empty subset of '+-*'", self.ops)
    if self.source == "jsonl":
      _require(bool(self.path), "data.path", "a JSONL file for data.source = jsonl", self.path)
    if self.source == "hf":
      _require(bool(self.path), "data.path", "a local dataset file or directory, or parquet|json|arrow|csv with "
               "data.data_files, for data.source = hf", self.path)
    _require(isinstance(self.chat_template_kwargs, dict) and all(isinstance(k, str) for k in self.chat_template_kwargs),
             "data.chat_template_kwargs", "a mapping of template variable names to values", self.chat_template_kwargs)
    reserved = sorted(set(self.chat_template_kwargs) & RESERVED_TEMPLATE_KWARGS)
    _require(not reserved, "data.chat_template_kwargs",
             f"no key of apply_chat_template's own ({sorted(RESERVED_TEMPLATE_KWARGS)})", reserved)
    if self.source == "tfds":
      _require(bool(self.path and self.tfds_name), "data.path and data.tfds_name",
               "set (a prepared TFDS data_dir and a dataset name) for data.source = tfds", (self.path, self.tfds_name))


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Held-out evaluation: at step 0, every ``every`` steps and at the end (off while num_examples = 0)."""

  num_examples: int = 0  # held-out problems (0 = no evaluation)
  every: int = 0  # evaluate every this many steps (0: only at the start and the end of a run)
  source: SourceName | None = None  # None: the training source's held-out split
  path: str | None = None  # eval JSONL file (or TFDS data_dir); required for file sources
  tfds_split: str = "test"  # the TFDS split evaluated on (never the training split)
  split: str = "test"  # hf: the split evaluated on (never the training split of the same files); arithmetic:
  #   test | validation (validation needs data.split_by: commuted)
  data_files: tuple[str, ...] = ()  # hf: held-out files (default: data.data_files, when eval.path is data.path)
  greedy: bool = True  # greedy pass@1
  num_samples: int = 0  # n sampled completions per problem for pass@k (0 = off)
  pass_k: tuple[int, ...] = (1,)  # the k of pass@k (each ≤ num_samples)
  temperature: float = 1.0  # temperature of the pass@k samples
  max_new_tokens: int = 0  # 0: sampling.max_new_tokens
  batch_size: int = 64  # prompts per sampler call
  save_outputs: bool = True  # per-problem outputs (correct, greedy completion) to output_dir/eval/step_N.jsonl

  def __post_init__(self):
    object.__setattr__(self, "path", _expand(self.path))
    _check_literals(self, "eval.")
    _require(self.num_examples >= 0, "eval.num_examples", ">= 0 (0 = off)", self.num_examples)
    _require(self.every >= 0, "eval.every", ">= 0", self.every)
    _require(self.num_samples >= 0, "eval.num_samples", ">= 0", self.num_samples)
    _require(all(1 <= k <= max(self.num_samples, 1) for k in self.pass_k) or not self.num_samples, "eval.pass_k",
             f"values in [1, eval.num_samples = {self.num_samples}]", list(self.pass_k))
    _require(self.temperature > 0, "eval.temperature", "> 0 (sampled pass@k; greedy is eval.greedy)",
             self.temperature)
    _require(self.max_new_tokens >= 0, "eval.max_new_tokens", ">= 0", self.max_new_tokens)
    _require(self.batch_size >= 1, "eval.batch_size", ">= 1", self.batch_size)

  @property
  def enabled(self) -> bool:
    return self.num_examples > 0 and (self.greedy or self.num_samples > 0)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """The reward: a weighted sum of reward functions (``tasks.rewards``)."""

  names: tuple[str, ...] = ("toy_tree",)  # toy_tree | math | format | module:function
  weights: tuple[float, ...] = (1.0,)  # one weight per name
  normalization: RewardNormalization = "sum_then_normalize"  # or normalize_then_sum (GDPO: each reward per group)
  overlong_buffer: int = 0  # DAPO's soft overlong punishment over the last L tokens before max_new_tokens (0: off)
  overlong_penalty: float = 1.0  # its full penalty, reached at max_new_tokens

  def __post_init__(self):
    _check_literals(self, "rewards.")
    _require(self.overlong_buffer >= 0, "rewards.overlong_buffer", ">= 0 (0 = off)", self.overlong_buffer)
    _require(self.overlong_penalty >= 0, "rewards.overlong_penalty", ">= 0", self.overlong_penalty)
    _require(len(self.names) == len(self.weights), "rewards.weights",
             f"one weight per reward name ({len(self.names)})", list(self.weights))
    _require(len(self.names) >= 1, "rewards.names", "at least one reward", list(self.names))


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The device mesh (``parallel.sharding``): sizes of its axes; one may be -1 (the remaining devices)."""

  data: int = -1  # pure data parallelism (parameters replicated)
  fsdp: int = 1  # data parallelism with parameters and optimizer state sharded
  tensor: int = 1  # model parallelism inside layers

  def __post_init__(self):
    for k in ("data", "fsdp", "tensor"):
      v = getattr(self, k)
      _require(v == -1 or v >= 1, f"mesh.{k}", ">= 1, or -1 for the remaining devices", v)


RolloutFormat = Literal["parquet", "jsonl"]
WandbMode = Literal["offline", "online"]


@dataclasses.dataclass(frozen=True)
class LoggingSpec:
  """Where metrics and rollout dumps go besides metrics.jsonl (``train.metrics``, ``train.rollout_log``)."""

  tensorboard: bool = True  # TensorBoard event files under output_dir/tb
  wandb_project: str | None = None  # a Weights & Biases project: every metrics row goes there too (None: off)
  wandb_mode: WandbMode = "offline"  # offline: written under output_dir/wandb (`wandb sync` uploads) | online
  wandb_name: str | None = None  # the W&B run's display name (None: W&B's own)
  rollouts_format: RolloutFormat = "parquet"  # the rollout dumps' file format (log_rollouts_every)

  def __post_init__(self):
    _check_literals(self, "logging.")
    _require(self.wandb_project is None or bool(self.wandb_project), "logging.wandb_project",
             "a W&B project name, or null for no W&B", self.wandb_project)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run: the sections above plus the loop's bookkeeping."""

  name: str = "run"  # shown in the progress bar and the logs
  steps: int = 250  # training steps (each: sample, score, advantages, update)
  seed: int = 0  # model init (configs made here, LoRA adapters), sampling keys, minibatch orders
  output_dir: str = "runs/run"  # checkpoints, metrics.jsonl, tb/ and config.yaml
  checkpoint_every: int = 50  # 0 = only at exit
  keep_checkpoints: int = 2  # the newest this many checkpoints are kept
  checkpoint_async: bool = False  # write checkpoints in the background (failures surface at the next save)
  log_every: int = 1  # write metrics every this many steps
  log_rollouts_every: int = 0  # dump every completion of every this many steps to rollouts/step_N (0 = never)
  progress: bool = True  # a progress bar (plain lines when stdout is not a terminal)
  nonfinite: NonFinite = "stop"  # a non-finite loss/gradient/parameter: stop the run, or skip that update
  async_rollouts: bool = False  # one-step-off: step k+1's rollouts sampled with step k's params during its update
  model: ModelSpec = ModelSpec()
  sampling: SamplingSpec = SamplingSpec()
  objective: ObjectiveSpec = ObjectiveSpec()
  optim: OptimSpec = OptimSpec()
  data: DataSpec = DataSpec()
  eval: EvalSpec = EvalSpec()
  rewards: RewardSpec = RewardSpec()
  mesh: MeshSpec = MeshSpec()
  logging: LoggingSpec = LoggingSpec()

  def __post_init__(self):
    object.__setattr__(self, "output_dir", _expand(self.output_dir))
    _check_literals(self, "")
    _require(self.steps >= 1, "steps", ">= 1", self.steps)
    _require(self.checkpoint_every >= 0, "checkpoint_every", ">= 0 (0 = only at exit)", self.checkpoint_every)
    _require(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1", self.keep_checkpoints)
    _require(self.log_every >= 1, "log_every", ">= 1", self.log_every)
    _require(self.log_rollouts_every >= 0, "log_rollouts_every", ">= 0 (0 = never)", self.log_rollouts_every)
    _require(bool(self.output_dir), "output_dir", "a directory", self.output_dir)
    t = self.sampling.max_new_tokens
    _require(self.rewards.overlong_buffer < t, "rewards.overlong_buffer",
             f"< sampling.max_new_tokens ({t}) (the punishment starts that many tokens before the cap)",
             self.rewards.overlong_buffer)
    if self.rewards.normalization == "normalize_then_sum":
      _require(self.objective.name != "prpo", "rewards.normalization",
               "'sum_then_normalize' for objective.name = prpo (PRPO's outcome shift β is the centred total reward)",
               self.rewards.normalization)
    samples = self.data.prompts_per_step * self.sampling.group_size
    _require(self.sampling.slots <= samples, "sampling.slots",
             f"<= data.prompts_per_step × sampling.group_size = {samples} (the samples of a step; 0 = one per sample)",
             self.sampling.slots)
    if (self.eval.source or self.data.source) == "arithmetic":
      _require(self.eval.split in ("test", "validation"), "eval.split",
               "'test' or 'validation' for the arithmetic task", self.eval.split)
      _require(self.eval.split == "test" or self.data.split_by == "commuted", "eval.split",
               "'test' unless data.split_by = 'commuted' (only that split reserves validation problems apart "
               "from the training ones)", self.eval.split)
    m = self.mesh
    if self.sampling.engine == "continuous" and m.tensor > 1:
      raise ValueError(f"config key 'sampling.engine' = 'continuous' is data-parallel (each device its own slots "
                       f"and a full copy of the weights); this mesh asks for tensor={m.tensor}: use 'static' or "
                       "'auto' with tensor parallelism")
    if self.sampling.engine == "continuous" and m.data > 0:
      shards = m.data * m.fsdp
      _require(self.sampling.slots % shards == 0, "sampling.slots",
               f"a multiple of mesh.data × mesh.fsdp = {shards} (the continuous engine splits its slots evenly "
               "over the devices; 0 = one per sample)", self.sampling.slots)
    if self.sampling.decode_kernel == "cpu":  # the kernel's own limits that the config decides (the rest: at build)
      kv = self.sampling.kv_dtype or self.sampling.dtype or self.model.dtype
      _require(self.sampling.kv_layout == "layers", "sampling.kv_layout",
               "'layers' with sampling.decode_kernel = 'cpu' (the kernel reads the per-layer buffers)",
               self.sampling.kv_layout)
      _require(kv == "bfloat16", "sampling.kv_dtype",
               "bfloat16 with sampling.decode_kernel = 'cpu' (the kernel reads a bf16 KV cache; null: "
               "sampling.dtype or model.dtype)", kv)
    o = self.objective
    if self.async_rollouts:  # π_old is the sampler's: it must be the behaviour policy's, or corrected
      policy.old_logp_source(o.optimizer_steps_per_batch, dataclasses.asdict(self.sampling),
                             o.recompute_old_logp or o.rollout_correction != "none", stale=True)
    same_dtype = (self.sampling.dtype or self.model.dtype) == self.model.dtype and self.sampling.kv_dtype in (
        None, self.model.dtype)
    if o.rollout_correction != "none" and same_dtype and not self.async_rollouts:
      warnings.warn(f"objective.rollout_correction = {o.rollout_correction} with the sampler in the training dtype "
                    f"({self.model.dtype}): the sampler's and the trainer's log-probs agree to rounding, so the "
                    "correction is (close to) a no-op; set sampling.dtype (e.g. bfloat16) to sample differently",
                    stacklevel=3)
    if self.sampling.group_size == 1:
      warnings.warn("sampling.group_size = 1: every group has zero reward variance, so GRPO-style objectives get "
                    "no learning signal", stacklevel=3)
    if self.sampling.temperature == 0:
      warnings.warn("sampling.temperature = 0 (greedy): the G completions of a prompt are identical, so training gets "
                    "no learning signal", stacklevel=3)

  def replace(self, **kw) -> "TrainConfig":
    return dataclasses.replace(self, **kw)


def replace(cfg, **sections):
  """``cfg`` with some fields replaced; a dict replaces fields of a section (nested sections too):
  ``replace(cfg, optim={"learning_rate": 1e-4}, model={"lora": {"rank": 8}}, steps=5)``."""
  kw = {}
  for key, value in sections.items():
    current = getattr(cfg, key)
    kw[key] = replace(current, **value) if isinstance(value, dict) and dataclasses.is_dataclass(current) else value
  return dataclasses.replace(cfg, **kw)


# ----------------------------------------------------------------------------- dict / YAML


def _field_types(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls, data: dict[str, Any], where: str = ""):
  """Build a (nested) config dataclass, rejecting unknown keys and wrong types by name."""
  if not isinstance(data, dict):
    raise ValueError(f"config section {where.rstrip('.') or '<root>'} must be a mapping; got {type(data).__name__}")
  types_ = _field_types(cls)
  unknown = sorted(set(data) - set(types_))
  if unknown:
    raise ValueError(f"unknown config key(s) {[where + k for k in unknown]}; valid keys: {sorted(types_)}")
  kwargs = {}
  for key, value in data.items():
    t = types_[key]
    if dataclasses.is_dataclass(t):
      kwargs[key] = from_dict(t, value, where=f"{where}{key}.")
    else:
      kwargs[key] = _coerce(value, t, where + key)
  return cls(**kwargs)


def _coerce(value, t, name):
  origin = typing.get_origin(t)
  args = typing.get_args(t)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    inner = [a for a in args if a is not type(None)]
    return _coerce(value, inner[0], name)
  if origin is Literal:
    if value not in args:
      raise ValueError(f"config key {name!r} must be one of {list(args)}; got {value!r}")
    return value
  if origin is tuple:
    if isinstance(value, str):
      value = [v for v in value.split(",") if v]
    if not isinstance(value, (list, tuple)):
      value = [value]
    return tuple(_coerce(v, args[0], name) for v in value)
  bad = ValueError(f"config key {name!r} expects {getattr(t, '__name__', t)}; got {value!r}")
  if t is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
      return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
      return bool(value)
    raise bad
  if t is int:
    if isinstance(value, bool):
      raise bad
    if isinstance(value, int):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str):
      try:
        return int(value)
      except ValueError:
        raise bad from None
    raise ValueError(f"config key {name!r} expects an integer; got {value!r}")
  if t is float:
    if isinstance(value, bool):
      raise bad
    try:
      return float(value)
    except (TypeError, ValueError):
      raise bad from None
  if t is str:
    if isinstance(value, (dict, list)):
      raise bad
    return str(value)
  return value


def to_dict(cfg) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
  return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} → {"a.b": 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
  """Apply ``a.b=value`` overrides (values parsed as YAML scalars)."""
  data = to_dict(cfg)
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--set expects key=value; got {item!r}")
    key, raw = item.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
      if p not in node or not isinstance(node[p], dict):
        raise ValueError(f"unknown config section {p!r} in --set {key}")
      node = node[p]
    if parts[-1] not in node:
      raise ValueError(f"unknown config key {key!r}; valid keys here: {sorted(node)}")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
  return from_dict(TrainConfig, data)


def save_config(cfg: TrainConfig, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
  os.replace(tmp, path)


def read_config(path: str) -> TrainConfig:
  with open(path) as f:
    return from_dict(TrainConfig, yaml.safe_load(f))


# Keys a resumed run may change: they do not alter what has been trained or how training continues.
RESUME_SAFE_KEYS = ("name", "checkpoint_every", "keep_checkpoints", "checkpoint_async", "log_every", "progress",
                    "nonfinite", "output_dir", "log_rollouts_every")


def resume_changes(saved: TrainConfig, new: TrainConfig) -> tuple[list[str], list[str]]:
  """(changed keys that would change training, changed keys that are safe) between two configs.

  ``steps`` is safe with a constant learning rate; with a schedule it changes the schedule."""
  a, b = flatten(to_dict(saved)), flatten(to_dict(new))
  changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  safe = [k for k in changed if k in RESUME_SAFE_KEYS or k.startswith(("eval.", "logging."))]
  if "steps" in changed and new.optim.schedule == "constant":
    safe.append("steps")
  return [k for k in changed if k not in safe], safe
