from jaxgrpo import cli


def test_demo_prints_the_worked_example(capsys):
  assert cli.main(["demo"]) == 0
  out = capsys.readouterr().out
  assert "process steps 9" in out
  assert "JKLM        1.0  +1.55      2  J:3:-0.22 K:3:-0.22 L:3:-0.22 M:1:+1.55" in out
  assert "N:2:-1.11" in out


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
  from jaxgrpo import cli

  assert cli.main(["train", "--preset", "toy", "--set", "optim.learning_rate=-1"]) == 2
  err = capsys.readouterr().err
  assert "error: config key 'optim.learning_rate' must be > 0" in err and "Traceback" not in err
