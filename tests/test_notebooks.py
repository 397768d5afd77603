"""Every notebook runs top to bottom (code cells executed in order, small settings)."""

import glob
import json
import os

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("NB_STEPS", "60")
  monkeypatch.setenv("NB_SEEDS", "1")
  monkeypatch.setenv("NB_OUT", str(tmp_path / "out"))
  nb = json.load(open(path))
  ns = {}
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), path, "exec"), ns)
  assert ns["curves"]["grpo"] and ns["curves"]["lambda_grpo"]
  assert len(ns["curves"]["grpo"][0]) == 60
