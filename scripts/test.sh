#!/usr/bin/env bash
# Set up on a fresh machine and run the whole test suite (lint first).
# With no arguments the suite runs as three pytest processes: the tests that load torch/transformers models for
# parity, the SmolLM2 tests (a 135M-parameter trainer on 8 simulated devices peaks near 20 GiB of host memory:
# every simulated device holds its own copy of replicated parameters and Adam moments), then the rest. One
# process for everything peaked near 21 GiB of the CI machine's 24 (allocator high-water marks).
# Arguments pass through to one pytest run: bash scripts/test.sh tests/test_prefix.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
ruff check .
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
# JAX's persistent compilation cache: many tests start trainer subprocesses (faults, multi-host, CLI) that
# compile the same programs again; on this 2-core CPU the cache halves tests/test_faults.py (11.5 -> 6.1 min).
# Keys include the program, the XLA flags and the jax version, so a stale entry is a miss, never a wrong hit.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax-tests}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
if [ "$#" -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
PARITY="tests/test_models.py tests/test_sampler.py tests/test_lora.py tests/test_eval_export.py tests/test_prm.py"
SMOLLM2="tests/test_smollm2.py"
IGNORE=""
for f in $PARITY $SMOLLM2; do IGNORE="$IGNORE --ignore=$f"; done
status=0
python -m pytest -q --durations=15 $PARITY || status=$?
python -m pytest -q --durations=5 $SMOLLM2 || status=$?
python -m pytest -q --durations=15 $IGNORE || status=$?
exit $status
