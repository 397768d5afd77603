"""Rollout ↔ trainer mismatch: how far the sampler's log-probs are from the trainer's, and the importance weights
that correct for it.

The sampler and the trainer compute log π of the same sampled tokens with the same parameters, but not always the
same numbers: a bf16 sampler beside f32 training, a bf16 KV cache, or rollouts one step stale (π_old ≠ π_sampler).
With r(i,t) = π_old(y_t) / π_sampler(y_t) (π_old: the trainer's log-probs at the parameters that sampled):

* ``tis`` (truncated importance sampling): weight min(r, C);
* ``mis`` (masked importance sampling): weight r inside [1/C, C], 0 outside;
* ``level="sequence"``: r is the sequence's geometric mean exp(mean_t log r(i,t)), one weight per completion.

``off_policy_sequence_mask`` (DeepSeek-V3.2) gates the policy gradient of stale negative completions instead.

The weights multiply the policy loss's token weights (λ-GRPO's 1/|λ| and PRPO's token advantages compose with them)
and are constants (``stop_gradient``).  ``mismatch_metrics`` reports the mismatch whatever the correction.
"""

from __future__ import annotations

import functools
import typing
from typing import Literal

import jax
import jax.numpy as jnp

from jaxgrpo.core.arrays import as_array

Correction = Literal["none", "tis", "mis"]  # declared once, here (the trainer's config reads it)
CorrectionLevel = Literal["token", "sequence"]
CORRECTIONS: tuple[str, ...] = typing.get_args(Correction)


def _log_ratio(old_logp, sampler_logp, mask, level):
  valid = mask.astype(bool)
  log_r = jnp.where(valid, old_logp - sampler_logp, 0.0)
  if level == "sequence":
    n = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1)
    log_r = jnp.where(valid, jnp.sum(log_r, axis=-1, keepdims=True) / n, 0.0)
  return log_r, valid


def _checked_inputs(old_logp, sampler_logp, mask):
  """The three [..., T] arguments as arrays, their shapes checked by name."""
  old_logp, sampler_logp, mask = (jnp.asarray(as_array(x, n)) for x, n in ((old_logp, "old_logp"),
                                                                          (sampler_logp, "sampler_logp"),
                                                                          (mask, "mask")))
  if sampler_logp.shape != old_logp.shape or mask.shape != old_logp.shape:
    raise ValueError(f"sampler_logp and mask must have the shape of old_logp {old_logp.shape}; got "
                     f"{sampler_logp.shape} and {mask.shape}")
  return old_logp, sampler_logp, mask


def rollout_correction(old_logp, sampler_logp, mask, *, method: Correction = "tis",
                       level: CorrectionLevel = "token", cap=3.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Importance weights [..., T] for the sampler ↔ trainer mismatch, and their metrics.

  Args:
    old_logp: float[..., T] the trainer's log π_old of the sampled tokens.
    sampler_logp: float[..., T] the sampler's log-probs of the same tokens.
    mask: [..., T] 1 on completion tokens.
    method: "tis" | "mis" | "none" (weights 1).
    level: "token" (a weight per token) | "sequence" (the sequence's geometric-mean ratio, one weight per sequence).
    cap: C > 1 (may be traced).

  Returns:
    (weights float32[..., T], 0 on padding and never differentiated; metrics: ``mismatch/weight_mean`` and
    ``mismatch/masked_frac`` (completion tokens whose weight is 0)).
  """
  old_logp, sampler_logp, mask = _checked_inputs(old_logp, sampler_logp, mask)
  if method not in CORRECTIONS:
    raise ValueError(f"method must be one of {CORRECTIONS}; got {method!r}")
  if level not in typing.get_args(CorrectionLevel):
    raise ValueError(f"level must be 'token' or 'sequence'; got {level!r}")
  if not isinstance(cap, jax.core.Tracer) and not cap > 1:
    raise ValueError(f"cap must be > 1; got {cap}")
  return _rollout_correction(old_logp, sampler_logp, mask, cap, method=method, level=level)


@functools.partial(jax.jit, static_argnames=("method", "level"))
def _rollout_correction(old_logp, sampler_logp, mask, cap, *, method, level):
  log_r, valid = _log_ratio(old_logp.astype(jnp.float32), sampler_logp.astype(jnp.float32), mask, level)
  r = jnp.exp(jnp.minimum(log_r, 80.0))
  if method == "tis":
    w = jnp.minimum(r, cap)
  elif method == "mis":
    w = jnp.where((r >= 1.0 / cap) & (r <= cap), r, 0.0)
  else:
    w = jnp.ones_like(r)
  w = jax.lax.stop_gradient(jnp.where(valid, w, 0.0))
  n = jnp.maximum(jnp.sum(valid), 1)
  metrics = {"mismatch/weight_mean": jnp.sum(w) / n,
             "mismatch/masked_frac": jnp.sum(valid & (w == 0)) / n}
  return w, metrics


def off_policy_sequence_mask(logp, sampler_logp, advantages, mask, threshold) -> tuple[jax.Array, dict]:
  """DeepSeek-V3.2's off-policy sequence masking (TRL's ``off_policy_mask_threshold``): the tokens of a completion
  whose advantage is negative and whose mean per-token log(π_sampler / π_θ) exceeds δ are left out of the policy
  gradient — learning from one's own mistakes only while they are still one's own.

  M(i,t) = 0 if A(i,t) < 0 and (1/|o_i|) Σ_s log(π_sampler(o_i,s) / π_θ(o_i,s)) > δ, else 1 (0 on padding).

  Args:
    logp: float[..., T] the current policy's log-probs of the sampled tokens (read, not differentiated).
    sampler_logp: float[..., T] the log-probs the sampler drew them with.
    advantages: float[...] per completion or float[..., T] per token.
    mask: [..., T] 1 on completion tokens.
    threshold: δ ≥ 0 (may be traced).

  Returns:
    (float32 mask [..., T], a constant; metrics ``off_policy/masked_frac`` (completion tokens masked) and
    ``off_policy/seq_kl_mean`` (the mean over completions of the per-token mean log-ratio)).  Pass the mask as
    ``policy_loss(pg_mask=...)``: it gates the policy-gradient term only, not the KL term or the denominator.
  """
  logp, sampler_logp, mask = _checked_inputs(logp, sampler_logp, mask)
  advantages = jnp.asarray(as_array(advantages, "advantages"))
  if advantages.shape not in (logp.shape[:-1], logp.shape):
    raise ValueError(f"advantages must have shape {logp.shape[:-1]} (per completion) or {logp.shape} (per token); "
                     f"got {advantages.shape}")
  if not isinstance(threshold, jax.core.Tracer) and not float(threshold) >= 0:
    raise ValueError(f"threshold must be >= 0 (a mean log-ratio in nats); got {threshold}")
  if advantages.ndim == logp.ndim - 1:
    advantages = advantages[..., None]
  return _off_policy_sequence_mask(logp, sampler_logp, advantages, mask, threshold)


@jax.jit
def _off_policy_sequence_mask(logp, sampler_logp, advantages, mask, threshold):
  log_r, valid = _log_ratio(sampler_logp.astype(jnp.float32), jax.lax.stop_gradient(logp).astype(jnp.float32), mask,
                            "sequence")  # per token: its completion's mean log(π_sampler / π_θ)
  seq_kl = jnp.max(log_r, axis=-1, where=valid, initial=-jnp.inf)  # the constant of each completion
  keep = valid & ((advantages >= 0) | (log_r <= threshold))
  nonempty = jnp.any(valid, axis=-1)
  metrics = {"off_policy/masked_frac": jnp.sum(valid & ~keep) / jnp.maximum(jnp.sum(valid), 1),
             "off_policy/seq_kl_mean": jnp.sum(jnp.where(nonempty, seq_kl, 0.0)) / jnp.maximum(jnp.sum(nonempty), 1)}
  return jax.lax.stop_gradient(keep.astype(jnp.float32)), metrics


def mismatch_metrics(old_logp, sampler_logp, mask) -> dict[str, jax.Array]:
  """How far the sampler is from the trainer on the sampled tokens (float32 scalars over completion tokens):
  ``mismatch/k3`` (the k3 estimate of KL(π_sampler ‖ π_old) with the sampler's samples: r − log r − 1,
  r = π_old/π_sampler; ≈ 0 when they agree), ``mismatch/ratio_max`` and ``mismatch/ratio_min`` (of r), and
  ``mismatch/logp_abs_diff`` (mean |log π_old − log π_sampler|)."""
  old_logp, sampler_logp, mask = _checked_inputs(old_logp, sampler_logp, mask)
  return _mismatch_metrics(old_logp, sampler_logp, mask)


@jax.jit
def _mismatch_metrics(old_logp, sampler_logp, mask):
  log_r, valid = _log_ratio(old_logp.astype(jnp.float32), sampler_logp.astype(jnp.float32), mask, "token")
  r = jnp.exp(jnp.minimum(log_r, 80.0))
  n = jnp.maximum(jnp.sum(valid), 1)
  any_valid = jnp.any(valid)
  return {
      "mismatch/k3": jnp.sum(jnp.where(valid, r - log_r - 1.0, 0.0)) / n,
      "mismatch/ratio_max": jnp.where(any_valid, jnp.max(jnp.where(valid, r, -jnp.inf)), 1.0),
      "mismatch/ratio_min": jnp.where(any_valid, jnp.min(jnp.where(valid, r, jnp.inf)), 1.0),
      "mismatch/logp_abs_diff": jnp.sum(jnp.abs(log_r)) / n,
  }
