"""The trainer: configs checked on load, rewards, data, short runs with metrics, PRPO end to end, the CLI."""

import json
import os
import struct

import jax
import numpy as np
import pytest

from jaxgrpo import config as C
from jaxgrpo import data as D
from jaxgrpo import presets
from jaxgrpo import prm as P
from jaxgrpo import rewards as R
from jaxgrpo.trainer import Trainer


def toy_cfg(tmp_path, **sections):
  cfg = presets.replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False)
  return presets.replace(cfg, **sections)


# ----------------------------------------------------------------------------- config


def test_yaml_config_presets_and_overrides(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("preset: toy\nsteps: 7\nobjective:\n  name: lambda_grpo\n  kl_beta: 0.04\n")
  cfg = C.load_config(str(path), ["optim.learning_rate=0.01", "rewards.names=[toy_tree]", "mesh.data=2"])
  assert (cfg.steps, cfg.objective.name, cfg.objective.kl_beta) == (7, "lambda_grpo", 0.04)
  assert cfg.optim.learning_rate == 0.01 and cfg.rewards.names == ("toy_tree",) and cfg.mesh.data == 2
  C.save_config(cfg, str(tmp_path / "saved.yaml"))
  assert C.load_config(str(tmp_path / "saved.yaml")) == cfg
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
    C.load_config(str(path))
  path.write_text("steps: [unclosed\n")
  with pytest.raises(ValueError, match=r"c.yaml: not valid YAML"):
    C.load_config(str(path))
  cfg = C.apply_overrides(C.TrainConfig(), ["output_dir=~/runs/x", "data.path=~/d.jsonl"])
  assert cfg.output_dir == os.path.expanduser("~/runs/x") and not cfg.output_dir.startswith("~")
  assert cfg.data.path == os.path.expanduser("~/d.jsonl")


def test_unknown_yaml_key(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("sampling:\n  group: 8\n")
  with pytest.raises(ValueError, match=r"unknown config key 'sampling.group'"):
    C.load_config(str(path))


def test_resume_changes_name_training_keys():
  a = presets.preset("toy")
  b = presets.replace(a, sampling={"group_size": 8}, optim={"b2": 0.99}, seed=3, steps=500, log_every=5)
  unsafe, safe = C.resume_changes(a, b)
  assert unsafe == ["optim.b2", "sampling.group_size", "seed"]
  assert sorted(safe) == ["log_every", "steps"]
  c = presets.replace(a, optim={"schedule": "cosine"})
  assert "steps" in C.resume_changes(c, presets.replace(c, steps=500))[0]  # changes the schedule


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


@pytest.mark.parametrize("completion,want", [
    # what GRPO at lr 1e-5 learned within 20 steps on SmolLM2 when math-verify graded the whole completion:
    # restate the question, leave the box empty (math-verify evaluated "5 + 7" to 12)
    ("5 + 7 = \\boxed{}", False),
    ("\\boxed{5 + 7}", False),
    ("5 + 7", False),  # no answer: the last number is 7
    ("x = 12 so \\boxed{}", False),  # a box is the answer, and it is empty
    ("\\boxed{12", False),  # unclosed
    ("5 + 7 = 12", True),  # no box: the last number
    ("The answer is 12.", True),
    ("\\boxed{12}", True),
    ("\\boxed{ 12.0 }", True),
    ("\\boxed{$12$}", True),
    ("first \\boxed{11}, then \\boxed{12}", True),  # the last box
    ("\\boxed{13}", False),
])
def test_math_reward_grades_the_final_answer_not_an_expression_equal_to_it(completion, want):
  ex = D.Example("What is 5 + 7?", "12")
  assert R.math_reward(ex.prompt, completion, ex) == float(want)


def test_symbolic_references_use_math_verify_on_the_final_answer():
  assert D.answer_matches("\\frac{1}{2}", "so \\boxed{0.5}")
  assert D.answer_matches("0.5", "\\boxed{\\frac{1}{2}}") and not D.answer_matches("0.5", "\\boxed{\\frac{1}{3}}")
  assert D.answer_matches("2\\sqrt{3}", "\\boxed{2\\sqrt{3}}") and not D.answer_matches("2\\sqrt{3}", "\\boxed{}")
  assert D.answer_matches("-1234", "\\boxed{-1,234}")


def test_format_reward_needs_a_non_empty_box_and_reads_nested_braces():
  ex = D.Example("q", "1")
  assert R.format_reward("q", "\\boxed{}", ex) == 0.0 and R.format_reward("q", "\\boxed{ }", ex) == 0.0
  assert R.format_reward("q", "\\boxed{\\frac{1}{2}}", ex) == 1.0
  assert D.boxed_contents("a \\boxed{\\frac{1}{2}} b \\boxed{x}") == ["\\frac{1}{2}", "x"]


def test_bad_rewards_name_the_function_and_example():
  ex = [D.Example("what is 2+2", "4", {"index": 17})]

  def my_reward(prompt, completion, example):
    return float("nan") if completion == "b" else 0.0

  with pytest.raises(ValueError, match=r"reward 'my_reward' returned nan for example 17 .*completion 'b'"):
    R.score([(my_reward, 1.0)], ["what is 2+2"], [["a", "b"]], ex)
  for bad in (None, "1.0", [1.0], np.array([1.0, 2.0]), complex(1, 1)):
    with pytest.raises(ValueError, match="rewards must be finite numbers"):
      R.score([(lambda p, c, e, v=bad: v, 1.0)], ["q"], [["a"]], ex)


def test_rewards_accept_numpy_and_jax_scalars():
  ex = [D.Example("q", "4", {"index": 0})]
  for value in (np.float32(0.5), np.int64(1), jax.numpy.float32(0.25), np.asarray(0.75), True):
    total = R.score([(lambda p, c, e, v=value: v, 2.0)], ["q"], [["a"]], ex)
    assert total[0, 0] == pytest.approx(2.0 * float(value))


def test_reward_plugins_load_from_config_by_module_path():
  fns = R.make_rewards(C.RewardSpec(names=("plugins:toy_numpy_scalar", "format"), weights=(1.0, 0.5)), C.DataSpec())
  assert fns[0][0].__name__ == "toy_numpy_scalar" and fns[1][1] == 0.5
  with pytest.raises(ValueError, match=r"reward 'plugins:nope': module 'plugins' has no attribute 'nope'"):
    R.make_rewards(C.RewardSpec(names=("plugins:nope",), weights=(1.0,)), C.DataSpec())
  with pytest.raises(ValueError, match=r"cannot import module 'no_such_module'"):
    R.make_rewards(C.RewardSpec(names=("no_such_module:f",), weights=(1.0,)), C.DataSpec())
  with pytest.raises(ValueError, match=r"unknown reward 'lenght'"):
    R.make_rewards(C.RewardSpec(names=("lenght",), weights=(1.0,)), C.DataSpec())


def test_arithmetic_difficulty_and_disjoint_splits():
  train = D.ArithmeticSource(seed=3)
  assert train[5] == D.ArithmeticSource(seed=3)[5] and train[5] != train[6]
  prm = P.ArithmeticPRM()
  for i in range(50):
    ex = train[i]
    assert prm(ex, ex.meta["steps"]) == [1.0] and ex.answer == str(eval(ex.meta["expression"]))
    assert R.math_reward(ex.prompt, f"\\boxed{{{ex.answer}}}", ex) == 1.0
  evals = D.ArithmeticSource(seed=3, split="eval").eval_examples(200)
  assert len({e.meta["expression"] for e in evals}) == 200
  seen = {train[i].meta["expression"] for i in range(3000)}
  assert not seen & {e.meta["expression"] for e in evals}  # disjoint by construction
  hard = D.ArithmeticSource(seed=0, num_ops=3, max_operand=9, ops="+-*")
  for i in range(30):
    ex = hard[i]
    assert len(ex.meta["steps"]) == 3 and int(ex.answer) >= 0 and prm(ex, ex.meta["steps"]) == [1.0] * 3
    assert ex.answer == str(eval(ex.meta["expression"]))
  with pytest.raises(ValueError, match="(has only .* distinct problems|no eval problem found)"):
    D.ArithmeticSource(seed=0, split="eval", max_operand=4).eval_examples(200)
  assert prm(train[0], ["so 2 + 2 = 5", "no numbers here", "3 * 4 = 12 and 10 / 2 = 5"]) == [0.0, 0.5, 1.0]


def test_jsonl_source_and_its_errors_name_file_and_line(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"prompt": "a", "answer": "1", "id": 3}\n\n{"prompt": "b", "answer": "2"}\n')
  src = D.jsonl_source(str(path), seed=0)
  first_epoch = sorted(src[i].prompt for i in range(2))
  assert first_epoch == ["a", "b"] and len({src[i].prompt for i in range(2, 4)}) == 2
  cases = [
      (b'{"prompt": "a", "answer": "1"}\n{"prompt": "a"}\n', r"bad.jsonl:2: missing or null field\(s\) \['answer'\]"),
      (b'{"prompt": "a", "answer": null}\n', r"bad.jsonl:1: missing or null field\(s\) \['answer'\]"),
      (b'{"prompt": "a", "answer": "1"}\n\n{"prompt": "a", "answer": 1,}\n', r"bad.jsonl:3: malformed JSON"),
      (b'{"prompt": "a", "answer": "1"}\n{"prompt": "\xff\xfe", "answer": "2"}\n', r"bad.jsonl:2: not UTF-8"),
      (b'[1, 2]\n', r"bad.jsonl:1: each line must be a JSON object"),
      (b'\n\n', r"JSONL file .*bad.jsonl is empty"),
  ]
  for content, match in cases:
    (tmp_path / "bad.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match=match):
      D.jsonl_source(str(tmp_path / "bad.jsonl"))
  with pytest.raises(FileNotFoundError, match="JSONL file .*missing.jsonl"):
    D.jsonl_source(str(tmp_path / "missing.jsonl"))


def test_eval_sets_are_held_out(tmp_path):
  data = C.DataSpec(source="jsonl", path=str(tmp_path / "train.jsonl"))
  with pytest.raises(ValueError, match="'eval.path' must name a held-out JSONL file"):
    D.make_eval_source(data, C.EvalSpec(num_examples=2))
  with pytest.raises(ValueError, match="names the training file"):
    D.make_eval_source(data, C.EvalSpec(num_examples=2, path=data.path))
  (tmp_path / "test.jsonl").write_text('{"prompt": "p", "answer": "1"}\n')
  with pytest.raises(ValueError, match="eval.num_examples = 2 but the eval data has only 1"):
    D.make_eval_source(data, C.EvalSpec(num_examples=2, path=str(tmp_path / "test.jsonl")))
  ev = D.make_eval_source(C.DataSpec(source="arithmetic"), C.EvalSpec(num_examples=50))
  assert len(ev) == 50 and ev.is_correct(ev[0], f"\\boxed{{{ev[0].answer}}}")


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
def test_short_toy_run_writes_metrics_and_evaluates(tmp_path, objective):
  cfg = toy_cfg(tmp_path, steps=6, objective={"name": objective, "kl_beta": 0.04, "num_iterations": 2,
                                              "num_minibatches": 2},
                eval={"num_examples": 2, "every": 3, "num_samples": 8, "pass_k": (1, 4)})
  trainer = Trainer(cfg)
  assert trainer.update_spec.old_logp == "batch" and trainer.update_spec.reference == "params"
  history = trainer.run(resume=False)
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
  history = Trainer(cfg, prm=prm).run(resume=False)
  assert len(history) == 3 and calls
  assert all(1 <= len(c) <= 2 for c in calls)  # k=1 spike, min_gap 2 on 4 tokens: one or two segments
  assert all("".join(c) in {a + b + c_ + d for a in "LR" for b in "LR" for c_ in "LR" for d in "LR"} for c in calls)
  assert all(np.isfinite(h["loss"]) and 0 <= h["prm_score_mean"] <= 1 for h in history)


def test_prpo_prm_from_config_by_module_path(tmp_path):
  cfg = toy_cfg(tmp_path, steps=1, objective={"name": "prpo", "prpo_k": 1, "prpo_min_gap": 2,
                                              "prm": "plugins:share_of_l"})
  assert Trainer(cfg).prm.__name__ == "share_of_l"


def test_prm_must_return_scores_in_range(tmp_path):
  cfg = toy_cfg(tmp_path, steps=1, objective={"name": "prpo", "prpo_k": 1, "prpo_min_gap": 2})
  with pytest.raises(ValueError, match=r"the PRM must return \d scores in \[0, 1\]"):
    Trainer(cfg, prm=lambda e, s: [2.0] * len(s)).run(resume=False)


def test_custom_rewards_from_the_trainer_and_the_cli(tmp_path, capsys):
  cfg = toy_cfg(tmp_path, steps=2)
  history = Trainer(cfg, rewards=[(R.toy_tree_reward(), 1.0), (lambda p, c, e: len(c) / 4, 0.5)]).run(resume=False)
  assert {"reward_toy_tree", "reward_<lambda>"} <= set(history[-1])
  from jaxgrpo import cli

  out = str(tmp_path / "cli")
  assert cli.main(["train", "--preset", "toy", "--set", "steps=3", "--set", f"output_dir={out}",
                   "--set", "progress=false", "--set", "objective.name=lambda_grpo",
                   "--set", "rewards.names=[plugins:toy_numpy_scalar]"]) == 0
  assert "step 3: reward_mean" in capsys.readouterr().out
  assert os.path.exists(os.path.join(out, "config.yaml"))


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
  from jaxgrpo import cli

  assert cli.main(["train", "--preset", "toy", "--set", "optim.learning_rate=-1"]) == 2
  err = capsys.readouterr().err
  assert "error: config key 'optim.learning_rate' must be > 0" in err and "Traceback" not in err


def test_progress_prints_plain_lines_when_not_a_terminal():
  import io

  from jaxgrpo.progress import Progress

  buf = io.StringIO()
  p = Progress(3, desc="run", stream=buf, line_every_s=0.0)
  for i in range(3):
    p.update(1, reward="0.5")
  p.close()
  text = buf.getvalue()
  assert text.splitlines() == ["run 1/3 reward=0.5", "run 2/3 reward=0.5", "run 3/3 reward=0.5"]
  assert "\r" not in text and "\x1b" not in text


def test_score_components_are_weighted_and_kept_apart():
  ex = [D.Example("q", "4", {"index": 0})]
  fns = [(R.math_reward, 1.0), (R.format_reward, 0.1)]
  total, parts = R.score_components(fns, ["q"], [["\\boxed{4}", "\\boxed{5}", "4"]], ex)
  np.testing.assert_allclose(parts[0], [[1.0, 0.0, 1.0]])
  np.testing.assert_allclose(parts[1], [[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(total, [[1.1, 0.1, 1.0]], rtol=1e-6)
