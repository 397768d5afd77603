"""Orbax checkpoints of the whole training state: params, optimizer state, step, PRNG key, data position."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every ``every`` steps (0: only when asked) and restores the latest, resharded."""

  def __init__(self, directory: str, every: int = 0, keep: int = 2):
    self.every = every
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def maybe_save(self, step: int, state: dict[str, Any], force: bool = False) -> bool:
    if not force and not (self.every and step % self.every == 0):
      return False
    if self.manager.latest_step() == step:
      return False
    self.manager.save(step, args=ocp.args.StandardSave(state))
    return True

  def restore(self, template: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Restore into arrays shaped and sharded like ``template``."""
    step = self.manager.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), template
    )
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
