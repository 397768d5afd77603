"""Reward functions and final-answer grading: the toy table, math and format rewards, a reward hack's completions
graded wrong, bad rewards named, plugins loaded by module path, weighted parts kept apart."""

import jax
import numpy as np
import pytest

from jaxgrpo.tasks import answers as A
from jaxgrpo.tasks import rewards as R
from jaxgrpo.tasks import sources as D
from jaxgrpo.train import config as C


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
  assert A.answer_matches("\\frac{1}{2}", "so \\boxed{0.5}")
  assert A.answer_matches("0.5", "\\boxed{\\frac{1}{2}}") and not A.answer_matches("0.5", "\\boxed{\\frac{1}{3}}")
  assert A.answer_matches("2\\sqrt{3}", "\\boxed{2\\sqrt{3}}") and not A.answer_matches("2\\sqrt{3}", "\\boxed{}")
  assert A.answer_matches("-1234", "\\boxed{-1,234}")


def test_format_reward_needs_a_non_empty_box_and_reads_nested_braces():
  ex = D.Example("q", "1")
  assert R.format_reward("q", "\\boxed{}", ex) == 0.0 and R.format_reward("q", "\\boxed{ }", ex) == 0.0
  assert R.format_reward("q", "\\boxed{\\frac{1}{2}}", ex) == 1.0
  assert A.boxed_contents("a \\boxed{\\frac{1}{2}} b \\boxed{x}") == ["\\frac{1}{2}", "x"]


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


def test_score_components_are_weighted_and_kept_apart():
  ex = [D.Example("q", "4", {"index": 0})]
  fns = [(R.math_reward, 1.0), (R.format_reward, 0.1)]
  total, parts = R.score_components(fns, ["q"], [["\\boxed{4}", "\\boxed{5}", "4"]], ex)
  np.testing.assert_allclose(parts[0], [[1.0, 0.0, 1.0]])
  np.testing.assert_allclose(parts[1], [[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(total, [[1.1, 0.1, 1.0]], rtol=1e-6)
