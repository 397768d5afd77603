"""The training loop: sample → score → advantages → μ sharded updates, with checkpoints and metrics."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxgrpo
from jaxgrpo import checkpointing, data as data_lib, prm as prm_lib, rewards as rewards_lib, sampler
from jaxgrpo import sharding as shard_lib
from jaxgrpo import train_step as ts
from jaxgrpo.config import TrainConfig, save_config
from jaxgrpo.metrics import MetricsWriter
from jaxgrpo.tokenizers import HFTokenizer, ToyTokenizer, left_pad

OBJECTIVES = ("grpo", "lambda_grpo", "prpo")
_UPDATE_CACHE: dict = {}


def build_model(spec, seed: int):
  """(model, params, tokenizer) from a ``ModelSpec``."""
  import jaxgrpo.models as M

  if spec.checkpoint is None:
    heads = spec.num_heads
    cfg = M.ModelConfig(
        family=spec.family, vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
        num_heads=heads, num_kv_heads=heads, head_dim=spec.hidden_size // heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        activation="gelu_new" if spec.family == "gpt2" else "silu", tie_word_embeddings=spec.family == "gpt2",
        qkv_bias=spec.family != "llama", out_bias=spec.family == "gpt2", mlp_bias=spec.family == "gpt2",
        dtype=spec.dtype,
    )
    model = M.from_config(cfg)
    params = M.init_params(model, jax.random.PRNGKey(seed))
    if spec.vocab_size != 3:
      raise ValueError("a model made from a config is only wired to the toy task's tokenizer (vocab_size=3)")
    return model, params, ToyTokenizer()
  path = spec.checkpoint
  if path == "smollm2":
    from jaxgrpo.models import smollm2

    path = smollm2.hf_checkpoint_dir()
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model.checkpoint {spec.checkpoint!r} is not a local HF checkpoint directory")
  model, params = M.from_pretrained(path, dtype=spec.dtype)
  return model, params, HFTokenizer(path)


@dataclasses.dataclass
class StepTimes:
  sample: float = 0.0
  score: float = 0.0
  update: float = 0.0


class Trainer:
  """Holds the model, optimizer, mesh and state; ``run()`` trains to ``cfg.steps``, resuming if it can."""

  def __init__(self, cfg: TrainConfig, mesh=None, rules=shard_lib.MeshRules(),
               on_step: Callable[[int, dict], None] | None = None, prm: prm_lib.PRM | None = None):
    if cfg.objective.name not in OBJECTIVES:
      raise ValueError(f"objective.name must be one of {OBJECTIVES}; got {cfg.objective.name!r}")
    self.cfg = cfg
    self.on_step = on_step
    self.mesh = mesh if mesh is not None else shard_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    self.rules = rules
    self.model, params, self.tokenizer = build_model(cfg.model, cfg.seed)
    self.source = data_lib.make_source(cfg.data)
    self.rewards = rewards_lib.make_rewards(cfg.rewards, cfg.data)
    self.prm = prm
    if self.prm is None and cfg.objective.name == "prpo":
      self.prm = prm_lib.make_prm(cfg.objective.prm)
    self.tx = ts.make_optimizer(cfg.optim, total_steps=cfg.steps)
    self.shardings = ts.state_shardings(self.model, params, self.tx, self.mesh, rules)
    self.ref_params = None
    if cfg.objective.kl_beta > 0:  # the reference policy is only kept when KL is used
      self.ref_params = ts.shard_state(params, self.shardings["params"])
    state = {"params": params, "opt_state": self.tx.init(params)}
    self.state = ts.shard_state(state, self.shardings)
    allowed = self.tokenizer.allowed_tokens()
    self.allowed = None if allowed is None else np.asarray(allowed, bool)
    self.allowed_ids = None if allowed is None else tuple(int(i) for i in np.flatnonzero(allowed))
    o = cfg.objective
    self.loss_spec = ts.LossSpec(
        temperature=cfg.sampling.temperature or 1.0, clip_eps_low=o.clip_eps_low, clip_eps_high=o.clip_eps_high,
        kl_beta=o.kl_beta, aggregation=o.aggregation, use_old_logp=o.num_iterations > 1,
        allowed_tokens=self.allowed_ids,
    )
    key = (self.model, cfg.optim, cfg.steps, self.loss_spec, self.mesh, rules)
    if key not in _UPDATE_CACHE:  # reuse compiled steps across runs of one process (sweeps)
      _UPDATE_CACHE[key] = ts.make_update_step(self.model, self.tx, self.loss_spec, self.mesh, self.shardings, rules)
    self.update = _UPDATE_CACHE[key]
    self.step = 0
    self.data_pos = 0
    self.rng = np.asarray(jax.random.PRNGKey(cfg.seed))
    n = cfg.data.prompts_per_step * cfg.sampling.group_size
    dp = shard_lib._mesh_size(self.mesh, ("data", "fsdp"))
    if n % (dp * o.num_minibatches):
      raise ValueError(
          f"prompts_per_step × group_size = {n} must be divisible by num_minibatches ({o.num_minibatches}) × "
          f"the data-parallel mesh size ({dp})"
      )

  # ------------------------------------------------------------------ state for checkpoints

  def _ckpt_state(self) -> dict[str, Any]:
    return {**self.state, "step": np.asarray(self.step, np.int64), "rng": np.asarray(self.rng),
            "data_pos": np.asarray(self.data_pos, np.int64)}

  def _load_ckpt_state(self, restored: dict[str, Any]) -> None:
    self.state = {"params": restored["params"], "opt_state": restored["opt_state"]}
    self.step = int(restored["step"])
    self.rng = np.asarray(restored["rng"])
    self.data_pos = int(restored["data_pos"])

  # ------------------------------------------------------------------ one step

  def rollout(self, step_key):
    cfg = self.cfg
    b = cfg.data.prompts_per_step
    examples = [self.source[self.data_pos + i] for i in range(b)]
    prompt_ids, prompt_mask = left_pad([self.tokenizer.encode_prompt(e.prompt) for e in examples],
                                       self.tokenizer.pad_id)
    s = cfg.sampling
    out = sampler.sample(self.model, self.state["params"], prompt_ids, prompt_mask, step_key,
                         group_size=s.group_size, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                         top_k=s.top_k, top_p=s.top_p, eos_ids=self.tokenizer.eos_ids, pad_id=self.tokenizer.pad_id,
                         allowed_tokens=self.allowed)
    return examples, prompt_ids, prompt_mask, jax.device_get(out)

  def advantages(self, examples, out, rewards):
    """Per-token advantages and weights [B, G, T] for the configured objective, plus metrics."""
    o = self.cfg.objective
    tokens, mask = jnp.asarray(out.tokens), jnp.asarray(out.mask)
    counts = jaxgrpo.prefix_counts(tokens, mask)
    metrics = {**jaxgrpo.advantage_metrics(rewards), **jaxgrpo.prefix_metrics(counts, mask)}
    if o.name == "prpo":
      adv = self._prpo_advantages(examples, out, rewards)
    else:
      seq = jaxgrpo.group_advantages(jnp.asarray(rewards), scale=o.scale_rewards, ddof=o.ddof, eps=o.eps)
      adv = jnp.broadcast_to(seq[..., None], tokens.shape) * mask
    use_lambda = o.name == "lambda_grpo" or o.lambda_weights
    weights = jaxgrpo.lambda_weights(counts) if use_lambda else mask.astype(jnp.float32)
    return np.asarray(adv, np.float32), np.asarray(weights, np.float32), metrics

  def _prpo_advantages(self, examples, out, rewards):
    o = self.cfg.objective
    seg = np.asarray(jaxgrpo.entropy_segments(jnp.asarray(out.entropies), jnp.asarray(out.mask), k=o.prpo_k,
                                              min_gap=o.prpo_min_gap))
    b, g, _ = seg.shape
    scores = np.full((b, g, max(int(seg.max()) + 1, 1)), 0.5, np.float32)  # seg is -1 on padding
    for i in range(b):
      for j in range(g):
        ids = out.tokens[i, j]
        texts = [self.tokenizer.decode(ids[seg[i, j] == k]) for k in range(int(seg[i, j].max()) + 1)]
        if texts:
          s = np.asarray(self.prm(examples[i], texts), np.float32)
          if s.shape != (len(texts),) or not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
            raise ValueError(f"the PRM must return {len(texts)} scores in [0, 1] for example {i}; got {s}")
          scores[i, j, : len(texts)] = s
    tok_scores = jaxgrpo.segment_scores_to_tokens(jnp.asarray(seg), jnp.asarray(scores))
    return jaxgrpo.prpo_advantages(tok_scores, jnp.asarray(out.mask), jnp.asarray(rewards),
                                   normalization=o.prpo_normalization, prior_std=o.prpo_prior_std,
                                   outcome=o.prpo_outcome, ddof=o.ddof, eps=o.eps)

  def train_step(self) -> dict[str, float]:
    cfg, o = self.cfg, self.cfg.objective
    times = StepTimes()
    t0 = time.perf_counter()
    step_key = jax.random.fold_in(jnp.asarray(self.rng), self.step)
    examples, prompt_ids, prompt_mask, out = self.rollout(step_key)
    times.sample = time.perf_counter() - t0

    t0 = time.perf_counter()
    prompts = [e.prompt for e in examples]
    texts = [[self.tokenizer.decode(out.tokens[i, j][out.mask[i, j] == 1]) for j in range(out.tokens.shape[1])]
             for i in range(out.tokens.shape[0])]
    rewards, parts = rewards_lib.score_components(self.rewards, prompts, texts, examples)
    adv, weights, metrics = self.advantages(examples, out, rewards)
    times.score = time.perf_counter() - t0

    t0 = time.perf_counter()
    b, g, t = out.tokens.shape
    n = b * g
    rep = lambda x: np.repeat(x, g, axis=0)
    input_ids = np.concatenate([rep(prompt_ids), out.tokens.reshape(n, t)], axis=1).astype(np.int32)
    attn = np.concatenate([rep(prompt_mask), out.mask.reshape(n, t)], axis=1).astype(np.int32)
    comp_mask = out.mask.reshape(n, t).astype(np.float32)
    zeros = np.zeros((n, t), np.float32)
    old = zeros
    if o.num_iterations > 1:
      old = np.asarray(ts.eval_logprobs(self.model, self.state["params"], input_ids, attn, t,
                                        self.loss_spec.temperature, self.allowed_ids))
    ref = zeros
    if self.ref_params is not None:
      ref = np.asarray(ts.eval_logprobs(self.model, self.ref_params, input_ids, attn, t,
                                        self.loss_spec.temperature, self.allowed_ids))
    full = ts.Batch(input_ids, attn, comp_mask, adv.reshape(n, t), weights.reshape(n, t), old, ref)
    perm_key = np.random.default_rng([cfg.seed, self.step])
    upd = []
    for _ in range(o.num_iterations):
      order = perm_key.permutation(n) if o.num_minibatches > 1 else np.arange(n)
      for mb in np.array_split(order, o.num_minibatches):
        self.state, m = self.update(self.state, ts.Batch(*[x[mb] for x in full]))
        upd.append(m)
    upd = jax.device_get(upd)
    times.update = time.perf_counter() - t0

    lengths = out.lengths.astype(np.float32)
    total = times.sample + times.score + times.update
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics.update({k: float(np.mean([u[k] for u in upd])) for k in upd[0]})
    target = getattr(self.source, "target", None)
    if target is not None:
      metrics["target_frac"] = float(np.mean([[c == target for c in row] for row in texts]))
    for name, part in zip(cfg.rewards.names, parts):
      metrics[f"reward_{name}"] = float(np.mean(part))
    if "math" in cfg.rewards.names:  # accuracy = fraction of correct final answers
      metrics["accuracy"] = float(np.mean(parts[cfg.rewards.names.index("math")] > 0.5))
    elif target is not None:
      metrics["accuracy"] = metrics["target_frac"]
    metrics.update(
        entropy_mean=float(np.sum(out.entropies * out.mask) / max(out.mask.sum(), 1)),
        completion_len_mean=float(lengths.mean()), completion_len_max=float(lengths.max()),
        tokens_per_s=float(out.mask.sum() / max(total, 1e-9)),
        time_sample=times.sample, time_score=times.score, time_update=times.update, time_step=total,
    )
    self.data_pos += b
    self.step += 1
    return metrics

  # ------------------------------------------------------------------ the loop

  def run(self, resume: bool = True) -> list[dict[str, float]]:
    cfg = self.cfg
    os.makedirs(cfg.output_dir, exist_ok=True)
    save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    ckpt = checkpointing.Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), cfg.checkpoint_every,
                                      cfg.keep_checkpoints)
    if resume and ckpt.latest_step() is not None:
      self._load_ckpt_state(ckpt.restore(self._ckpt_state()))
    writer = MetricsWriter(cfg.output_dir)
    history = []
    bar = None
    if cfg.progress:
      from tqdm.auto import tqdm

      bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.name, dynamic_ncols=True)
    try:
      while self.step < cfg.steps:
        m = self.train_step()
        history.append(m)
        if self.step % cfg.log_every == 0:
          writer.write(self.step, m)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(reward=f"{m['reward_mean']:.3f}", loss=f"{m['loss']:.4f}", refresh=False)
        ckpt.maybe_save(self.step, self._ckpt_state())
        if self.on_step is not None:
          self.on_step(self.step, m)
      ckpt.maybe_save(self.step, self._ckpt_state(), force=True)
    except KeyboardInterrupt:
      ckpt.maybe_save(self.step, self._ckpt_state(), force=True)
      raise
    finally:
      if bar is not None:
        bar.close()
      writer.close()
      ckpt.close()
    return history
