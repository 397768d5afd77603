import os
import sys

# Simulate 8 devices on CPU for the sharding tests (must precede JAX's backend start).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import gc  # noqa: E402

import pytest  # noqa: E402

# Test files that take longest go first, so that under ``pytest -n 2`` no long test starts last and leaves one worker
# idle at the end (the order inside a file is kept).
SLOW_FIRST = ("test_multihost.py", "test_faults.py", "test_notebooks.py", "test_smollm2_convert.py",
              "test_eval_export.py", "test_plan.py",
              "test_shared_prefix.py", "test_sharding.py", "test_precision.py", "test_lora.py", "test_toy_tree.py",
              "test_sampler.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Hypothesis draws many shapes, each a compiled program; free them (and cached update programs, which hold
  their models) after every module."""
  yield
  from jaxgrpo.train import step as train_step

  train_step.make_update_program.cache_clear()
  jax.clear_caches()
  gc.collect()
