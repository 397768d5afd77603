"""λ-GRPO vs GRPO on the paper's toy binary-tree task (arXiv 2509.21154, Table 1), all seeds in one program.

A depth-4 binary tree: after BOS the policy emits 4 tokens, each L or R (every
other token is masked out of the policy).  The target leaf gets +1, leaves
sharing its first n tokens get r_neg, all others +0.7.  Metric: the fraction of
sampled completions equal to the target over the last 50 steps, averaged over
seeds.

One configuration (setting × method × learning rate) is one jitted program:
params, optimizer state and PRNG keys carry a leading seed axis (``jax.vmap``)
and the steps run in a ``lax.scan``, so a configuration compiles once and all
its seeds train together.  ``--sequential`` runs the same program seed by seed
(the results are equal; see tests/test_toy_tree.py) for the speed comparison.

Methods: grpo | lambda_grpo | lambda_grpo_wmean (λ weights normalized by Σ
weights: the update-norm-matched variant) | grpo_lrmatch (GRPO with its
learning rate scaled by the mean update-norm ratio λ-GRPO/GRPO measured in the
same sweep).

    python experiments/toy_tree.py                         # the main job: small model, 6 settings, 3 seeds
    python experiments/toy_tree.py --scale paper --settings 1:-1.0,2:-0.5 --seeds 5 --lr 1e-5
    python experiments/toy_tree.py --methods grpo,lambda_grpo,lambda_grpo_wmean,grpo_lrmatch --lrs 1e-5,3e-5,1e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import jaxgrpo
from jaxgrpo import models
from jaxgrpo.models import policy
from jaxgrpo.train import build
from jaxgrpo.train.config import ModelSpec

PAPER = {  # (n, r_neg): (GRPO, λ-GRPO), the paper's Table 1 (GPT-2 small, lr 1e-5, 5 seeds)
    (1, -0.5): (0.3995, 0.5663), (2, -0.5): (0.1980, 0.4292),
    (1, -1.0): (0.0000, 0.7535), (2, -1.0): (0.0488, 0.3612),
    (1, -1.5): (0.2000, 0.4463), (2, -1.5): (0.0000, 0.3820),
}
SETTINGS = "1:-0.5,2:-0.5,1:-1.0,2:-1.0,1:-1.5,2:-1.5"
METHODS = ("grpo", "lambda_grpo", "lambda_grpo_wmean", "grpo_lrmatch")
SCALES = {  # the model: a small GPT-2 for the main job, GPT-2 small's architecture for the paper's scale
    "small": ModelSpec(family="gpt2", vocab_size=3, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
                       max_position_embeddings=16),
    "paper": ModelSpec(family="gpt2", vocab_size=3, hidden_size=768, num_layers=12, num_heads=12,
                       intermediate_size=3072, max_position_embeddings=16),
}
L, R, BOS = 1, 2, 0
DEPTH = 4


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  """One configuration (static: part of the compiled program)."""

  n_shared: int = 1
  r_neg: float = -1.0
  r_other: float = 0.7
  target: tuple[int, ...] = (L, L, R, L)  # LLRL
  method: str = "lambda_grpo"
  group_size: int = 16
  steps: int = 250
  lr: float = 3e-5
  scale: str = "small"
  sampler: str = "tree"  # "tree": one forward over the 8 depth-3 prefixes | "naive": G full forwards per token


def toy_rewards(tokens: jax.Array, cfg: ToyConfig) -> jax.Array:
  """float32[G]: +1 for the target leaf, r_neg for leaves sharing its first n tokens, r_other otherwise."""
  target = jnp.asarray(cfg.target)
  hit = jnp.all(tokens == target, axis=-1)
  shares = jnp.all(tokens[:, :cfg.n_shared] == target[:cfg.n_shared], axis=-1)
  return jnp.where(hit, 1.0, jnp.where(shares, cfg.r_neg, cfg.r_other)).astype(jnp.float32)


def _sample(model, params, key, g: int) -> jax.Array:
  """G completions of DEPTH tokens after BOS from the policy (L/R only, temperature 1): int32[G, DEPTH]."""
  allowed = policy.allowed_mask(3, (L, R))
  ids = jnp.zeros((g, DEPTH + 1), jnp.int32)
  attn = jnp.ones((g, DEPTH + 1), jnp.int32)
  for t in range(DEPTH):  # causal: positions after t do not affect the logits at t
    logits = model.apply({"params": params}, ids, models.positions_from_mask(attn), models.causal_mask(attn)).logits
    pol = policy.policy_logits(logits[:, t], 1.0, allowed)
    ids = ids.at[:, t + 1].set(jax.random.categorical(jax.random.fold_in(key, t), pol).astype(jnp.int32))
  return ids[:, 1:]


def _tree_prefixes() -> jax.Array:
  """int32[2^(DEPTH-1), DEPTH]: BOS then every path of DEPTH-1 tokens (row b spells b in binary, L=0, R=1).
  Their DEPTH positions hold every internal node of the tree: position t of row b is the node reached by
  the first t tokens of b."""
  paths = itertools.product((L, R), repeat=DEPTH - 1)
  return jnp.asarray([[BOS, *p] for p in paths], jnp.int32)


def _node_rows(tokens: jax.Array) -> jax.Array:
  """int32[G, DEPTH]: for each completion and step t, the row of ``_tree_prefixes`` whose first t tokens
  equal the completion's first t tokens (later tokens L) — the row whose position t predicts token t."""
  bits = (tokens[:, :DEPTH - 1] == R).astype(jnp.int32)  # [G, DEPTH-1]
  place = 2 ** jnp.arange(DEPTH - 2, -1, -1)  # most significant first, as itertools.product orders them
  known = jnp.arange(DEPTH)[:, None] > jnp.arange(DEPTH - 1)[None, :]  # [t, j]: token j precedes step t
  return jnp.sum(bits[:, None, :] * place * known[None], axis=-1)


def _tree_logits(model, params) -> jax.Array:
  """float32[2^(DEPTH-1), DEPTH, 3]: the policy's logits (L/R only, temperature 1) at every tree node."""
  ids = _tree_prefixes()
  attn = jnp.ones_like(ids)
  logits = model.apply({"params": params}, ids, models.positions_from_mask(attn), models.causal_mask(attn)).logits
  return policy.policy_logits(logits, 1.0, policy.allowed_mask(3, (L, R)))


def _sample_tree(tree: jax.Array, key, g: int) -> jax.Array:
  """G completions drawn from the node logits, token by token with the naive sampler's keys: int32[G, DEPTH]."""
  tokens = jnp.zeros((g, DEPTH), jnp.int32)
  for t in range(DEPTH):
    pol = tree[_node_rows(tokens)[:, t], t]  # [G, 3]; tokens at and after t are not read
    tokens = tokens.at[:, t].set(jax.random.categorical(jax.random.fold_in(key, t), pol).astype(jnp.int32))
  return tokens


def _tree_logprobs(tree: jax.Array, tokens: jax.Array) -> jax.Array:
  """float32[G, DEPTH]: log π(y_t | y_<t) read off the node logits."""
  node = tree[_node_rows(tokens), jnp.arange(DEPTH)[None, :]]  # [G, DEPTH, 3]
  return jnp.take_along_axis(jax.nn.log_softmax(node, axis=-1), tokens[..., None], axis=-1)[..., 0]


def make_step(model, tx, cfg: ToyConfig):
  """``step(state, key, lr_scale) -> (state, metrics)`` for one seed: sample, reward, advantage, one update
  (scaled by ``lr_scale``, a traced scalar).

  The tree has 15 internal nodes, so with ``sampler="tree"`` one forward pass over the 8 depth-3 prefixes
  (32 positions) gives every logit the step needs: sampling reads the nodes, the loss gathers its log-probs
  from them, and the gradient flows back through that one pass (``jax.vjp``).  ``sampler="naive"`` samples
  with a full forward per token and recomputes the log-probs on the G completions (4 + 1 passes over 16 × 5
  positions); both draw the same samples from the same keys and give the same loss and gradient
  (tests/test_toy_tree.py)."""
  lam = cfg.method in ("lambda_grpo", "lambda_grpo_wmean")
  aggregation = "weight_mean" if cfg.method == "lambda_grpo_wmean" else "token_mean"
  g = cfg.group_size

  def loss_of_logp(logp, adv, weights):
    return jaxgrpo.policy_loss(logp, None, None, adv, jnp.ones_like(logp), weights=weights, aggregation=aggregation)

  def naive_loss(params, tokens, adv, weights):
    ids = jnp.concatenate([jnp.zeros((g, 1), jnp.int32), tokens], axis=1)
    logp, _ = policy.completion_logprobs(model, params, ids, jnp.ones_like(ids), DEPTH, 1.0, (L, R))
    return loss_of_logp(logp, adv, weights)

  def advantages(tokens):
    rewards = toy_rewards(tokens, cfg)
    counts = jaxgrpo.prefix_counts(tokens, jnp.ones_like(tokens))
    weights = jaxgrpo.lambda_weights(counts) if lam else jnp.ones(tokens.shape, jnp.float32)
    return rewards, jaxgrpo.group_advantages(rewards), counts, weights

  def loss_and_grads(params, key):
    if cfg.sampler == "naive":
      tokens = _sample(model, params, key, g)
      rewards, adv, counts, weights = advantages(tokens)
      (loss, _), grads = jax.value_and_grad(naive_loss, has_aux=True)(params, tokens, adv, weights)
      return tokens, rewards, counts, loss, grads
    tree, pullback = jax.vjp(lambda p: _tree_logits(model, p), params)
    tokens = _sample_tree(tree, key, g)
    rewards, adv, counts, weights = advantages(tokens)
    (loss, _), d_tree = jax.value_and_grad(
        lambda tr: loss_of_logp(_tree_logprobs(tr, tokens), adv, weights), has_aux=True)(tree)
    (grads,) = pullback(d_tree)
    return tokens, rewards, counts, loss, grads

  def step(state, key, lr_scale):
    params, opt_state = state
    tokens, rewards, counts, loss, grads = loss_and_grads(params, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * lr_scale, updates)
    params = optax.apply_updates(params, updates)
    metrics = {"target_frac": jnp.mean(jnp.all(tokens == jnp.asarray(cfg.target), axis=-1).astype(jnp.float32)),
               "reward_mean": jnp.mean(rewards), "loss": loss, "update_norm": optax.tree.norm(updates),
               "lambda_mean": jnp.mean(counts.astype(jnp.float32))}
    return (params, opt_state), metrics

  step.loss_and_grads = loss_and_grads  # for the tests: one step's samples, loss and gradient
  return step


def make_model(scale: str):
  return models.from_config(build.config_from_spec(SCALES[scale]))


@functools.lru_cache(maxsize=64)
def compiled_run(cfg: ToyConfig, vmapped: bool = True):
  """One jitted program ``(keys, lr_scale) -> metrics``: init + ``cfg.steps`` steps for a batch of seed
  keys (leading axis) — or for one seed key when ``vmapped`` is False.  Metrics are [S, steps] (or [steps])."""
  model = make_model(cfg.scale)
  tx = optax.adam(cfg.lr)
  step = make_step(model, tx, cfg)

  def one_seed(key, lr_scale):
    init_key, run_key = jax.random.split(key)
    params = models.init_params(model, init_key)
    keys = jax.random.split(run_key, cfg.steps)
    _, metrics = jax.lax.scan(lambda s, k: step(s, k, lr_scale), (params, tx.init(params)), keys)
    return metrics

  return jax.jit(jax.vmap(one_seed, in_axes=(0, None)) if vmapped else one_seed)


def seed_keys(seeds: int) -> jax.Array:
  return jnp.stack([jax.random.PRNGKey(s) for s in range(seeds)])


def run(cfg: ToyConfig, seeds: int, lr_scale: float = 1.0, sequential: bool = False) -> dict[str, np.ndarray]:
  """Per-step metrics [seeds, steps] of one configuration (all seeds in one program unless sequential)."""
  keys = seed_keys(seeds)
  scale = jnp.float32(lr_scale)
  if sequential:
    fn = compiled_run(cfg, vmapped=False)
    per_seed = [jax.device_get(fn(k, scale)) for k in keys]
    return {k: np.stack([m[k] for m in per_seed]) for k in per_seed[0]}
  return {k: np.asarray(v) for k, v in jax.device_get(compiled_run(cfg)(keys, scale)).items()}


def compare_sequential(args) -> dict:
  """Wall time of one configuration's seeds as one vmapped program vs one after another, same run: the first
  call (compile + run) and a second, compiled call; and whether the per-seed results agree."""
  setting = [(int(a), float(b)) for a, b in (s.split(":") for s in args.settings.split(","))][0]
  cfg = ToyConfig(n_shared=setting[0], r_neg=setting[1], method="lambda_grpo", steps=args.steps, lr=args.lr,
                  group_size=args.group_size, scale=args.scale, sampler=args.sampler)
  out = {"config": dataclasses.asdict(cfg), "seeds": args.seeds}
  for name, sequential in (("vmapped", False), ("sequential", True)):
    t0 = time.time()
    run(cfg, args.seeds, sequential=sequential)  # first call: compile + run
    out[f"{name}_first_call_s"] = time.time() - t0
    t0 = time.time()
    m = run(cfg, args.seeds, sequential=sequential)  # compiled: run only
    out[f"{name}_s"] = time.time() - t0
    out[f"{name}_target_frac"] = m["target_frac"]
  out["max_abs_diff"] = float(np.max(np.abs(out.pop("vmapped_target_frac") - out.pop("sequential_target_frac"))))
  out["speedup"] = out["sequential_s"] / out["vmapped_s"]
  return out


def compare_samplers(args, repeats: int = 3) -> dict:
  """Seconds per seed-step of the tree and naive samplers (sample + rewards + loss + gradient, Adam excluded)
  in the same run, and whether they agree (samples equal, relative gradient difference)."""
  model = make_model(args.scale)
  params = models.init_params(model, jax.random.PRNGKey(0))
  out: dict = {"scale": args.scale, "group_size": args.group_size}
  last = {}  # sampler -> (samples, flat gradient) of the last timed call
  for sampler in ("naive", "tree"):
    cfg = ToyConfig(method="lambda_grpo", group_size=args.group_size, scale=args.scale, sampler=sampler)
    fn = jax.jit(make_step(model, optax.adam(cfg.lr), cfg).loss_and_grads)
    jax.block_until_ready(fn(params, jax.random.PRNGKey(0)))  # compile
    t0 = time.time()
    for k in range(repeats):
      res = jax.block_until_ready(fn(params, jax.random.PRNGKey(1 + k)))
    out[f"{sampler}_s"] = (time.time() - t0) / repeats
    last[sampler] = (res[0], np.asarray(ravel_pytree(res[4])[0]))
  out["samples_equal"] = bool(np.array_equal(last["naive"][0], last["tree"][0]))
  g_naive, g_tree = last["naive"][1], last["tree"][1]
  out["grad_rel_diff"] = float(np.linalg.norm(g_tree - g_naive) / np.linalg.norm(g_naive))
  out["speedup"] = out["naive_s"] / out["tree_s"]
  out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
  return out


def first_step_size(scale: str, lr: float, seeds: int = 3) -> list[float]:
  """How far one Adam step moves the policy: per seed, max over the 15 tree nodes of |Δ(logit L − logit R)|
  after the first GRPO step (same init and keys as the sweep's seeds)."""
  model = make_model(scale)
  tx = optax.adam(lr)
  step = jax.jit(make_step(model, tx, ToyConfig(method="grpo", scale=scale, lr=lr)))
  out = []
  for key in seed_keys(seeds):
    init_key, run_key = jax.random.split(key)
    params = models.init_params(model, init_key)
    (new, _), _ = step((params, tx.init(params)), jax.random.split(run_key, 1)[0], jnp.float32(1.0))
    margin = [(t[..., L] - t[..., R]) for t in (_tree_logits(model, params), _tree_logits(model, new))]
    out.append(float(jnp.max(jnp.abs(margin[1] - margin[0]))))
  return out


# ----------------------------------------------------------------------------- the sweep


def _lrs(args) -> list[float]:
  return [float(x) for x in args.lrs.split(",")] if args.lrs else [args.lr]


def _key(setting, method, lr):
  return f"{setting[0]}|{setting[1]}|{method}|{lr:g}"


def sweep(args) -> dict:
  settings = [(int(a), float(b)) for a, b in (s.split(":") for s in args.settings.split(","))]
  methods = args.methods.split(",")
  lrs = _lrs(args)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.json")
  results = json.load(open(path)) if os.path.exists(path) and not args.fresh else {"runs": {}}
  results["args"] = vars(args)
  ordered = [m for m in METHODS if m in methods and m != "grpo_lrmatch"] + (["grpo_lrmatch"] if
                                                                           "grpo_lrmatch" in methods else [])
  t_start = time.time()
  for lr in lrs:
    for setting in settings:
      for method in ordered:
        key = _key(setting, method, lr)
        if key in results["runs"]:  # resumable: finished configurations are kept
          continue
        scale = 1.0
        base = "grpo" if method == "grpo_lrmatch" else method
        if method == "grpo_lrmatch":  # GRPO's lr × the measured mean update-norm ratio λ-GRPO / GRPO
          lam = results["runs"][_key(setting, "lambda_grpo", lr)]["update_norm_mean"]
          grpo = results["runs"][_key(setting, "grpo", lr)]["update_norm_mean"]
          scale = lam / grpo
        cfg = ToyConfig(n_shared=setting[0], r_neg=setting[1], method=base, steps=args.steps, lr=lr,
                        group_size=args.group_size, scale=args.scale, sampler=args.sampler)
        t0 = time.time()
        m = run(cfg, args.seeds, lr_scale=scale, sequential=args.sequential)
        seconds = time.time() - t0
        curves = m["target_frac"]
        results["runs"][key] = {
            "n": setting[0], "r_neg": setting[1], "method": method, "lr": lr, "lr_scale": scale,
            "final": float(np.mean(curves[:, -50:])), "final_per_seed": np.mean(curves[:, -50:], axis=1).tolist(),
            "update_norm_mean": float(np.mean(m["update_norm"])), "seconds": seconds,
            "curves": curves.tolist(), "peak_early": float(np.max(np.mean(curves[:, :50], axis=0))),
        }
        print(f"{key}: final {results['runs'][key]['final']:.4f} ({seconds:.0f} s)", flush=True)
        with open(path + ".tmp", "w") as f:
          json.dump(results, f)
        os.replace(path + ".tmp", path)
  results["seconds_this_invocation"] = time.time() - t_start
  results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
  with open(path, "w") as f:
    json.dump(results, f)
  return results


def table(results: dict, lr: float, methods: list[str]) -> str:
  names = {"grpo": "GRPO", "lambda_grpo": "λ-GRPO", "lambda_grpo_wmean": "λ-GRPO (Σw norm)",
           "grpo_lrmatch": "GRPO (lr × norm ratio)"}
  runs = [r for r in results["runs"].values() if r["lr"] == lr]
  settings = sorted({(r["n"], r["r_neg"]) for r in runs}, key=lambda s: (-s[1], s[0]))
  head = "| n | r_neg | " + " | ".join(names[m] for m in methods) + " | paper GRPO | paper λ-GRPO |"
  lines = [head, "|---" * (len(methods) + 4) + "|"]
  for n, r in settings:
    cells = []
    for m in methods:
      run_ = results["runs"].get(_key((n, r), m, lr))
      cells.append("" if run_ is None else f"{run_['final']:.3f} ± {np.std(run_['final_per_seed']):.3f}")
    paper = PAPER.get((n, r), (float("nan"),) * 2)
    lines.append(f"| {n} | {r} | " + " | ".join(cells) + f" | {paper[0]:.4f} | {paper[1]:.4f} |")
  return "\n".join(lines)


def plot(results: dict, lr: float, methods: list[str], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = [r for r in results["runs"].values() if r["lr"] == lr]
  settings = sorted({(r["n"], r["r_neg"]) for r in runs}, key=lambda s: (-s[1], s[0]))
  cols = min(3, len(settings))
  rows = -(-len(settings) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  colors = {"grpo": "tab:red", "lambda_grpo": "tab:blue", "lambda_grpo_wmean": "tab:green",
            "grpo_lrmatch": "tab:orange"}
  for ax, (n, r) in zip(axes.flat, settings):
    for m in methods:
      run_ = results["runs"].get(_key((n, r), m, lr))
      if run_ is None:
        continue
      curves = np.asarray(run_["curves"])
      for c in curves:  # per-seed curves, faint
        ax.plot(np.convolve(c, np.ones(10) / 10, mode="valid"), color=colors[m], alpha=0.15, lw=0.8)
      mean = np.convolve(curves.mean(0), np.ones(10) / 10, mode="valid")
      ax.plot(mean, color=colors[m], lw=2, label=m)
    ax.set_title(f"n={n}, r_neg={r}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("target frequency")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _save(out_dir: str, name: str, result: dict) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, name), "w") as f:
    json.dump(result, f, indent=1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--scale", choices=sorted(SCALES), default="small")
  p.add_argument("--settings", default=SETTINGS)
  p.add_argument("--methods", default="grpo,lambda_grpo")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--steps", type=int, default=250)
  p.add_argument("--group-size", type=int, default=16)
  p.add_argument("--sampler", choices=("tree", "naive"), default="tree",
                 help="tree: one forward over the tree's 15 nodes per step (default); naive: G forwards per token")
  p.add_argument("--lr", type=float, default=3e-5)
  p.add_argument("--lrs", default="", help="comma-separated learning rates (overrides --lr)")
  p.add_argument("--out", default="runs/toy_tree")
  p.add_argument("--fresh", action="store_true", help="ignore finished configurations in --out")
  p.add_argument("--sequential", action="store_true", help="run the seeds one after another (same results)")
  p.add_argument("--compare-sequential", action="store_true",
                 help="only time the first setting's λ-GRPO seeds vmapped vs sequential")
  p.add_argument("--compare-samplers", action="store_true",
                 help="only time one step's sample + loss + gradient, tree vs naive sampler, at --scale")
  p.add_argument("--step-size", action="store_true",
                 help="only measure how far the first Adam step moves the policy's logits, per --lrs, at --scale")
  args = p.parse_args(argv)
  if args.step_size:
    r = {f"{lr:g}": first_step_size(args.scale, lr, args.seeds) for lr in _lrs(args)}
    for lr, v in r.items():
      print(f"{args.scale} model, lr {lr}: max |Δ(logit L − logit R)| over the tree's nodes after one Adam step, "
            f"per seed: {', '.join(f'{x:.3f}' for x in v)}")
    _save(args.out, f"toy_step_size_{args.scale}.json", r)
    return 0
  if args.compare_samplers:
    r = compare_samplers(args)
    print(f"{args.scale} model, G={args.group_size}, {r['machine']}: sample + loss + gradient per seed-step: "
          f"naive {r['naive_s']:.3f} s, tree {r['tree_s']:.3f} s, speed-up {r['speedup']:.2f}×; samples equal: "
          f"{r['samples_equal']}, relative gradient difference {r['grad_rel_diff']:.1e}")
    _save(args.out, f"toy_sampler_speedup_{args.scale}.json", r)
    return 0
  if args.compare_sequential:
    r = compare_sequential(args)
    print(f"{args.seeds} seeds × {args.steps} steps, {args.scale} model, {platform.machine()} {os.cpu_count()} cores: "
          f"run only: vmapped {r['vmapped_s']:.1f} s, sequential {r['sequential_s']:.1f} s, "
          f"speed-up {r['speedup']:.2f}×; "
          f"first call (compile + run): {r['vmapped_first_call_s']:.1f} s vs {r['sequential_first_call_s']:.1f} s; "
          f"max |Δ target frequency| {r['max_abs_diff']:.2g}")
    _save(args.out, "vmap_speedup.json", r)
    return 0
  results = sweep(args)
  methods = [m for m in METHODS if m in args.methods.split(",")]
  for lr in _lrs(args):
    print(f"\nTarget-leaf frequency over the last 50 steps, mean ± std over {args.seeds} seeds — {args.scale} model, "
          f"lr {lr:g}, G={args.group_size}, {args.steps} steps\n")
    print(table(results, lr, methods))
    out_png = os.path.join(args.out, f"toy_target_frequency_lr{lr:g}.png")
    plot(results, lr, methods, out_png)
    print(f"\nplot: {out_png}")
  total = sum(r["seconds"] for r in results["runs"].values())
  print(f"{len(results['runs'])} configurations, {total:.0f} s of training ({results['machine']})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
