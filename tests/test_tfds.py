"""TFDS source: a tiny gsm8k dataset built locally (no downloads) and read by jaxgrpo."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow", reason="the tfds source needs tensorflow-cpu (installed by scripts/test.sh)")

ROWS = [
    {"question": "Ann has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A box holds 12 pens; 5 are taken. How many are left?", "answer": "12 - 5 = 7\n#### 7"},
    {"question": "What is 1,200 + 34?", "answer": "1200 + 34 = 1234\n#### 1,234"},
]


def test_gsm8k_built_locally_reads_through_make_source(tmp_path):
  rows = tmp_path / "train.jsonl"
  rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
             TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "tfds_tiny.py"),
                        str(tmp_path / "tfds"), str(rows)], capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["n"] == 3
  got = {e["prompt"]: e["answer"] for e in result["examples"]}
  assert got == {r["question"]: r["answer"].split("####")[-1].strip().replace(",", "") for r in ROWS}
  assert all(e["meta"]["solution"] for e in result["examples"])
