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


_SMOLLM2_SETUP = """
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxgrpo
from jaxgrpo import models
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.rollout import RolloutEngine
from jaxgrpo.tasks import rewards
from jaxgrpo.tasks import sources as data
from jaxgrpo.train import build, presets
from jaxgrpo.train.config import replace as config_replace

SMALL = bool(os.environ.get('NB_SMALL'))
OUT = os.environ.get('NB_OUT', 'runs/notebooks')
os.makedirs(OUT, exist_ok=True)
ROOT = '..' if os.path.exists('../data') else '.'
base = presets.preset('smollm2_arithmetic')
path = build.checkpoint_dir(base.model)                 # SmolLM2-135M-Instruct, converted once from its GGUF file
model, params = models.from_pretrained(path)
tok = HFTokenizer(path)
engine = RolloutEngine(model, tok, trim=False)            # one device; keep the whole completion buffer


def sampling(**overrides):
    # the preset's sampling section with overrides, and the tokenizer's EOS and pad ids
    return build.sampling_params(config_replace(base, sampling=overrides).sampling, tok.eos_ids, tok.pad_id)

problems = data.jsonl_source(os.path.join(ROOT, 'data', 'word_problems.jsonl'))
"""

OVERLAP = [
    ("markdown", """
# Prefix overlap in real rollouts (λ-GRPO's "does overlap happen?")

GRPO with an outcome reward is a process-reward objective whose steps are the prefixes a group's completions
share (Sullivan & Koller, arXiv 2509.21154). Here SmolLM2-135M-Instruct samples a group of completions for a
word problem; we draw the group as a prefix tree — every process step with |λ| (how many completions share it)
and its step advantage A(i,t) — and then measure how much overlap there is as the group size and temperature
change. `experiments/overlap_stats.py` runs the same analysis at scale.
"""),
    ("code", _SMOLLM2_SETUP),
    ("code", """
G = 8
spec = sampling(group_size=G, temperature=1.0, max_new_tokens=48)
example = problems[3]
ro = engine.grade(engine.generate(params, [example], jax.random.PRNGKey(7), spec), problems)
tokens, mask = np.asarray(ro.tokens), np.asarray(ro.mask)
r = np.asarray(ro.correct) + 0.1 * np.asarray([rewards.format_reward('', t, example) for t in ro.texts])
prm = jaxgrpo.checked.implicit_prm(tokens[None], mask[None], r[None].astype(np.float32))
counts, adv = np.asarray(prm.counts[0]), np.asarray(prm.step_advantages[0])
print(example.prompt)
for i in np.argsort(ro.texts):
    print(f'r={r[i]:.1f}', repr(ro.texts[i][:90]))
"""),
    ("code", """
def draw_tree(tokens, mask, counts, adv, tok, ax, max_len=32):
    # The group as a prefix tree: rows sorted so shared prefixes line up; one box per process step
    # (a maximal run of tokens with the same |λ| and the same members), coloured by its step advantage.
    order = sorted(range(len(tokens)), key=lambda i: list(tokens[i][mask[i] == 1]))
    cmap = plt.get_cmap('coolwarm')
    drawn = set()
    for row, i in enumerate(order):
        n = min(int(mask[i].sum()), max_len)
        start = 0
        for t in range(1, n + 1):
            if t == n or counts[i, t] != counts[i, start]:
                key = (tuple(tokens[i][:t]), start)
                if key not in drawn or counts[i, start] == 1:
                    drawn.add(key)
                    rows = [r for r, j in enumerate(order) if tuple(tokens[j][:t]) == tuple(tokens[i][:t])]
                    y0, h = min(rows), len(rows)
                    a = float(adv[i, start])
                    ax.add_patch(plt.Rectangle((start, y0), t - start, h, facecolor=cmap(0.5 + a / 4),
                                               edgecolor='k', lw=0.6))
                    text = tok.decode([int(x) for x in tokens[i][start:t]]).replace('\\n', '⏎')
                    ax.text(start + 0.1, y0 + h / 2, f"{text[:3 * (t - start)]} |λ|={counts[i, start]} A={a:+.2f}",
                            va='center', fontsize=6)
                start = t
    ax.set_xlim(0, max_len); ax.set_ylim(len(tokens), 0)
    ax.set_xlabel('token position'); ax.set_ylabel('completions (sorted)')


fig, ax = plt.subplots(figsize=(14, 5))
draw_tree(tokens, mask, counts, adv, tok, ax)
ax.set_title('one group as a prefix tree: boxes are process steps (colour: step advantage)')
fig.tight_layout()
fig.savefig(os.path.join(OUT, 'prefix_tree.png'), dpi=90)
"""),
    ("code", """
# small mode (the test suite): one setting of the example's shape, so no new sampler program is compiled
settings = [(G, 1.0)] if SMALL else [(6, 0.7), (6, 1.0), (16, 0.7), (16, 1.0), (36, 1.0)]
chosen = [example] if SMALL else [problems[i] for i in range(12)]
n_prompts = len(chosen)
rows = []
for g, temp in settings:
    spec = sampling(group_size=g, temperature=temp, max_new_tokens=48)
    ro = engine.generate(params, chosen, jax.random.PRNGKey(g), spec)
    t = np.asarray(ro.tokens).reshape(n_prompts, g, -1)
    m = np.asarray(ro.mask).reshape(n_prompts, g, -1)
    c = np.asarray(jaxgrpo.prefix_counts(t, m))
    st = jaxgrpo.tree_stats_from_counts(c, m)
    by_pos = [c[..., k][m[..., k] == 1].mean() if m[..., k].any() else np.nan for k in range(c.shape[-1])]
    rows.append(dict(g=g, temp=temp, flat=float(np.mean(st.flat)), inter=float(np.mean(st.intermediate_prop)),
                     lam=float(c[m == 1].mean()), depth=float(np.mean(st.path_depth)), by_pos=by_pos))
fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
labels = [f"G={r['g']}, T={r['temp']}" for r in rows]
axes[0].bar(labels, [r['inter'] for r in rows]); axes[0].set_title('intermediate proportion')
axes[1].bar(labels, [r['flat'] for r in rows]); axes[1].set_title('flat trees (fraction)')
for r in rows:
    axes[2].plot(r['by_pos'], label=f"G={r['g']}, T={r['temp']}")
axes[2].set_yscale('log'); axes[2].set_title('mean |λ| by token position'); axes[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(OUT, 'overlap_stats.png'), dpi=90)
[(r['g'], r['temp'], round(r['inter'], 3), r['flat']) for r in rows]
"""),
]

SEGMENTS = [
    ("markdown", """
# PRPO's entropy-spike segments on a real completion

PRPO (Ding et al., arXiv 2601.07182) cuts each completion where the policy's next-token entropy spikes (the
k highest-entropy tokens, a cut kept only ≥ m tokens after the previous one), scores each segment with a PRM,
normalizes the score with a fixed prior and shifts it by the outcome advantage: A(i,t) = z(i,t) + β_i. Here a
SmolLM2 completion of a word problem is cut, scored by the rule-based arithmetic PRM (1 if every `x op y = z` in
the segment is right, 0 if one is wrong, 0.5 if it has none) and turned into token advantages.
"""),
    ("code", _SMOLLM2_SETUP),
    ("code", """
from jaxgrpo.tasks.prm import ArithmeticPRM

K, MIN_GAP, G = 5, 10, 4
spec = sampling(group_size=G, temperature=1.0, max_new_tokens=96)
example = problems[11]
ro = engine.grade(engine.generate(params, [example], jax.random.PRNGKey(3), spec), problems)
tokens, mask, ent = (np.asarray(x) for x in (ro.tokens, ro.mask, ro.entropies))
fmt = np.asarray([rewards.format_reward('', t, example) for t in ro.texts])
seg = np.asarray(jaxgrpo.checked.entropy_segments(ent, mask, k=K, min_gap=MIN_GAP))
prm = ArithmeticPRM()
scores = np.full((G, K + 1), 0.5, np.float32)
texts = []
for i in range(G):
    n_seg = int(seg[i].max()) + 1
    pieces = [tok.decode([int(x) for x in tokens[i][seg[i] == k]]) for k in range(n_seg)]
    texts.append(pieces)
    scores[i, :n_seg] = prm(example, pieces)
tok_scores = jaxgrpo.checked.segment_scores_to_tokens(seg, scores)
r = (np.asarray(ro.correct) + 0.1 * fmt).astype(np.float32)
adv = np.asarray(jaxgrpo.prpo_advantages(tok_scores[None], mask[None], r[None]))[0]
i = int(np.argmax([len(p) for p in texts]))  # the completion with the most segments
for k, piece in enumerate(texts[i]):
    print(f'segment {k}: PRM {scores[i, k]:.1f}  {piece!r}')
"""),
    ("code", """
n = int(mask[i].sum())
fig, axes = plt.subplots(2, 1, figsize=(14, 5.5), sharex=True)
axes[0].plot(ent[i, :n], color='k', lw=1)
cuts = [t for t in range(1, n) if seg[i, t] != seg[i, t - 1]]
for c in cuts:
    axes[0].axvline(c, color='tab:red', ls='--')
axes[0].set_ylabel('next-token entropy (nats)'); axes[0].set_title('entropy and the cuts (red)')
cmap = plt.get_cmap('RdYlGn')
for t in range(n):
    axes[1].bar(t, adv[i, t], color=cmap(float(tok_scores[i, t])), width=1.0, edgecolor='none')
axes[1].axhline(0, color='k', lw=0.5)
axes[1].set_ylabel('PRPO advantage A(i,t)'); axes[1].set_xlabel('token position')
axes[1].set_title('token advantages, coloured by the PRM score of their segment (green 1, yellow 0.5, red 0)')
fig.tight_layout()
fig.savefig(os.path.join(OUT, 'prpo_segments.png'), dpi=90)
"""),
]

RUN_ANALYSIS = [
    ("markdown", """
# Analysing a training run from its rollout dumps

`jaxgrpo train` with `log_rollouts_every: N` writes every completion of every N-th step to
`rollouts/step_N.parquet`: prompt, completion (text and ids), each reward part, the advantage and |λ| of every
token, the loss weights, finish reason. `jaxgrpo.analysis.load_run` reads a run directory back as tables. The run
read here is a real one: SmolLM2-135M-Instruct (dequantised Q4_1 GGUF) trained with GRPO on the
`smollm2_arithmetic` preset (one seed: an anecdote, not a result), committed under
`experiments/results/smollm2_run/` by `experiments/smollm2_run.sh`. Set `NB_RUN` to read another run directory.

This run is a cautionary one: the training reward rises while held-out greedy accuracy falls (0.29 → 0.04) and
greedy answers get longer. The dumps show why — the policy learns the 0.1 format bonus and writes several
`\\boxed{}`s, of which the grader takes the last — which the curves alone would not tell you.
"""),
    ("code", """
import os

import matplotlib.pyplot as plt
import numpy as np

from jaxgrpo import analysis

ROOT = '..' if os.path.exists('../experiments') else '.'
RUN = os.environ.get('NB_RUN', os.path.join(ROOT, 'experiments', 'results', 'smollm2_run'))
OUT = os.environ.get('NB_OUT', 'runs/notebooks')
os.makedirs(OUT, exist_ok=True)
run = analysis.load_run(RUN)
print(run.config['model']['checkpoint'], run.config['objective']['name'], 'G =', run.config['sampling']['group_size'])
print('steps with metrics:', len(run.metrics), ' dumped steps:', run.steps, ' dumped completions:', len(run.rollouts))
run.metrics[['reward_mean', 'accuracy', 'completion_len_mean', 'intermediate_prop', 'lambda_mean']].tail()
"""),
    ("code", """
# training curves (3-step rolling mean), then the held-out greedy evaluation (100 problems)
analysis.plot_curves(run, keys=('reward_mean', 'accuracy', 'intermediate_prop', 'entropy_mean'), smooth=3)
plt.gcf().tight_layout()
plt.gcf().savefig(os.path.join(OUT, 'run_curves.png'), dpi=90)
for ax in analysis.plot_curves(run, keys=('eval/greedy_accuracy', 'eval/greedy_length')):
    ax.lines[0].set_marker('o')
plt.gcf().tight_layout()
plt.gcf().savefig(os.path.join(OUT, 'run_eval.png'), dpi=90)
"""),
    ("code", """
# What the policy learned: per dumped step, the reward parts and how many \\boxed{} a completion writes
d = run.rollouts.assign(boxes=run.rollouts['completion'].str.count(r'\\\\boxed\\{'))
d.groupby('step').agg(format=('reward/format', 'mean'), math=('reward/math', 'mean'),
                      two_or_more_boxes=('boxes', lambda b: (b >= 2).mean()), length=('length', 'mean'))
"""),
    ("code", """
# The last dumped step: its best and worst completions, with their reward parts
last = run.rollouts[run.rollouts['step'] == run.steps[-1]]
parts = [c for c in last.columns if c.startswith('reward/')]
cols = ['group', 'sample', 'reward', *parts, 'advantage', 'length', 'finish_reason', 'completion']
table = last.sort_values('reward')[cols]
print(last['prompt'].iloc[0])
table.iloc[np.r_[0:3, -3:0]]
"""),
    ("code", """
# Of the last dump's groups with a learning signal (rewards not all equal), the one whose completions share the
# most, drawn as its prefix tree (node size and number: |λ|; colour: the mean advantage of the completions through
# the node, GRPO's implicit process reward)
spread = last.groupby('group')['reward'].std()
informative = last[last['group'].isin(spread[spread > 0].index if (spread > 0).any() else spread.index)]
shared = informative.groupby('group')['lambda'].apply(lambda ls: np.mean([np.mean(x) for x in ls]))
group = int(shared.idxmax())
ax = analysis.plot_group_tree(run, run.steps[-1], group, max_depth=20)
ax.figure.tight_layout()
ax.figure.savefig(os.path.join(OUT, 'run_group_tree.png'), dpi=90)
"""),
    ("code", """
# How much the group shares as training goes on: mean |λ| by token position, one line per dumped step
fig, ax = plt.subplots(figsize=(7, 3.4))
for step in run.steps:
    lam = run.rollouts[run.rollouts['step'] == step]['lambda']
    width = max(len(x) for x in lam)
    by_pos = [np.mean([x[t] for x in lam if len(x) > t]) for t in range(width)]
    ax.plot(by_pos, label=f'step {step}')
ax.set_yscale('log'); ax.set_xlabel('token position'); ax.set_ylabel('mean |λ|'); ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(OUT, 'run_lambda_by_position.png'), dpi=90)
"""),
]

PAIRED = [
    ("markdown", """
# Is method B better than method A? Paired comparisons across seeds and problems

A training run evaluated with `eval.save_outputs` (the default) writes one record per held-out problem at each
eval step (`<run>/eval/step_N.jsonl`: prompt, answer, greedy completion, correct or not). With several seeds per
method — seed s of both methods sharing initialization and data stream — `jaxgrpo.analysis.compare_runs` pairs the
runs by seed and the records by problem and returns the difference with a two-way (seeds × problems) bootstrap
interval and exact sign-flip tests; `plot_paired` draws several such comparisons as a forest plot.

The runs read here are real ones committed under `experiments/results/` (issue 23): SmolLM2-135M-Instruct
(dequantised Q4_1 GGUF), 20 steps on synthetic arithmetic, 6 seeds per method, 200 test problems, and two
transfer tasks of another surface form (operators in words; word problems). `NB_A`, `NB_B` (run directories with
a `{seed}` field) and `NB_SEEDS` point the notebook at other runs.
"""),
    ("code", """
import os
import re

import matplotlib.pyplot as plt
import numpy as np

from jaxgrpo import analysis

ROOT = '..' if os.path.exists('../experiments') else '.'
RES = os.path.join(ROOT, 'experiments', 'results')
OUT = os.environ.get('NB_OUT', 'runs/notebooks')
os.makedirs(OUT, exist_ok=True)
SEEDS = range(int(os.environ.get('NB_SEEDS', 6)))
A = os.environ.get('NB_A', os.path.join(RES, 'smollm2_test', 'grpo_lr3e-06_s{seed}'))
B = os.environ.get('NB_B', os.path.join(RES, 'smollm2_test', 'lambda_grpo_lr3e-06_s{seed}'))
base = [A.format(seed=s) for s in SEEDS]
method = [B.format(seed=s) for s in SEEDS]
print('A:', base[0], '\\nB:', method[0], '\\neval steps:', analysis.eval_steps(base[0]))
"""),
    ("code", """
# B − A on the test split at each eval step (step 0 is the same untrained model for both: a check that the pairing
# is right), then on the transfer tasks, each with its 95% CI over seeds × problems
results = {f'test, step {step}': analysis.compare_runs(base, method, step=step)
           for step in analysis.eval_steps(base[0])}
for task in ('verbal', 'word_problems'):
    if all(os.path.exists(os.path.join(d, f'transfer_{task}.jsonl')) for d in base + method):
        results[f'{task} (transfer)'] = analysis.compare_runs(base, method, file=f'transfer_{task}.jsonl')
for label, r in results.items():
    print(f'{label:28s} {100 * r.diff:+6.1f} points  95% CI [{100 * r.ci[0]:+.1f}, {100 * r.ci[1]:+.1f}]  '
          f'seed p {r.seed_sign_flip_p:.3f}  per seed {[round(100 * d, 1) for d in r.per_seed]}')
assert results['test, step 0'].diff == 0, 'step 0 should be the same model for A and B'
"""),
    ("code", """
ax = analysis.plot_paired(results)
ax.set_title(f'B − A, {len(base)} seeds paired')
ax.figure.tight_layout()
ax.figure.savefig(os.path.join(OUT, 'paired_forest.png'), dpi=90)
"""),
    ("code", """
# Where the difference comes from: accuracy by operator, then the problems the two methods disagree on most
# (mean over seeds of B's correctness minus A's)
a = analysis.outcome_matrix(base)
b = analysis.outcome_matrix(method)
problems = analysis.load_outputs(base[0])
problems['op'] = problems['prompt'].map(lambda p: (re.findall(r' ([-+*×/]) ', p) or ['?'])[0])
problems['A'] = a.mean(0)
problems['B'] = b.mean(0)
problems['B − A'] = problems['B'] - problems['A']
print(problems.groupby('op')[['A', 'B', 'B − A']].mean().round(3).assign(n=problems.groupby('op').size()))
problems.sort_values('B − A')[['prompt', 'answer', 'A', 'B', 'B − A']].iloc[np.r_[0:4, -4:0]]
"""),
    ("code", """
# The seed is the unit that varies most: per-seed accuracy of both methods, seed by seed
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(a.mean(1), 'o-', label='A')
ax.plot(b.mean(1), 's-', label='B')
ax.set_xticks(range(len(base)))
ax.set_xlabel('seed'); ax.set_ylabel('test accuracy (200 problems)'); ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, 'paired_seeds.png'), dpi=90)
"""),
]

BOOKS = {"toy_tree_lambda_grpo.ipynb": TOY, "overlap_analysis.ipynb": OVERLAP, "prpo_segments.ipynb": SEGMENTS,
         "run_analysis.ipynb": RUN_ANALYSIS, "paired_comparison.ipynb": PAIRED}

if __name__ == "__main__":
  for name, cells in BOOKS.items():
    with open(os.path.join(HERE, name), "w") as f:
      json.dump(notebook(cells), f, indent=1, ensure_ascii=False)
      f.write("\n")
    print("wrote", name)
