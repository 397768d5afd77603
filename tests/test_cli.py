from jaxgrpo import cli


def test_demo_prints_the_worked_example(capsys):
  assert cli.main(["demo"]) == 0
  out = capsys.readouterr().out
  assert "process steps 9" in out
  assert "JKLM        1.0  +1.55      2  J:3:-0.22 K:3:-0.22 L:3:-0.22 M:1:+1.55" in out
  assert "N:2:-1.11" in out
