"""One clipped policy-gradient loss for GRPO, λ-GRPO and PRPO.

All objectives are maximized in the papers; these functions return losses (the
negatives) and a dict of metrics.  Shapes use [..., T] for per-token arrays
(any leading batch shape, e.g. [B, G, T]) and [...] for per-sequence ones.

* GRPO: ``policy_loss(logp, old, ref, group_advantages(r), mask)``.
* λ-GRPO (arXiv 2509.21154): the same with ``weights=lambda_weights(counts)``,
  i.e. every token's policy and KL term divided by |λ(i,t)|; the normalizer is
  unchanged (``aggregation="token_mean"``), so heavy overlap shrinks the update.
  ``aggregation="weight_mean"`` divides by Σ weights instead: the
  update-norm-matched ablation the spec asks for.
* PRPO (arXiv 2601.07182): per-token ``advantages=prpo_advantages(...)``; λ
  weights combine with them (weights × token advantages).
"""

from __future__ import annotations

import typing
from typing import Literal

import jax
import jax.numpy as jnp

# How a batch's per-token terms are reduced to a loss (see ``aggregation_denominator``); declared once, here.
Aggregation = Literal["token_mean", "seq_mean", "constant", "weight_mean"]
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)


def lambda_weights(counts: jax.Array) -> jax.Array:
  """λ-GRPO token weights 1/|λ(i,t)| (0 on padding, where counts == 0)."""
  c = counts.astype(jnp.float32)
  return jnp.where(counts > 0, 1.0 / jnp.maximum(c, 1.0), 0.0)


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """The k3 estimator of KL(π_θ‖π_ref): π_ref/π_θ − log(π_ref/π_θ) − 1 (≥ 0)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def aggregation_denominator(mask: jax.Array, weights: jax.Array | None, aggregation: Aggregation,
                            normalizer: float | None = None) -> jax.Array:
  """What an aggregation divides by: Σ lengths (token_mean), the number of non-empty sequences
  (seq_mean, which divides a sum of per-sequence means), the normalizer or the element count (constant),
  Σ weights (weight_mean).  A batch split into micro-batches gives the same loss and gradient when each
  micro-batch's loss is weighted by its denominator over the whole batch's (gradient accumulation)."""
  m = mask.astype(jnp.float32)
  if aggregation == "token_mean":  # DAPO: 1 / Σ_i len(y_i)
    return jnp.maximum(jnp.sum(m), 1.0)
  if aggregation == "seq_mean":  # original GRPO: per-sequence mean, then mean
    return jnp.maximum(jnp.sum(jnp.sum(m, axis=-1) > 0), 1).astype(jnp.float32)
  if aggregation == "constant":  # Dr. GRPO: a fixed normalizer (default: sequences × T)
    return jnp.asarray(float(m.size) if normalizer is None else normalizer, jnp.float32)
  if aggregation == "weight_mean":  # normalize by Σ weights (update-norm matched)
    w = m if weights is None else weights.astype(jnp.float32) * m
    return jnp.maximum(jnp.sum(w), 1e-8)
  raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")


def _aggregate(per_token, mask, weights, aggregation, normalizer):
  """Reduce masked per-token terms (already multiplied by the weights)."""
  den = aggregation_denominator(mask, weights, aggregation, normalizer).astype(per_token.dtype)
  m = mask.astype(per_token.dtype)
  if aggregation == "seq_mean":
    per_seq = jnp.sum(per_token * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    return jnp.sum(per_seq) / den
  return jnp.sum(per_token * m) / den


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array | None,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    weights: jax.Array | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    kl_beta: float = 0.0,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped surrogate + k3 KL, with optional per-token weights.

  Per token:  ℓ(i,t) = w(i,t) · [ −min(P·A, clip(P, 1−ε_low, 1+ε_high)·A) + β·KL_k3 ]
  with P = exp(logp − stop_gradient(old_logp)).

  Args:
    logp: float[..., T] log π_θ of the sampled tokens (differentiated).
    old_logp: float[..., T] log π_old, or None for μ = 1 (old = stop_grad(logp)).
    ref_logp: float[..., T] log π_ref, or None (then ``kl_beta`` must be 0).
    advantages: float[...] per sequence, or float[..., T] per token.
    mask: [..., T] 1 on completion tokens.
    weights: optional float[..., T] token weights (λ-GRPO: ``lambda_weights``).
    clip_eps_low, clip_eps_high: PPO clip range; ``clip_eps_high`` defaults to
      ``clip_eps_low`` (DAPO's clip-higher uses e.g. 0.28).
    kl_beta: KL coefficient β (k3 estimator).
    aggregation: "token_mean" (DAPO; Σ over tokens / Σ lengths), "seq_mean"
      (original GRPO), "constant" (Dr. GRPO; / ``normalizer``, default the
      number of sequences × T), "weight_mean" (/ Σ weights: λ-GRPO rescaled to
      GRPO's update size).

  Returns:
    (loss, metrics) with clip fractions, KL mean, ratio mean, and the policy
    and KL parts of the loss.
  """
  logp = jnp.asarray(logp)
  mask = jnp.asarray(mask)
  if mask.shape != logp.shape:
    raise ValueError(f"mask must have the shape of logp {logp.shape}; got {mask.shape}")
  for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("weights", weights)):
    if x is not None and jnp.shape(x) != logp.shape:
      raise ValueError(f"{name} must have the shape of logp {logp.shape}; got {jnp.shape(x)}")
  advantages = jnp.asarray(advantages)
  if advantages.shape == logp.shape[:-1]:
    advantages = advantages[..., None]
  elif advantages.shape != logp.shape:
    raise ValueError(
        f"advantages must have shape {logp.shape[:-1]} (per sequence) or {logp.shape} "
        f"(per token); got {advantages.shape}"
    )
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")
  if kl_beta != 0.0 and ref_logp is None:
    raise ValueError("ref_logp is required when kl_beta != 0")
  if clip_eps_low < 0 or (clip_eps_high is not None and clip_eps_high < 0):
    raise ValueError(f"clip_eps_low/high must be >= 0; got {clip_eps_low}, {clip_eps_high}")
  eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high

  old = jax.lax.stop_gradient(logp if old_logp is None else old_logp)
  ratio = jnp.exp(logp - old)
  clipped = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + eps_high)
  surrogate = jnp.minimum(ratio * advantages, clipped * advantages)
  pg = -surrogate
  kl = k3_kl(logp, ref_logp) if ref_logp is not None else jnp.zeros_like(logp)
  w = jnp.ones_like(logp) if weights is None else weights.astype(logp.dtype)

  loss = _aggregate(w * (pg + kl_beta * kl), mask, weights, aggregation, normalizer)

  m = mask.astype(logp.dtype)
  n = jnp.maximum(jnp.sum(m), 1.0)
  adv_b = jnp.broadcast_to(advantages, logp.shape)
  clip_low = (ratio < 1.0 - clip_eps_low) & (adv_b < 0)
  clip_high = (ratio > 1.0 + eps_high) & (adv_b > 0)
  metrics = {
      "pg_loss": _aggregate(w * pg, mask, weights, aggregation, normalizer),
      "kl_loss": _aggregate(w * kl, mask, weights, aggregation, normalizer),
      "kl_mean": jnp.sum(kl * m) / n,
      "ratio_mean": jnp.sum(ratio * m) / n,
      "clip_frac_low": jnp.sum(clip_low * m) / n,
      "clip_frac_high": jnp.sum(clip_high * m) / n,
      "clip_frac": jnp.sum((clip_low | clip_high) * m) / n,
      "weight_mean": jnp.sum(w * m) / n,
  }
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
