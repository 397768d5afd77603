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

What carries a gradient: only ``logp``.  Advantages, weights, π_old and π_ref are constants of the loss (each is
wrapped in ``stop_gradient``), as in every GRPO implementation: differentiating through advantages or λ weights
would add terms the objectives do not have.  Values at padded positions never reach the loss or its gradient:
every input is ``where``-masked before it is used (so −inf or NaN log-probs on padding are harmless).  The
hyper-parameters ``clip_eps_low``, ``clip_eps_high``, ``kl_beta`` and ``normalizer`` may be traced (a ``vmap``
over β or ε is one program); ``aggregation`` chooses the formula and is static.
"""

from __future__ import annotations

import functools
import typing
from typing import Literal

import jax
import jax.numpy as jnp

from jaxgrpo.core.arrays import as_array, optional_array

# How a batch's per-token terms are reduced to a loss (see ``aggregation_denominator``); declared once, here.
Aggregation = Literal["token_mean", "seq_mean", "constant", "weight_mean"]
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
# The KL estimators (Schulman's k1, k2, k3) and the levels of the PPO ratio (token: PPO/GRPO; sequence: GSPO;
# sequence_token: GSPO-token), declared once, here.
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KLEstimator)
RatioLevel = Literal["token", "sequence", "sequence_token"]
RATIO_LEVELS: tuple[str, ...] = typing.get_args(RatioLevel)
# The policy-gradient term: PPO's clipped surrogate, or CISPO's clipped importance weight on REINFORCE (MiniMax-M1).
Surrogate = Literal["clip", "cispo"]
SURROGATES: tuple[str, ...] = typing.get_args(Surrogate)


def lambda_weights(counts) -> jax.Array:
  """λ-GRPO token weights 1/|λ(i,t)|.

  Args:
    counts: [..., G, T] |λ(i,t)| from ``prefix_counts`` (0 on padding); any shape works.

  Returns:
    float32 of the same shape: 1/|λ| where counts > 0, else 0.  A constant: no gradient flows to ``counts``
    (integer or float).
  """
  counts = jax.lax.stop_gradient(jnp.asarray(as_array(counts, "counts")))
  c = counts.astype(jnp.float32)
  return jnp.where(counts > 0, 1.0 / jnp.maximum(c, 1.0), 0.0)


def high_entropy_mask(entropies, mask, keep_frac) -> tuple[jax.Array, jax.Array]:
  """The "80/20" token mask (Wang et al. 2025, arXiv 2506.01939; TRL's ``top_entropy_quantile``): 1 on the tokens
  whose entropy is at least the (1 − ``keep_frac``) quantile of the entropies of every valid token of the batch,
  else 0 — the policy gradient then flows through the highest-entropy ``keep_frac`` of the tokens only.

  Args:
    entropies: float[..., T] the policy's entropy at each sampled position (a constant: no gradient).
    mask: [..., T] 1 on completion tokens; the quantile is over these tokens of the whole array, one threshold.
    keep_frac: ρ in (0, 1] (may be traced): 1 keeps every valid token; small ρ keeps the top ρ of them (at least
      the tokens tied at the maximum).  The quantile interpolates linearly, as ``numpy.quantile`` and
      ``torch.quantile`` (TRL's) do.

  Returns:
    (float32 mask [..., T], the threshold τ: a float32 scalar, NaN when no token is valid).  Pass it as
    ``policy_loss(pg_mask=...)`` or multiply it into the token advantages (the same loss: the mask is 0/1):
    the aggregation's denominator is unchanged (the paper's objective still divides by every token) and so is the
    KL term.
  """
  entropies, mask = as_array(entropies, "entropies"), as_array(mask, "mask")
  if entropies.shape != mask.shape:
    raise ValueError(f"entropies and mask must have the same shape [..., T]; got {entropies.shape} and "
                     f"{mask.shape}")
  if not _is_traced(keep_frac) and not 0 < float(keep_frac) <= 1:
    raise ValueError(f"keep_frac must be in (0, 1] (the fraction of tokens kept); got {keep_frac}")
  return _high_entropy_mask(entropies, mask, keep_frac)


@jax.jit
def _high_entropy_mask(entropies, mask, keep_frac):
  ent = jax.lax.stop_gradient(jnp.asarray(entropies, jnp.float32))
  valid = jnp.asarray(mask) > 0
  n = jnp.sum(valid)
  ordered = jnp.sort(jnp.where(valid, ent, jnp.inf).ravel())  # the valid entropies first, ascending
  pos = (n - 1).astype(jnp.float32) * (1.0 - jnp.asarray(keep_frac, jnp.float32))
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
  a, b, frac = ordered[lo], ordered[hi], pos - lo
  # τ = a + frac·(b − a) lies in [a, b] and no valid entropy lies strictly between the neighbours a and b, so the
  # tokens ≥ τ are exactly those ≥ b when frac > 0 (≥ a when frac = 0): compared so, a rounded τ cannot drop a tie
  tau = jnp.where(n > 0, jnp.clip(a + frac * (b - a), a, b), jnp.nan)
  cut = jnp.where(frac > 0, b, a)
  return (valid & (ent >= cut)).astype(jnp.float32), tau


def k3_kl(logp, ref_logp) -> jax.Array:
  """The k3 estimator of KL(π_θ‖π_ref) per token: π_ref/π_θ − log(π_ref/π_θ) − 1 (≥ 0, unbiased, low variance).

  Args:
    logp, ref_logp: float[...] log-probabilities of the same sampled tokens under π_θ and π_ref.
  """
  logp, ref_logp = jnp.asarray(as_array(logp, "logp")), jnp.asarray(as_array(ref_logp, "ref_logp"))
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def kl_estimate(logp, ref_logp, estimator: KLEstimator = "k3") -> jax.Array:
  """A per-token estimate of KL(π_θ‖π_ref) from the log-probs of tokens sampled from π_θ.

  With d = log π_ref − log π_θ: ``k1`` = −d (unbiased, can be negative), ``k2`` = d²/2 (biased, ≥ 0, low variance),
  ``k3`` = e^d − d − 1 (unbiased, ≥ 0, low variance; the default, as in GRPO).
  """
  logp, ref_logp = jnp.asarray(as_array(logp, "logp")), jnp.asarray(as_array(ref_logp, "ref_logp"))
  d = ref_logp - logp
  if estimator == "k1":
    return -d
  if estimator == "k2":
    return 0.5 * jnp.square(d)
  if estimator == "k3":
    return jnp.exp(d) - d - 1.0
  raise ValueError(f"estimator must be one of {KL_ESTIMATORS}; got {estimator!r}")


def aggregation_denominator(mask: jax.Array, weights: jax.Array | None, aggregation: Aggregation,
                            normalizer=None) -> jax.Array:
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
    w = m if weights is None else jnp.where(mask.astype(bool), weights.astype(jnp.float32), 0.0)
    return jnp.maximum(jnp.sum(w), 1e-8)
  raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")


def _aggregate(per_token, mask, weights, aggregation, normalizer):
  """Reduce per-token terms that are already 0 on padding (and already multiplied by the weights)."""
  den = aggregation_denominator(mask, weights, aggregation, normalizer).astype(per_token.dtype)
  if aggregation == "seq_mean":
    lengths = jnp.sum(mask.astype(per_token.dtype), axis=-1)
    per_seq = jnp.sum(per_token, axis=-1) / jnp.maximum(lengths, 1.0)
    return jnp.sum(per_seq) / den
  return jnp.sum(per_token) / den


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def policy_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    *,
    weights=None,
    clip_eps_low=0.2,
    clip_eps_high=None,
    kl_beta=0.0,
    aggregation: Aggregation = "token_mean",
    normalizer=None,
    ratio_level: RatioLevel = "token",
    kl_estimator: KLEstimator = "k3",
    entropies=None,
    entropy_coef=0.0,
    pg_mask=None,
    surrogate: Surrogate = "clip",
    kl_importance_weight: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped surrogate + KL, with optional per-token weights (and an entropy bonus).

  Per token:  ℓ(i,t) = w(i,t) · [ −M(i,t)·min(P·A, clip(P, 1−ε_low, 1+ε_high)·A) + β·KL ]  − c_H · H(i,t)
  (``surrogate="cispo"``, MiniMax-M1's CISPO: −M·sg(clip(P, 1−ε_low, 1+ε_high))·A·log π_θ in place of the min —
  the clipped ratio is a constant weight, so no token's gradient is cut off, only scaled)
  with P the PPO ratio at ``ratio_level``:

  * "token" (PPO, GRPO): P(i,t) = exp(logp − stop_gradient(old_logp));
  * "sequence" (GSPO): P(i) = exp(mean_t (logp − old_logp)) over the completion's tokens, clipped per sequence;
    the sequence's term stands on each of its tokens, so ``aggregation="seq_mean"`` is GSPO's objective exactly.
    Needs per-sequence advantages and no token weights (use "sequence_token" for those);
  * "sequence_token" (GSPO-token): P(i,t) = stop_gradient(P(i)) · exp(logp − stop_gradient(logp)) — the sequence
    ratio's value with a per-token gradient, so per-token advantages (PRPO) and token weights (λ-GRPO) apply.

  Args:
    logp: float[..., T] log π_θ of the sampled tokens (differentiated).
    old_logp: float[..., T] log π_old, or None for μ = 1 (old = stop_grad(logp)).
    ref_logp: float[..., T] log π_ref, or None (then ``kl_beta`` must be 0, and concrete).
    advantages: float[...] per sequence, or float[..., T] per token.
    mask: [..., T] 1 on completion tokens (bool, int or float); nothing at a 0 reaches the loss.
    weights: optional float[..., T] token weights (λ-GRPO: ``lambda_weights``).
    clip_eps_low, clip_eps_high: PPO clip range (≥ 0; may be traced); ``clip_eps_high`` defaults to
      ``clip_eps_low`` (DAPO's clip-higher uses e.g. 0.28).
    kl_beta: KL coefficient β (k3 estimator; ≥ 0; may be traced).
    aggregation: "token_mean" (DAPO; Σ over tokens / Σ lengths), "seq_mean"
      (original GRPO), "constant" (Dr. GRPO; / ``normalizer``, default the
      number of sequences × T), "weight_mean" (/ Σ weights: λ-GRPO rescaled to
      GRPO's update size).
    normalizer: the "constant" aggregation's divisor (may be traced).
    ratio_level: "token" | "sequence" | "sequence_token" (see above).
    kl_estimator: "k1" | "k2" | "k3" (``kl_estimate``).
    entropies: optional float[..., T] the policy's entropies at the sampled positions, differentiable (needed when
      ``entropy_coef`` ≠ 0); aggregated like the loss.
    entropy_coef: c_H ≥ 0, the entropy bonus (may be traced).
    pg_mask: optional float[..., T] M: multiplies the policy-gradient term only (not the KL term, not the
      aggregation's denominator), e.g. ``mismatch.off_policy_sequence_mask``; default 1.
    kl_importance_weight: the KL term times the token ratio π_θ/π_old (differentiated): DeepSeek-V3.2's unbiased
      estimate of KL(π_θ ‖ π_ref) from samples of π_old (TRL's ``use_bias_correction_kl``); at μ = 1 its value is
      the plain estimate's, its gradient gains the ratio's term.
    surrogate: "clip" (PPO) | "cispo" (token or sequence_token ratios; its ``clip_frac_*`` count the weights the
      clip truncated, whatever the advantage's sign).  TRL's ``loss_type="cispo"`` caps P at ``epsilon_high``
      itself: ``clip_eps_high = epsilon_high − 1`` here, and ``clip_eps_low`` ≥ 1 leaves P unbounded below.

  Returns:
    (loss, metrics): the scalar loss (float, logp's dtype) and float scalars ``pg_loss`` and ``kl_loss`` (the
    two parts, aggregated like the loss: loss = pg_loss + β·kl_loss), ``kl_mean``, ``ratio_mean``,
    ``clip_frac_low``, ``clip_frac_high``, ``clip_frac`` and ``weight_mean`` (means over completion tokens), plus
    ``entropy_mean`` and ``entropy_loss`` when ``entropies`` are given.  Only ``logp`` (and ``entropies``) carry a
    gradient.  Jitted; call it inside your own ``jit`` as well.
  """
  logp, mask = as_array(logp, "logp"), as_array(mask, "mask")
  old_logp, ref_logp = optional_array(old_logp, "old_logp"), optional_array(ref_logp, "ref_logp")
  advantages, weights = as_array(advantages, "advantages"), optional_array(weights, "weights")
  entropies, pg_mask = optional_array(entropies, "entropies"), optional_array(pg_mask, "pg_mask")
  if logp.ndim < 1:
    raise ValueError("logp must have shape [..., T]; got a scalar")
  if not jnp.issubdtype(logp.dtype, jnp.floating):
    raise ValueError(f"logp must be floating point log-probabilities; got dtype {logp.dtype}")
  if mask.shape != logp.shape:
    raise ValueError(f"mask must have the shape of logp {logp.shape}; got {mask.shape}")
  for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("weights", weights), ("entropies", entropies),
                  ("pg_mask", pg_mask)):
    if x is not None and x.shape != logp.shape:
      raise ValueError(f"{name} must have the shape of logp {logp.shape}; got {x.shape}")
  if advantages.shape not in (logp.shape[:-1], logp.shape):
    raise ValueError(
        f"advantages must have shape {logp.shape[:-1]} (per sequence) or {logp.shape} "
        f"(per token); got {advantages.shape}"
    )
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")
  if ratio_level not in RATIO_LEVELS:
    raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}; got {ratio_level!r}")
  if kl_estimator not in KL_ESTIMATORS:
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}; got {kl_estimator!r}")
  if ratio_level == "sequence" and advantages.shape == logp.shape:
    raise ValueError("ratio_level='sequence' (GSPO) needs per-sequence advantages (one per completion); per-token "
                     "advantages (PRPO) need ratio_level='sequence_token'")
  if surrogate not in SURROGATES:
    raise ValueError(f"surrogate must be one of {SURROGATES}; got {surrogate!r}")
  if surrogate == "cispo" and ratio_level == "sequence":
    raise ValueError("surrogate='cispo' weighs each token's log-prob: use ratio_level='token' or 'sequence_token'")
  if ratio_level == "sequence" and weights is not None:
    raise ValueError("ratio_level='sequence' (GSPO) has one term per completion, so token weights (λ-GRPO) have "
                     "nothing to weigh: use ratio_level='sequence_token'")
  if entropies is None and (_is_traced(entropy_coef) or entropy_coef != 0.0):
    raise ValueError("entropies are required when entropy_coef != 0")
  if ref_logp is None and (_is_traced(kl_beta) or kl_beta != 0.0):
    raise ValueError("ref_logp is required when kl_beta != 0" + (" (kl_beta is traced here, so it may be)"
                                                                 if _is_traced(kl_beta) else ""))
  for name, x in (("clip_eps_low", clip_eps_low), ("clip_eps_high", clip_eps_high), ("kl_beta", kl_beta),
                  ("entropy_coef", entropy_coef)):
    if x is not None and not _is_traced(x) and not jnp.ndim(x) and float(x) < 0:
      raise ValueError(f"{name} must be >= 0; got {x}")
  eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
  return _policy_loss(logp, old_logp, ref_logp, advantages, mask, weights, clip_eps_low, eps_high, kl_beta,
                      normalizer, entropies, entropy_coef, pg_mask, aggregation=aggregation, ratio_level=ratio_level,
                      kl_estimator=kl_estimator, surrogate=surrogate, kl_importance_weight=bool(kl_importance_weight))


@functools.partial(jax.jit, static_argnames=("aggregation", "ratio_level", "kl_estimator", "surrogate",
                                             "kl_importance_weight"))
def _policy_loss(logp, old_logp, ref_logp, advantages, mask, weights, eps_low, eps_high, kl_beta, normalizer,
                 entropies, entropy_coef, pg_mask, *, aggregation, ratio_level, kl_estimator, surrogate,
                 kl_importance_weight):
  valid = mask.astype(bool)
  zero = jnp.zeros((), logp.dtype)
  lp = jnp.where(valid, logp, zero)  # padding never reaches an exp, a product or a gradient
  old = lp if old_logp is None else jnp.where(valid, old_logp.astype(logp.dtype), zero)
  old = jax.lax.stop_gradient(old)
  adv = advantages[..., None] if advantages.ndim == logp.ndim - 1 else advantages
  adv = jax.lax.stop_gradient(jnp.where(valid, adv.astype(logp.dtype), zero))
  w = valid.astype(logp.dtype) if weights is None else jnp.where(valid, weights.astype(logp.dtype), zero)
  w = jax.lax.stop_gradient(w)

  if ratio_level == "token":
    ratio = jnp.exp(lp - old)
  else:  # GSPO: the geometric mean of the completion's token ratios
    lengths = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(logp.dtype)
    seq_log_ratio = jnp.sum(lp - old, axis=-1, keepdims=True) / lengths
    if ratio_level == "sequence":
      ratio = jnp.broadcast_to(jnp.exp(seq_log_ratio), lp.shape)
    else:  # sequence_token: the sequence ratio's value, each token's own gradient
      ratio = jax.lax.stop_gradient(jnp.exp(seq_log_ratio)) * jnp.exp(lp - jax.lax.stop_gradient(lp))
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  if surrogate == "cispo":  # REINFORCE with the clipped ratio as a constant weight
    pg = jnp.where(valid, -jax.lax.stop_gradient(clipped) * adv * lp, zero)
  else:
    pg = jnp.where(valid, -jnp.minimum(ratio * adv, clipped * adv), zero)
  if pg_mask is not None:
    pg = pg * jax.lax.stop_gradient(jnp.where(valid, pg_mask.astype(logp.dtype), zero))
  if ref_logp is None:
    kl = jnp.zeros_like(lp)
  else:
    ref = jax.lax.stop_gradient(jnp.where(valid, ref_logp.astype(logp.dtype), zero))
    kl = jnp.where(valid, kl_estimate(lp, ref, kl_estimator), zero)
    if kl_importance_weight:  # samples of π_old estimating a KL under π_θ: weight by π_θ/π_old (with its gradient)
      kl = kl * jnp.exp(lp - old)

  loss = _aggregate(w * (pg + kl_beta * kl), mask, weights, aggregation, normalizer)
  extra = {}
  if entropies is not None:
    ent = jnp.where(valid, entropies.astype(logp.dtype), zero)
    entropy_loss = _aggregate(ent, mask, None, aggregation, normalizer)
    loss = loss - entropy_coef * entropy_loss
    extra = {"entropy_loss": entropy_loss}

  n = jnp.maximum(jnp.sum(valid), 1).astype(logp.dtype)
  mean = lambda x: jnp.sum(jnp.where(valid, x, zero)) / n
  # clipped: where the clip cut the gradient off (PPO: the min chose the clipped side) or truncated CISPO's weight
  sign_low, sign_high = (True, True) if surrogate == "cispo" else (adv < 0, adv > 0)
  clip_low = (ratio < 1.0 - eps_low) & sign_low & valid
  clip_high = (ratio > 1.0 + eps_high) & sign_high & valid
  metrics = {
      "pg_loss": _aggregate(w * pg, mask, weights, aggregation, normalizer),
      "kl_loss": _aggregate(w * kl, mask, weights, aggregation, normalizer),
      "kl_mean": mean(kl),
      "ratio_mean": mean(ratio),
      "clip_frac_low": mean(clip_low.astype(logp.dtype)),
      "clip_frac_high": mean(clip_high.astype(logp.dtype)),
      "clip_frac": mean((clip_low | clip_high).astype(logp.dtype)),
      "weight_mean": mean(w),
      **extra,
  }
  if entropies is not None:
    metrics["entropy_mean"] = mean(ent)
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
