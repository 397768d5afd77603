"""Converting the SmolLM2 GGUF to an HF directory from two processes at once (run beside the other tests: it is
I/O and dequantisation, not the 8-device trainer that tests/test_smollm2.py runs alone)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
  from jaxgrpo.models import smollm2

  return smollm2.hf_checkpoint_dir()


def test_two_processes_converting_at_once_both_get_one_whole_checkpoint(tmp_path, smollm2_dir):
  """Two test workers (or a sweep beside a notebook) converting the GGUF at once: before the lock they shared one
  temporary directory, and the first to finish moved it away under the second (CI: 'No such file or directory')."""
  out = str(tmp_path / "smollm2")
  code = ("import sys; from jaxgrpo.models import smollm2; "
          "print(smollm2.hf_checkpoint_dir(sys.argv[1]))")
  procs = [subprocess.Popen([sys.executable, "-c", code, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  results = [p.communicate(timeout=600) for p in procs]
  for p, (stdout, stderr) in zip(procs, results):
    assert p.returncode == 0, stderr[-2000:]
    assert stdout.strip() == out
  assert sorted(os.listdir(tmp_path)) == ["smollm2", "smollm2.lock"]  # no temporary directory left behind
  meta = ("_name_or_path", "transformers_version")  # the cached copy may come from another transformers release
  config = lambda d: {k: v for k, v in json.load(open(os.path.join(d, "config.json"))).items() if k not in meta}
  assert config(out) == config(smollm2_dir)
  with open(os.path.join(out, "model.safetensors"), "rb") as a, open(os.path.join(smollm2_dir, "model.safetensors"),
                                                                      "rb") as b:
    assert a.read() == b.read()
