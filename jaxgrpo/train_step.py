"""The sharded update step: log-probs of the completions, the policy loss, optax.

``make_update_step`` returns a function jitted over a device mesh with input and
output ``NamedSharding``s (the pjit pattern) that donates the train state.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxgrpo import objectives
from jaxgrpo import sharding as shard_lib
from jaxgrpo.models.transformer import Transformer, causal_mask, positions_from_mask


class Batch(NamedTuple):
  """One minibatch of N = B·G completions (leading axis sharded over data × fsdp)."""

  input_ids: jax.Array  # int32[N, P + T] prompt (left-padded) then completion
  attention_mask: jax.Array  # int32[N, P + T]
  completion_mask: jax.Array  # float32[N, T]
  advantages: jax.Array  # float32[N, T]
  weights: jax.Array  # float32[N, T]
  old_logp: jax.Array  # float32[N, T] (ignored when num_iterations == 1)
  ref_logp: jax.Array  # float32[N, T] (ignored when kl_beta == 0)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The static part of the loss (hashable; part of the jit cache key)."""

  temperature: float = 1.0
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  kl_beta: float = 0.0
  aggregation: str = "token_mean"
  use_old_logp: bool = False  # μ > 1: ratios against the pre-update policy
  allowed_tokens: tuple[int, ...] | None = None  # restrict the policy to these tokens (toy task)


def lm_head(model: Transformer, params, hidden: jax.Array) -> jax.Array:
  w = params["embed"].T if model.config.tie_word_embeddings else params["lm_head"]
  return (hidden @ w).astype(jnp.float32)


def completion_logprobs(model: Transformer, params, input_ids, attention_mask, completion_len: int,
                        temperature: float = 1.0, allowed_tokens: tuple[int, ...] | None = None) -> jax.Array:
  """log π(y_t | x, y_<t) of the completion tokens: float32[N, T].

  The head runs only on the T positions that predict completion tokens, and the
  distribution is the one the sampler used (allowed-token mask, temperature).
  """
  hidden, _ = model.apply({"params": params}, input_ids, positions_from_mask(attention_mask),
                          causal_mask(attention_mask), return_hidden=True)
  s = input_ids.shape[1]
  h = hidden[:, s - completion_len - 1: s - 1]
  logits = lm_head(model, params, h)
  if allowed_tokens is not None:
    allowed = jnp.zeros(logits.shape[-1], bool).at[jnp.asarray(allowed_tokens)].set(True)
    logits = jnp.where(allowed, logits, -1e30)
  if temperature > 0:
    logits = logits / temperature
  targets = input_ids[:, s - completion_len:]
  return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]


def loss_fn(params, batch: Batch, model: Transformer, spec: LossSpec):
  t = batch.completion_mask.shape[1]
  logp = completion_logprobs(model, params, batch.input_ids, batch.attention_mask, t, spec.temperature,
                             spec.allowed_tokens)
  return objectives.policy_loss(
      logp,
      batch.old_logp if spec.use_old_logp else None,
      batch.ref_logp if spec.kl_beta else None,
      batch.advantages,
      batch.completion_mask,
      weights=batch.weights,
      clip_eps_low=spec.clip_eps_low,
      clip_eps_high=spec.clip_eps_high,
      kl_beta=spec.kl_beta,
      aggregation=spec.aggregation,
  )


def make_optimizer(optim, total_steps: int = 1) -> optax.GradientTransformation:
  """AdamW with a schedule and global-norm clipping, from an ``OptimSpec``."""
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
    raise ValueError(f"optim.schedule must be constant | cosine | linear; got {optim.schedule!r}")
  chain = []
  if optim.max_grad_norm and optim.max_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(optim.max_grad_norm))
  chain.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
  return optax.chain(*chain)


def state_shardings(model: Transformer, params, tx, mesh, rules=shard_lib.MeshRules()):
  """Shardings of {"params", "opt_state"} from the one rule table.

  The optimizer state is built from the *boxed* abstract params, so its
  param-shaped leaves (Adam moments) carry the same logical axes as their params
  and shard the same way; leaves like step counts are replicated.
  """
  from jaxgrpo.models.transformer import abstract_boxed_params, logical_axes

  p_shard = shard_lib.tree_shardings(logical_axes(model), params, mesh, rules)
  opt_logical = logical_axes(model, jax.eval_shape(tx.init, abstract_boxed_params(model)))
  opt_shard = shard_lib.tree_shardings(opt_logical, jax.eval_shape(tx.init, params), mesh, rules)
  return {"params": p_shard, "opt_state": opt_shard}


def shard_state(state, shardings):
  """Place a pytree with the given shardings, always copying: the result may be
  donated to the update step without invalidating ``state`` (e.g. reference params)."""
  # (device_put may hand back the source buffer for a device's shard even with
  # may_alias=False; a jitted copy never aliases its inputs.)
  placed = jax.tree.map(lambda x, s: jax.device_put(x, s), state, shardings)
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(placed)


def make_update_step(model: Transformer, tx: optax.GradientTransformation, spec: LossSpec, mesh, shardings,
                     rules=shard_lib.MeshRules()):
  """``update(state, batch) -> (state, metrics)`` jitted with NamedShardings, donating ``state``."""
  batch_sh = Batch(*[shard_lib.batch_sharding(mesh, 2, rules) for _ in Batch._fields])
  repl = shard_lib.replicated(mesh)

  def update(state, batch: Batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, model, spec)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return {"params": params, "opt_state": opt_state}, metrics

  return jax.jit(update, in_shardings=(shardings, batch_sh), out_shardings=(shardings, repl), donate_argnums=(0,))


@functools.partial(jax.jit, static_argnames=("model", "completion_len", "temperature", "allowed_tokens"))
def eval_logprobs(model, params, input_ids, attention_mask, completion_len, temperature=1.0, allowed_tokens=None):
  """Log-probs without gradients (old policy before μ > 1 updates, reference policy)."""
  return completion_logprobs(model, params, input_ids, attention_mask, completion_len, temperature, allowed_tokens)
