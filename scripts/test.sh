#!/usr/bin/env bash
# Set up on a fresh machine and run the whole test suite (lint first).
# With no arguments the suite runs as two pytest processes: everything but the SmolLM2 tests on 2 workers
# (pytest-xdist; test files that share an expensive module fixture stay on one worker), then the SmolLM2 tests alone
# (a 135M-parameter trainer on 8 simulated devices peaks near 20 GiB of host memory: every simulated device holds
# its own copy of replicated parameters and Adam moments, so it must not share the 24 GiB with another worker).
# Arguments pass through to one pytest run: bash scripts/test.sh tests/test_prefix.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
ruff check .
# 8 simulated devices for the sharding tests.  --xla_backend_optimization_level=0: the tests are dominated by XLA:CPU
# compile time (small models, many distinct programs), and LLVM at -O0 compiles ~40% faster; programs compute the
# same values (XLA's own HLO passes, which decide fusion, buffers and memory, are unchanged), only slower.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0}"
# JAX's persistent compilation cache: many tests start trainer subprocesses (faults, multi-host, CLI) that
# compile the same programs again; on this 2-core CPU the cache halves tests/test_faults.py (11.5 -> 6.1 min).
# Keys include the program, the XLA flags and the jax version, so a stale entry is a miss, never a wrong hit.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax-tests}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
if [ "$#" -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
SMOLLM2="tests/test_smollm2.py"
status=0
python -m pytest -q -n 2 --dist loadgroup --durations=60 --ignore=$SMOLLM2 || status=$?
# SmolLM2 is compute-bound, not compile-bound: full XLA optimization for it
XLA_FLAGS="${XLA_FLAGS//--xla_backend_optimization_level=0/}" python -m pytest -q --durations=5 $SMOLLM2 || status=$?
exit $status
