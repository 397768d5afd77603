"""Every notebook runs top to bottom (code cells executed in order in a fresh Python process, as a kernel runs
them, with small settings) and saves its figures."""

import glob
import json
import os
import subprocess
import sys

import pytest

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


# Runs a notebook's code cells in order in one namespace (what a kernel does), with a non-interactive backend.
RUNNER = """
import json, sys
import matplotlib
matplotlib.use("Agg")
nb = json.load(open(sys.argv[1]))
ns = {}
for cell in nb["cells"]:
  if cell["cell_type"] == "code":
    exec(compile("".join(cell["source"]), sys.argv[1], "exec"), ns)
"""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
  flags = os.environ.get("XLA_FLAGS", "")
  if "toy_tree" not in path:  # SmolLM2 runs compute-bound: keep XLA's optimizations (the suite compiles at -O0)
    flags = flags.replace("--xla_backend_optimization_level=0", "").strip()
  env = dict(os.environ, NB_STEPS="60", NB_SEEDS="2", NB_OUT=str(tmp_path / "out"), NB_SMALL="1", XLA_FLAGS=flags)
  done = subprocess.run([sys.executable, "-c", RUNNER, path], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  figures = glob.glob(str(tmp_path / "out" / "*.png"))
  assert figures, "the notebook saved no figure"
  assert all(os.path.getsize(f) > 5000 for f in figures)
