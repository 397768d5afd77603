#!/usr/bin/env bash
# A real run for notebooks/run_analysis.ipynb and the rollout-dump cost: SmolLM2-135M-Instruct (dequantised Q4_1
# GGUF) on the smollm2_arithmetic preset, 20 GRPO steps, every second step's rollouts dumped, eval every 10 steps on
# 100 held-out problems.  One seed: an anecdote.  ~15 min on the 2-core CPU machine.  Resumable (run it again).
# Writes runs/smollm2_run and copies what the notebook reads (config, metrics, dumps) to
# experiments/results/smollm2_run/; prints the dump's cost per dumped step.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/smollm2_run
.venv/bin/python -m jaxgrpo.cli train --preset smollm2_arithmetic --set steps=20 --set log_rollouts_every=2 \
  --set eval.num_examples=100 --set eval.every=10 --set checkpoint_every=5 --set progress=false \
  --set output_dir=$OUT
DEST=experiments/results/smollm2_run
rm -rf $DEST && mkdir -p $DEST
cp -r $OUT/config.yaml $OUT/metrics.jsonl $OUT/rollouts $DEST/
.venv/bin/python - <<'PY'
import json
rows = [json.loads(x) for x in open("experiments/results/smollm2_run/metrics.jsonl")]
dumped = [r for r in rows if "time_dump" in r]
frac = [r["time_dump"] / r["time_step"] for r in dumped]
print(f"rollout dump: {len(dumped)} dumped steps, {sum(r['time_dump'] for r in dumped) / len(dumped):.3f} s each, "
      f"{100 * sum(frac) / len(frac):.2f}% of the step (max {100 * max(frac):.2f}%)")
PY
