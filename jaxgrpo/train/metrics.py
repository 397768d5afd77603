"""Metrics sinks: JSONL (the record) and TensorBoard event files (rebuilt from it on resume).

A resumed run first truncates metrics.jsonl to the steps its checkpoint covers
and rewrites the TensorBoard files from what is left, so after a crash every
step appears once in both.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends ``{"step": N, **metrics}`` rows; ``keep_until`` drops rows after a resumed run's step."""

  def __init__(self, directory: str, tensorboard: bool = True, keep_until: int | None = None):
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(directory, METRICS_FILE)
    self.tb_dir = os.path.join(directory, "tb")
    rows = []
    if os.path.exists(self.path):
      rows = [r for r in _read_tolerant(self.path) if keep_until is not None and r.get("step", 0) <= keep_until]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        for r in rows:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)
    self.jsonl = open(self.path, "a")
    self.tb = None
    if tensorboard:
      SummaryWriter = _summary_writer_class()
      shutil.rmtree(self.tb_dir, ignore_errors=True)
      self.tb = SummaryWriter(self.tb_dir)
      for r in rows:
        self._tb_write(r["step"], {k: v for k, v in r.items() if k != "step"})

  def _tb_write(self, step: int, metrics: Mapping[str, float]) -> None:
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and math.isfinite(v):
        self.tb.add_scalar(k, v, step)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
    try:
      self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
      self.jsonl.flush()
      if self.tb is not None:
        self._tb_write(step, clean)
        self.tb.flush()
    except OSError as e:
      raise OSError(e.errno, f"writing metrics of step {step} to {os.path.dirname(self.path)}: {e.strerror}") from None

  def close(self) -> None:
    for f in (self.jsonl, self.tb):
      if f is not None:
        try:
          f.close()
        except OSError:  # already reported by write()
          pass


def _read_tolerant(path: str) -> list[dict]:
  """Rows of a metrics file, ignoring a last line cut short by a crash."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch (3–4 s, and GBs of memory
  maps) only to accept torch tensors, and this writer logs floats.  torch stays importable afterwards."""
  import sys

  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules["torch"] = None  # ``import torch`` raises ImportError, which tensorboardX catches
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter
