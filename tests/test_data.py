"""Prompt sources: deterministic streams, arithmetic difficulty and disjoint splits, JSONL errors naming file and
line, held-out eval sets."""

import pytest

from jaxgrpo.tasks import prm as P
from jaxgrpo.tasks import rewards as R
from jaxgrpo.tasks import sources as D
from jaxgrpo.train import config as C


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
