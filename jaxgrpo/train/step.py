"""The sharded update step: one jitted call per training step.

``make_update_program`` compiles ``update(state, frozen, ref_params, batch, row_orders) -> (state, metrics)``
with ``jax.jit`` over a device mesh, input/output ``NamedSharding``s from the
rule table, and a donated state (the pjit pattern).  Inside:

* the reference log-probs (KL; the base model with LoRA off, or a kept copy of
  the initial weights) and, where needed, the old policy's log-probs are
  computed once over the batch, minibatch by minibatch;
* μ = ``num_iterations`` passes of ``num_minibatches`` optimizer steps run in a
  ``lax.scan``, each on the rows ``row_orders`` assigns to it;
* every optimizer step checks, on device, that the loss, the gradient norm and
  the new parameters are finite; an update that is not is not applied, and the
  step reports which quantity failed (bit flags, see ``NONFINITE_FLAGS``).
  With ``nonfinite="stop"`` no later update of the step is applied either, so
  the state returned is that of the last finite update.

Mixed precision: the trainable params (and so the Adam moments) stay in their
param dtype; the loss casts them to the model's compute dtype once per
minibatch, so gradients flow back to the master weights.

Compiled programs are cached by ``make_update_program`` (an LRU cache keyed by
the static specs: model, optimizer spec, loss and update specs, mesh, rules),
so runs of a sweep in one process reuse them.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxgrpo.core import mismatch, objectives
from jaxgrpo.core.trees import all_finite
from jaxgrpo.models import lora, policy
from jaxgrpo.models.transformer import (
  Transformer,
  TreeMask,
  abstract_boxed_params,
  abstract_params,
  cast_params,
  logical_axes,
)
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.train.config import NonFinite, ObjectiveSpec, SamplingSpec, Schedule
from jaxgrpo.train.packing import PackedBatch

NONFINITE_FLAGS = {1: "loss", 2: "gradients", 4: "parameters"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Batch:
  """One step's N = B·G completions, built by keyword (leading axis sharded over the batch mesh axes)."""

  prompt_ids: jax.Array  # int32[N, P] each row's prompt, left-padded
  prompt_mask: jax.Array  # int32[N, P] 1 on prompt tokens
  tokens: jax.Array  # int32[N, T] completion tokens
  mask: jax.Array  # int32[N, T] 1 on completion tokens (EOS included), 0 on padding
  advantages: jax.Array  # float32[N, T] token advantages (GRPO: the sequence's advantage on each of its tokens)
  weights: jax.Array  # float32[N, T] token weights (λ-GRPO: 1/|λ|; else 1 on completion tokens, 0 on padding)
  old_logp: jax.Array  # float32[N, T] the sampler's log-probs (π_old), used when UpdateSpec.old_logp == "batch"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossSpec:
  """The static part of the loss (hashable; part of the compile cache key)."""

  temperature: float = 1.0  # the policy's temperature (the sampler's; 1 for greedy sampling)
  clip_eps_low: float = 0.2  # PPO clip range below 1
  clip_eps_high: float = 0.2  # ... and above 1
  kl_beta: float = 0.0  # k3 KL coefficient (0: no reference log-probs)
  aggregation: objectives.Aggregation = "token_mean"  # see ``core.objectives``
  allowed: policy.AllowedIds = None  # restrict the policy to these tokens (the toy task's L/R)
  logprob_chunk: int = 0  # LM head + log-softmax over chunks of this many completion positions
  ratio_level: objectives.RatioLevel = "token"  # token | sequence (GSPO) | sequence_token (GSPO-token)
  kl_estimator: objectives.KLEstimator = "k3"  # k1 | k2 | k3
  entropy_coef: float = 0.0  # entropy bonus (the entropies are computed in the log-prob pass either way)
  correction: mismatch.Correction = "none"  # rollout correction: none | tis | mis
  correction_level: mismatch.CorrectionLevel = "token"  # per token or per sequence
  correction_cap: float = 3.0  # C > 1
  off_policy_mask: float | None = None  # δ of DeepSeek-V3.2's off-policy sequence masking (None: off)
  surrogate: objectives.Surrogate = "clip"  # clip (PPO) | cispo (MiniMax-M1)
  kl_importance_weight: bool = False  # the KL term × π_θ/π_old (DeepSeek-V3.2's unbiased estimate)


def loss_spec(objective: ObjectiveSpec, temperature: float, allowed: policy.AllowedIds) -> LossSpec:
  """The ``LossSpec`` of an ``ObjectiveSpec`` for a sampling temperature and the tokenizer's allowed tokens (with
  ``kl_in_reward`` the KL is in the rewards, not in the loss)."""
  o = objective
  return LossSpec(temperature=temperature or 1.0, clip_eps_low=o.clip_eps_low, clip_eps_high=o.clip_eps_high,
                  kl_beta=0.0 if o.kl_in_reward else o.kl_beta, aggregation=o.aggregation, allowed=allowed,
                  logprob_chunk=o.logprob_chunk, ratio_level=o.ratio_level, kl_estimator=o.kl_estimator,
                  entropy_coef=o.entropy_coef, correction=o.rollout_correction,
                  correction_level=o.rollout_correction_level, correction_cap=o.rollout_correction_cap,
                  off_policy_mask=o.off_policy_mask_threshold, surrogate=o.surrogate,
                  kl_importance_weight=o.kl_importance_weight)


Reference = Literal["none", "base", "params"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpdateSpec:
  """How the step's updates are organized (static)."""

  num_iterations: int = 1  # μ
  num_minibatches: int = 1  # optimizer steps per pass
  micro_batches: int = 1  # gradient accumulation: each minibatch's gradient in this many slices (less memory)
  old_logp: policy.OldLogp = "none"  # where the PPO ratio's π_old comes from (``models.policy.old_logp_source``)
  reference: Reference = "none"  # KL reference: none (β = 0) | base (LoRA with adapters off) | params (a kept copy)
  nonfinite: NonFinite = "stop"  # a non-finite update: stop applying updates, or skip that one


def update_spec(objective: ObjectiveSpec, sampling: SamplingSpec, lora_enabled: bool, nonfinite: str,
                stale: bool = False) -> UpdateSpec:
  """The ``UpdateSpec`` for an ``ObjectiveSpec`` and a ``SamplingSpec``.

  π_old for the PPO ratio is decided beside the policy's distribution (``models.policy.old_logp_source``): none
  with one optimizer step per batch, the sampler's log-probs when it drew from the policy, else a forward pass.
  The KL reference is the base model with adapters off under LoRA, else a kept copy.  ``stale``: one-step-off
  rollouts (``async_rollouts``), sampled with the previous step's params.
  """
  o = objective
  # a rollout correction needs the trainer's own π_old for every row (not the sampler's log-probs)
  recompute = o.recompute_old_logp or o.rollout_correction != "none"
  old = policy.old_logp_source(o.optimizer_steps_per_batch, dataclasses.asdict(sampling), recompute, stale)
  reference = "none" if not o.kl_beta or o.kl_in_reward else ("base" if lora_enabled else "params")
  return UpdateSpec(num_iterations=o.num_iterations, num_minibatches=o.num_minibatches, micro_batches=o.micro_batches,
                    old_logp=old, reference=reference, nonfinite=nonfinite)


def make_optimizer(optim, total_steps: int = 1) -> optax.GradientTransformation:
  """AdamW (or SGD) with a schedule and global-norm clipping, from an ``OptimSpec``."""
  lr = optim.learning_rate
  schedule: Any = lr
  total = max(total_steps, 1)
  if optim.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(optim.warmup_steps, 1), total)
  elif optim.schedule == "linear":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(optim.warmup_steps, 1)),
         optax.linear_schedule(lr, 0.0, max(total - optim.warmup_steps, 1))], [optim.warmup_steps])
  elif optim.schedule == "constant":
    if optim.warmup_steps:
      schedule = optax.linear_schedule(0.0, lr, optim.warmup_steps)
  else:
    raise ValueError(f"optim.schedule must be {' | '.join(typing.get_args(Schedule))}; got {optim.schedule!r}")
  chain = []
  if optim.max_grad_norm and optim.max_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(optim.max_grad_norm))
  if optim.optimizer == "sgd":
    chain.append(optax.sgd(schedule))
  else:
    chain.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
  return optax.chain(*chain)


def _trainable_part(tree, model: Transformer):
  return lora.split(tree)[0] if model.config.lora is not None else tree


def state_shardings(model: Transformer, tx, mesh, rules=shard_lib.MeshRules()) -> dict[str, Any]:
  """Shardings of {"params", "opt_state"} (the trainable params: the adapters under LoRA) and of
  "frozen" (the base weights under LoRA, else None) and "full" (every param), from the one rule table.

  The optimizer state is built from the *boxed* abstract params, so its param-shaped leaves (Adam
  moments) carry the same logical axes as their params and shard the same way; leaves like step
  counts are replicated.
  """
  boxed = abstract_boxed_params(model)
  shapes = abstract_params(model)
  full = shard_lib.tree_shardings(logical_axes(model), shapes, mesh, rules)
  trainable_boxed = _trainable_part(boxed, model)
  opt_logical = logical_axes(model, jax.eval_shape(tx.init, trainable_boxed))
  opt_shapes = jax.eval_shape(tx.init, _trainable_part(shapes, model))
  return {"params": _trainable_part(full, model),
          "opt_state": shard_lib.tree_shardings(opt_logical, opt_shapes, mesh, rules),
          "frozen": lora.split(full)[1] if model.config.lora is not None else None,
          "full": full}


def shard_state(state, shardings):
  """Place a pytree with the given shardings, always copying: the result may be
  donated to the update step without invalidating ``state`` (e.g. reference params)."""
  # (device_put may hand back the source buffer for a device's shard even with
  # may_alias=False; a jitted copy never aliases its inputs.)  Arrays not yet committed to devices (fresh
  # params) go straight into the copy: one program, instead of one slice program per leaf and device.
  copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)
  leaves = jax.tree.leaves(state)
  if all(isinstance(x, jax.Array) and not getattr(x, "_committed", True) for x in leaves):
    return copy(state)
  return copy(jax.tree.map(lambda x, s: jax.device_put(x, s), state, shardings))


AnyBatch = Batch | PackedBatch


def batch_logprobs(model: Transformer, params, batch: AnyBatch, spec: LossSpec, with_entropy: bool = False):
  """log π(completion tokens) under ``params`` (cast to the compute dtype), in the shape of ``batch.mask``:
  float32[N, T], or [R, C, T] for a ``PackedBatch`` (and the entropies when ``with_entropy``, same pass)."""
  cast = cast_params(params, model.config.dtype)
  if isinstance(batch, PackedBatch):
    tree = TreeMask(ends=batch.ends, window=batch.window, block=model.config.attention_chunk or 128)
    logp, ent = policy.packed_logprobs(model, cast, batch.tokens, batch.positions, tree, batch.source,
                                       batch.targets, spec.temperature, spec.allowed, spec.logprob_chunk,
                                       with_entropy=with_entropy)
    return (logp, ent) if with_entropy else logp
  input_ids = jnp.concatenate([batch.prompt_ids, batch.tokens], axis=1)
  attn = jnp.concatenate([batch.prompt_mask, batch.mask], axis=1)
  logp, ent = policy.completion_logprobs(model, cast, input_ids, attn,
                                         batch.tokens.shape[1], spec.temperature, spec.allowed, spec.logprob_chunk,
                                         with_entropy=with_entropy)
  return (logp, ent) if with_entropy else logp


def entropy_metrics(entropies: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """The trained policy's token entropy: mean over completion tokens, and over the first and the last 10% of
  each completion's tokens (at least one token each)."""
  valid = mask.astype(bool)
  lengths = jnp.sum(valid, axis=-1, keepdims=True)
  tenth = jnp.maximum(jnp.ceil(0.1 * lengths), 1)
  pos = jnp.arange(mask.shape[-1])
  first = valid & (pos < tenth)
  last = valid & (pos >= lengths - tenth)
  mean = lambda sel: jnp.sum(jnp.where(sel, entropies, 0.0)) / jnp.maximum(jnp.sum(sel), 1)
  return {"entropy/mean": mean(valid), "entropy/first10": mean(first), "entropy/last10": mean(last)}


def normalizer(batch: AnyBatch, spec: LossSpec):
  """The "constant" aggregation's normalizer: completions × T (a packed batch's empty slots do not count)."""
  if spec.aggregation != "constant" or not isinstance(batch, PackedBatch):
    return None
  return jnp.sum(batch.slots).astype(jnp.float32) * batch.mask.shape[-1]


def denominator(batch: AnyBatch, spec: LossSpec):
  """``objectives.aggregation_denominator`` of a (packed) batch."""
  return objectives.aggregation_denominator(batch.mask, batch.weights, spec.aggregation, normalizer(batch, spec))


def _rows(x):
  """[R, C, T] → [R·C, T] (a packed batch's slots as rows); [N, T] and None unchanged."""
  return x if x is None or x.ndim == 2 else x.reshape(-1, x.shape[-1])


def loss_fn(trainable, frozen, batch: AnyBatch, old_logp, ref_logp, model: Transformer, spec: LossSpec):
  """The policy loss of a (micro-)batch and its metrics: the objective's own, the trained policy's entropy, the
  sampler↔trainer mismatch (this pass's log-probs, which are π_old's at a step's first optimizer step, against the
  sampler's), with a rollout correction its weights (× the token weights), and with off-policy masking the
  policy-gradient mask of stale negative completions (this pass's log-probs against the sampler's).  A
  ``PackedBatch`` gives the same loss as the ``Batch`` it packs: its slots are rows here."""
  params = lora.combine(frozen, trainable) if frozen is not None else trainable
  logp, ent = batch_logprobs(model, params, batch, spec, with_entropy=True)
  norm = normalizer(batch, spec)
  # per-completion [N, T] views (a packed batch's [R, C, T] slots as rows)
  logp, ent, old_logp, ref_logp = _rows(logp), _rows(ent), _rows(old_logp), _rows(ref_logp)
  mask, sampler_logp = _rows(batch.mask), _rows(batch.old_logp)
  weights, advantages = _rows(batch.weights), _rows(batch.advantages)
  trainer_logp = jax.lax.stop_gradient(logp)
  extra = mismatch.mismatch_metrics(trainer_logp, sampler_logp, mask)
  if spec.correction != "none":
    pi_old = trainer_logp if old_logp is None else old_logp
    w, cm = mismatch.rollout_correction(pi_old, sampler_logp, mask, method=spec.correction,
                                        level=spec.correction_level, cap=spec.correction_cap)
    weights = weights * w
    extra.update(cm)
  pg_mask = None
  if spec.off_policy_mask is not None:  # stale negative completions leave the policy gradient (DeepSeek-V3.2)
    pg_mask, om = mismatch.off_policy_sequence_mask(trainer_logp, sampler_logp, advantages, mask, spec.off_policy_mask)
    extra.update(om)
  if spec.ratio_level == "sequence":  # GSPO: one advantage per completion, its (per-row constant) weight folded in
    m = mask.astype(jnp.float32)
    advantages = jnp.sum(advantages * weights * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    weights = None
  loss, metrics = objectives.policy_loss(
      logp, old_logp, ref_logp if spec.kl_beta else None, advantages, mask, weights=weights,
      clip_eps_low=spec.clip_eps_low, clip_eps_high=spec.clip_eps_high, kl_beta=spec.kl_beta,
      aggregation=spec.aggregation, normalizer=norm, ratio_level=spec.ratio_level, kl_estimator=spec.kl_estimator,
      entropies=ent if spec.entropy_coef else None, entropy_coef=spec.entropy_coef, pg_mask=pg_mask,
      surrogate=spec.surrogate, kl_importance_weight=spec.kl_importance_weight,
  )
  return loss, {**metrics, **extra, **entropy_metrics(jax.lax.stop_gradient(ent), mask)}


def _combine(key: str, acc, value, share):
  """Accumulate a metric over micro-batches: maxima and minima combine as such, the rest as weighted means."""
  if key.endswith("_max"):
    return jnp.maximum(acc, value)
  if key.endswith("_min"):
    return jnp.minimum(acc, value)
  return acc + share * value


class UpdateProgram(NamedTuple):
  """A compiled update and what it was compiled with."""

  update: Any  # jitted (state, frozen, ref_params, batch, row_orders) -> (state, metrics)
  shardings: dict[str, Any]  # from state_shardings
  tx: optax.GradientTransformation  # the optimizer (its init makes the state's opt_state)


@functools.lru_cache(maxsize=16)
def make_update_program(model: Transformer, optim, total_steps: int, spec: LossSpec, uspec: UpdateSpec, mesh,
                        rules=shard_lib.MeshRules()) -> UpdateProgram:
  """The compiled update for these static specs (cached: a sweep reuses it across runs)."""
  tx = make_optimizer(optim, total_steps)
  sh = state_shardings(model, tx, mesh, rules)
  return UpdateProgram(update=make_update_step(model, tx, spec, uspec, mesh, sh, rules), shardings=sh, tx=tx)


def strided_slices(x: jax.Array, k: int) -> jax.Array:
  """[N, ...] → [k, N/k, ...] where slice j holds rows j, j + k, j + 2k, …

  Rows are sharded in contiguous blocks over the data-parallel devices; a contiguous split (``reshape(k,
  N/k)``) would put whole slices on some devices, so a scan over the slices would run each one on fewer
  devices and save no memory. Strided slices keep every slice spread over all of them.
  """
  return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def unslice(x: jax.Array) -> jax.Array:
  """The inverse of ``strided_slices``: [k, N/k, ...] → [N, ...] in the original row order."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def make_update_step(model: Transformer, tx: optax.GradientTransformation, spec: LossSpec, uspec: UpdateSpec, mesh,
                     shardings, rules=shard_lib.MeshRules()):
  """``update(state, frozen, ref_params, batch, row_orders) -> (state, metrics)``, jitted, donating ``state``.

  ``row_orders`` int32[μ, N]: the order in which each pass visits the rows; pass i's minibatch j is
  rows ``row_orders[i, j·N/M : (j+1)·N/M]``.
  """
  rows_sh = lambda ndim: shard_lib.batch_sharding(mesh, ndim, rules)
  batch_sh = rows_sh(1)  # a prefix for every leaf of a Batch or a PackedBatch: rows over the batch axes
  repl = shard_lib.replicated(mesh)
  m_count = uspec.num_minibatches
  stop = uspec.nonfinite == "stop"

  def constrain(x):
    return jax.lax.with_sharding_constraint(x, rows_sh(x.ndim))

  micro = uspec.micro_batches

  def logp_over_batch(params, batch: Batch):  # reference / π_old log-probs, in slices of a micro-batch's size
    out = jax.lax.map(lambda mb: batch_logprobs(model, params, jax.tree.map(constrain, mb), spec),
                      jax.tree.map(lambda x: strided_slices(x, m_count * micro), batch))
    return jax.lax.stop_gradient(constrain(unslice(out)))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def grad_of_minibatch(params, frozen, mb: Batch, old, ref):
    """Loss, metrics and gradient of a minibatch, accumulated over ``micro`` slices of its rows: each
    slice's loss is weighted by its share of the minibatch's aggregation denominator (exact)."""
    if micro == 1:
      return grad_fn(params, frozen, mb, old, ref, model, spec)
    total = denominator(mb, spec)
    split = lambda x: None if x is None else strided_slices(x, micro)
    slices = (jax.tree.map(split, mb), split(old), split(ref))

    def one(acc, xs):
      mbi, oi, ri = jax.tree.map(constrain, xs)
      share = denominator(mbi, spec) / total
      (loss_i, m_i), g_i = grad_fn(params, frozen, mbi, oi, ri, model, spec)
      acc_g, acc_loss, acc_m = acc
      acc_g = jax.tree.map(lambda a, g: a + share * g, acc_g, g_i)
      acc_m = {k: _combine(k, acc_m[k], m_i[k], share) for k in acc_m}
      return (acc_g, acc_loss + share * loss_i, acc_m), None

    first = jax.tree.map(lambda x: x[0], slices)
    metric_shapes = jax.eval_shape(lambda: grad_fn(params, frozen, *first, model, spec)[0][1])
    start = lambda k, s: jnp.full(s.shape, -jnp.inf if k.endswith("_max") else jnp.inf if k.endswith("_min") else 0,
                                  s.dtype)
    init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
            {k: start(k, s) for k, s in metric_shapes.items()})
    (grads, loss, metrics), _ = jax.lax.scan(one, init, slices)
    return (loss, metrics), grads

  def update(state, frozen, ref_params, batch: Batch, row_orders):
    n = batch.tokens.shape[0]
    if n % (m_count * micro):
      raise ValueError(f"the batch's {n} rows do not split into {m_count} minibatches × {micro} micro-batches")
    ref = None
    if uspec.reference == "params":
      ref = logp_over_batch(ref_params, batch)
    elif uspec.reference == "base":
      ref = logp_over_batch(frozen, batch)
    old = None
    if uspec.old_logp == "batch":
      old = batch.old_logp
    elif uspec.old_logp == "recompute":
      old = logp_over_batch(lora.combine(frozen, state["params"]) if frozen is not None else state["params"], batch)
    orders = row_orders.reshape(-1, n // m_count)

    def body(carry, rows):
      st, bad = carry
      take = lambda x: None if x is None else constrain(x[rows])
      mb = jax.tree.map(take, batch)
      (loss, metrics), grads = grad_of_minibatch(st["params"], frozen, mb, take(old), take(ref))
      updates, opt_state = tx.update(grads, st["opt_state"], st["params"])
      params = optax.apply_updates(st["params"], updates)
      grad_norm = optax.tree.norm(grads)
      flags = (jnp.where(jnp.isfinite(loss), 0, 1) | jnp.where(jnp.isfinite(grad_norm), 0, 2)
               | jnp.where(all_finite(params), 0, 4)).astype(jnp.int32)
      ok = (flags == 0) & ((bad == 0) if stop else True)
      new = {"params": params, "opt_state": opt_state}
      st = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, st)
      metrics = dict(metrics, loss=loss, grad_norm=grad_norm, update_norm=optax.tree.norm(updates))
      return (st, bad | flags), (metrics, ok)

    (state, bad), (ms, oks) = jax.lax.scan(body, (state, jnp.zeros((), jnp.int32)), orders)
    applied = jnp.sum(oks)
    w = oks.astype(jnp.float32)
    metrics = {k: jnp.sum(jnp.where(oks, v, 0.0)) / jnp.maximum(jnp.sum(w), 1.0) for k, v in ms.items()
               if not k.startswith("mismatch/")}
    # the mismatch: the step's first optimizer step, where this pass's log-probs are π_old's
    metrics.update({k: v[0] for k, v in ms.items() if k.startswith("mismatch/")})
    metrics.update(nonfinite=bad, skipped_updates=oks.size - applied)
    return state, metrics

  state_sh = {"params": shardings["params"], "opt_state": shardings["opt_state"]}
  ref_sh = shardings["full"] if uspec.reference == "params" else None
  return jax.jit(update, in_shardings=(state_sh, shardings["frozen"], ref_sh, batch_sh, repl),
                 out_shardings=(state_sh, repl), donate_argnums=(0,))


def nonfinite_names(flags: int) -> list[str]:
  """The quantities a ``nonfinite`` metric names."""
  return [name for bit, name in NONFINITE_FLAGS.items() if int(flags) & bit]
