"""Configs are checked when they are made (code, YAML, --set), naming the key; presets; resume-safe changes."""

import os

import pytest

from jaxgrpo.train import config as C
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.loading import load_config


def test_yaml_config_presets_and_overrides(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("preset: toy\nsteps: 7\nobjective:\n  name: lambda_grpo\n  kl_beta: 0.04\n")
  cfg = load_config(str(path), ["optim.learning_rate=0.01", "rewards.names=[toy_tree]", "mesh.data=2"])
  assert (cfg.steps, cfg.objective.name, cfg.objective.kl_beta) == (7, "lambda_grpo", 0.04)
  assert cfg.optim.learning_rate == 0.01 and cfg.rewards.names == ("toy_tree",) and cfg.mesh.data == 2
  C.save_config(cfg, str(tmp_path / "saved.yaml"))
  assert load_config(str(tmp_path / "saved.yaml")) == cfg
  for p in presets.PRESETS:
    assert presets.preset(p).name == p
  assert presets.preset("lambda_grpo_paper").model.lora.rank == 64
  assert presets.preset("lambda_grpo_paper_full").model.lora.rank == 0
  assert presets.preset("prpo_paper").data.source == "jsonl"


@pytest.mark.parametrize("override, match", [
    ("optim.lr=1", r"unknown config key 'optim.lr'"),
    ("objectiv.name=grpo", r"unknown config section 'objectiv'"),
    ("steps=many", r"config key 'steps' expects int"),
    ("steps=2.5", r"config key 'steps' expects an integer; got 2.5"),
    ("steps=true", r"config key 'steps' expects int"),
    ("progress=maybe", r"config key 'progress' expects bool"),
    ("steps", r"--set expects key=value"),
    ("steps=0", r"'steps' must be >= 1; got 0"),
    ("optim.learning_rate=0", r"'optim.learning_rate' must be > 0; got 0.0"),
    ("optim.learning_rate=-1e-5", r"'optim.learning_rate' must be > 0"),
    ("objective.kl_beta=-0.1", r"'objective.kl_beta' must be >= 0"),
    ("keep_checkpoints=0", r"'keep_checkpoints' must be >= 1"),
    ("objective.num_minibatches=0", r"'objective.num_minibatches' must be >= 1"),
    ("log_every=0", r"'log_every' must be >= 1"),
    ("data.prompts_per_step=0", r"'data.prompts_per_step' must be >= 1"),
    ("model.hidden_size=65", r"'model.hidden_size' \(65\) must be divisible by 'model.num_heads' \(4\)"),
    ("objective.name=ppo", r"'objective.name' must be one of \['grpo', 'lambda_grpo', 'prpo'\]"),
    ("objective.aggregation=sum", r"'objective.aggregation' must be one of"),
    ("optim.schedule=step", r"'optim.schedule' must be one of"),
    ("objective.prpo_prior_std=0", r"'objective.prpo_prior_std' must be > 0"),
    ("model.dtype=float64", r"'model.dtype' must be one of"),
    ("model.remat=sometimes", r"'model.remat' must be one of"),
    ("sampling.top_p=0", r"'sampling.top_p' must be in \(0, 1\]"),
    ("eval.pass_k=[1,9]", r"'eval.pass_k' must be values in \[1, eval.num_samples"),
])
def test_bad_values_are_refused_when_loaded_naming_the_key(override, match):
  extra = ["eval.num_samples=4"] if "pass_k" in override else []
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(C.TrainConfig(), extra + [override])


def test_settings_without_learning_signal_warn():
  with pytest.warns(UserWarning, match="temperature = 0"):
    C.apply_overrides(C.TrainConfig(), ["sampling.temperature=0"])
  with pytest.warns(UserWarning, match="group_size = 1"):
    C.apply_overrides(C.TrainConfig(), ["sampling.group_size=1"])


def test_yaml_root_must_be_a_mapping_and_paths_expand_home(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("- steps: 3\n")
  with pytest.raises(ValueError, match=r"c.yaml: the YAML root must be a mapping of config keys; got list"):
    load_config(str(path))
  path.write_text("steps: [unclosed\n")
  with pytest.raises(ValueError, match=r"c.yaml: not valid YAML"):
    load_config(str(path))
  cfg = C.apply_overrides(C.TrainConfig(), ["output_dir=~/runs/x", "data.path=~/d.jsonl"])
  assert cfg.output_dir == os.path.expanduser("~/runs/x") and not cfg.output_dir.startswith("~")
  assert cfg.data.path == os.path.expanduser("~/d.jsonl")


def test_unknown_yaml_key(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("sampling:\n  group: 8\n")
  with pytest.raises(ValueError, match=r"unknown config key 'sampling.group'"):
    load_config(str(path))


def test_resume_changes_name_training_keys():
  a = presets.preset("toy")
  b = config_replace(a, sampling={"group_size": 8}, optim={"b2": 0.99}, seed=3, steps=500, log_every=5)
  unsafe, safe = C.resume_changes(a, b)
  assert unsafe == ["optim.b2", "sampling.group_size", "seed"]
  assert sorted(safe) == ["log_every", "steps"]
  c = config_replace(a, optim={"schedule": "cosine"})
  assert "steps" in C.resume_changes(c, config_replace(c, steps=500))[0]  # changes the schedule
