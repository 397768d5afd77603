"""A run's config from what a user writes: a YAML file (which may start from ``preset: NAME``), then ``--set``
overrides — both checked by name, as every config is (``train.config``)."""

from __future__ import annotations

import os

import yaml

from jaxgrpo.train.config import TrainConfig, apply_overrides, from_dict, to_dict
from jaxgrpo.train.presets import preset


def load_config(path: str | None = None, overrides: list[str] = (), base: TrainConfig | None = None) -> TrainConfig:
  """A config from a YAML file (which may start from ``preset: NAME``), then ``overrides``."""
  cfg = base or TrainConfig()
  if path:
    path = os.path.expanduser(path)
    try:
      with open(path) as f:
        data = yaml.safe_load(f)
    except yaml.YAMLError as e:
      raise ValueError(f"{path}: not valid YAML: {e}") from None
    if data is None:
      data = {}
    if not isinstance(data, dict):
      raise ValueError(f"{path}: the YAML root must be a mapping of config keys; got {type(data).__name__}")
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
