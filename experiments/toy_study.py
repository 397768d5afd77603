"""λ-GRPO vs GRPO on the toy tree as a reviewer would accept it (issue 23, items 1–2).

Each method at its own tuned learning rate, chosen on seeds the comparison never uses; 1,000 steps; 20 seeds per
setting, paired (seed s gives both methods the same initial weights and the same sampling keys); outcome metrics
from the exact policy (the tree has 16 leaves, so π(target) and the KL between consecutive policies are exact
sums, not estimates); paired Wilcoxon signed-rank tests with Holm's correction over the six settings; and four
controls for "is λ-GRPO's gain just a smaller or different-sized step?":

* ``grpo_klmatch``: GRPO (Adam) at the learning rate whose mean per-step KL(π_k ‖ π_k+1) equals λ-GRPO's at
  λ-GRPO's tuned learning rate (interpolated on the tuning seeds' KL-vs-lr curve);
* ``sgd_grpo_normmatch``: GRPO with SGD, each step's gradient rescaled to the norm of λ-GRPO's gradient on the
  same samples, at SGD λ-GRPO's tuned learning rate (so both take steps of identical length, in different
  directions); ``sgd_lambda`` and ``sgd_grpo`` (each at its own tuned SGD learning rate) are its references;
* ``lambda_shuffled``: λ-GRPO's weights permuted at random over the group's tokens (same values, wrong tokens);
* ``lambda_depth``: 1/|λ(i,t)| replaced by its group mean at position t (a function of depth alone).
The controls run at λ-GRPO's tuned learning rate (Adam) unless named above.

Outcome metrics per seed, from the exact π(target): ``steps_to_half`` (first step with π(target) ≥ 0.5; runs that
never get there count as ``steps``: a censored value, the Wilcoxon test ranks it as the worst), ``auc`` (mean
π(target) over all steps) and ``final`` (mean π(target) over the last 50 steps). Tuning picks, per method and
setting, the learning rate with the largest mean AUC over the tuning seeds.

Phases (resumable: every finished (method, setting) batch is saved to ``results.json`` as it ends):

    python experiments/toy_study.py --phase tune        # 6 lrs × 5 tuning seeds, every tuned method
    python experiments/toy_study.py --phase compare     # 20 comparison seeds at the chosen lrs, all methods
    python experiments/toy_study.py --phase report      # tables, tests, plot (also run after each phase)

``--smoke`` runs a few steps of everything (for checking the script, not for results).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))

import toy_tree  # noqa: E402  (the tree sampler, the model, the tree's node layout)

import jaxgrpo  # noqa: E402
from jaxgrpo import models  # noqa: E402

SETTINGS = ((1, -0.5), (2, -0.5), (1, -1.0), (2, -1.0), (1, -1.5), (2, -1.5))
ADAM_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4)
SGD_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
TUNED = {"grpo": "adam", "lambda_grpo": "adam", "sgd_grpo": "sgd", "sgd_lambda": "sgd"}
CONTROLS = ("grpo_klmatch", "lambda_shuffled", "lambda_depth", "sgd_grpo_normmatch")
TUNE_SEEDS = tuple(range(1000, 1005))
COMPARE_SEEDS = tuple(range(20))
DEPTH, L, R = toy_tree.DEPTH, toy_tree.L, toy_tree.R
TARGET = (L, L, R, L)
LEAVES = np.array([[L if (b >> (DEPTH - 1 - t)) & 1 == 0 else R for t in range(DEPTH)] for b in range(16)],
                  np.int32)
TARGET_LEAF = int(np.flatnonzero((LEAVES == np.array(TARGET)).all(axis=1))[0])


def rewards_of(tokens, n_shared, r_neg, r_other=0.7):
  """float32[G]: +1 for the target leaf, r_neg for leaves sharing its first n_shared tokens (traced), else r_other."""
  target = jnp.asarray(TARGET)
  hit = jnp.all(tokens == target, axis=-1)
  first_n = jnp.arange(DEPTH) < n_shared
  shares = jnp.all((tokens == target) | ~first_n, axis=-1)
  return jnp.where(hit, 1.0, jnp.where(shares, r_neg, r_other)).astype(jnp.float32)


def leaf_logprobs(tree):
  """float32[16]: log π(leaf) for every leaf, exact, from the node logits."""
  return jnp.sum(toy_tree._tree_logprobs(tree, jnp.asarray(LEAVES)), axis=-1)


def method_weights(method, counts, key):
  """Token weights [G, T] for a method, from the group's |λ| counts."""
  lam = jaxgrpo.lambda_weights(counts)
  if method in ("lambda_grpo", "sgd_lambda"):
    return lam
  if method == "lambda_shuffled":  # the same multiset of values, on random tokens of the group
    flat = lam.reshape(-1)
    return jax.random.permutation(key, flat).reshape(lam.shape)
  if method == "lambda_depth":  # the group's mean 1/|λ| at each position: a function of depth alone
    return jnp.broadcast_to(jnp.mean(lam, axis=0, keepdims=True), lam.shape)
  return jnp.ones(counts.shape, jnp.float32)


@functools.lru_cache(maxsize=None)
def program(method: str, steps: int, group_size: int = 16, scale: str = "small"):
  """A jitted ``(keys[S], lr[S], n[S], r_neg[S]) -> metrics [S, steps]``: every row one independent run."""
  model = toy_tree.make_model(scale)
  sgd = method.startswith("sgd")
  tx = optax.sgd(1.0) if sgd else optax.adam(1.0)  # the learning rate multiplies the update (traced)
  g = group_size

  def loss_grads(params, tokens, adv, weights):
    tree, pullback = jax.vjp(lambda p: toy_tree._tree_logits(model, p), params)
    loss_of_tree = lambda tr: jaxgrpo.policy_loss(toy_tree._tree_logprobs(tr, tokens), None, None, adv,
                                                  jnp.ones(tokens.shape, jnp.float32), weights=weights)[0]
    loss, d_tree = jax.value_and_grad(loss_of_tree)(tree)
    return loss, pullback(d_tree)[0]

  def step(state, key, lr, n_shared, r_neg):
    params, opt_state = state
    k_sample, k_perm = jax.random.split(key)
    tree = toy_tree._tree_logits(model, params)
    tokens = toy_tree._sample_tree(tree, k_sample, g)
    rewards = rewards_of(tokens, n_shared, r_neg)
    adv = jaxgrpo.group_advantages(rewards)
    counts = jaxgrpo.prefix_counts(tokens, jnp.ones_like(tokens))
    weights = method_weights("grpo" if method == "sgd_grpo_normmatch" else method, counts, k_perm)
    loss, grads = loss_grads(params, tokens, adv, weights)
    grad_norm = optax.tree.norm(grads)
    if method == "sgd_grpo_normmatch":  # GRPO's direction, λ-GRPO's gradient norm on the same samples
      _, lam_grads = loss_grads(params, tokens, adv, jaxgrpo.lambda_weights(counts))
      grads = jax.tree.map(lambda x: x * optax.tree.norm(lam_grads) / jnp.maximum(grad_norm, 1e-30), grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * lr, updates)
    new_params = optax.apply_updates(params, updates)
    before, after = leaf_logprobs(tree), leaf_logprobs(toy_tree._tree_logits(model, new_params))
    metrics = {
        "p_target": jnp.exp(before[TARGET_LEAF]),
        "target_frac": jnp.mean(jnp.all(tokens == jnp.asarray(TARGET), axis=-1).astype(jnp.float32)),
        "kl_step": jnp.sum(jnp.exp(before) * (before - after)),  # KL(π_k ‖ π_k+1), exact over the 16 leaves
        "update_norm": optax.tree.norm(updates), "grad_norm": grad_norm, "reward_mean": jnp.mean(rewards),
    }
    return (new_params, opt_state), metrics

  def one(key, lr, n_shared, r_neg):
    init_key, run_key = jax.random.split(key)
    params = models.init_params(model, init_key)
    keys = jax.random.split(run_key, steps)
    _, m = jax.lax.scan(lambda s, k: step(s, k, lr, n_shared, r_neg), (params, tx.init(params)), keys)
    return m

  return jax.jit(jax.vmap(one))


def run_batch(method, rows, steps):
  """rows: [(seed, lr, n, r_neg)] → metrics dict of [len(rows), steps] numpy arrays."""
  keys = jnp.stack([jax.random.PRNGKey(s) for s, *_ in rows])
  lr, n, r = (jnp.asarray([x[i] for x in rows], dt) for i, dt in ((1, jnp.float32), (2, jnp.int32),
                                                                  (3, jnp.float32)))
  return {k: np.asarray(v) for k, v in jax.device_get(program(method, steps)(keys, lr, n, r)).items()}


def outcomes(p_target: np.ndarray) -> dict[str, list[float]]:
  """Per-run outcome metrics from exact π(target) curves [S, steps]."""
  steps = p_target.shape[1]
  reached = p_target >= 0.5
  first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, steps)
  return {"steps_to_half": first.astype(float).tolist(), "auc": p_target.mean(axis=1).tolist(),
          "final": p_target[:, -50:].mean(axis=1).tolist(), "reached_half": reached.any(axis=1).tolist()}


def _record(method, setting, lr, seeds, m):
  return {"method": method, "n": setting[0], "r_neg": setting[1], "lr": lr, "seeds": list(seeds),
          **outcomes(m["p_target"]),
          "kl_step_mean": m["kl_step"].mean(axis=1).tolist(),
          "update_norm_mean": m["update_norm"].mean(axis=1).tolist(),
          "grad_norm_mean": m["grad_norm"].mean(axis=1).tolist(),
          "p_target_curves": m["p_target"][:, ::10].tolist(),  # every 10th step, per seed
          "target_frac_mean_curve": m["target_frac"].mean(axis=0).tolist()}


class Store:
  def __init__(self, path):
    self.path = path
    self.data = json.load(open(path)) if os.path.exists(path) else {"tune": {}, "compare": {}, "chosen": {}}

  def save(self):
    self.data["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
    with open(self.path + ".tmp", "w") as f:
      json.dump(self.data, f)
    os.replace(self.path + ".tmp", self.path)


def key_of(method, setting, lr=None):
  return f"{method}|{setting[0]}|{setting[1]}" + ("" if lr is None else f"|{lr:g}")


def tune(store: Store, args) -> None:
  for method, opt in TUNED.items():
    lrs = ADAM_LRS if opt == "adam" else SGD_LRS
    for setting in SETTINGS:
      todo = [lr for lr in lrs if key_of(method, setting, lr) not in store.data["tune"]]
      if not todo:
        continue
      t0 = time.time()
      rows = [(s, lr, *setting) for lr in todo for s in args.tune_seeds]
      m = run_batch(method, rows, args.steps)
      for i, lr in enumerate(todo):
        sl = slice(i * len(args.tune_seeds), (i + 1) * len(args.tune_seeds))
        store.data["tune"][key_of(method, setting, lr)] = _record(method, setting, lr, args.tune_seeds,
                                                                   {k: v[sl] for k, v in m.items()})
      store.save()
      print(f"tune {method} {setting}: {len(rows)} runs × {args.steps} steps in {time.time() - t0:.0f} s", flush=True)


def choose(store: Store) -> dict:
  """The tuned learning rate per (method, setting): the largest mean AUC on the tuning seeds; and the KL-matched
  GRPO learning rate (log-log interpolation of GRPO's mean per-step KL vs lr, at λ-GRPO's KL)."""
  chosen = {}
  for method, opt in TUNED.items():
    lrs = ADAM_LRS if opt == "adam" else SGD_LRS
    for setting in SETTINGS:
      recs = [store.data["tune"].get(key_of(method, setting, lr)) for lr in lrs]
      if any(r is None for r in recs):
        continue
      aucs = [np.mean(r["auc"]) for r in recs]
      chosen[key_of(method, setting)] = {"lr": lrs[int(np.argmax(aucs))], "auc_by_lr": dict(zip(map(str, lrs), aucs))}
  for setting in SETTINGS:
    lam = chosen.get(key_of("lambda_grpo", setting))
    grpo = [store.data["tune"].get(key_of("grpo", setting, lr)) for lr in ADAM_LRS]
    if lam is None or any(r is None for r in grpo):
      continue
    target_kl = np.mean(store.data["tune"][key_of("lambda_grpo", setting, lam["lr"])]["kl_step_mean"])
    kls = np.array([np.mean(r["kl_step_mean"]) for r in grpo])
    order = np.argsort(kls)
    log_lr = np.interp(np.log(target_kl), np.log(kls[order]), np.log(np.asarray(ADAM_LRS)[order]))
    chosen[key_of("grpo_klmatch", setting)] = {"lr": float(np.exp(log_lr)), "target_kl": float(target_kl),
                                               "grpo_kl_by_lr": dict(zip(map(str, ADAM_LRS), kls.tolist())),
                                               "extrapolated": bool(not kls.min() <= target_kl <= kls.max())}
    chosen[key_of("lambda_shuffled", setting)] = {"lr": lam["lr"]}
    chosen[key_of("lambda_depth", setting)] = {"lr": lam["lr"]}
    sgd = chosen.get(key_of("sgd_lambda", setting))
    if sgd is not None:
      chosen[key_of("sgd_grpo_normmatch", setting)] = {"lr": sgd["lr"]}
  store.data["chosen"] = chosen
  store.save()
  return chosen


def compare(store: Store, args) -> None:
  chosen = choose(store)
  for method in (*TUNED, *CONTROLS):
    for setting in SETTINGS:
      k = key_of(method, setting)
      if k in store.data["compare"] or k not in chosen:
        continue
      t0 = time.time()
      lr = chosen[k]["lr"]
      m = run_batch(method, [(s, lr, *setting) for s in args.compare_seeds], args.steps)
      store.data["compare"][k] = _record(method, setting, lr, args.compare_seeds, m)
      store.save()
      print(f"compare {method} {setting} lr {lr:.3g}: {time.time() - t0:.0f} s", flush=True)


# ----------------------------------------------------------------------------- statistics and the report


def paired_stats(a, b, rng, higher_is_better=True, boot=10_000):
  """λ-style method a vs baseline b over paired seeds: mean difference, its 95% bootstrap CI, Wilcoxon p."""
  from scipy.stats import wilcoxon

  a, b = np.asarray(a, float), np.asarray(b, float)
  d = a - b
  idx = rng.integers(0, len(d), size=(boot, len(d)))
  lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
  p = 1.0 if np.allclose(d, 0) else float(wilcoxon(a, b, zero_method="zsplit").pvalue)
  return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(d.mean()), "ci": [float(lo), float(hi)],
          "p": p, "wins": int(np.sum(d > 0) if higher_is_better else np.sum(d < 0)), "n": len(d)}


def holm(ps):
  """Holm-adjusted p-values (same order as given)."""
  ps = np.asarray(ps, float)
  order = np.argsort(ps)
  adj = np.empty_like(ps)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, (len(ps) - rank) * ps[i])
    adj[i] = min(1.0, running)
  return adj.tolist()


COMPARISONS = (  # (method, baseline, what it asks)
    ("lambda_grpo", "grpo", "λ-GRPO vs GRPO, each at its own tuned lr"),
    ("grpo_klmatch", "grpo", "GRPO at λ-GRPO's per-step KL vs GRPO tuned"),
    ("lambda_grpo", "grpo_klmatch", "λ-GRPO vs GRPO at λ-GRPO's per-step KL"),
    ("lambda_grpo", "lambda_shuffled", "λ-GRPO vs its weights shuffled over the group's tokens"),
    ("lambda_grpo", "lambda_depth", "λ-GRPO vs depth-only weights"),
    ("sgd_lambda", "sgd_grpo", "SGD: λ-GRPO vs GRPO, each tuned"),
    ("sgd_lambda", "sgd_grpo_normmatch", "SGD: λ-GRPO vs GRPO with λ-GRPO's gradient norm every step"),
)
METRICS = (("auc", True), ("final", True), ("steps_to_half", False))


def report(store: Store, out_dir: str) -> str:
  rng = np.random.default_rng(0)
  comp = store.data["compare"]
  lines, stats = [], {}
  for a, b, what in COMPARISONS:
    for metric, higher in METRICS:
      rows = []
      for setting in SETTINGS:
        ra, rb = comp.get(key_of(a, setting)), comp.get(key_of(b, setting))
        if ra is None or rb is None:
          continue
        assert ra["seeds"] == rb["seeds"]
        rows.append((setting, paired_stats(ra[metric], rb[metric], rng, higher)))
      if not rows:
        continue
      for (setting, s), p_adj in zip(rows, holm([s["p"] for _, s in rows])):
        s["p_holm"] = p_adj
        stats[f"{a}-{b}|{metric}|{setting[0]}|{setting[1]}"] = s
      if metric == "auc" or a == "lambda_grpo" and b == "grpo":
        lines += [f"\n**{what}** — {metric} ({'higher' if higher else 'lower'} is better), {rows[0][1]['n']} paired "
                  "seeds, 95% bootstrap CI of the mean difference, Wilcoxon signed-rank p, Holm over the settings\n",
                  f"| n | r_neg | {a} | {b} | difference [95% CI] | seeds better | p | p (Holm) |", "|---" * 8 + "|"]
        for setting, s in rows:
          lines.append(f"| {setting[0]} | {setting[1]} | {s['mean_a']:.3f} | {s['mean_b']:.3f} | {s['diff']:+.3f} "
                       f"[{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] | {s['wins']}/{s['n']} | {s['p']:.2g} | "
                       f"{s['p_holm']:.2g} |")
  chosen = store.data.get("chosen", {})
  lr_lines = ["| n | r_neg | " + " | ".join((*TUNED, "grpo_klmatch")) + " |", "|---" * (len(TUNED) + 3) + "|"]
  for setting in SETTINGS:
    cells = [f"{chosen[key_of(m, setting)]['lr']:.3g}" if key_of(m, setting) in chosen else "" for m in
             (*TUNED, "grpo_klmatch")]
    lr_lines.append(f"| {setting[0]} | {setting[1]} | " + " | ".join(cells) + " |")
  text = "Tuned learning rates (largest mean AUC on tuning seeds " + f"{list(TUNE_SEEDS)}):\n\n" + "\n".join(lr_lines)
  text += "\n" + "\n".join(lines)
  store.data["stats"] = stats
  store.save()
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "toy_study.md"), "w") as f:
    f.write(text + "\n")
  _plot(store, os.path.join(out_dir, "toy_study.png"))
  return text


def _plot(store: Store, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  comp = store.data["compare"]
  if not comp:
    return
  colors = {"grpo": "tab:red", "lambda_grpo": "tab:blue", "grpo_klmatch": "tab:orange", "lambda_shuffled": "tab:grey",
            "lambda_depth": "tab:green", "sgd_lambda": "tab:cyan", "sgd_grpo": "tab:pink",
            "sgd_grpo_normmatch": "tab:purple"}
  fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
  for ax, setting in zip(axes.flat, SETTINGS):
    for method, color in colors.items():
      rec = comp.get(key_of(method, setting))
      if rec is None:
        continue
      c = np.asarray(rec["p_target_curves"])
      x = np.arange(c.shape[1]) * 10
      mean = c.mean(0)
      half = 1.96 * c.std(0, ddof=1) / np.sqrt(len(c))
      ax.plot(x, mean, color=color, lw=1.6, label=f"{method} (lr {rec['lr']:.2g})")
      ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.15)
    ax.set_title(f"n={setting[0]}, r_neg={setting[1]}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("π(target), exact")
  axes.flat[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--phase", choices=("tune", "compare", "report", "all"), default="all")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--out", default="runs/toy_study")
  p.add_argument("--results", default="experiments/results")
  p.add_argument("--smoke", action="store_true", help="a few steps and seeds of everything (checks the script)")
  args = p.parse_args(argv)
  args.tune_seeds, args.compare_seeds = TUNE_SEEDS, COMPARE_SEEDS
  if args.smoke:
    args.steps, args.tune_seeds, args.compare_seeds = 60, TUNE_SEEDS[:2], COMPARE_SEEDS[:6]
  os.makedirs(args.out, exist_ok=True)
  store = Store(os.path.join(args.out, "results.json"))
  if args.phase in ("tune", "all"):
    tune(store, args)
  if args.phase in ("compare", "all"):
    compare(store, args)
  print(report(store, args.results if not args.smoke else args.out))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
