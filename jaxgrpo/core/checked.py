"""Eagerly validated entry points.

The functions in ``jaxgrpo`` are jit-able and assert-free: shapes are checked at
trace time (free), but values (NaN rewards, a mask that is not 0/1) cannot be
without a host round trip.  The functions here check everything on the host
first, raising ``ValueError`` naming the argument, then call the jitted core.
Use them at the boundary of your program (data from a sampler, a reward
function, a file); use the unchecked ones inside your own ``jit``.
"""

from __future__ import annotations

import numpy as np

from jaxgrpo.core import advantages as _adv
from jaxgrpo.core import implicit_prm as _prm
from jaxgrpo.core import objectives as _obj
from jaxgrpo.core import prefix as _prefix
from jaxgrpo.core import prpo as _prpo


def validate_group_batch(tokens, mask, rewards=None) -> None:
  """Raise ValueError, naming the argument, unless the inputs form valid groups.

  tokens int[..., G, T], mask 0/1 [..., G, T] with ones then zeros per row,
  rewards finite float[..., G]; G ≥ 1, T ≥ 1.
  """
  tokens = np.asarray(tokens)
  mask = np.asarray(mask)
  _prefix.check_group_shapes(tokens, mask)  # the same static checks the jitted core makes
  validate_mask(mask)
  if rewards is not None:
    validate_rewards(rewards, group_shape=tokens.shape[:-1])


def validate_mask(mask) -> None:
  """Raise ValueError unless ``mask`` [..., T] holds only 0/1, ones then zeros along the last axis."""
  mask = np.asarray(mask)
  if not np.isin(mask, (0, 1)).all():
    bad = np.unique(mask[~np.isin(mask, (0, 1))])[:5]
    raise ValueError(f"mask must hold only 0 and 1; found {bad.tolist()}")
  m = mask.astype(bool)
  if (m[..., 1:] & ~m[..., :-1]).any():
    idx = np.argwhere(m[..., 1:] & ~m[..., :-1])[0][:-1]
    raise ValueError(
        f"mask must be right-padded (ones, then zeros) in every completion; "
        f"completion at index {tuple(idx.tolist())} has a 1 after a 0"
    )


def validate_rewards(rewards, group_shape=None) -> None:
  """Raise ValueError unless rewards is a finite float[..., G] (G ≥ 1)."""
  rewards = np.asarray(rewards)
  if rewards.ndim < 1 or rewards.shape[-1] < 1:
    raise ValueError(f"rewards must have shape [..., G] with G >= 1; got shape {rewards.shape}")
  if group_shape is not None and rewards.shape != tuple(group_shape):
    raise ValueError(
        f"rewards must have shape [..., G] = {tuple(group_shape)} to match tokens; got {rewards.shape}"
    )
  if not np.issubdtype(rewards.dtype, np.number) and rewards.dtype != bool:
    raise ValueError(f"rewards must be numeric; got dtype {rewards.dtype}")
  bad = ~np.isfinite(rewards.astype(np.float64))
  if bad.any():
    idx = tuple(np.argwhere(bad)[0].tolist())
    raise ValueError(f"rewards must be finite; rewards{list(idx)} = {rewards[idx]}")


def _finite_on(x, valid, name: str) -> None:
  bad = valid & ~np.isfinite(np.asarray(x, np.float64))
  if bad.any():
    idx = tuple(np.argwhere(bad)[0].tolist())
    raise ValueError(f"{name} must be finite on completion tokens; {name}{list(idx)} = {np.asarray(x)[idx]}")


def prefix_counts(tokens, mask, *, method: _prefix.Method = "auto", seed: int = 0):
  """``jaxgrpo.prefix_counts`` after ``validate_group_batch``."""
  validate_group_batch(tokens, mask)
  return _prefix.prefix_counts(tokens, mask, method=method, seed=seed)


def implicit_prm(tokens, mask, rewards, *, scale: bool = True, ddof: int = 1, eps: float = 1e-4,
                 method: _prefix.Method = "auto", seed: int = 0):
  """``jaxgrpo.implicit_prm`` after ``validate_group_batch``."""
  validate_group_batch(tokens, mask, rewards)
  return _prm.implicit_prm(tokens, mask, rewards, scale=scale, ddof=ddof, eps=eps, method=method, seed=seed)


def tree_stats(tokens, mask, *, method: _prefix.Method = "auto", seed: int = 0):
  """``jaxgrpo.tree_stats`` after ``validate_group_batch``."""
  validate_group_batch(tokens, mask)
  return _prm.tree_stats(tokens, mask, method=method, seed=seed)


def group_advantages(rewards, *, scale: bool = True, ddof: int = 1, eps: float = 1e-4):
  """``jaxgrpo.group_advantages`` after ``validate_rewards``."""
  validate_rewards(rewards)
  return _adv.group_advantages(rewards, scale=scale, ddof=ddof, eps=eps)


def entropy_segments(entropies, mask, k: int = 5, min_gap: int = 10):
  """``jaxgrpo.entropy_segments`` after checking entropies are finite and ≥ 0 and the mask."""
  entropies = np.asarray(entropies)
  mask = np.asarray(mask)
  if mask.shape != entropies.shape:
    raise ValueError(f"mask must have the shape of entropies {entropies.shape}; got {mask.shape}")
  if entropies.ndim < 1 or entropies.shape[-1] < 1:
    raise ValueError(f"entropies must have shape [..., T] with T >= 1; got {entropies.shape}")
  validate_mask(mask)
  valid = mask.astype(bool)
  if not np.isfinite(entropies[valid]).all() or (entropies[valid] < 0).any():
    raise ValueError("entropies must be finite and >= 0 on completion tokens")
  return _prpo.entropy_segments(entropies, mask, k=k, min_gap=min_gap)


def segment_scores_to_tokens(segment_ids, scores):
  """``jaxgrpo.segment_scores_to_tokens`` after checking every segment id has a score."""
  segment_ids, scores = np.asarray(segment_ids), np.asarray(scores)
  if scores.shape[:-1] != segment_ids.shape[:-1] or scores.ndim != segment_ids.ndim:
    raise ValueError(f"scores must have shape {segment_ids.shape[:-1]} + (S,) to match segment_ids "
                     f"{segment_ids.shape}; got {scores.shape}")
  need = int(segment_ids.max()) + 1 if segment_ids.size else 0
  if scores.shape[-1] < need:
    raise ValueError(f"scores has {scores.shape[-1]} score(s) per completion but segment_ids has segments up to "
                     f"id {need - 1}: pass at least {need} scores (axis -1)")
  if not np.isfinite(scores).all():
    raise ValueError("scores must be finite")
  return _prpo.segment_scores_to_tokens(segment_ids, scores)


def prpo_advantages(token_scores, mask, rewards, *, normalization: _prpo.Normalization = "fixed",
                    prior_mean: float = 0.5, prior_std: float = _prpo.UNIFORM_STD,
                    outcome: _prpo.Outcome = "centered", ddof: int = 1, eps: float = 1e-4):
  """``jaxgrpo.prpo_advantages`` after checking the mask (0/1, right-padded), scores in [0, 1] and rewards."""
  token_scores = np.asarray(token_scores)
  mask = np.asarray(mask)
  if token_scores.shape != mask.shape:
    raise ValueError(f"token_scores must have the shape of mask {mask.shape}; got {token_scores.shape}")
  if token_scores.ndim < 2:
    raise ValueError(f"token_scores must have shape [..., G, T]; got {token_scores.shape}")
  validate_mask(mask)
  valid = mask.astype(bool)
  s = token_scores[valid]
  if not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
    raise ValueError("token_scores must be PRM probabilities in [0, 1] on completion tokens")
  validate_rewards(rewards, group_shape=token_scores.shape[:-1])
  if not prior_std > 0:
    raise ValueError(f"prior_std must be > 0; got {prior_std}")
  return _prpo.prpo_advantages(token_scores, mask, rewards, normalization=normalization, prior_mean=prior_mean,
                               prior_std=prior_std, outcome=outcome, ddof=ddof, eps=eps)


def policy_loss(logp, old_logp, ref_logp, advantages, mask, *, weights=None, clip_eps_low: float = 0.2,
                clip_eps_high: float | None = None, kl_beta: float = 0.0, aggregation: _obj.Aggregation = "token_mean",
                normalizer: float | None = None, ratio_level: _obj.RatioLevel = "token",
                kl_estimator: _obj.KLEstimator = "k3", entropies=None, entropy_coef: float = 0.0, pg_mask=None,
                surrogate: _obj.Surrogate = "clip", kl_importance_weight: bool = False):
  """``jaxgrpo.policy_loss`` after checking the mask (0/1, right-padded) and that log-probs, advantages,
  weights and the policy-term mask are finite on completion tokens (log-probs ≤ 0, weights and mask ≥ 0) and the
  hyper-parameters are in range."""
  logp, mask = np.asarray(logp), np.asarray(mask)
  if mask.shape != logp.shape or logp.ndim < 1:
    raise ValueError(f"mask must have the shape of logp {logp.shape}; got {mask.shape}")
  validate_mask(mask)
  valid = mask.astype(bool)
  for name, x in (("logp", logp), ("old_logp", old_logp), ("ref_logp", ref_logp)):
    if x is None:
      continue
    x = np.asarray(x)
    if x.shape != logp.shape:
      raise ValueError(f"{name} must have the shape of logp {logp.shape}; got {x.shape}")
    _finite_on(x, valid, name)
    if (x[valid] > 1e-6).any():
      raise ValueError(f"{name} must be log-probabilities (<= 0) on completion tokens; max {x[valid].max()}")
  adv = np.asarray(advantages)
  if adv.shape not in (logp.shape[:-1], logp.shape):
    raise ValueError(f"advantages must have shape {logp.shape[:-1]} (per sequence) or {logp.shape} (per token); "
                     f"got {adv.shape}")
  _finite_on(np.broadcast_to(adv[..., None] if adv.shape == logp.shape[:-1] else adv, logp.shape), valid,
             "advantages")
  for name, x in (("weights", weights), ("entropies", entropies), ("pg_mask", pg_mask)):
    if x is not None:
      x = np.asarray(x)
      if x.shape != logp.shape:
        raise ValueError(f"{name} must have the shape of logp {logp.shape}; got {x.shape}")
      _finite_on(x, valid, name)
      if (x[valid] < 0).any():
        raise ValueError(f"{name} must be >= 0 on completion tokens")
  for name, x in (("clip_eps_low", clip_eps_low), ("clip_eps_high", clip_eps_high), ("kl_beta", kl_beta),
                  ("entropy_coef", entropy_coef)):
    if x is not None and not (np.isfinite(x) and x >= 0):
      raise ValueError(f"{name} must be a finite number >= 0; got {x}")
  return _obj.policy_loss(logp, old_logp, ref_logp, advantages, mask, weights=weights, clip_eps_low=clip_eps_low,
                          clip_eps_high=clip_eps_high, kl_beta=kl_beta, aggregation=aggregation,
                          normalizer=normalizer, ratio_level=ratio_level, kl_estimator=kl_estimator,
                          entropies=entropies, entropy_coef=entropy_coef, pg_mask=pg_mask, surrogate=surrogate,
                          kl_importance_weight=kl_importance_weight)
