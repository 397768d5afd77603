"""Orbax checkpoints of the training state, verified on restore, with failures that end the run cleanly.

Each checkpoint ``<dir>/<step>/`` holds the state (params, optimizer state,
step, PRNG key, data position) and a JSON record of a content checksum of
every leaf.  ``restore`` walks the checkpoints newest first and takes the first
one whose tree, shapes and dtypes match the run, whose values are finite and
whose checksums match; each one skipped is named in a warning.  If none is
good, ``CheckpointRestoreError`` says which directories to delete.

Saving is synchronous by default: a failed write (permission denied, disk
full, read-only file system) raises ``CheckpointSaveError`` naming the step, the
directory and the cause, right where it happens.  ``async_save=True`` lets
training continue while orbax writes (the next save and ``close`` wait for it
and report its failure); ``close`` never waits forever on orbax's background
threads.  A state that is not finite is never saved.

The layout of a training checkpoint is defined once, by ``training_state`` (what the trainer writes and what
export, eval and the trainer's own restore read back) and ``unpack_training_state``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxgrpo.core import hashing
from jaxgrpo.core.trees import all_finite
from jaxgrpo.parallel import distributed as dist

log = logging.getLogger("jaxgrpo")


def training_state(*, params, opt_state, step: int, rng, data_pos: int, sampler_params=None) -> dict[str, Any]:
  """The one checkpoint layout: {"params", "opt_state", "step" int64[], "rng" uint32[2], "data_pos" int64[]}, and
  "sampler_params" with one-step-off rollouts (the previous step's params, which sample the next step).

  ``params``/``opt_state`` may be arrays or ``jax.ShapeDtypeStruct`` s (a restore template); ``params`` are the
  trainable ones (the adapters under LoRA)."""
  tree = {"params": params, "opt_state": opt_state, "step": np.asarray(step, np.int64), "rng": np.asarray(rng),
          "data_pos": np.asarray(data_pos, np.int64)}
  if sampler_params is not None:
    tree["sampler_params"] = sampler_params
  return tree


def unpack_training_state(tree: dict[str, Any]) -> dict[str, Any]:
  """The fields of a restored ``training_state`` tree: params, opt_state, step (int), rng (numpy), data_pos (int),
  sampler_params (None without one-step-off rollouts)."""
  return {"params": tree["params"], "opt_state": tree["opt_state"], "step": int(tree["step"]),
          "rng": np.asarray(tree["rng"]), "data_pos": int(tree["data_pos"]),
          "sampler_params": tree.get("sampler_params")}


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of the run could be restored."""


@jax.jit
def _leaf_checksums(tree) -> list[jax.Array]:
  return [hashing.array_checksum(x) for x in jax.tree.leaves(tree)]


# One program, not one per leaf: many small eager reductions over a sharded state, dispatched asynchronously,
# each with its own cross-device all-reduce, can starve XLA:CPU's in-process collectives (a 40 s rendezvous
# timeout aborts the process with 8 simulated devices on 2 cores).
_all_finite = jax.jit(all_finite)


def checksums(tree) -> dict[str, int]:
  """A uint32 content checksum per leaf, keyed by the leaf's path (order-sensitive, exact for any sharding)."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  values = dist.fetch_tree(_leaf_checksums(jax.tree.map(jnp.asarray, tree)))
  return {p: int(v) for p, v in zip(paths, values)}


def _describe(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  return {jax.tree_util.keystr(p): (tuple(np.shape(x)), str(np.dtype(x.dtype)))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _os_reason(e: BaseException) -> str:
  """The operating-system cause inside an orbax/tensorstore error, e.g. 'No space left on device (errno 28)'."""
  text = str(e)
  m = re.search(r"\[os_error_code='(\d+)'\]", text)  # the wording before it varies (a tensorstore spec may sit between)
  if m:
    return f"{os.strerror(int(m.group(1)))} (errno {m.group(1)})"
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror} (errno {e.errno})"
  return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Checkpointer:
  """Saves every ``every`` steps (0: only when asked) and restores the newest good checkpoint."""

  def __init__(self, directory: str, every: int = 0, keep: int = 2, async_save: bool = False,
               close_timeout_s: float = 120.0, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.every = every
    self.close_timeout_s = close_timeout_s
    self.failed: BaseException | None = None
    self._pending: int | None = None
    if read_only:
      if not os.path.isdir(self.directory):
        raise FileNotFoundError(f"{self.directory}: no checkpoints directory")
    else:
      self._check_writable()
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                             enable_async_checkpointing=async_save),
    )

  def _check_writable(self) -> None:
    probe = os.path.join(self.directory, f".write_probe_{os.getpid()}")
    try:
      os.makedirs(self.directory, exist_ok=True)
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      raise CheckpointSaveError(f"cannot write checkpoints to {self.directory}: {e.strerror or e} "
                                f"(errno {e.errno}); fix its permissions or free space, or set output_dir") from None

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def save(self, step: int, state: dict[str, Any]) -> bool:
    """Write ``state`` as checkpoint ``step`` (after the previous write finished); False if it exists."""
    self.wait()
    if step in self.manager.all_steps():
      return False
    if not bool(dist.fetch(_all_finite(state))):
      raise CheckpointSaveError(f"refusing to save step {step}: the state holds non-finite values")
    meta = {"step": int(step), "checksums": checksums(state), "tree": {k: list(v[0]) + [v[1]]
                                                                      for k, v in _describe(state).items()}}
    self._pending = step
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)))
    except Exception as e:
      self._fail(e)
    return True

  def wait(self) -> None:
    """Block until the last save is on disk; a failed one raises ``CheckpointSaveError``."""
    if self.failed is not None:
      raise CheckpointSaveError(str(self.failed))
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      self._fail(e)

  def _fail(self, e: BaseException) -> None:
    where = f"step {self._pending} in " if self._pending is not None else ""
    self.failed = CheckpointSaveError(f"saving checkpoint {where}{self.directory} failed: {_os_reason(e)}. The run "
                                      "stopped; earlier checkpoints in that directory are intact.")
    raise self.failed from None

  # ------------------------------------------------------------------ restore

  def restore(self, template: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """The newest checkpoint that verifies against ``template`` (shapes, dtypes, shardings), or None
    if there is none.  Bad checkpoints are skipped with a warning naming them."""
    steps = self.all_steps()
    if not steps:
      return None
    problems, bad_steps = [], []
    for step in reversed(steps):
      try:
        state = self.restore_step(step, template)
      except Exception as e:  # any orbax/tensorstore/JSON failure: this checkpoint is not usable
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        path = os.path.join(self.directory, str(step))
        problems.append(f"{path}: {reason}")
        bad_steps.append(step)
        warnings.warn(f"skipping checkpoint {path}: {reason}", stacklevel=2)
        continue
      for bad in bad_steps:  # newer than the good one: move aside (kept for inspection) so the run can rewrite it
        self._quarantine(bad)
      if problems:
        log.warning("restored step %d after skipping %d bad checkpoint(s)", step, len(problems))
      return state, step
    raise CheckpointRestoreError(
        f"none of the {len(steps)} checkpoint(s) in {self.directory} can be restored: " + "; ".join(problems) +
        f". Delete the bad step directories listed (or the whole {self.directory} to start over, or rerun with "
        "--overwrite), then run again.")

  def _quarantine(self, step: int) -> None:
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.bad.{int(time.time())}"
    if jax.process_index() == 0 and os.path.isdir(src):
      os.replace(src, dst)
      warnings.warn(f"moved the bad checkpoint {src} to {dst}", stacklevel=3)
    self.manager.reload()

  def restore_step(self, step: int, template: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint ``step`` verified against ``template`` (raises ValueError naming what is wrong)."""
    path = os.path.join(self.directory, str(step))
    meta_file = os.path.join(path, "meta", "metadata")
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] \
        if os.path.isdir(os.path.join(path, "meta")) else None
    if not meta or "checksums" not in meta:
      raise ValueError(f"no checksum record ({meta_file})")
    want = _describe(template)
    have = {k: (tuple(v[:-1]), v[-1]) for k, v in meta["tree"].items()}
    if set(want) != set(have):
      missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
      raise ValueError(f"its state tree does not match this run's (missing {missing[:5]}, unexpected {extra[:5]}): "
                       "was it written with another model or optimizer config?")
    bad = [f"{k}: {have[k]} vs {want[k]}" for k in want if have[k] != want[k]]
    if bad:
      raise ValueError(f"shapes/dtypes differ from this run's: {bad[:5]}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), template)
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    if not bool(dist.fetch(_all_finite(state))):
      raise ValueError("it holds non-finite values")
    got = checksums(state)
    wrong = [k for k, v in meta["checksums"].items() if got.get(k) != v]
    if wrong:
      raise ValueError(f"content checksum mismatch in {wrong[:5]} (the files were modified or corrupted)")
    return state

  def read(self, step: int) -> dict[str, Any]:
    """Checkpoint ``step`` as saved, on this process's first device (any topology; no verification):
    for inspection and tools."""
    meta = self.manager.item_metadata(step)["state"]
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one), meta)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

  def close(self) -> None:
    """Finish the last write (raising if it failed) and release orbax, never hanging."""
    try:
      if self.failed is None:
        self.wait()
    finally:
      closer = threading.Thread(target=self._close_quietly, daemon=True)
      closer.start()
      closer.join(self.close_timeout_s if self.failed is None else 5.0)

  def _close_quietly(self) -> None:
    try:
      self.manager.close()
    except Exception:  # already reported through wait()
      pass

