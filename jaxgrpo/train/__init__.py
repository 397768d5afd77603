"""Training: the config and its presets, the sharded update step, the loop, and what keeps a run whole.

``config`` (frozen, validated specs; dict/YAML conversion), ``presets`` (named configs), ``loading`` (YAML file +
preset + ``--set`` overrides), ``build`` (model, params, tokenizer and sampler settings from a config), ``step``
(the jitted update over the mesh), ``trainer`` (sample → score → advantages → update, resumable), ``evaluation``
(pass@1, pass@k), ``checkpointing`` (verified orbax checkpoints, the one checkpoint layout), ``run_dir`` (the
locked output directory), ``metrics`` (JSONL + TensorBoard), ``progress``, ``preemption`` (signals), ``export``
(HF checkpoints and PEFT adapters of a run), ``plan`` (per-device memory before launch).
"""

from jaxgrpo.train.config import TrainConfig, replace
from jaxgrpo.train.loading import load_config
from jaxgrpo.train.presets import PRESETS, preset
from jaxgrpo.train.trainer import NonFiniteError, Trainer

__all__ = ["PRESETS", "NonFiniteError", "TrainConfig", "Trainer", "load_config", "preset", "replace"]
