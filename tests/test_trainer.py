"""The trainer: configs, rewards, data, a short run with metrics, PRPO end to end, resume after a kill."""

import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxgrpo import config as C
from jaxgrpo import data as D
from jaxgrpo import prm as P
from jaxgrpo import rewards as R
from jaxgrpo.checkpointing import Checkpointer
from jaxgrpo.trainer import Trainer


def toy_cfg(tmp_path, **kw):
  base = C.preset("toy")
  return dataclasses.replace(base, output_dir=str(tmp_path / "run"), progress=False, **kw)


# ----------------------------------------------------------------------------- config


def test_yaml_config_presets_and_overrides(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("preset: toy\nsteps: 7\nobjective:\n  name: lambda_grpo\n  kl_beta: 0.04\n")
  cfg = C.load_config(str(path), ["optim.learning_rate=0.01", "rewards.names=[toy_tree]", "mesh.data=2"])
  assert (cfg.steps, cfg.objective.name, cfg.objective.kl_beta) == (7, "lambda_grpo", 0.04)
  assert cfg.optim.learning_rate == 0.01 and cfg.rewards.names == ("toy_tree",) and cfg.mesh.data == 2
  C.save_config(cfg, str(tmp_path / "saved.yaml"))
  assert C.load_config(str(tmp_path / "saved.yaml")) == cfg
  for p in ("toy", "smollm2_arithmetic", "lambda_grpo_paper", "prpo_paper"):
    assert C.preset(p).name == p


@pytest.mark.parametrize("override, match", [
    ("optim.lr=1", r"unknown config key 'optim.lr'"),
    ("objectiv.name=grpo", r"unknown config section 'objectiv'"),
    ("steps=many", r"config key 'steps' expects int"),
    ("progress=maybe", r"config key 'progress' expects bool"),
    ("steps", r"--set expects key=value"),
])
def test_bad_overrides_name_the_key(override, match):
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(C.TrainConfig(), [override])


def test_unknown_yaml_key(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("sampling:\n  group: 8\n")
  with pytest.raises(ValueError, match=r"unknown config key 'sampling.group'"):
    C.load_config(str(path))


# ----------------------------------------------------------------------------- rewards and data


def test_toy_tree_reward_table():
  r = R.toy_tree_reward("LLRL", n_shared=2, r_neg=-1.5, r_other=0.7)
  ex = D.Example("", "LLRL")
  assert r("", "LLRL", ex) == 1.0
  assert r("", "LLRR", ex) == -1.5 and r("", "LLLL", ex) == -1.5
  assert r("", "LRRL", ex) == 0.7 and r("", "RLRL", ex) == 0.7


def test_math_and_format_rewards():
  ex = D.Example("q", "42")
  assert R.math_reward("q", "so the answer is \\boxed{42}", ex) == 1.0
  assert R.math_reward("q", "the answer is \\boxed{41}", ex) == 0.0
  assert R.math_reward("q", "\\boxed{\\frac{84}{2}}", ex) == 1.0
  assert R.format_reward("q", "\\boxed{1}", ex) == 1.0 and R.format_reward("q", "1", ex) == 0.0


def test_nan_or_missing_reward_names_the_example():
  ex = [D.Example("what is 2+2", "4", {"index": 17})]

  def my_reward(prompt, completion, example):
    return float("nan") if completion == "b" else 0.0

  with pytest.raises(ValueError, match=r"reward 'my_reward' returned nan for example 17 .*completion 1"):
    R.score([(my_reward, 1.0)], ["what is 2+2"], [["a", "b"]], ex)
  with pytest.raises(ValueError, match="returned None for example 17"):
    R.score([(lambda p, c, e: None, 1.0)], ["q"], [["a"]], ex)


def test_arithmetic_source_is_deterministic_and_its_steps_pass_the_prm():
  src = D.ArithmeticSource(seed=3)
  assert src[5] == D.ArithmeticSource(seed=3)[5] and src[5] != src[6]
  prm = P.ArithmeticPRM()
  for i in range(50):
    ex = src[i]
    assert prm(ex, ex.meta["steps"]) == [1.0, 1.0]
    assert R.math_reward(ex.prompt, f"\\boxed{{{ex.answer}}}", ex) == 1.0
  assert prm(src[0], ["so 2 + 2 = 5", "no numbers here", "3 * 4 = 12 and 10 / 2 = 5"]) == [0.0, 0.5, 1.0]


def test_jsonl_source(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"prompt": "a", "answer": "1", "id": 3}\n{"prompt": "b", "answer": "2"}\n')
  src = D.jsonl_source(str(path), seed=0)
  first_epoch = sorted(src[i].prompt for i in range(2))
  assert first_epoch == ["a", "b"] and len({src[i].prompt for i in range(2, 4)}) == 2
  (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field\(s\) \['answer'\]"):
    D.jsonl_source(str(tmp_path / "bad.jsonl"))


# ----------------------------------------------------------------------------- training runs


def read_tb_scalars(directory):
  """Minimal TFRecord reader for TensorBoard event files (proves they are readable)."""
  from tensorboardX.proto import event_pb2

  tags = {}
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as f:
      buf = f.read()
    pos = 0
    while pos < len(buf):
      (length,) = struct.unpack("<Q", buf[pos:pos + 8])
      data = buf[pos + 12: pos + 12 + length]
      pos += 12 + length + 4
      ev = event_pb2.Event.FromString(data)
      for v in ev.summary.value:
        tags.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return tags


@pytest.mark.parametrize("objective", ["grpo", "lambda_grpo"])
def test_short_toy_run_writes_metrics(tmp_path, objective):
  cfg = toy_cfg(tmp_path, steps=6)
  cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name=objective, kl_beta=0.04,
                                                               num_iterations=2, num_minibatches=2))
  history = Trainer(cfg).run(resume=False)
  assert len(history) == 6
  rows = [json.loads(l) for l in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
  want = {"reward_mean", "reward_std", "zero_std_group_frac", "lambda_mean", "intermediate_prop",
          "flat_tree_frac", "kl_mean", "clip_frac_low", "clip_frac_high", "entropy_mean", "completion_len_mean",
          "tokens_per_s", "time_sample", "time_score", "time_update", "loss", "target_frac", "accuracy",
          "reward_toy_tree"}
  assert want <= set(rows[-1]) and [r["step"] for r in rows] == list(range(1, 7))
  assert all(np.isfinite(v) for r in rows for v in r.values())
  assert rows[-1]["lambda_mean"] > 1  # 16 completions of a 4-token tree always share prefixes
  tags = read_tb_scalars(os.path.join(cfg.output_dir, "tb"))
  assert len(tags["reward_mean"]) == 6 and len(tags["lambda_mean"]) == 6


def test_prpo_end_to_end_with_a_pluggable_prm(tmp_path):
  calls = []

  def prm(example, segments):  # scores each segment by its share of 'L'
    calls.append(list(segments))
    return [s.count("L") / max(len(s), 1) for s in segments]

  cfg = toy_cfg(tmp_path, steps=3)
  cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="prpo", lambda_weights=True,
                                                               prpo_k=1, prpo_min_gap=2))
  trainer = Trainer(cfg, prm=prm)
  history = trainer.run(resume=False)
  assert len(history) == 3 and calls
  assert all(1 <= len(c) <= 2 for c in calls)  # k=1 spike, min_gap 2 on 4 tokens: one or two segments
  assert all("".join(c) in {a + b + c_ + d for a in "LR" for b in "LR" for c_ in "LR" for d in "LR"} for c in calls)


def test_prm_must_return_scores_in_range(tmp_path):
  cfg = toy_cfg(tmp_path, steps=1)
  cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="prpo", prpo_k=1, prpo_min_gap=2))
  with pytest.raises(ValueError, match=r"the PRM must return \d scores in \[0, 1\]"):
    Trainer(cfg, prm=lambda e, s: [2.0] * len(s)).run(resume=False)


def test_cli_train_with_overrides(tmp_path, capsys):
  from jaxgrpo import cli

  out = str(tmp_path / "cli")
  assert cli.main(["train", "--preset", "toy", "--set", "steps=3", "--set", f"output_dir={out}",
                   "--set", "progress=false", "--set", "objective.name=lambda_grpo"]) == 0
  assert "step 3: reward_mean" in capsys.readouterr().out
  assert os.path.exists(os.path.join(out, "config.yaml"))


def _cli(out, steps, extra=()):
  return [sys.executable, "-m", "jaxgrpo.cli", "train", "--preset", "toy", "--set", f"steps={steps}",
          "--set", f"output_dir={out}", "--set", "checkpoint_every=20", "--set", "progress=false",
          "--set", "optim.learning_rate=0.003", *extra]


def _final_params(out, step):
  ck = Checkpointer(os.path.join(out, "checkpoints"))
  try:
    return ck.manager.restore(step)
  finally:
    ck.close()


def test_resume_after_kill_gives_the_same_final_params(tmp_path):
  steps = 300
  env = dict(os.environ)
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  subprocess.run(_cli(full, steps), check=True, env=env, capture_output=True)
  proc = subprocess.Popen(_cli(killed, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckdir = os.path.join(killed, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline:
    done = [int(d) for d in (os.listdir(ckdir) if os.path.isdir(ckdir) else []) if d.isdigit()]
    if any(d >= 40 for d in done) or proc.poll() is not None:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = sorted(int(d) for d in os.listdir(ckdir) if d.isdigit())
  assert saved and saved[-1] < steps, saved
  subprocess.run(_cli(killed, steps), check=True, env=env, capture_output=True)
  a, b = _final_params(full, steps), _final_params(killed, steps)
  assert int(a["step"]) == int(b["step"]) == steps and int(a["data_pos"]) == int(b["data_pos"])
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
  lines = [json.loads(l) for l in open(os.path.join(killed, "metrics.jsonl"))]
  assert lines[-1]["step"] == steps


def test_score_components_are_weighted_and_kept_apart():
  ex = [D.Example("q", "4", {"index": 0})]
  fns = [(R.math_reward, 1.0), (R.format_reward, 0.1)]
  total, parts = R.score_components(fns, ["q"], [["\\boxed{4}", "\\boxed{5}", "4"]], ex)
  np.testing.assert_allclose(parts[0], [[1.0, 0.0, 1.0]])
  np.testing.assert_allclose(parts[1], [[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(total, [[1.1, 0.1, 1.0]], rtol=1e-6)
