"""The arithmetic task's split by commuted form (issue 23): commuted forms never cross train/validation/test."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgrpo.tasks import sources as S
from jaxgrpo.train import config as C


def _value(expr: str) -> int:
  toks = expr.replace("(", " ").replace(")", " ").split()
  v = int(toks[0])
  for op, x in zip(toks[1::2], toks[2::2]):
    v = v + int(x) if op == "+" else v - int(x) if op == "-" else v * int(x)
  return v


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 99), min_size=2, max_size=5), st.data())
def test_commuted_forms_share_a_key_and_different_problems_do_not(xs, data):
  ops = data.draw(st.sampled_from(["+-", "*"]))
  signs = [data.draw(st.sampled_from(ops)) for _ in xs[1:]]
  expr = " ".join([str(xs[0])] + [f"{o} {x}" for o, x in zip(signs, xs[1:])])
  terms = [("+" if ops == "+-" else "*", xs[0])] + list(zip(signs, xs[1:]))
  # any reordering that keeps a '+' term first is the same problem (same value)
  perm = data.draw(st.permutations(terms))
  if perm[0][0] == "-":
    return
  other = " ".join([str(perm[0][1])] + [f"{o} {x}" for o, x in perm[1:]])
  assert _value(other) == _value(expr)
  assert S.commuted_key(other) == S.commuted_key(expr)
  # changing one operand makes another problem
  bumped = " ".join([str(xs[0] + 1)] + [f"{o} {x}" for o, x in zip(signs, xs[1:])])
  assert S.commuted_key(bumped) != S.commuted_key(expr)


def test_mixed_chain_keys_swap_only_the_commuting_first_pair():
  assert S.commuted_key("(3 + 5) * 2") == S.commuted_key("(5 + 3) * 2")
  assert S.commuted_key("7 - 2 * 3") != S.commuted_key("2 - 7 * 3")
  assert S.commuted_key("(3 + 5) * 2") != S.commuted_key("(3 + 2) * 5")
  with pytest.raises(ValueError, match="arithmetic chain"):
    S.commuted_key("3 +")


def _keys(src, n):
  return {S.commuted_key(src[i].meta["expression"]) for i in range(n)}


@pytest.mark.parametrize("num_ops,ops,max_operand", [(1, "+-", 50), (2, "+-*", 30)])
def test_commuted_split_keeps_commuted_forms_on_one_side(num_ops, ops, max_operand):
  kw = dict(seed=0, num_ops=num_ops, max_operand=max_operand, ops=ops, split_by="commuted")
  train = _keys(S.ArithmeticSource(split="train", **kw), 3000)
  test = {S.commuted_key(e.meta["expression"]) for e in S.ArithmeticSource(split="eval", **kw).eval_examples(200)}
  val = {S.commuted_key(e.meta["expression"])
         for e in S.ArithmeticSource(split="validation", **kw).eval_examples(200)}
  assert len(test) == 200 and len(val) == 200  # distinct up to commutation
  assert not train & test and not train & val and not test & val


def test_the_expression_split_lets_commuted_forms_cross():
  """The control: hashing the text (the default, kept for old runs) puts some b + a in train while a + b is held out."""
  kw = dict(seed=0, num_ops=1, max_operand=30, ops="+-")
  train = _keys(S.ArithmeticSource(split="train", **kw), 3000)
  test = {S.commuted_key(e.meta["expression"]) for e in S.ArithmeticSource(split="eval", **kw).eval_examples(200)}
  assert train & test


def test_validation_split_is_refused_by_name_without_the_commuted_split():
  with pytest.raises(ValueError, match="split_by"):
    S.ArithmeticSource(split="validation")
  base = C.TrainConfig(data=C.DataSpec(source="arithmetic"))  # the default task
  with pytest.raises(ValueError, match="eval.split"):
    C.replace(base, eval={"split": "validation", "num_examples": 4})
  with pytest.raises(ValueError, match="eval.split"):
    C.replace(base, eval={"split": "train", "num_examples": 4})
  ok = C.replace(base, data={"split_by": "commuted"}, eval={"split": "validation", "num_examples": 4})
  val = S.make_eval_source(ok.data, ok.eval)
  test = S.make_eval_source(ok.data, C.replace(ok, eval={"split": "test", "num_examples": 4}).eval)
  assert [e.prompt for e in val.examples] != [e.prompt for e in test.examples]
  with pytest.raises(ValueError, match="data.split_by"):
    C.DataSpec(split_by="canonical")
