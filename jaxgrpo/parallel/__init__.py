"""Devices: the (data, fsdp, tensor) mesh with its logical-axis rule table (``sharding``) and the multi-process
runtime (``distributed``: jax.distributed start-up, process-local rows of global arrays)."""

from jaxgrpo.parallel import distributed, sharding
from jaxgrpo.parallel.sharding import MESH_AXES, MeshRules, batch_sharding, make_mesh, replicated, tree_shardings

__all__ = ["MESH_AXES", "MeshRules", "batch_sharding", "distributed", "make_mesh", "replicated", "sharding",
           "tree_shardings"]
