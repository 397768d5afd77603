"""Multi-process runs on JAX's distributed runtime, and moving rows between hosts and global arrays.

Every process runs the same program on a global device mesh.  Arrays whose
leading axis holds rows (one per completion) are sharded over the mesh's
batch axes, so each process owns a contiguous range of rows; ``local_rows``
names it, ``host_rows`` fetches this process's rows of a global array, and
``global_rows`` builds a global array from each process's rows.  Only
process 0 writes metrics, TensorBoard and the progress bar
(``is_primary``); checkpoints are written by all processes together (orbax).
"""

from __future__ import annotations

import os

import jax
import numpy as np


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False) -> None:
  """Start ``jax.distributed`` (before any JAX computation).

  With ``coordinator``/``num_processes``/``process_id`` the job is described explicitly; with
  ``auto`` JAX detects it (TPU pods, SLURM, Open MPI).  With neither, nothing happens (one process).
  CPU collectives go through gloo (GPU/TPU use their own).
  """
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  if not (explicit or auto):
    return
  if explicit and None in (coordinator, num_processes, process_id):
    raise ValueError("--coordinator, --num-processes and --process-id go together (or use --distributed auto)")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = int(os.environ.get("JAXGRPO_DIST_TIMEOUT", "300"))
  if explicit:
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout)
  else:
    jax.distributed.initialize(initialization_timeout=timeout)


def is_primary() -> bool:
  return jax.process_index() == 0


def local_rows(sharding: jax.sharding.Sharding, n: int) -> range:
  """The contiguous rows [start, stop) of an [n, ...] array that this process's devices hold."""
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map((n,)).values():
    sl = index[0]
    starts.append(sl.start or 0)
    stops.append(n if sl.stop is None else sl.stop)
  lo, hi = min(starts), max(stops)
  covered = np.zeros(n, bool)
  for a, b in zip(starts, stops):
    covered[a:b] = True
  if not covered[lo:hi].all():
    raise ValueError("this process's rows are not contiguous under the batch sharding; order the mesh's devices "
                     "so each process holds one block of the batch axes")
  return range(lo, hi)


def host_rows(x: jax.Array, rows: range) -> np.ndarray:
  """This process's rows of a global array [N, ...] (rows sharded as ``rows`` says), as numpy."""
  if x.is_fully_addressable:
    return np.asarray(x)[rows.start:rows.stop]
  out = np.empty((len(rows),) + x.shape[1:], x.dtype)
  for shard in x.addressable_shards:
    sl = shard.index[0]
    a = (sl.start or 0) - rows.start
    out[a:a + shard.data.shape[0]] = np.asarray(shard.data)
  return out


def global_rows(local: np.ndarray, sharding: jax.sharding.Sharding, n: int) -> jax.Array:
  """A global [n, ...] array from this process's rows (``local_rows(sharding, n)`` of them)."""
  local = np.asarray(local)
  return jax.make_array_from_process_local_data(sharding, local, (n,) + local.shape[1:])


def fetch(x) -> np.ndarray:
  """A replicated (or fully addressable) array as numpy on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def gather(x) -> np.ndarray:
  """A global array (sharded over processes or not) as numpy on every process; every process must call it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def fetch_tree(tree):
  """``fetch`` on every leaf of a pytree of replicated arrays."""
  return jax.tree.map(fetch, tree)


def process_max(value: int) -> int:
  """The maximum of an integer over all processes (e.g. a padded length every process must use)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))
