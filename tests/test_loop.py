"""The training loop: short runs write metrics (JSONL, TensorBoard) and evaluate; PRPO end to end with pluggable
PRMs; custom rewards from the trainer and the CLI; the progress bar's plain lines."""

import json
import os

import numpy as np
import pytest
from meshes import trainer
from tensorboard_events import read_tb_scalars

from jaxgrpo.tasks import rewards as R
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace


def toy_cfg(tmp_path, **sections):
  cfg = config_replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False)
  return config_replace(cfg, **sections)


@pytest.mark.parametrize("objective", ["grpo", "lambda_grpo"])
def test_short_toy_run_writes_metrics_and_evaluates(tmp_path, objective):
  cfg = toy_cfg(tmp_path, steps=6, objective={"name": objective, "kl_beta": 0.04, "num_iterations": 2,
                                              "num_minibatches": 2},
                eval={"num_examples": 2, "every": 3, "num_samples": 8, "pass_k": (1, 4)})
  tr = trainer(cfg)
  assert tr.update_spec.old_logp == "batch" and tr.update_spec.reference == "params"
  history = tr.run(resume=False)
  train_rows = [h for h in history if "loss" in h]
  eval_rows = [h for h in history if "eval/greedy_accuracy" in h]
  assert len(train_rows) == 6 and [h["step"] for h in eval_rows] == [0, 3, 6]
  rows = [json.loads(line) for line in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
  want = {"reward_mean", "reward_std", "zero_std_group_frac", "lambda_mean", "intermediate_prop",
          "flat_tree_frac", "kl_mean", "clip_frac_low", "clip_frac_high", "entropy_mean", "completion_len_mean",
          "tokens_per_s", "time_sample", "time_score", "time_update", "loss", "accuracy", "reward_toy_tree",
          "update_norm", "skipped_updates", "truncated_frac"}
  assert want <= set(train_rows[-1]) and [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
  assert all(np.isfinite(v) for r in rows for v in r.values())
  assert train_rows[-1]["lambda_mean"] > 1  # 16 completions of a 4-token tree always share prefixes
  ev = eval_rows[-1]
  assert 0 <= ev["eval/pass_at_1"] <= ev["eval/pass_at_4"] <= 1 and ev["eval/num_examples"] == 2
  tags = read_tb_scalars(os.path.join(cfg.output_dir, "tb"))
  assert len(tags["reward_mean"]) == 6 and len(tags["lambda_mean"]) == 6 and len(tags["eval/greedy_accuracy"]) == 3


def test_prpo_end_to_end_with_a_pluggable_prm(tmp_path):
  calls = []

  def prm(example, segments):  # scores each segment by its share of 'L'
    calls.append(list(segments))
    return [s.count("L") / max(len(s), 1) for s in segments]

  cfg = toy_cfg(tmp_path, steps=3, objective={"name": "prpo", "lambda_weights": True, "prpo_k": 1,
                                              "prpo_min_gap": 2})
  history = trainer(cfg, prm=prm).run(resume=False)
  assert len(history) == 3 and calls
  assert all(1 <= len(c) <= 2 for c in calls)  # k=1 spike, min_gap 2 on 4 tokens: one or two segments
  assert all("".join(c) in {a + b + c_ + d for a in "LR" for b in "LR" for c_ in "LR" for d in "LR"} for c in calls)
  assert all(np.isfinite(h["loss"]) and 0 <= h["prm_score_mean"] <= 1 for h in history)


@pytest.mark.parametrize("cuts", ["uniform", "random"])
def test_prpo_control_cuts_reach_the_prm_as_the_rule_places_them(tmp_path, cuts):
  """The controls of issue 23: the PRM sees the segments the control rule makes (uniform: 4 tokens, k = 1 →
  the cut at floor(4·1/2) = 2, kept by min_gap 2: always 'ab' + 'cd'); random cuts vary and are seeded."""
  def run(out):
    seen = []
    cfg = toy_cfg(out, steps=2, objective={"name": "prpo", "prpo_k": 1, "prpo_min_gap": 1, "prpo_cuts": cuts})
    if cuts == "uniform":
      cfg = config_replace(cfg, objective={"prpo_min_gap": 2})
    trainer(cfg, prm=lambda e, segs: seen.append([len(x) for x in segs]) or [0.5] * len(segs)).run(resume=False)
    return seen

  seen = run(tmp_path / "a")
  if cuts == "uniform":
    assert seen and all(s == [2, 2] for s in seen)
  else:  # one candidate in 1..3 (a candidate at 0 is dropped: no cut there), so 1–2 segments; not all alike
    assert all(sum(s) == 4 and len(s) in (1, 2) for s in seen) and len({tuple(s) for s in seen}) > 1
    assert run(tmp_path / "b") == seen  # same seed, same cuts


def test_prpo_prm_from_config_by_module_path(tmp_path):
  cfg = toy_cfg(tmp_path, steps=1, objective={"name": "prpo", "prpo_k": 1, "prpo_min_gap": 2,
                                              "prm": "plugins:share_of_l"})
  assert trainer(cfg).prm.__name__ == "share_of_l"


def test_prm_must_return_scores_in_range(tmp_path):
  cfg = toy_cfg(tmp_path, steps=1, objective={"name": "prpo", "prpo_k": 1, "prpo_min_gap": 2})
  with pytest.raises(ValueError, match=r"the PRM must return \d scores in \[0, 1\]"):
    trainer(cfg, prm=lambda e, s: [2.0] * len(s)).run(resume=False)


def test_custom_rewards_from_the_trainer_and_the_cli(tmp_path, capsys):
  cfg = toy_cfg(tmp_path, steps=2)
  history = trainer(cfg, rewards=[(R.toy_tree_reward(), 1.0), (lambda p, c, e: len(c) / 4, 0.5)]).run(resume=False)
  assert {"reward_toy_tree", "reward_<lambda>"} <= set(history[-1])
  from jaxgrpo import cli

  out = str(tmp_path / "cli")
  assert cli.main(["train", "--preset", "toy", "--set", "steps=3", "--set", f"output_dir={out}",
                   "--set", "progress=false", "--set", "objective.name=lambda_grpo",
                   "--set", "rewards.names=[plugins:toy_numpy_scalar]"]) == 0
  assert "step 3: reward_mean" in capsys.readouterr().out
  assert os.path.exists(os.path.join(out, "config.yaml"))


def test_progress_prints_plain_lines_when_not_a_terminal():
  import io

  from jaxgrpo.train.progress import Progress

  buf = io.StringIO()
  p = Progress(3, desc="run", stream=buf, line_every_s=0.0)
  for i in range(3):
    p.update(1, reward="0.5")
  p.close()
  text = buf.getvalue()
  assert text.splitlines() == ["run 1/3 reward=0.5", "run 2/3 reward=0.5", "run 3/3 reward=0.5"]
  assert "\r" not in text and "\x1b" not in text
