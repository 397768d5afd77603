"""Training configuration: small frozen dataclasses, loadable from YAML, overridable with key=value.

    cfg = load_config("run.yaml", overrides=["objective.name=lambda_grpo", "steps=100"])
    cfg = preset("toy")

Unknown keys are errors naming the key and listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Either an HF checkpoint directory, ``smollm2`` (the offline SmolLM2-135M-Instruct), or a config made here."""

  checkpoint: str | None = None  # path | "smollm2" | None (then build from the fields below)
  dtype: str = "float32"
  family: str = "gpt2"
  vocab_size: int = 3
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  intermediate_size: int = 256
  max_position_embeddings: int = 16


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  group_size: int = 16
  max_new_tokens: int = 4
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  name: str = "grpo"  # grpo | lambda_grpo | prpo
  lambda_weights: bool = False  # add λ-GRPO's 1/|λ| weights to any objective (e.g. PRPO + λ)
  aggregation: str = "token_mean"  # token_mean | seq_mean | constant | weight_mean
  scale_rewards: bool = True
  ddof: int = 1
  eps: float = 1e-4
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  kl_beta: float = 0.0
  num_iterations: int = 1  # μ: update passes over each batch
  num_minibatches: int = 1
  # PRPO
  prpo_k: int = 5
  prpo_min_gap: int = 10
  prpo_normalization: str = "fixed"  # fixed | relative
  prpo_prior_std: float = 0.28867513459481287  # 1/sqrt(12); the authors' code: sqrt(1/24)
  prpo_outcome: str = "centered"  # centered | std
  prm: str = "arithmetic"  # which PRM scores segments (see jaxgrpo.prm)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  learning_rate: float = 1e-3
  schedule: str = "constant"  # constant | cosine | linear
  warmup_steps: int = 0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  max_grad_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataSpec:
  source: str = "toy_tree"  # toy_tree | arithmetic | jsonl | tfds
  prompts_per_step: int = 1
  seed: int = 0
  path: str | None = None  # jsonl file, or TFDS data_dir
  tfds_name: str | None = None  # e.g. gsm8k
  tfds_split: str = "train"
  # toy tree task
  target: str = "LLRL"
  n_shared: int = 1
  r_neg: float = -1.0
  r_other: float = 0.7


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  names: tuple[str, ...] = ("toy_tree",)  # toy_tree | math | format
  weights: tuple[float, ...] = (1.0,)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  name: str = "run"
  steps: int = 250
  seed: int = 0
  output_dir: str = "runs/run"
  checkpoint_every: int = 50  # 0 = only at exit
  keep_checkpoints: int = 2
  log_every: int = 1
  progress: bool = True
  model: ModelSpec = ModelSpec()
  sampling: SamplingSpec = SamplingSpec()
  objective: ObjectiveSpec = ObjectiveSpec()
  optim: OptimSpec = OptimSpec()
  data: DataSpec = DataSpec()
  rewards: RewardSpec = RewardSpec()
  mesh: MeshSpec = MeshSpec()

  def replace(self, **kw) -> "TrainConfig":
    return dataclasses.replace(self, **kw)


def _field_types(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls, data: dict[str, Any], where: str = ""):
  """Build a (nested) config dataclass, rejecting unknown keys by name."""
  if not isinstance(data, dict):
    raise ValueError(f"config section {where or '<root>'} must be a mapping; got {type(data).__name__}")
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
  if origin is tuple:
    if isinstance(value, str):
      value = [v for v in value.split(",") if v]
    if not isinstance(value, (list, tuple)):
      value = [value]
    return tuple(_coerce(v, args[0], name) for v in value)
  try:
    if t is bool:
      if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
          raise ValueError
        return value.lower() in ("true", "1", "yes")
      return bool(value)
    if t in (int, float, str):
      return t(value)
  except (TypeError, ValueError):
    raise ValueError(f"config key {name!r} expects {t.__name__}; got {value!r}") from None
  return value


def to_dict(cfg) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
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


def load_config(path: str | None = None, overrides: list[str] = (), base: TrainConfig | None = None) -> TrainConfig:
  cfg = base or TrainConfig()
  if path:
    with open(path) as f:
      data = yaml.safe_load(f) or {}
    preset_name = data.pop("preset", None)
    if preset_name:
      cfg = preset(preset_name)
    merged = to_dict(cfg)
    _deep_update(merged, data)
    cfg = from_dict(TrainConfig, merged)
  return apply_overrides(cfg, list(overrides))


def _deep_update(dst: dict, src: dict, where: str = "") -> None:
  for k, v in src.items():
    if k not in dst:
      raise ValueError(f"unknown config key {where + k!r}; valid keys: {sorted(dst)}")
    if isinstance(v, dict) and isinstance(dst[k], dict):
      _deep_update(dst[k], v, where + k + ".")
    else:
      dst[k] = v


def save_config(cfg: TrainConfig, path: str) -> None:
  with open(path, "w") as f:
    yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def preset(name: str) -> TrainConfig:
  """Named configurations: toy | smollm2_arithmetic | lambda_grpo_paper | prpo_paper."""
  if name == "toy":  # λ-GRPO's Table 1 task with a small GPT-2-architecture model made here
    return TrainConfig(name="toy", steps=250, output_dir="runs/toy", checkpoint_every=0)
  if name == "smollm2_arithmetic":
    return TrainConfig(
        name="smollm2_arithmetic", steps=200, output_dir="runs/smollm2_arithmetic",
        model=ModelSpec(checkpoint="smollm2"),
        sampling=SamplingSpec(group_size=8, max_new_tokens=64, temperature=1.0),
        objective=ObjectiveSpec(name="lambda_grpo", kl_beta=0.0, num_minibatches=4),
        optim=OptimSpec(learning_rate=1e-6, max_grad_norm=1.0),
        data=DataSpec(source="arithmetic", prompts_per_step=8),
        rewards=RewardSpec(names=("math", "format"), weights=(1.0, 0.1)),
    )
  if name == "lambda_grpo_paper":  # arXiv 2509.21154 downstream setting (needs accelerators)
    return TrainConfig(
        name="lambda_grpo_paper", steps=1000, output_dir="runs/lambda_grpo_paper", checkpoint_every=100,
        model=ModelSpec(checkpoint="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", dtype="bfloat16"),
        sampling=SamplingSpec(group_size=6, max_new_tokens=4096, temperature=0.75),
        objective=ObjectiveSpec(name="lambda_grpo", kl_beta=0.0),
        optim=OptimSpec(learning_rate=1e-6),
        data=DataSpec(source="jsonl", prompts_per_step=4, path="openrs.jsonl"),
        rewards=RewardSpec(names=("math",), weights=(1.0,)),
    )
  if name == "prpo_paper":  # arXiv 2601.07182 (needs accelerators and a PRM checkpoint)
    return TrainConfig(
        name="prpo_paper", steps=1000, output_dir="runs/prpo_paper", checkpoint_every=100,
        model=ModelSpec(checkpoint="Qwen/Qwen2.5-Math-1.5B", dtype="bfloat16"),
        sampling=SamplingSpec(group_size=8, max_new_tokens=2048, temperature=1.0),
        objective=ObjectiveSpec(name="prpo", kl_beta=0.001, clip_eps_low=0.2, clip_eps_high=0.2, prm="neural"),
        optim=OptimSpec(learning_rate=1e-6),
        data=DataSpec(source="tfds", tfds_name="math_dataset", prompts_per_step=128),
        rewards=RewardSpec(names=("math",), weights=(1.0,)),
    )
  raise ValueError(f"unknown preset {name!r}; choose from toy, smollm2_arithmetic, lambda_grpo_paper, prpo_paper")
