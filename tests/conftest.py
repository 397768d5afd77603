import os
import sys

# Simulate 8 devices on CPU for the sharding tests (must precede JAX's backend start).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Hypothesis draws many shapes, each a compiled program; free them (and cached update programs, which hold
  their models) after every module."""
  yield
  from jaxgrpo.train import step as train_step

  train_step.make_update_program.cache_clear()
  jax.clear_caches()
  gc.collect()
