"""`data.source: hf`: local parquet / arrow / JSON lines / save_to_disk through `datasets`, GSM8K- and MATH-style
answers, a deterministic order that a resume re-enters exactly, a held-out eval split, and errors that name the
file, field or key."""

import json

import datasets
import numpy as np
import pytest

from jaxgrpo.tasks import sources as S
from jaxgrpo.train.config import DataSpec, EvalSpec

ROWS = {"question": [f"What is {i} + {i}?" for i in range(7)],
        "answer": [f"{i} plus {i} is {2 * i}.\n#### {2 * i:,}" for i in range(7)],
        "level": list(range(7))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf")
  train, test = datasets.Dataset.from_dict(ROWS), datasets.Dataset.from_dict({k: v[:3] for k, v in ROWS.items()})
  train.to_parquet(str(d / "train.parquet"))
  test.to_parquet(str(d / "test.parquet"))
  train.to_json(str(d / "train.jsonl"))
  datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(d / "saved"))
  (d / "pq").mkdir()
  train.to_parquet(str(d / "pq" / "train-00000.parquet"))
  test.to_parquet(str(d / "pq" / "test-00000.parquet"))
  return d


def spec(**kw):
  return DataSpec(**{"source": "hf", "prompt_field": "question", "answer_field": "answer", **kw})


def stream(src, n):
  return [(ex.prompt, ex.answer, ex.meta["row"]) for ex in (src[i] for i in range(n))]


def test_every_local_form_reads_the_same_rows_with_gsm8k_answers(files):
  forms = [spec(path="parquet", data_files=(str(files / "train.parquet"),)),
           spec(path=str(files / "train.parquet")),
           spec(path="json", data_files=(str(files / "train*.jsonl"),)),  # a glob
           spec(path=str(files / "saved")),  # save_to_disk, split "train"
           spec(path=str(files / "pq"))]  # a directory of split-named files
  streams = [stream(S.make_source(s), 14) for s in forms]
  assert all(s == streams[0] for s in streams[1:])
  ex = S.make_source(forms[0]).row(5)
  assert ex.prompt == "What is 5 + 5?" and ex.answer == "10" and ex.meta["level"] == 5
  assert ex.meta["solution"].endswith("#### 10")
  assert S.make_source(forms[0]).row(6).answer == "12"
  # each epoch is a permutation of every row, reshuffled; the order is a function of (seed, index) only, so a
  # resumed run (a new source, the saved data position) continues exactly
  rows = [r for _, _, r in streams[0]]
  assert sorted(rows[:7]) == sorted(rows[7:]) == list(range(7)) and rows[:7] != rows[7:]
  fresh = S.make_source(forms[0])
  assert stream(fresh, 14)[9:] == [(fresh[i].prompt, fresh[i].answer, fresh[i].meta["row"]) for i in range(9, 14)]
  assert stream(S.make_source(spec(path=str(files / "train.parquet"), seed=1)), 7) != streams[0][:7]


def test_answer_formats():
  assert S.reference_answer("so 1,234\n#### 1,234") == "1234"
  assert S.reference_answer("Thus $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
  assert S.reference_answer("  42 ") == "42"
  assert S.reference_answer("\\boxed{3} #### 4", "boxed") == "3"
  with pytest.raises(ValueError, match="row 3: data.answer_format = gsm8k but the answer has no '#### <answer>'"):
    S.reference_answer("42", "gsm8k", "row 3")
  with pytest.raises(ValueError, match="no \\\\boxed"):
    S.reference_answer("42", "boxed")


def test_the_eval_split_is_held_out_and_in_order(files):
  data = spec(path=str(files / "pq"))
  ev = S.make_eval_source(data, EvalSpec(num_examples=3, source="hf", split="test"))
  assert [e.meta["row"] for e in ev.examples] == [0, 1, 2] and ev.examples[2].answer == "4"
  with pytest.raises(ValueError, match="'eval.split' = 'train' is the training split"):
    S.make_eval_source(data, EvalSpec(num_examples=3, source="hf", split="train"))
  other = S.make_eval_source(spec(path="parquet", data_files=(str(files / "train.parquet"),)),
                             EvalSpec(num_examples=2, source="hf", split="train",
                                      data_files=(str(files / "test.parquet"),)))
  assert len(other.examples) == 2
  with pytest.raises(ValueError, match="eval.num_examples = 5 but the eval data has only 3"):
    S.make_eval_source(data, EvalSpec(num_examples=5, source="hf", split="test"))


def test_bad_datasets_are_named(files, tmp_path):
  with pytest.raises(ValueError, match=r"no column for config key\(s\) 'data.prompt_field' = 'prompt'.*"
                                       r"its columns: \['question', 'answer', 'level'\]"):
    S.make_source(spec(path=str(files / "train.parquet"), prompt_field="prompt"))
  datasets.Dataset.from_dict({"question": [], "answer": []}).to_parquet(str(tmp_path / "empty.parquet"))
  with pytest.raises(ValueError, match="empty.parquet: split 'train' is empty"):
    S.make_source(spec(path=str(tmp_path / "empty.parquet")))
  with pytest.raises(ValueError, match=r"no split 'validation' \(config key 'data.split'\); it has \['test', 'tr"):
    S.make_source(spec(path=str(files / "saved"), split="validation"))
  with pytest.raises(ValueError, match="cannot load split 'validation' \\(config key 'data.split'\\)"):
    S.make_source(spec(path=str(files / "pq"), split="validation"))
  with pytest.raises(FileNotFoundError, match="'data.path' = 'openai/gsm8k' is not a local file.*downloads nothing"):
    S.make_source(spec(path="openai/gsm8k"))
  with pytest.raises(FileNotFoundError, match="'data.data_files': no file matches"):
    S.make_source(spec(path="parquet", data_files=(str(tmp_path / "nope*.parquet"),)))
  with pytest.raises(ValueError, match="'data.data_files' must name the local files"):
    S.make_source(spec(path="parquet"))
  with pytest.raises(ValueError, match="config key 'data.path'"):
    DataSpec(source="hf")
  chat = tmp_path / "chat.jsonl"
  chat.write_text(json.dumps({"question": [{"role": "user", "content": "hi"}], "answer": "1"}) + "\n")
  with pytest.raises(ValueError, match="row 0: field 'question' must be non-empty text .*a list of chat messages"):
    S.make_source(spec(path=str(chat)))[0]
  nulls = tmp_path / "null.jsonl"
  nulls.write_text(json.dumps({"question": "q", "answer": None}) + "\n")
  with pytest.raises(ValueError, match="row 0: field 'answer' is null"):
    S.make_source(spec(path=str(nulls)))[0]


def test_hf_source_is_lazy_and_memory_mapped(files):
  src = S.make_source(spec(path=str(files / "train.parquet")))
  assert len(src) == 7 and isinstance(src.ds, datasets.Dataset)
  order = src._order(0)
  assert np.array_equal(order, src._order(0)) and sorted(order) == list(range(7))
