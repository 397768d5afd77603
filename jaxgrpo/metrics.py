"""Metrics sinks: JSONL and TensorBoard event files."""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np


class MetricsWriter:
  def __init__(self, directory: str, tensorboard: bool = True):
    os.makedirs(directory, exist_ok=True)
    self.jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
    self.tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(os.path.join(directory, "tb"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in clean.items():
        self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
