#!/usr/bin/env bash
# Set up on a fresh machine and run the main job on its embedded default (no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
jaxgrpo demo
jaxgrpo toy "$@"
