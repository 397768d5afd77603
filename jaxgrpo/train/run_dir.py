"""A run's output directory: one training process at a time, no stale checkpoints, no silent config change.

``RunDir.open`` takes an exclusive lock (``fcntl.flock`` on ``.lock``, released
by the kernel when the process dies, so a crash never leaves it stuck), then
checks what the directory already holds against what the new run asks for:

* checkpoints from an earlier run with ``resume=False``: refused unless
  ``overwrite`` (which deletes checkpoints, metrics and TensorBoard files);
* resuming with a config whose training-relevant keys differ from the saved
  ``config.yaml``: refused, naming the keys, unless ``allow_config_change``
  (the old config is then kept as ``config.step<N>.yaml``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings

from jaxgrpo.train import config as config_lib

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"


class RunDirError(RuntimeError):
  """The output directory cannot be used as asked."""


class RunDir:
  def __init__(self, path: str, lock: bool = True):
    self.path = os.path.abspath(path)
    self.checkpoints = os.path.join(self.path, "checkpoints")
    self._lock_fd = None
    os.makedirs(self.path, exist_ok=True)
    if lock:
      self._lock()

  def _lock(self) -> None:
    fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise RunDirError(f"output_dir {self.path} is in use by another jaxgrpo process (pid {holder}); two runs "
                        "cannot train into one directory. Wait for it, stop it, or choose another output_dir."
                        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    self._lock_fd = fd

  def release(self) -> None:
    if self._lock_fd is not None:
      fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
      os.close(self._lock_fd)
      self._lock_fd = None

  def checkpoint_steps(self) -> list[int]:
    if not os.path.isdir(self.checkpoints):
      return []
    return sorted(int(d) for d in os.listdir(self.checkpoints) if d.isdigit())

  def clear(self) -> None:
    """Delete what an earlier run left (checkpoints, metrics, TensorBoard files, config)."""
    for name in ("checkpoints", "tb"):
      shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
    for name in ("metrics.jsonl", CONFIG_FILE):
      if os.path.exists(os.path.join(self.path, name)):
        os.remove(os.path.join(self.path, name))

  def prepare(self, cfg, resume: bool, overwrite: bool = False, allow_config_change: bool = False,
              write: bool = True) -> None:
    """Check the directory against the new run (see the module docstring) and save ``cfg``."""
    steps = self.checkpoint_steps()
    saved_path = os.path.join(self.path, CONFIG_FILE)
    if overwrite:
      self.clear()
      steps = []
    elif steps and not resume:
      raise RunDirError(f"output_dir {self.path} holds checkpoints of an earlier run (steps {steps}); --no-resume "
                        "would let them stand in for the new run. Pass --overwrite to delete them and start clean, "
                        "or drop --no-resume to continue that run.")
    if steps and os.path.exists(saved_path):
      saved = config_lib.read_config(saved_path)
      unsafe, safe = config_lib.resume_changes(saved, cfg)
      if unsafe and not allow_config_change:
        diff = ", ".join(f"{k}: {_get(saved, k)!r} -> {_get(cfg, k)!r}" for k in unsafe)
        raise RunDirError(f"resuming {self.path} (checkpoint step {steps[-1]}) with a config that changes training: "
                          f"{diff}. Use the saved config ({saved_path}), another output_dir, --overwrite to start "
                          "over, or --allow-config-change if you mean it.")
      if unsafe or safe:
        if write:
          archived = os.path.join(self.path, f"config.step{steps[-1]}.yaml")
          shutil.copyfile(saved_path, archived)
        warnings.warn(f"resuming with changed config keys {unsafe + safe}; the previous config is kept as "
                      f"config.step{steps[-1]}.yaml", stacklevel=2)
    if write:
      config_lib.save_config(cfg, saved_path)


def _get(cfg, dotted: str):
  return config_lib.flatten(config_lib.to_dict(cfg)).get(dotted)
