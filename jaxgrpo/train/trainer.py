"""The training loop, as named stages over a ``Rollout``:

    rollout = sample(examples)          # G completions per prompt (rollout.sampler, on the mesh)
    rollout = score(rollout)            # rewards and task correctness (host functions, this process's rows)
    adv, weights, m = advantages(rollout)   # GRPO / λ-GRPO / PRPO token advantages and weights (jitted)
    m |= update(rollout, adv, weights)  # μ × minibatch optimizer steps, one jitted sharded call

``run()`` adds what keeps a run whole: a locked output directory, verified
checkpoints (resume from the newest good one), evaluation at step 0, every
``eval.every`` steps and at the end, metrics written once per step, and a
checkpoint of the last completed step on SIGTERM/SIGINT or an exception.  A
non-finite loss, gradient or parameter stops the run (or skips the update:
``nonfinite: skip``) without ever saving it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo import core, models
from jaxgrpo.models import lora
from jaxgrpo.models.transformer import Transformer
from jaxgrpo.parallel import distributed as dist
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.rollout.engine import Rollout, RolloutEngine
from jaxgrpo.rollout.sampler import FINISH_EOS, sampling_form
from jaxgrpo.tasks import prm as prm_lib
from jaxgrpo.tasks import rewards as rewards_lib
from jaxgrpo.tasks import sources as data_lib
from jaxgrpo.train import build, checkpointing, evaluation, packing, rollout_log
from jaxgrpo.train import config as config_lib
from jaxgrpo.train import step as ts
from jaxgrpo.train.config import TrainConfig
from jaxgrpo.train.metrics import MetricsWriter
from jaxgrpo.train.preemption import Preempted, SignalGuard
from jaxgrpo.train.progress import Progress
from jaxgrpo.train.run_dir import RunDir

log = logging.getLogger("jaxgrpo")


class NonFiniteError(RuntimeError):
  """A step produced a non-finite loss, gradient or parameter (the run stops; nothing is saved)."""


class Trainer:
  """Holds the model, optimizer, mesh and state; ``run()`` trains to ``cfg.steps``, resuming if it can.

  Args:
    cfg: the run's config.
    mesh, rules: the device mesh and partition rules (default: from ``cfg.mesh``).
    on_step: called with (step, metrics) after every step.
    prm: a PRM function for PRPO (default: ``cfg.objective.prm``).
    rewards: [(fn, weight), ...] reward functions (default: ``cfg.rewards``).
  """

  def __init__(self, cfg: TrainConfig, mesh=None, rules=shard_lib.MeshRules(),
               on_step: Callable[[int, dict], None] | None = None, prm: prm_lib.PRM | None = None,
               rewards: list[tuple[Callable, float]] | None = None):
    self.cfg = cfg
    o = cfg.objective
    self.on_step = on_step
    self.mesh = mesh if mesh is not None else shard_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    self.rules = rules
    n = cfg.data.prompts_per_step * cfg.sampling.group_size
    dp = shard_lib.batch_shards(self.mesh, rules)
    if n % (dp * o.num_minibatches * o.micro_batches):
      raise ValueError(f"data.prompts_per_step × sampling.group_size = {n} must be divisible by "
                       f"objective.num_minibatches ({o.num_minibatches}) × objective.micro_batches "
                       f"({o.micro_batches}) × the data-parallel mesh size ({dp})")
    self.model, params, self.tokenizer = build.build_model(cfg.model, cfg.seed, cfg.data.system_prompt,
                                                           cfg.data.chat_template_kwargs)
    self.share_prefix = self._share_prefix_mode(o, dp)
    # the sampler may compute in another dtype than training (sampling.dtype): a model of its own, same params
    self.sampler_model = self.model if not cfg.sampling.dtype else Transformer(
        self.model.config.replace(dtype=cfg.sampling.dtype))
    self.engine = RolloutEngine(self.sampler_model, self.tokenizer, self.mesh, rules,
                                prompt_multiple=cfg.sampling.prompt_multiple, trim=cfg.sampling.trim,
                                engine=cfg.sampling.engine, slots=cfg.sampling.slots,
                                read_growth=cfg.sampling.read_growth, kv_layout=cfg.sampling.kv_layout,
                                decode_kernel=cfg.sampling.decode_kernel)
    self.source = data_lib.make_source(cfg.data)
    # the exact text of the first prompt, as the model sees it (chat template, system turn, template kwargs)
    self.first_prompt = self.tokenizer.render_prompt(self.source[0].prompt)
    self.eval_set = data_lib.make_eval_source(cfg.data, cfg.eval) if cfg.eval.enabled else None
    self.rewards = rewards if rewards is not None else rewards_lib.make_rewards(cfg.rewards, cfg.data)
    self.reward_names = None if rewards is not None else list(cfg.rewards.names)
    self.prm = prm if prm is not None or o.name != "prpo" else prm_lib.make_prm(o)
    self.loss_spec = ts.loss_spec(o, cfg.sampling.temperature, self.engine.allowed_ids)
    if cfg.async_rollouts and jax.process_count() > 1:
      raise ValueError(f"async_rollouts samples in a background thread on one host; this run has "
                       f"{jax.process_count()} processes: set async_rollouts: false")
    self.update_spec = ts.update_spec(o, cfg.sampling, self.model.config.lora is not None, cfg.nonfinite,
                                      stale=cfg.async_rollouts)
    program = ts.make_update_program(self.model, cfg.optim, cfg.steps, self.loss_spec, self.update_spec,
                                     self.mesh, rules)
    self.update_fn, self.shardings, self.tx = program.update, program.shardings, program.tx
    adapters, base = lora.split(params) if self.model.config.lora is not None else (params, None)
    self.frozen = None if base is None else ts.shard_state(base, self.shardings["frozen"])
    # the KL reference: the base model with adapters off under LoRA, else a kept copy (for the loss or the reward)
    self.reference = "none" if not o.kl_beta else ("base" if self.model.config.lora is not None else "params")
    self.ref_params = ts.shard_state(params, self.shardings["full"]) if self.reference == "params" else None
    self._logprobs = jax.jit(lambda p, b: ts.batch_logprobs(self.model, p, b, self.loss_spec))
    state = {"params": adapters, "opt_state": self.tx.init(adapters)}
    self.state = ts.shard_state(state, {"params": self.shardings["params"], "opt_state": self.shardings["opt_state"]})
    self.step = 0
    self.data_pos = 0
    self.rng = np.asarray(jax.random.PRNGKey(cfg.seed))
    self._state_is_step = True  # the state holds the result of a completed step (safe to save)
    self._guard = SignalGuard()  # inactive until run() enters it
    # one-step-off rollouts (cfg.async_rollouts): the trainable params that sample the next step (a copy of the
    # previous step's, checkpointed), the next step's collection in flight, and whether it runs in a thread
    # (overlap_rollouts=False runs the same schedule sequentially: the oracle of the threaded one)
    self._sampler_params = None
    self._prpo_last = None  # the last step's PRPO (segments, scores), for the rollout dump
    self._pending: concurrent.futures.Future | None = None
    self.overlap_rollouts = True
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None

  def _share_prefix_mode(self, o, dp: int) -> str:
    """What the update shares (``objective.share_prefix``): an explicit mode is checked here and refused by name
    where it cannot run; ``auto`` falls back to ``none`` there (and with minibatches, whose composition packing
    changes: whole groups instead of rows), else picks per step."""
    family = self.model.config.family
    b, rows = self.cfg.data.prompts_per_step, dp * o.num_minibatches * o.micro_batches
    problems = []
    if family not in models.TREE_MASK_FAMILIES:
      problems.append(f"needs a model family that runs packed prefix trees ({', '.join(models.TREE_MASK_FAMILIES)});"
                      f" this model is {family!r}")
    if jax.process_count() > 1:
      problems.append(f"packs the whole batch on one host; this run has {jax.process_count()} processes")
    if o.num_minibatches > 1 and b % rows:
      problems.append(f"forms minibatches from whole groups: data.prompts_per_step = {b} must be divisible by "
                      f"objective.num_minibatches × objective.micro_batches × the data-parallel mesh size = {rows}")
    if o.share_prefix == "none":
      return "none"
    if o.share_prefix == "auto":
      return "none" if problems or o.num_minibatches > 1 else "auto"
    if problems:
      raise ValueError(f"objective.share_prefix = {o.share_prefix!r} {problems[0]}: use 'none'")
    return o.share_prefix

  # ------------------------------------------------------------------ stages

  def policy_params(self, params=None):
    """Every param (base + adapters) in the form the sampler runs on (``sampler.sampling_form``: cast once to its
    compute dtype; on XLA:CPU bf16 carried as bits); of the current state, or of ``params`` (trainable params in
    the state's form)."""
    params = self.state["params"] if params is None else params
    full = lora.combine(self.frozen, params) if self.frozen is not None else params
    return sampling_form(self.sampler_model, full)

  def sampling_params(self):
    """The sampler's settings for this run (the config's sampling section, the tokenizer's EOS and pad ids)."""
    return build.sampling_params(self.cfg.sampling, self.tokenizer.eos_ids, self.tokenizer.pad_id)

  def sample(self, examples: list[data_lib.Example], key, params=None) -> Rollout:
    """Rollouts of ``examples`` sampled with the current policy, or with ``params`` (trainable params, as in the
    state: one-step-off rollouts sample with the previous step's)."""
    return self.engine.generate(self.policy_params(params), examples, key, self.sampling_params())

  def score(self, rollout: Rollout) -> Rollout:
    """Rewards (with DAPO's soft overlong punishment when ``rewards.overlong_buffer`` > 0) and correctness."""
    ro = self.engine.grade(self.engine.score(rollout, self.rewards, self.reward_names), self.source)
    rw = self.cfg.rewards
    if rw.overlong_buffer:
      pen = _overlong(ro.lengths, self.cfg.sampling.max_new_tokens, rw.overlong_buffer, rw.overlong_penalty)
      ro = dataclasses.replace(ro, rewards=ro.rewards + pen, reward_parts={**ro.reward_parts, "overlong": pen})
    return ro

  def _reward_weights(self) -> tuple[float, ...]:
    """The weight of each reward part, in ``reward_parts`` order (the overlong punishment counts once)."""
    w = tuple(float(wt) for _, wt in self.rewards)
    return w + ((1.0,) if self.cfg.rewards.overlong_buffer else ())

  def batch(self, rollout: Rollout, adv: jax.Array | None = None, weights: jax.Array | None = None) -> ts.Batch:
    """The update's ``Batch`` of a rollout: each row's prompt, its completion, the loss mask (without truncated
    completions under ``objective.mask_truncated``, without filler rows of dynamic sampling), advantages and
    weights (zeros when not given)."""
    n = rollout.num_rows
    prompt_ids, prompt_mask = _rows_of_prompts(rollout.prompt_ids, rollout.prompt_mask, rollout.group_size,
                                               self.engine.row_sharding(n, 2))
    mask = self.loss_mask(rollout)
    zeros = lambda: jnp.zeros(rollout.tokens.shape, jnp.float32)
    return ts.Batch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=rollout.tokens, mask=mask,
                    advantages=zeros() if adv is None else adv, weights=zeros() if weights is None else weights,
                    old_logp=rollout.logprobs)

  def loss_mask(self, rollout: Rollout) -> jax.Array:
    """The completion mask [N, T] the loss sees: without truncated completions under ``objective.mask_truncated``
    and without filler rows of dynamic sampling."""
    return _loss_mask(rollout.mask, rollout.finish_reason, rollout.keep, self.cfg.objective.mask_truncated)

  def _kl_penalized_rewards(self, rollout: Rollout) -> tuple[jax.Array, dict[str, jax.Array]]:
    """r − β·Σ_t KL(π_old ‖ π_ref) per completion (``objective.kl_in_reward``): two forward passes."""
    o = self.cfg.objective
    b = self.batch(rollout)
    current = lora.combine(self.frozen, self.state["params"]) if self.frozen is not None else self.state["params"]
    ref = self.frozen if self.reference == "base" else self.ref_params
    old_lp, ref_lp = self._logprobs(current, b), self._logprobs(ref, b)
    penalized = _kl_reward(rollout.rewards, old_lp, ref_lp, b.mask, o.kl_beta, o.kl_estimator)
    return penalized, {"kl_reward_mean": jnp.mean(rollout.rewards - penalized) / o.kl_beta}

  def advantages(self, rollout: Rollout) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Token advantages and weights [N, T] for the configured objective, plus group metrics; with
    ``objective.top_entropy_quantile`` < 1 the advantages of all but the step's highest-entropy tokens are 0 (their
    policy-gradient term vanishes; the KL term and the loss's denominator keep every token)."""
    adv, weights, metrics = self._advantages(rollout)
    rho = self.cfg.objective.top_entropy_quantile
    if rho < 1:
      adv, em = _entropy_masked(adv, rollout.entropies, self.loss_mask(rollout), rho)
      metrics = {**metrics, **em}
    return adv, weights, metrics

  def _advantages(self, rollout: Rollout) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    o = self.cfg.objective
    g = rollout.group_size
    sh = self.engine.row_sharding(rollout.num_rows, 2)
    rewards, extra = rollout.rewards, {}
    if o.kl_in_reward:
      rewards, extra = self._kl_penalized_rewards(rollout)
    if o.name == "prpo":
      if o.prpo_cuts == "entropy":
        seg = _segments(rollout.entropies, rollout.mask, o.prpo_k, o.prpo_min_gap)
      else:  # a control: the cuts' key depends on (seed, step) only, so a resumed run cuts the same
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), 0xC075), self.step)
        seg = _control_segments(o.prpo_cuts, rollout.mask, o.prpo_k, o.prpo_min_gap, key)
      scores = self._prm_scores(rollout, seg)
      self._prpo_last = (seg, scores)  # for the rollout dump
      adv, weights, m = _prpo_advantages(rollout.tokens, rollout.mask, rewards, seg, scores, g, o, sh)
      return adv, weights, {**m, **extra}
    parts = None
    if self.cfg.rewards.normalization == "normalize_then_sum":
      parts = jnp.stack(list(rollout.reward_parts.values()), axis=-1)
      if o.kl_in_reward:  # the KL penalty is one more reward part (weight 1)
        parts = jnp.concatenate([parts, (rewards - rollout.rewards)[:, None]], axis=-1)
    w = self._reward_weights() + ((1.0,) if o.kl_in_reward else ())
    adv, weights, m = _grpo_advantages(rollout.tokens, rollout.mask, rewards, parts, g, o, w, sh)
    return adv, weights, {**m, **extra}

  def _prm_scores(self, rollout: Rollout, seg: jax.Array) -> jax.Array:
    """PRM scores [N, k + 1] of each completion's segments (neutral 0.5 past its last segment)."""
    o = self.cfg.objective
    seg_local = self.engine.host(rollout, seg)
    tok_local = self.engine.host(rollout, rollout.tokens)
    scores = np.full((len(rollout.rows), o.prpo_k + 1), 0.5, np.float32)
    for i, ex in enumerate(rollout.row_examples()):
      n_seg = int(seg_local[i].max()) + 1
      texts = [self.tokenizer.decode(tok_local[i][seg_local[i] == k]) for k in range(n_seg)]
      if not texts:
        continue
      s = np.asarray(self.prm(ex, texts), np.float32)
      if s.shape != (len(texts),) or not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
        raise ValueError(f"the PRM must return {len(texts)} scores in [0, 1] for example "
                         f"{ex.meta.get('index', i)}; got {s}")
      scores[i, :n_seg] = s
    return self.engine.to_global(scores, rollout.num_rows)

  def packed_batch(self, batch: ts.Batch, mode: str) -> tuple[ts.AnyBatch, dict[str, float]]:
    """The update batch with each group's shared prefixes computed once (``objective.share_prefix``; "auto": the
    mode computing the fewest positions, the plain batch when packing saves nothing), and what it computes."""
    o = self.cfg.objective
    host = {f.name: np.asarray(getattr(batch, f.name)) for f in dataclasses.fields(ts.Batch)}
    plain = packing.tokens_unpacked(host["prompt_mask"], host["mask"])
    rows = shard_lib.batch_shards(self.mesh, self.rules) * o.num_minibatches * o.micro_batches
    options = {}
    for m in (("prompt", "tree") if mode == "auto" else (mode,)):
      options[m] = packing.pack(**host, group_size=self.cfg.sampling.group_size, mode=m, row_multiple=rows,
                                window_multiple=self.model.config.attention_chunk or 128)
    best = min(options, key=lambda m: options[m].tokens_computed)
    chosen = options[best]
    info = {"share_prefix/computed_frac": chosen.tokens_computed / plain,
            "share_prefix/unique_frac": chosen.tokens_unique / plain, "share_prefix/tree": float(best == "tree")}
    if mode == "auto" and chosen.tokens_computed >= plain:
      return batch, {**info, "share_prefix/computed_frac": 1.0, "share_prefix/tree": 0.0}
    sh = self.engine.row_sharding(chosen.batch.tokens.shape[0], 1)
    return jax.tree.map(lambda x: jax.device_put(x, sh), chosen.batch), info

  def update(self, rollout: Rollout, adv: jax.Array, weights: jax.Array) -> dict[str, float]:
    """μ passes × num_minibatches optimizer steps on the rollout (one jitted call)."""
    o = self.cfg.objective
    batch = self.batch(rollout, adv, weights)
    packed_info = {}
    if self.share_prefix != "none":
      batch, packed_info = self.packed_batch(batch, self.share_prefix)
    n = batch.tokens.shape[0]  # rows: completions, or packed rows of whole groups
    rng = np.random.default_rng([self.cfg.seed, self.step])
    orders = np.stack([rng.permutation(n) if o.num_minibatches > 1 else np.arange(n)
                       for _ in range(o.num_iterations)]).astype(np.int32)
    self._state_is_step = False
    ref = self.ref_params if self.update_spec.reference == "params" else None
    self.state, metrics = self.update_fn(self.state, self.frozen, ref, batch, orders)
    metrics = {k: float(v) for k, v in dist.fetch_tree(metrics).items()}
    flags = int(metrics.pop("nonfinite"))
    if flags:
      names = ts.nonfinite_names(flags)
      msg = (f"step {self.step + 1}: non-finite {', '.join(names)} in {int(metrics['skipped_updates'])} of "
             f"{o.optimizer_steps_per_batch} update(s)")
      if self.cfg.nonfinite == "stop":
        raise NonFiniteError(msg + "; the run stops without saving this step (the last checkpoint is intact). "
                             "Lower the learning rate, check the rewards/PRM, or set nonfinite: skip.")
      log.warning("%s: skipped", msg)
    self._state_is_step = True
    return {**metrics, **packed_info}

  def collect(self, key, times: dict, params=None, data_pos: int | None = None
              ) -> tuple[Rollout, int, dict[str, float]]:
    """The step's scored rollout, how many prompts it consumed, and dynamic-sampling metrics.

    With ``data.dynamic_sampling`` (DAPO), groups whose rewards are all equal carry no signal: they are dropped
    and more prompts are sampled (each round takes the next ``prompts_per_step`` prompts and its own key) until
    the step holds ``prompts_per_step`` informative groups or ``data.max_sampling_rounds`` rounds are done; a step
    left short is filled with groups that do not train (``Rollout.keep``), so the batch's shape never changes.
    The data position advances by every prompt sampled, so a resumed run continues exactly."""
    cfg = self.cfg
    b = cfg.data.prompts_per_step
    pos = self.data_pos if data_pos is None else data_pos
    examples = lambda start: [self.source[start + i] for i in range(b)]
    if not cfg.data.dynamic_sampling:
      with _timed(times, "sample"):
        ro = self.sample(examples(pos), key, params)
      with _timed(times, "score"):
        ro = self.score(ro)
      return ro, b, self._engine_metrics([self.engine.last_stats])
    rounds, picks, spare, informative, stats = [], [], [], 0, []
    for r in range(cfg.data.max_sampling_rounds):
      with _timed(times, "sample"):
        ro = self.sample(examples(pos + r * b), jax.random.fold_in(key, r), params)
        stats.append(self.engine.last_stats)
      with _timed(times, "score"):
        ro = self.score(ro)
      rounds.append(ro)
      spread = dist.fetch(_group_spread(ro.rewards, ro.group_size))
      for grp in range(b):
        (picks if spread[grp] > 0 and len(picks) < b else spare).append((r, grp))
      informative += int(np.sum(spread > 0))
      if len(picks) == b:
        break
    keep = [True] * len(picks) + [False] * (b - len(picks))
    with _timed(times, "score"):
      ro = self.engine.select_groups(rounds, picks + spare[:b - len(picks)], keep)
    sampled = len(rounds) * b
    return ro, sampled, {"dynamic/rounds": float(len(rounds)), "dynamic/filtered_frac": 1.0 - informative / sampled,
                         "dynamic/kept_groups": float(len(picks)), **self._engine_metrics(stats)}

  def _engine_metrics(self, stats) -> dict[str, float]:
    """What the continuous engine computed for this step's sampler calls (none with the static engine)."""
    if self.engine.engine != "continuous" or not stats or any(s is None for s in stats):
      return {}
    useful, computed = sum(s.useful_tokens for s in stats), sum(s.slot_steps for s in stats)
    return {"sampling/useful_frac": useful / max(computed, 1), "sampling/slot_steps": float(computed),
            "sampling/host_calls": float(sum(s.host_calls for s in stats))}

  def _step_key(self, step: int):
    return jax.random.fold_in(jnp.asarray(self.rng), step)

  def _collect_async(self, times: dict) -> tuple[Rollout, int, dict[str, float]]:
    """One-step-off: this step's rollouts (sampled with the previous step's params — in flight since the previous
    update began, or sampled now after a start or resume), and the next step's sampling started with this step's
    params while this step's update runs."""
    t0 = time.perf_counter()
    if self._pending is not None:
      (ro, consumed, sampling_metrics), sample_times = self._pending.result()
      self._pending = None
      times.update(sample_times)
    else:  # the first step of a start (θ_0 samples steps 0 and 1) or of a resume (the checkpointed params)
      params = self._sampler_params if self._sampler_params is not None else self._snapshot()
      ro, consumed, sampling_metrics = self.collect(self._step_key(self.step), times, params)
    sampling_metrics = {**sampling_metrics, "async/wait_s": time.perf_counter() - t0}
    self._sampler_params = self._snapshot()  # this step's params: they sample the next step
    if self.step + 1 < self.cfg.steps:
      key, params, pos = self._step_key(self.step + 1), self._sampler_params, self.data_pos + consumed

      def job():
        t = {}
        return self.collect(key, t, params, pos), t

      if self.overlap_rollouts:
        if self._executor is None:
          self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxgrpo-rollouts")
        self._pending = self._executor.submit(job)
      else:
        self._pending = concurrent.futures.Future()
        self._pending.set_result(job())
    return ro, consumed, {**sampling_metrics, "async/staleness": 1.0}

  def _stop_rollouts(self) -> None:
    """Wait for a one-step-off collection in flight (its result is dropped: a resume samples it again from the
    checkpointed params) and stop the thread."""
    if self._pending is not None:
      try:
        self._pending.result()
      except Exception:  # noqa: BLE001 - the run is ending; a resume recomputes it
        pass
      self._pending = None
    if self._executor is not None:
      self._executor.shutdown(wait=True)
      self._executor = None

  def _snapshot(self):
    """A copy of the trainable params (the update donates the state's buffers)."""
    return jax.tree.map(jnp.copy, self.state["params"])

  def train_step(self) -> dict[str, float]:
    """One step: sample → score → advantages → update; returns the step's metrics."""
    times = {}
    t_start = time.perf_counter()
    key = self._step_key(self.step)
    with self._guard.interruptible():  # these stages only read the state (a signal may stop them)
      if self.cfg.async_rollouts:
        ro, consumed, sampling_metrics = self._collect_async(times)
      else:
        ro, consumed, sampling_metrics = self.collect(key, times)
      with _timed(times, "score"):
        adv, weights, group_metrics = self.advantages(ro)
        group_metrics = dist.fetch_tree(group_metrics)
      every = self.cfg.log_rollouts_every
      if every and (self.step + 1) % every == 0:
        with _timed(times, "dump"):
          self.dump_rollouts(self.step + 1, ro, adv, weights)
    with _timed(times, "update"):  # not interruptible: the state, step and data position move together
      metrics = self.update(ro, adv, weights)
      self.data_pos += consumed
      self.step += 1
    metrics.update(sampling_metrics)
    metrics.update({k: float(v) for k, v in group_metrics.items()})
    metrics.update({k: float(v) for k, v in dist.fetch_tree(_rollout_metrics(ro.tokens, ro.mask, ro.entropies,
                                                                             ro.lengths, ro.finish_reason, ro.correct,
                                                                             ro.reward_parts)).items()})
    total = time.perf_counter() - t_start if self.cfg.async_rollouts else sum(times.values())
    metrics.update({f"time_{k}": v for k, v in times.items()}, time_step=total,
                   tokens_per_s=metrics["completion_tokens"] / max(total, 1e-9))
    return metrics

  def dump_rollouts(self, step: int, ro: Rollout, adv: jax.Array, weights: jax.Array) -> str | None:
    """Write ``rollouts/step_<step>`` (``train.rollout_log``): every completion of the step with its rewards,
    advantages, |λ| and weights per token (and PRPO's segments).  Every process gathers; process 0 writes."""
    g = ro.group_size
    host = lambda x: None if x is None else dist.gather(x)
    tokens, mask = host(ro.tokens), host(ro.mask)
    counts = np.asarray(core.prefix_counts(tokens.reshape(-1, g, tokens.shape[1]), mask.reshape(-1, g, mask.shape[1])))
    seg = scores = None
    if self.cfg.objective.name == "prpo":
      seg, scores = (host(x) for x in self._prpo_last)
    rows = rollout_log.rollout_rows(
        step=step, prompts=[ex.prompt for ex in ro.examples], group_size=g, prompt_ids=host(ro.prompt_ids),
        prompt_mask=host(ro.prompt_mask), tokens=tokens, mask=mask, rewards=host(ro.rewards),
        reward_parts={k: host(v) for k, v in ro.reward_parts.items()}, correct=host(ro.correct), keep=host(ro.keep),
        advantages=host(adv), weights=host(weights), counts=counts.reshape(tokens.shape), logprobs=host(ro.logprobs),
        entropies=host(ro.entropies), finish_reason=host(ro.finish_reason), decode=self.tokenizer.decode,
        segments=seg, segment_scores=scores)
    if not dist.is_primary():
      return None
    return rollout_log.write_rollouts(self.cfg.output_dir, step, rows, self.cfg.logging.rollouts_format)

  def evaluate(self) -> dict[str, float]:
    """Held-out metrics of the current policy (``eval/`` prefix)."""
    ev = self.cfg.eval
    key = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), 0x5EED)
    records = [] if ev.save_outputs else None
    out = evaluation.evaluate(self.engine, self.policy_params(), self.eval_set, self.eval_set.examples, ev, key,
                              self.sampling_params(), show_progress=self.cfg.progress, records=records)
    if records is not None and dist.is_primary():
      evaluation.write_records(evaluation.outputs_path(self.cfg.output_dir, self.step), records)
    return {f"eval/{k}": v for k, v in out.items()}

  # ------------------------------------------------------------------ checkpoint state

  def _ckpt_state(self) -> dict[str, Any]:
    sampler = None
    if self.cfg.async_rollouts:  # the params that sample the next step (before any step: the current ones)
      sampler = self._sampler_params if self._sampler_params is not None else self.state["params"]
    return checkpointing.training_state(params=self.state["params"], opt_state=self.state["opt_state"],
                                        step=self.step, rng=self.rng, data_pos=self.data_pos, sampler_params=sampler)

  def _load_ckpt_state(self, restored: dict[str, Any]) -> None:
    fields = checkpointing.unpack_training_state(restored)
    self.state = {"params": fields["params"], "opt_state": fields["opt_state"]}
    self.step, self.rng, self.data_pos = fields["step"], fields["rng"], fields["data_pos"]
    self._sampler_params, self._pending = fields["sampler_params"], None

  # ------------------------------------------------------------------ the loop

  def run(self, resume: bool = True, overwrite: bool = False, allow_config_change: bool = False,
          run_dir: RunDir | None = None, exits_after: bool = False) -> list[dict]:
    """Train to ``cfg.steps`` and return the metrics of the steps run now (eval rows included).

    ``run_dir``: the output directory, already locked (the CLI locks it before building the trainer).
    ``exits_after``: the caller ends the process when this returns (the CLI). After a SIGTERM/SIGINT stop,
    later signals then stay ignored until the exit; otherwise (a notebook) the old handlers come back."""
    primary = dist.is_primary()
    run_dir = run_dir or RunDir(self.cfg.output_dir, lock=primary)
    self._guard = SignalGuard(ignore_after_stop=exits_after)
    with self._guard:
      return self._run(run_dir, primary, resume, overwrite, allow_config_change)

  def _run(self, run_dir, primary, resume, overwrite, allow_config_change) -> list[dict]:
    cfg, guard = self.cfg, self._guard
    ckpt = writer = None
    history: list[dict] = []
    failing = False
    try:
      run_dir.prepare(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change,
                      write=primary)
      ckpt = checkpointing.Checkpointer(run_dir.checkpoints, cfg.checkpoint_every, cfg.keep_checkpoints,
                                        async_save=cfg.checkpoint_async)
      if resume:
        restored = ckpt.restore(self._ckpt_state())
        if restored is not None:
          self._load_ckpt_state(restored[0])
      lg = cfg.logging
      writer = MetricsWriter(cfg.output_dir, tensorboard=lg.tensorboard, keep_until=self.step,
                             wandb_project=lg.wandb_project, wandb_mode=lg.wandb_mode, wandb_name=lg.wandb_name,
                             config=config_lib.to_dict(cfg)) if primary else None
      if primary:
        rollout_log.drop_after(cfg.output_dir, self.step)
      if primary:
        log.info("first prompt, exactly as the model sees it:\n%s", self.first_prompt)
      self._loop(ckpt, writer, history)
      self._save(ckpt, force=True)
    except (Preempted, KeyboardInterrupt, Exception) as e:
      failing = True
      guard.stopping()
      if ckpt is not None and not isinstance(e, (NonFiniteError, checkpointing.CheckpointSaveError,
                                                 checkpointing.CheckpointRestoreError)):
        self._save_on_exit(ckpt, e)
      raise
    finally:
      self._stop_rollouts()
      if writer is not None:
        writer.close()
      if ckpt is not None:
        try:
          ckpt.close()
        except checkpointing.CheckpointSaveError as e:
          if not failing:
            raise
          log.error("%s", e)
      run_dir.release()
    return history

  def _loop(self, ckpt, writer, history) -> None:
    cfg = self.cfg
    bar = Progress(cfg.steps, initial=self.step, desc=cfg.name, enabled=cfg.progress and dist.is_primary())
    last_eval = None
    try:
      if self.eval_set is not None and self.step == 0:
        last_eval = self._eval_and_log(writer, history)
      while self.step < cfg.steps:
        m = self.train_step()  # its first stage checks for a signal received since the last step
        history.append({"step": self.step, **m})
        if writer is not None and self.step % cfg.log_every == 0:
          writer.write(self.step, m)
        bar.update(1, reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy']:.3f}")
        if ckpt.due(self.step):
          self._save(ckpt)
        if self.eval_set is not None and cfg.eval.every and self.step % cfg.eval.every == 0:
          last_eval = self._eval_and_log(writer, history)
        if self.on_step is not None:
          self.on_step(self.step, m)
      if self.eval_set is not None and last_eval != self.step:
        self._eval_and_log(writer, history)
    finally:
      bar.close()

  def _eval_and_log(self, writer, history) -> int:
    with self._guard.interruptible():
      m = self.evaluate()
    history.append({"step": self.step, **m})
    if writer is not None:
      writer.write(self.step, m)
    if dist.is_primary():
      log.info("step %d eval: %s", self.step, {k: round(v, 4) for k, v in m.items()})
    return self.step

  def _save(self, ckpt, force: bool = False) -> None:
    if (force or ckpt.due(self.step)) and self._state_is_step:
      ckpt.save(self.step, self._ckpt_state())

  def _save_on_exit(self, ckpt, reason: BaseException) -> None:
    """On a signal or an exception: save the last completed step if the state still holds it."""
    if not self._state_is_step or any(x.is_deleted() for x in jax.tree.leaves(self.state)
                                      if isinstance(x, jax.Array)):
      log.warning("not saving on exit (%s): the state is mid-update", type(reason).__name__)
      return
    try:
      if ckpt.save(self.step, self._ckpt_state()):
        log.warning("saved step %d on exit (%s)", self.step, reason)
      ckpt.wait()
    except checkpointing.CheckpointSaveError as e:
      log.error("%s", e)


# ----------------------------------------------------------------------------- jitted helpers


def _timed(times: dict, name: str):
  @contextlib.contextmanager
  def cm():
    t0 = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0
  return cm()


@functools.partial(jax.jit, static_argnames=("g", "sh"))
def _rows_of_prompts(prompt_ids, prompt_mask, g, sh):
  rep = lambda x: jax.lax.with_sharding_constraint(jnp.repeat(x, g, axis=0), sh)
  return rep(prompt_ids), rep(prompt_mask)


def _group_view(x, g):
  return x.reshape(-1, g, *x.shape[1:])


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "buffer"))
def _overlong(lengths, max_new_tokens, buffer, penalty):
  return core.overlong_penalty(lengths, max_new_tokens, buffer, penalty)


@functools.partial(jax.jit, static_argnames=("estimator",))
def _kl_reward(rewards, old_logp, ref_logp, mask, beta, estimator):
  return core.kl_reward_penalty(rewards, old_logp, ref_logp, mask, beta, estimator)


@functools.partial(jax.jit, static_argnames=("g",))
def _group_spread(rewards, g):
  """max − min of each group's rewards [B] (0: no signal)."""
  r = _group_view(rewards, g)
  return jnp.max(r, axis=-1) - jnp.min(r, axis=-1)


@functools.partial(jax.jit, static_argnames=("mask_truncated",))
def _loss_mask(mask, finish_reason, keep, mask_truncated):
  """The completion mask the loss sees: without truncated completions (DAPO's overlong filtering) and filler rows."""
  m = mask
  if mask_truncated:
    m = m * (finish_reason == FINISH_EOS).astype(m.dtype)[:, None]
  if keep is not None:
    m = m * (keep > 0).astype(m.dtype)[:, None]
  return m


@jax.jit
def _entropy_masked(adv, entropies, loss_mask, rho):
  """The token advantages times ``core.high_entropy_mask`` over the loss's tokens (a 0/1 mask: −min(P·A·m,
  clip(P)·A·m) = m·(−min(P·A, clip(P)·A)), the 80/20 objective's indicator), and what it kept."""
  keep, tau = core.high_entropy_mask(entropies, loss_mask, rho)
  valid = jnp.sum(loss_mask > 0)
  return adv * keep, {"entropy_mask/kept_frac": jnp.sum(keep) / jnp.maximum(valid, 1),
                      "entropy_mask/threshold": jnp.where(valid > 0, tau, 0.0)}


@functools.partial(jax.jit, static_argnames=("g", "o", "part_weights", "sh"))
def _grpo_advantages(tokens, mask, rewards, parts, g, o, part_weights, sh):
  tok, msk, r = _group_view(tokens, g), _group_view(mask, g), _group_view(rewards, g)
  counts = core.prefix_counts(tok, msk)
  metrics = {**core.advantage_metrics(r), **core.prefix_metrics(counts, msk)}
  if parts is None:
    seq = core.group_advantages(r, scale=o.scale_rewards, ddof=o.ddof, eps=o.eps)
  else:  # GDPO: each reward normalized within its group, then the weighted sum
    seq = core.normalize_then_sum(_group_view(parts, g), jnp.asarray(part_weights), ddof=o.ddof, eps=o.eps)
  adv = seq[..., None] * msk
  weights = core.lambda_weights(counts) if o.uses_lambda else msk.astype(jnp.float32)
  flat = lambda x: jax.lax.with_sharding_constraint(x.reshape(tokens.shape).astype(jnp.float32), sh)
  return flat(adv), flat(weights), metrics


@functools.partial(jax.jit, static_argnames=("k", "min_gap"))
def _segments(entropies, mask, k, min_gap):
  return core.entropy_segments(entropies, mask, k=k, min_gap=min_gap)


@functools.partial(jax.jit, static_argnames=("mode", "k", "min_gap"))
def _control_segments(mode, mask, k, min_gap, key):
  return core.control_segments(mode, mask, k=k, min_gap=min_gap, key=key)


@functools.partial(jax.jit, static_argnames=("g", "o", "sh"))
def _prpo_advantages(tokens, mask, rewards, seg, scores, g, o, sh):
  tok, msk, r = _group_view(tokens, g), _group_view(mask, g), _group_view(rewards, g)
  counts = core.prefix_counts(tok, msk)
  metrics = {**core.advantage_metrics(r), **core.prefix_metrics(counts, msk)}
  tok_scores = core.segment_scores_to_tokens(_group_view(seg, g), _group_view(scores, g))
  adv = core.prpo_advantages(tok_scores, msk, r, normalization=o.prpo_normalization, prior_std=o.prpo_prior_std,
                                outcome=o.prpo_outcome, ddof=o.ddof, eps=o.eps)
  weights = core.lambda_weights(counts) if o.uses_lambda else msk.astype(jnp.float32)
  valid = msk.astype(bool)
  metrics.update(segments_mean=jnp.mean(jnp.max(_group_view(seg, g), axis=-1) + 1.0),
                 prm_score_mean=jnp.sum(jnp.where(valid, tok_scores, 0.0)) / jnp.maximum(jnp.sum(valid), 1))
  flat = lambda x: jax.lax.with_sharding_constraint(x.reshape(tokens.shape).astype(jnp.float32), sh)
  return flat(adv), flat(weights), metrics


@jax.jit
def _rollout_metrics(tokens, mask, entropies, lengths, finish_reason, correct, parts):
  m = mask.astype(jnp.float32)
  lengths = lengths.astype(jnp.float32)
  out = {
      "accuracy": jnp.mean(correct),
      "entropy_mean": jnp.sum(entropies * m) / jnp.maximum(jnp.sum(m), 1.0),
      "completion_len_mean": jnp.mean(lengths), "completion_len_max": jnp.max(lengths),
      "completion_tokens": jnp.sum(m), "truncated_frac": jnp.mean((finish_reason != 0).astype(jnp.float32)),
  }
  out.update({f"reward_{name}": jnp.mean(v) for name, v in parts.items()})
  return out
