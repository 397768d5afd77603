"""Metrics sinks: JSONL (the record), TensorBoard event files (rebuilt from it on resume) and, optionally, Weights &
Biases.

A resumed run first truncates metrics.jsonl to the steps its checkpoint covers
and rewrites the TensorBoard files from what is left, so after a crash every
step appears once in both.  W&B keeps one run per output directory (its id is saved in ``wandb_run_id``, so a
resume continues the same W&B run); W&B drops rows for steps it already has, so after a crash the steps between
the checkpoint and the crash keep the values of the first attempt there (the JSONL file is the record).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from typing import Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"
WANDB_MODES = ("offline", "online")


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends ``{"step": N, **metrics}`` rows; ``keep_until`` drops rows after a resumed run's step."""

  def __init__(self, directory: str, tensorboard: bool = True, keep_until: int | None = None,
               wandb_project: str | None = None, wandb_mode: str = "offline", wandb_name: str | None = None,
               config: Mapping | None = None):
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
    self.wandb_run = None
    if wandb_project:
      self.wandb_run = _wandb_run(directory, wandb_project, wandb_mode, wandb_name, config)

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
      if self.wandb_run is not None:
        self.wandb_run.log({k: v for k, v in clean.items() if math.isfinite(v)}, step=step, commit=True)
    except OSError as e:
      raise OSError(e.errno, f"writing metrics of step {step} to {os.path.dirname(self.path)}: {e.strerror}") from None

  def close(self) -> None:
    if self.wandb_run is not None:
      self.wandb_run.finish()
      self.wandb_run = None
    for f in (self.jsonl, self.tb):
      if f is not None:
        try:
          f.close()
        except OSError:  # already reported by write()
          pass


def _wandb_run(directory: str, project: str, mode: str, name: str | None, config: Mapping | None):
  """A W&B run logging into ``directory/wandb`` (offline: nothing leaves the machine; ``wandb sync`` uploads it),
  resumed by the id saved in ``directory`` when the run directory already has one."""
  if mode not in WANDB_MODES:
    raise ValueError(f"logging.wandb_mode must be one of {list(WANDB_MODES)}; got {mode!r}")
  try:
    import wandb
  except ImportError:
    raise ImportError("logging.wandb_project needs the `wandb` package: pip install 'jaxgrpo[wandb]'") from None
  id_file = os.path.join(directory, WANDB_ID_FILE)
  run_id = open(id_file).read().strip() if os.path.exists(id_file) else uuid.uuid4().hex[:12]
  run = wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode, dir=directory,
                   config=dict(config or {}))
  with open(id_file, "w") as f:
    f.write(run_id)
  return run


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
