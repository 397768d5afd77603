"""Writes the notebooks from the cell sources below (python notebooks/make_notebooks.py).

The notebooks read NB_* environment variables so tests/test_notebooks.py can run them with small settings.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def notebook(cells):
  out = []
  for kind, src in cells:
    cell = {"cell_type": kind, "metadata": {}, "source": src.strip("\n")}
    if kind == "code":
      cell.update(execution_count=None, outputs=[])
    out.append(cell)
  return {"cells": out, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                      "name": "python3"}, "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}


TOY = [
    ("markdown", """
# λ-GRPO vs GRPO on the toy binary tree

The task of Sullivan & Koller (arXiv 2509.21154, Table 1): after BOS the policy emits 4 tokens, each L or R. The
target leaf gets +1, leaves sharing its first `n` tokens get `r_neg`, all others +0.7. A small GPT-2-architecture
model is trained from scratch; all seeds of a configuration train in one jitted program
(`experiments/toy_tree.py`). We plot how often the target is sampled, the update size and the mean |λ|.
"""),
    ("code", """
import os
import sys

import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, '../experiments' if os.path.exists('../experiments') else 'experiments')
import toy_tree  # noqa: E402

STEPS = int(os.environ.get('NB_STEPS', 250))
SEEDS = int(os.environ.get('NB_SEEDS', 3))
OUT = os.environ.get('NB_OUT', 'runs/notebook_toy')
os.makedirs(OUT, exist_ok=True)
N_SHARED, R_NEG, LR = 1, -1.0, 3e-5
"""),
    ("code", """
curves = {}
for method in ('grpo', 'lambda_grpo'):
    cfg = toy_tree.ToyConfig(n_shared=N_SHARED, r_neg=R_NEG, method=method, steps=STEPS, lr=LR)
    curves[method] = toy_tree.run(cfg, seeds=SEEDS)
{k: float(v['target_frac'][:, -50:].mean()) for k, v in curves.items()}
"""),
    ("code", """
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for method, color in (('grpo', 'tab:red'), ('lambda_grpo', 'tab:blue')):
    for ax, key in zip(axes, ('target_frac', 'update_norm', 'lambda_mean')):
        m = curves[method][key]
        k = min(10, m.shape[1])
        for row in m:
            ax.plot(np.convolve(row, np.ones(k) / k, mode='valid'), color=color, alpha=0.2, lw=0.8)
        ax.plot(np.convolve(m.mean(0), np.ones(k) / k, mode='valid'), color=color, lw=2, label=method)
        ax.set_title(key); ax.set_xlabel('step')
axes[0].set_ylim(0, 1); axes[0].legend(); fig.tight_layout()
fig.savefig(os.path.join(OUT, 'toy_curves.png'), dpi=90)
"""),
]


BOOKS = {"toy_tree_lambda_grpo.ipynb": TOY}

if __name__ == "__main__":
  for name, cells in BOOKS.items():
    with open(os.path.join(HERE, name), "w") as f:
      json.dump(notebook(cells), f, indent=1, ensure_ascii=False)
      f.write("\n")
    print("wrote", name)
