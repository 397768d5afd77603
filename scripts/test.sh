#!/usr/bin/env bash
# Set up on a fresh machine and run the whole test suite (lint first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
ruff check .
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
python -m pytest -q "$@"
