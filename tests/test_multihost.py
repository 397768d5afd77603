"""Multi-process training on JAX's distributed runtime: 2 processes × 4 CPU devices on localhost (gloo).

The final params equal those of 1 process × 8 devices (same mesh shape; SGD, as in the sharding test), and
killing both processes and restarting them resumes to the uninterrupted result.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from checkpoints import final_state

from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.trainer import Trainer

STEPS = 8
SETTINGS = {"steps": STEPS, "checkpoint_every": 2, "progress": False,
            "optim": {"optimizer": "sgd", "learning_rate": 0.5, "max_grad_norm": 1.0},
            "objective": {"name": "lambda_grpo"}, "eval": {"num_examples": 2, "every": 4}}
CLI_SETTINGS = [f"steps={STEPS}", "checkpoint_every=2", "progress=false", "optim.optimizer=sgd",
                "optim.learning_rate=0.5", "objective.name=lambda_grpo", "eval.num_examples=2", "eval.every=4"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(out, steps=STEPS, extra=()):
  port = _free_port()
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4".strip(),
             JAXGRPO_DIST_TIMEOUT="120")
  procs = []
  for pid in range(2):
    args = [sys.executable, "-m", "jaxgrpo.cli", "train", "--preset", "toy", "--set", f"output_dir={out}",
            *[x for kv in [*CLI_SETTINGS, *extra] for x in ("--set", kv)], "--set", f"steps={steps}",
            "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(pid)]
    procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def wait_all(procs, timeout=400):
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=timeout)
    outs.append((p.returncode, err))
  return outs


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  out = tmp_path_factory.mktemp("one") / "run"
  cfg = config_replace(presets.preset("toy"), output_dir=str(out), **SETTINGS)
  Trainer(cfg).run(resume=False)
  return final_state(str(out), STEPS)[1]


def test_two_processes_equal_one_and_resume_after_both_are_killed(tmp_path, single_process):
  """The first run samples with the continuous engine, data-parallel across processes (each device its own slots;
  the host loop reads every device's progress): the same samples, so the same final params as one process with
  the static engine.  The killed-and-resumed run samples with ``auto`` (static across processes)."""
  out = str(tmp_path / "two")
  results = wait_all(launch(out, extra=("sampling.engine=continuous",)))
  for code, err in results:
    assert code == 0, err[-3000:]
  two = final_state(out, STEPS)[1]
  assert int(two["step"]) == STEPS and int(two["data_pos"]) == int(single_process["data_pos"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), two["params"],
               single_process["params"])
  rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]  # process 0 only, once per row
  assert len([r for r in rows if "loss" in r]) == STEPS
  assert sum(any(k.startswith("eval/") for k in r) for r in rows) == 3
  assert all(0 < r["sampling/useful_frac"] <= 1 for r in rows if "loss" in r)

  # kill both mid-run, then start both again: the run resumes collectively to the same result
  killed = str(tmp_path / "killed")
  procs = launch(killed, steps=1000)
  ckdir = os.path.join(killed, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and not any(d.isdigit() and int(d) >= 4 for d in
                                           (os.listdir(ckdir) if os.path.isdir(ckdir) else [])):
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()
  assert len(os.listdir(ckdir)) >= 1
  for code, err in wait_all(launch(killed)):
    assert code == 0, err[-3000:]
  resumed = final_state(killed, STEPS)[1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), resumed["params"],
               single_process["params"])
