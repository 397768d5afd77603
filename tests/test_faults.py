"""A run is never silently lost or poisoned: kills, signals, exceptions, bad checkpoints, failed saves,
non-finite steps, stale or shared output directories, changed configs."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from checkpoints import final_state

from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.train import presets
from jaxgrpo.train.checkpointing import Checkpointer, CheckpointRestoreError, CheckpointSaveError
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.run_dir import RunDir, RunDirError
from jaxgrpo.train.trainer import NonFiniteError
from jaxgrpo.train.trainer import Trainer as _Trainer

STEPS = 60
# One worker runs this file under pytest-xdist, so the reference run is made once.
pytestmark = pytest.mark.xdist_group(name="faults")


def trainer(cfg):
  """The runs here are on one device, in this process and in the CLI subprocesses alike (``env``): what a fault
  does to a run does not depend on the device count (the multi-device kill and resume is tests/test_multihost.py),
  and one device makes each toy step ~3× cheaper than eight simulated ones."""
  return _Trainer(cfg, mesh=shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
TESTS = os.path.dirname(__file__)


def toy(out, **sections):
  base = config_replace(presets.preset("toy"), output_dir=str(out), progress=False, checkpoint_every=5,
                         steps=STEPS, optim={"learning_rate": 0.003})
  return config_replace(base, **sections)


def cli_args(out, steps=STEPS, extra=()):
  return [sys.executable, "-m", "jaxgrpo.cli", "train", "--preset", "toy", "--set", f"steps={steps}",
          "--set", f"output_dir={out}", "--set", "checkpoint_every=5", "--set", "progress=false",
          "--set", "optim.learning_rate=0.003", *extra]


def env(**extra):
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  e = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""),
           XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=1".strip())
  e.update({k: str(v) for k, v in extra.items()})
  return e


def assert_same_state(a, b):
  assert int(a["step"]) == int(b["step"]) and int(a["data_pos"]) == int(b["data_pos"])
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])


def metric_steps(out):
  return [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="session")  # session: pytest-xdist may interleave other files' tests on this worker
def reference(tmp_path_factory):
  """An uninterrupted run (in this process) that the interrupted ones must reproduce bit for bit."""
  out = tmp_path_factory.mktemp("ref") / "run"
  trainer(toy(out)).run(resume=False)
  return final_state(out)[1]


def wait_for_checkpoint(proc, ckdir, at_least, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    done = [int(d) for d in (os.listdir(ckdir) if os.path.isdir(ckdir) else []) if d.isdigit()]
    if any(d >= at_least for d in done) or proc.poll() is not None:
      return
    time.sleep(0.02)


def test_sigkill_resume_is_exact_metrics_once_and_the_lock_is_not_stuck(tmp_path, reference):
  out = str(tmp_path / "killed")
  # the killed run aims far beyond STEPS so it cannot finish first; the resume stops at STEPS
  proc = subprocess.Popen(cli_args(out, steps=1000), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for_checkpoint(proc, os.path.join(out, "checkpoints"), 10)
  # a second run is refused while the first lives: checked in this process, since a second CLI's start-up lasted
  # long enough for the (now fast) toy steps to pass STEPS before the kill
  with pytest.raises(RunDirError, match="is in use by another jaxgrpo process"):
    RunDir(out)
  assert proc.poll() is None, "the first run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = final_state(out)[0]
  assert 10 <= saved < STEPS
  done = subprocess.run(cli_args(out), env=env(), capture_output=True, text=True, timeout=300)  # lock not stuck
  assert done.returncode == 0, done.stderr
  assert_same_state(final_state(out)[1], reference)
  held = RunDir(str(tmp_path / "held"))  # the CLI refuses a locked output_dir with exit 1 and the message
  try:
    second = subprocess.run(cli_args(held.path), env=env(), capture_output=True, text=True, timeout=300)
  finally:
    held.release()
  assert second.returncode == 1 and "is in use by another jaxgrpo process" in second.stderr, second.stderr
  assert metric_steps(out) == list(range(1, STEPS + 1))  # each step once, despite the re-run steps
  from tensorboard_events import read_tb_scalars

  tb_steps = [s for s, _ in read_tb_scalars(os.path.join(out, "tb"))["loss"]]
  assert sorted(tb_steps) == list(range(1, STEPS + 1))


def test_sigterm_saves_the_last_step_and_a_second_signal_does_no_harm(tmp_path, reference):
  out = str(tmp_path / "term")
  proc = subprocess.Popen(cli_args(out, steps=1000), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  wait_for_checkpoint(proc, os.path.join(out, "checkpoints"), 10)
  time.sleep(0.3)  # between periodic checkpoints
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert "received SIGTERM" in err and "Traceback" not in err
  step, state = final_state(out)
  assert step == int(state["step"]) and step == max(metric_steps(out)) < STEPS  # the last completed step
  done = subprocess.run(cli_args(out), env=env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert_same_state(final_state(out)[1], reference)


def test_after_a_stop_the_guard_restores_the_handlers_or_for_the_cli_keeps_ignoring_signals():
  """A notebook gets its SIGINT/SIGTERM handlers back after a stopped run; the CLI (which exits next) keeps
  ignoring them, so a second SIGTERM after the save cannot kill the process before its 128 + 15 exit."""
  from jaxgrpo.train.preemption import Preempted, SignalGuard

  seen = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
  try:
    for ignore_after_stop in (False, True):
      seen.clear()
      with pytest.raises(Preempted):
        with SignalGuard(ignore_after_stop=ignore_after_stop) as guard:
          os.kill(os.getpid(), signal.SIGTERM)
          guard.check()
      os.kill(os.getpid(), signal.SIGTERM)  # after the guard is left
      assert seen == ([] if ignore_after_stop else [signal.SIGTERM])
      signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    with SignalGuard(ignore_after_stop=True):  # no signal, no stop: the old handler comes back
      pass
    seen.clear()
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_signals_during_an_update_let_it_finish_then_save_that_step(tmp_path, reference):
  """The update donates the state: a signal inside it (here two, sent from inside the jitted call's wrapper) must
  not leave a deleted or half-stepped state; the run stops after the update with step, params and data position
  in agreement, and resuming reproduces the uninterrupted run."""
  from jaxgrpo.train.preemption import Preempted

  out = tmp_path / "run"
  tr = trainer(toy(out))
  update_fn = tr.update_fn

  def update_then_signal(*args):
    if tr.step == 12:
      os.kill(os.getpid(), signal.SIGTERM)
      os.kill(os.getpid(), signal.SIGTERM)
    return update_fn(*args)

  tr.update_fn = update_then_signal
  with pytest.raises(Preempted):
    tr.run(resume=False)
  step, state = final_state(out)
  assert step == int(state["step"]) == 13 and max(metric_steps(out)) == 13
  trainer(toy(out)).run()
  assert_same_state(final_state(out)[1], reference)


def test_an_exception_in_a_step_saves_the_last_completed_step(tmp_path, reference):
  out = str(tmp_path / "exc")
  args = cli_args(out, extra=["--set", "rewards.names=[plugins:toy_failing_after]"])
  failed = subprocess.run(args, env=env(JAXGRPO_TEST_FAIL_AFTER=16 * 23 + 5), capture_output=True, text=True,
                          timeout=300)
  assert failed.returncode != 0 and "reward service unavailable" in failed.stderr
  step, state = final_state(out)
  assert step == 23 and int(state["step"]) == 23  # 16 rewards per step: step 24 failed mid-scoring
  done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert_same_state(final_state(out)[1], reference)


def test_train_keeps_its_compiled_programs_in_the_compile_cache(tmp_path):
  """A resumed run loads its programs from --compile-cache instead of compiling them again."""
  e = env()
  e.pop("JAX_COMPILATION_CACHE_DIR", None)  # scripts/test.sh sets one; it would win over the flag
  cache = tmp_path / "xla"
  done = subprocess.run(cli_args(tmp_path / "run", steps=2, extra=("--compile-cache", str(cache))), env=e,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  entries = [n for n in os.listdir(cache) if n.endswith("-cache")]
  assert any(n.startswith("jit_") for n in entries), entries


def test_no_resume_into_a_used_directory_is_refused_and_overwrite_starts_clean(tmp_path):
  out = tmp_path / "run"
  trainer(toy(out, steps=5)).run(resume=False)
  with pytest.raises(RunDirError, match=r"holds checkpoints of an earlier run \(steps \[5\]\).*--overwrite"):
    trainer(toy(out, steps=5, seed=1)).run(resume=False)
  trainer(toy(out, steps=3, seed=1)).run(resume=False, overwrite=True)
  step, state = final_state(out)
  assert step == 3 and sorted(os.listdir(out / "checkpoints")) == ["3"]  # the old run's step 5 is gone
  assert metric_steps(out) == [1, 2, 3]


def test_resuming_with_a_changed_config_is_refused_naming_the_keys(tmp_path):
  out = tmp_path / "run"
  trainer(toy(out, steps=5)).run()
  changed = toy(out, steps=8, seed=2, sampling={"group_size": 8}, optim={"learning_rate": 0.01})
  with pytest.raises(RunDirError, match=r"changes training: optim.learning_rate: 0.003 -> 0.01, "
                                        r"sampling.group_size: 16 -> 8, seed: 0 -> 2"):
    trainer(changed).run()
  assert "seed: 0" in (out / "config.yaml").read_text()  # the saved config is untouched
  trainer(toy(out, steps=8, log_every=2)).run()  # safe changes resume (steps with a constant lr, logging)
  assert final_state(out)[0] == 8 and (out / "config.step5.yaml").exists()
  with pytest.warns(UserWarning, match="changed config keys"):
    trainer(toy(out, steps=9, optim={"learning_rate": 0.01})).run(allow_config_change=True)


def corrupt(path):
  """Flip bytes in the middle of the largest file under ``path``."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    chunk = f.read(64)
    f.seek(os.path.getsize(big) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def test_a_corrupted_checkpoint_is_skipped_with_a_warning_and_all_bad_is_a_clear_error(tmp_path):
  out = tmp_path / "run"
  trainer(toy(out, steps=10, keep_checkpoints=3)).run()
  ck = out / "checkpoints"
  corrupt(ck / "10" / "state")
  t = trainer(toy(out, steps=10, keep_checkpoints=3))
  with pytest.warns(UserWarning, match=r"skipping checkpoint .*checkpoints/10: "):
    t.run()  # falls back to step 5 and trains steps 6-10 again
  assert t.step == 10 and metric_steps(out) == list(range(1, 11))
  names = os.listdir(ck)
  assert {"5", "10"} <= set(names) and any(n.startswith("10.bad.") for n in names)  # the bad one moved aside
  corrupt(ck / "10" / "state")
  os.remove(ck / "5" / "meta" / "metadata")  # an incomplete checkpoint
  with pytest.raises(CheckpointRestoreError, match=r"none of the \d checkpoint\(s\) in .* can be restored.*Delete"):
    with pytest.warns(UserWarning):
      trainer(toy(out, steps=12, keep_checkpoints=3)).run()


def test_a_tampered_value_fails_the_checksum(tmp_path):
  out = tmp_path / "run"
  trainer(toy(out, steps=5)).run()
  t = trainer(toy(out, steps=5))
  ck = Checkpointer(str(out / "checkpoints"))
  template = t._ckpt_state()
  state = ck.restore_step(5, template)
  bumped = jax.tree.map(lambda x: x, state)
  bumped["params"]["embed"] = bumped["params"]["embed"].at[0, 0].add(1.0)
  ck.manager.save(6, args=__import__("orbax.checkpoint").checkpoint.args.Composite(
      state=__import__("orbax.checkpoint").checkpoint.args.StandardSave(bumped),
      meta=__import__("orbax.checkpoint").checkpoint.args.JsonSave(
          json.load(open(out / "checkpoints" / "5" / "meta" / "metadata")))))
  ck.wait()
  with pytest.raises(ValueError, match=r"content checksum mismatch in \[\"\['params'\]\['embed'\]\"\]"):
    ck.restore_step(6, template)
  ck.close()


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_steps_stop_the_run_without_saving_or_are_skipped(tmp_path, mode):
  out = tmp_path / "run"
  cfg = toy(out, steps=6, checkpoint_every=1, nonfinite=mode, optim={"learning_rate": 3e38, "max_grad_norm": 0.0})
  if mode == "stop":
    with pytest.raises(NonFiniteError, match=r"step \d: non-finite .*(loss|gradients|parameters)"):
      trainer(cfg).run()
  else:
    history = trainer(cfg).run()
    assert sum(h["skipped_updates"] for h in history if "loss" in h) >= 1
  ck = Checkpointer(str(out / "checkpoints"), read_only=True)
  for step in ck.all_steps():  # everything saved is finite and verifies
    ck.restore_step(step, trainer(cfg)._ckpt_state())
  ck.close()


def test_prpo_with_a_degenerate_prior_is_caught_as_nonfinite(tmp_path):
  cfg = toy(tmp_path / "run", steps=3, objective={"name": "prpo", "prpo_k": 1, "prpo_min_gap": 2,
                                                  "prpo_prior_std": 1e-45, "prm": "plugins:share_of_l"})
  with pytest.raises(NonFiniteError, match=r"step 1: non-finite loss"):
    trainer(cfg).run()
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
  return r.returncode == 0


def test_a_failed_save_ends_the_run_with_a_clear_error_and_no_hang(tmp_path):
  mnt = tmp_path / "small"
  if not _mount_tmpfs(mnt, "600k"):
    pytest.skip("cannot mount a small tmpfs here (needs CAP_SYS_ADMIN)")
  try:
    out = mnt / "run"
    done = subprocess.run(cli_args(out, steps=20), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device (errno 28)" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    ro = subprocess.run(cli_args(mnt / "other", steps=20), env=env(), capture_output=True, text=True, timeout=300)
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr and "Traceback" not in ro.stderr
  finally:
    subprocess.run(["umount", str(mnt)])


def test_checkpointer_refuses_an_unwritable_directory(tmp_path):
  target = tmp_path / "file_not_dir"
  target.write_text("x")
  with pytest.raises(CheckpointSaveError, match=r"cannot write checkpoints to .*file_not_dir/ck"):
    Checkpointer(str(target / "ck"))
  shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_os_cause_is_read_from_orbax_errors_whatever_sits_before_the_code():
  from jaxgrpo.train.checkpointing import _os_reason

  spec = "[tensorstore_spec='{\"driver\":\"zarr\",\"path\":\"params.pos_embed/\"}']"
  for text in (f"RESOURCE_EXHAUSTED: Failed to write 123876 bytes to file 21: No space left on device {spec} "
               "[os_error_code='28']",  # seen in CI: the spec between the wording and the code
               "Error writing: No space left on device [os_error_code='28']"):
    assert _os_reason(ValueError(text)) == "No space left on device (errno 28)"
  assert _os_reason(PermissionError(13, "Permission denied")) == "Permission denied (errno 13)"
  assert _os_reason(ValueError("odd\nsecond line")) == "ValueError: odd"
