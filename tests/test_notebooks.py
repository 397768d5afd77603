"""Every notebook runs top to bottom (code cells executed in order, small settings) and saves its figures."""

import glob
import json
import os

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_notebooks_are_generated_from_their_sources():
  import importlib.util

  spec = importlib.util.spec_from_file_location("make_notebooks", os.path.join(ROOT, "notebooks", "make_notebooks.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  for name, cells in mod.BOOKS.items():
    on_disk = json.load(open(os.path.join(ROOT, "notebooks", name)))
    assert on_disk == json.loads(json.dumps(mod.notebook(cells))), f"{name} is stale: run notebooks/make_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("NB_STEPS", "60")
  monkeypatch.setenv("NB_SEEDS", "2")
  monkeypatch.setenv("NB_OUT", str(tmp_path / "out"))
  monkeypatch.setenv("NB_SMALL", "1")
  monkeypatch.chdir(ROOT)
  nb = json.load(open(path))
  ns = {}
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), path, "exec"), ns)
  figures = glob.glob(str(tmp_path / "out" / "*.png"))
  assert figures, "the notebook saved no figure"
  assert all(os.path.getsize(f) > 5000 for f in figures)
