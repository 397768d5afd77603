"""Device meshes for tests.

Most trainer tests make claims that do not depend on the device count (metrics, options, export, LoRA, faults): they
run on one device, where each toy step is ~3× cheaper than on eight simulated ones.  The sharding claims run on 8
(tests/test_sharding.py, test_plan.py, test_multihost.py, test_smollm2.py, test_core_api.py)."""

import jax

from jaxgrpo.parallel import sharding
from jaxgrpo.train.trainer import Trainer


def one_device():
  return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def trainer(cfg, **kwargs) -> Trainer:
  """A ``Trainer`` on one device."""
  return Trainer(cfg, mesh=one_device(), **kwargs)
