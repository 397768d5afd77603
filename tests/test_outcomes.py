"""jaxgrpo.analysis.outcomes: per-problem eval outputs read back from run directories (written by the trainer's own
writer) and paired across seeds, against the matrices the records were made from."""

import os

import numpy as np
import pytest

from jaxgrpo import analysis
from jaxgrpo.train.evaluation import outputs_path, write_records

PROBLEMS = [{"index": i, "prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(30)]


def make_run(path, correct_by_step: dict, problems=PROBLEMS, transfer=None):
  """A run directory holding per-problem eval outputs at each step of ``correct_by_step`` ({step: 0/1 array})."""
  for step, correct in correct_by_step.items():
    write_records(outputs_path(str(path), step), [{**p, "greedy_correct": int(c), "greedy_completion": "..."}
                                                   for p, c in zip(problems, correct)])
  if transfer is not None:
    write_records(str(path / "transfer.jsonl"),
                  [{"index": i, "greedy_correct": int(c)} for i, c in enumerate(transfer)])
  return str(path)


@pytest.fixture
def runs(tmp_path):
  rng = np.random.default_rng(0)
  first = rng.integers(0, 2, size=(2, 4, len(PROBLEMS)))  # [method, seed, problem] at step 0
  last = rng.integers(0, 2, size=(2, 4, len(PROBLEMS)))  # at step 20
  transfer = rng.integers(0, 2, size=(2, 4, 12))
  dirs = [[make_run(tmp_path / f"m{m}_s{s}", {0: first[m, s], 10: rng.integers(0, 2, len(PROBLEMS)), 20: last[m, s]},
                    transfer=transfer[m, s]) for s in range(4)] for m in range(2)]
  return dirs, first, last, transfer


def test_runs_are_paired_by_seed_and_problem_as_the_matrices_they_were_written_from(runs):
  (base, method), first, last, transfer = runs
  assert analysis.eval_steps(base[0]) == [0, 10, 20]
  np.testing.assert_array_equal(analysis.outcome_matrix(base), last[0])  # default: each run's last eval
  np.testing.assert_array_equal(analysis.outcome_matrix(method, step=0), first[1])
  np.testing.assert_array_equal(analysis.outcome_matrix(base, file="transfer.jsonl"), transfer[0])
  for kw, (a, b) in (({}, last), ({"step": 0}, first), ({"file": "transfer.jsonl"}, transfer)):
    got = analysis.compare_runs(base, method, n_boot=500, n_perm=500, **kw)
    want = analysis.paired_difference(a, b, n_boot=500, n_perm=500)
    assert got == want
    assert got.diff == pytest.approx((b - a).mean())
  table = analysis.load_outputs(base[2], step=10)
  assert table["prompt"].tolist() == [p["prompt"] for p in PROBLEMS] and table["index"].tolist() == list(range(30))


def test_runs_on_other_problems_missing_steps_and_columns_are_refused_by_name(runs, tmp_path):
  (base, method), *_ = runs
  shuffled = [PROBLEMS[1], PROBLEMS[0], *PROBLEMS[2:]]
  other = make_run(tmp_path / "other", {20: np.ones(30)}, problems=shuffled)
  with pytest.raises(ValueError, match="other.*other problems.*position 0"):
    analysis.compare_runs(base[:1], [other])
  short = make_run(tmp_path / "short", {20: np.ones(29)}, problems=PROBLEMS[:29])
  with pytest.raises(ValueError, match="short.*29 vs 30 problems"):
    analysis.outcome_matrix([base[0], short])
  with pytest.raises(ValueError, match="one run per seed.*4 and 3"):
    analysis.compare_runs(base, method[:3])
  with pytest.raises(ValueError, match="step 5.*steps \\[0, 10, 20\\]"):
    analysis.load_outputs(base[0], step=5)
  with pytest.raises(ValueError, match="no column 'sampled_correct'"):
    analysis.outcome_matrix(base, column="sampled_correct")
  with pytest.raises(FileNotFoundError, match="saved no per-problem eval outputs"):
    analysis.load_outputs(str(tmp_path))
  with pytest.raises(ValueError, match="run_dirs is empty"):
    analysis.outcome_matrix([])
  for run, seed in ((base[0], 0), (method[0], 0), (method[1], 1)):  # config.yaml's seed, as the trainer writes it
    (tmp_path / os.path.basename(run) / "config.yaml").write_text(f"seed: {seed}\n")
  analysis.compare_runs(base[:1], method[:1], n_boot=10, n_perm=10)
  with pytest.raises(ValueError, match="m0_s0 \\(seed 0\\) is paired with .*m1_s1 \\(seed 1\\)"):
    analysis.compare_runs(base[:1], method[1:2])


def test_the_forest_plot_draws_one_row_per_comparison_at_its_interval(runs):
  import matplotlib

  matplotlib.use("Agg")
  (base, method), *_ = runs
  results = {"test": analysis.compare_runs(base, method, n_boot=500, n_perm=500),
             "transfer": analysis.compare_runs(base, method, file="transfer.jsonl", n_boot=500, n_perm=500)}
  ax = analysis.plot_paired(results)
  assert [t.get_text() for t in ax.get_yticklabels()] == ["transfer", "test"]
  intervals = sorted(tuple(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) == 2
                     and line.get_ydata()[0] == line.get_ydata()[1])
  assert intervals == sorted(tuple(100 * c for c in r.ci) for r in results.values())
  with pytest.raises(ValueError, match="results is empty"):
    analysis.plot_paired({})


def test_the_compare_command_prints_compare_runs_and_refuses_unpaired_runs(runs, capsys):
  from jaxgrpo import cli

  (base, method), *_ = runs
  assert cli.main(["compare", "--base", *base, "--method", *method, "--step", "0"]) == 0
  row = capsys.readouterr().out.strip().splitlines()[-1].strip("|").split("|")
  r = analysis.compare_runs(base, method, step=0)
  assert float(row[0]) == pytest.approx(analysis.outcome_matrix(base, step=0).mean(), abs=5e-4)
  assert float(row[1]) == pytest.approx(analysis.outcome_matrix(method, step=0).mean(), abs=5e-4)
  assert float(row[2]) == pytest.approx(r.diff, abs=5e-4)
  assert row[3].strip() == f"[{r.ci[0]:+.3f}, {r.ci[1]:+.3f}]" and float(row[5]) == pytest.approx(r.seed_sign_flip_p,
                                                                                                    abs=5e-4)
  assert cli.main(["compare", "--base", *base, "--method", *method[:2]]) == 2
  assert "one run per seed each; got 4 and 2" in capsys.readouterr().err
