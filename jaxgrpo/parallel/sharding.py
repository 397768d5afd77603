"""Device mesh and the one ordered table that maps logical axes to mesh axes.

The mesh has three named axes: ``data`` (pure data parallelism), ``fsdp``
(data parallelism with parameters and optimizer state sharded) and ``tensor``
(model parallelism inside layers).  Model parameters carry logical axis names
(``jaxgrpo.models.logical_axes``); ``MeshRules`` says where each one goes.  A
rule that does not divide a dimension evenly falls back to replication for that
dimension, so one table serves every model size.

Multi-host: ``jaxgrpo.distributed.initialize`` first on every process, then
``make_mesh`` spans the devices of all processes, ordered by process so each
process holds one contiguous block of the batch axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshRules:
  """Ordered (logical axis → mesh axes) table; the first matching rule wins."""

  rules: tuple[tuple[str, Any], ...] = (
      ("batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
      ("embed", "fsdp"),
      ("head_dim", None),
      ("layers", None),
  )

  def lookup(self, name: str | None):
    for logical, mesh_axes in self.rules:
      if logical == name:
        return mesh_axes
    return None


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 (whatever is left)."""
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  devices = list(devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1; got data={data}, fsdp={fsdp}, tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"mesh data×fsdp×tensor = {sizes[0]}×{sizes[1]}×{sizes[2]} = {math.prod(sizes)} "
        f"must equal the number of devices ({len(devices)})"
    )
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def mesh_size(mesh: Mesh, axes) -> int:
  """Number of devices along the named mesh axes (1 for None)."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def rule_axes(rules: MeshRules, logical: str | None) -> tuple[str, ...]:
  """The mesh axes the rule table maps a logical axis to, as a tuple (empty: unsharded)."""
  axes = rules.lookup(logical)
  return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def batch_axes(mesh: Mesh, rules: MeshRules = MeshRules()) -> tuple[str, ...]:
  """The mesh axes the rule table puts the batch (row) axis on, without axes of size 1."""
  return tuple(a for a in rule_axes(rules, "batch") if mesh.shape[a] > 1)


def batch_shards(mesh: Mesh, rules: MeshRules = MeshRules()) -> int:
  """How many ways the batch axis is split (the data-parallel degree)."""
  return mesh_size(mesh, batch_axes(mesh, rules))


def spec_for(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: MeshRules) -> PartitionSpec:
  """PartitionSpec for one array; mesh axes are used at most once and only where they divide."""
  used: set[str] = set()
  out = []
  for name, dim in zip(logical, shape):
    axes_t = tuple(a for a in rule_axes(rules, name) if a not in used and mesh.shape[a] > 1)
    if axes_t and dim % mesh_size(mesh, axes_t) == 0:
      used.update(axes_t)
      out.append(axes_t[0] if len(axes_t) == 1 else axes_t)
    else:
      out.append(None)
  return PartitionSpec(*out)


def tree_shardings(logical_tree, shapes_tree, mesh: Mesh, rules: MeshRules = MeshRules()):
  """NamedShardings for a pytree given its logical axes (PartitionSpecs of names) and shapes."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  return jax.tree.map(
      lambda names, x: NamedSharding(mesh, spec_for(tuple(names), np.shape(x), mesh, rules)),
      logical_tree, shapes_tree, is_leaf=is_spec,
  )


def batch_sharding(mesh: Mesh, ndim: int, rules: MeshRules = MeshRules(), rows: int | None = None) -> NamedSharding:
  """Shard the leading (batch) axis over the rule for ``batch``; the rest replicated.

  With ``rows`` given, an axis of that many rows that the batch shards do not divide is replicated."""
  axes_t = batch_axes(mesh, rules)
  if rows is not None and rows % mesh_size(mesh, axes_t):
    axes_t = ()
  lead = None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t)
  return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
