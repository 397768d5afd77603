#!/usr/bin/env bash
# Set up on a fresh machine and run the main job on its embedded default (no downloads):
# the paper's worked example, then λ-GRPO vs GRPO on the toy tree (all seeds of a setting in one program).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh plots
. .venv/bin/activate
jaxgrpo demo
python experiments/toy_tree.py "$@"
