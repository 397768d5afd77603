"""PRPO (Ding et al., arXiv 2601.07182): entropy-spike segments and fused advantages.

Pipeline: ``entropy_segments`` cuts each completion at its entropy spikes; a
PRM scores each segment in [0, 1]; ``segment_scores_to_tokens`` spreads the
scores over the tokens; ``prpo_advantages`` normalizes them with a fixed prior
and shifts them by the outcome advantage: A(i,t) = z(i,t) + β_i.

Every function takes arrays or nested lists, checks that its arguments' shapes agree (naming the argument and the
shape it expects), and accepts traced ``prior_mean``, ``prior_std`` and ``eps``.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp

from jaxgrpo.core import advantages as adv_lib
from jaxgrpo.core import selection
from jaxgrpo.core.arrays import as_array, check_shape

# PRPO's choices, declared once (the trainer's config reads them from here).
Normalization = Literal["fixed", "relative"]  # z from a fixed prior (the paper) | group statistics (the ablation)
Outcome = Literal["centered", "std"]  # β_i = r_i − mean(r) (the authors' code) | the GRPO advantage
Cuts = Literal["entropy", "random", "uniform"]  # where the candidate cuts come from: entropy spikes | the controls

UNIFORM_STD = 1.0 / math.sqrt(12.0)  # std of U[0, 1]: the paper's σ0 = 0.289
AUTHORS_CODE_STD = math.sqrt(1.0 / 24.0)  # σ0 in the authors' code (≈ 0.204)


def entropy_segments(entropies, mask, k: int = 5, min_gap: int = 10) -> jax.Array:
  """Segment id of every token, cutting at entropy spikes.

  Rule (per completion of valid length L):
  * L < k + 1: one segment.
  * Otherwise take the k highest-entropy valid positions (ties: earlier first),
    in position order, and keep a position p as a cut only if p is at least
    ``min_gap`` after the previously kept cut, position 0 counting as the first
    cut (so no cut lands in the first ``min_gap`` tokens).
  * A cut at p starts a new segment at p: segments are [0,c1), [c1,c2), ...,
    [c_last, L).

  Args:
    entropies: float[..., T] next-token entropies at the completion tokens.
    mask: [..., T] 1 on completion tokens (right padding).
    k: number of spikes considered; min_gap: minimum distance between cuts.

  Returns:
    int32[..., T]: 0, 1, ... along each completion; -1 on padding.  Jitted (``k`` and ``min_gap`` static).
  """
  entropies, mask = as_array(entropies, "entropies"), as_array(mask, "mask")
  if entropies.ndim < 1:
    raise ValueError("entropies must have shape [..., T]; got a scalar")
  if entropies.shape != mask.shape:
    raise ValueError(f"mask must have the shape of entropies {tuple(entropies.shape)}; got {tuple(mask.shape)}")
  if k < 1 or min_gap < 1:
    raise ValueError(f"k and min_gap must be >= 1; got k={k}, min_gap={min_gap}")
  return _entropy_segments(entropies, mask, k=int(k), min_gap=int(min_gap))


@functools.partial(jax.jit, static_argnames=("k", "min_gap"))
def _entropy_segments(entropies, mask, *, k, min_gap):
  valid = mask.astype(bool)
  if valid.shape[-1] == 0:  # no completion positions (a buffer trimmed to nothing): nothing to segment
    return jnp.zeros(valid.shape, jnp.int32)
  scored = jnp.where(valid, entropies.astype(jnp.float32), -jnp.inf)
  top = selection.top_k_positions(scored, min(k, scored.shape[-1]))
  return _segments_from_candidates(top, valid, k=k, min_gap=min_gap)


def _segments_from_candidates(top, valid, *, k, min_gap):
  """The cut rule on the k candidate positions ``top`` [..., k] (any order) of completions with mask ``valid``:
  segment ids, -1 on padding (see ``entropy_segments``)."""
  top = jnp.sort(top, axis=-1)
  length = jnp.sum(valid, axis=-1)
  last = jnp.zeros(top.shape[:-1], jnp.int32)
  kept = []
  for c in range(top.shape[-1]):  # k is small and static
    keep = top[..., c] - last >= min_gap
    kept.append(keep)
    last = jnp.where(keep, top[..., c], last)
  kept = jnp.stack(kept, axis=-1) & (length >= k + 1)[..., None]
  pos = jnp.arange(valid.shape[-1])
  seg = jnp.sum(kept[..., None, :] & (top[..., None, :] <= pos[:, None]), axis=-1, dtype=jnp.int32)
  return jnp.where(valid, seg, -1)


def control_segments(mode: str, mask, k: int = 5, min_gap: int = 10, key=None) -> jax.Array:
  """The controls of entropy cuts (issue 23): the same rule as ``entropy_segments`` — k candidate positions,
  kept when ``min_gap`` after the previous kept cut, none below length k + 1 — with the candidates chosen
  without looking at the entropies.

  * ``random``: k distinct valid positions uniformly at random (``key`` required; rows draw independently).
  * ``uniform``: positions floor(L·j / (k + 1)), j = 1 … k, for a completion of valid length L (evenly spaced).

  Returns int32[..., T] segment ids (-1 on padding), like ``entropy_segments``.
  """
  mask = as_array(mask, "mask")
  if mode not in ("random", "uniform"):
    raise ValueError(f"mode must be 'random' or 'uniform' (entropy cuts: entropy_segments); got {mode!r}")
  if mask.ndim < 1:
    raise ValueError("mask must have shape [..., T]; got a scalar")
  if k < 1 or min_gap < 1:
    raise ValueError(f"k and min_gap must be >= 1; got k={k}, min_gap={min_gap}")
  t = mask.shape[-1]
  if mode == "random":
    if key is None:
      raise ValueError("random cuts need a PRNG key (key=...)")
    scores = jax.random.uniform(key, mask.shape)  # top-k of i.i.d. noise: k distinct positions, uniformly
  else:
    length = jnp.sum(mask.astype(bool), axis=-1, keepdims=True).astype(jnp.int32)
    cuts = (length * jnp.arange(1, k + 1, dtype=jnp.int32)) // (k + 1)  # [..., k], distinct when L >= k + 1
    pos = jnp.arange(t, dtype=jnp.int32)
    scores = jnp.any(pos[..., :, None] == cuts[..., None, :], axis=-1).astype(jnp.float32)
  return _entropy_segments(scores, mask, k=int(k), min_gap=int(min_gap))


def segment_scores_to_tokens(segment_ids, scores) -> jax.Array:
  """Give every token its segment's score.

  Args:
    segment_ids: int[..., T] from ``entropy_segments`` (-1 on padding).
    scores: float[..., S] one PRM score per segment (S ≥ max segment id + 1; ``checked`` verifies that, here an
      id past S takes the last score).

  Returns:
    float[..., T] (0 on padding); differentiable w.r.t. ``scores``.
  """
  segment_ids, scores = jnp.asarray(as_array(segment_ids, "segment_ids")), jnp.asarray(as_array(scores, "scores"))
  if segment_ids.ndim < 1 or scores.ndim != segment_ids.ndim:
    raise ValueError(f"scores must have shape {tuple(segment_ids.shape[:-1])} + (S,) to match segment_ids "
                     f"{tuple(segment_ids.shape)}; got {tuple(scores.shape)}")
  if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be integer segment ids; got dtype {segment_ids.dtype}")
  if scores.shape[:-1] != segment_ids.shape[:-1]:
    raise ValueError(
        f"scores must have shape {segment_ids.shape[:-1]} + (S,) to match segment_ids "
        f"{segment_ids.shape}; got {scores.shape}"
    )
  idx = jnp.clip(segment_ids, 0, scores.shape[-1] - 1)
  tok = jnp.take_along_axis(scores, idx, axis=-1)
  return jnp.where(segment_ids >= 0, tok, 0.0)


def normalize_process_scores(
    token_scores: jax.Array,
    mask: jax.Array,
    *,
    normalization: Normalization = "fixed",
    prior_mean: float = 0.5,
    prior_std: float = UNIFORM_STD,
    eps: float = 1e-6,
) -> jax.Array:
  """z(i,t): PRM token scores normalized with a fixed prior or group statistics.

  Args:
    token_scores: float[..., G, T] in [0, 1]; mask: [..., G, T].
    normalization: "fixed" (z = (s − μ0)/σ0, the paper's method) or "relative"
      (mean/std of the group's valid token scores; the ablation that collapses).
    prior_mean, prior_std: μ0 and σ0 (``UNIFORM_STD`` or ``AUTHORS_CODE_STD``); may be traced.
    eps: added to the group std of the "relative" normalization.

  Returns:
    float[..., G, T], 0 on padding.
  """
  token_scores, mask = jnp.asarray(as_array(token_scores, "token_scores")), jnp.asarray(as_array(mask, "mask"))
  if token_scores.ndim < 2:
    raise ValueError(f"token_scores must have shape [..., G, T]; got {tuple(token_scores.shape)}")
  check_shape(mask, "mask", token_scores.shape, "[..., G, T] of token_scores")
  return _normalize(token_scores, mask, normalization, prior_mean, prior_std, eps)


def _normalize(token_scores, mask, normalization, prior_mean, prior_std, eps):
  valid = mask.astype(bool)
  if normalization == "fixed":
    z = (token_scores - prior_mean) / prior_std
  elif normalization == "relative":
    n = jnp.maximum(jnp.sum(valid, axis=(-2, -1), keepdims=True), 1)
    mean = jnp.sum(jnp.where(valid, token_scores, 0.0), axis=(-2, -1), keepdims=True) / n
    var = jnp.sum(jnp.where(valid, jnp.square(token_scores - mean), 0.0), axis=(-2, -1), keepdims=True) / n
    std = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)  # finite gradient at var = 0
    z = (token_scores - mean) / (std + eps)
  else:
    raise ValueError(f"normalization must be 'fixed' or 'relative'; got {normalization!r}")
  return jnp.where(valid, z, 0.0)


def prpo_advantages(
    token_scores: jax.Array,
    mask: jax.Array,
    rewards: jax.Array,
    *,
    normalization: Normalization = "fixed",
    prior_mean: float = 0.5,
    prior_std: float = UNIFORM_STD,
    outcome: Outcome = "centered",
    ddof: int = 1,
    eps: float = 1e-4,
) -> jax.Array:
  """Fused token advantages A(i,t) = z(i,t) + β_i.

  Args:
    token_scores: float[..., G, T] PRM score of each token's segment, in [0, 1].
    mask: [..., G, T]; rewards: float[..., G] outcome rewards.
    normalization, prior_mean, prior_std: see ``normalize_process_scores``.
    outcome: β_i = r_i − mean(r) ("centered", the authors' code, default) or
      the GRPO std-normalized advantage ("std", with ``ddof``/``eps``).

  Returns:
    float[..., G, T], 0 on padding (finite gradients in zero-variance groups).  Combine with λ-GRPO by passing
    ``weights=lambda_weights(counts)`` to ``policy_loss`` as well.
  """
  token_scores, mask = jnp.asarray(as_array(token_scores, "token_scores")), jnp.asarray(as_array(mask, "mask"))
  rewards = jnp.asarray(as_array(rewards, "rewards"))
  if token_scores.ndim < 2:
    raise ValueError(f"token_scores must have shape [..., G, T]; got {tuple(token_scores.shape)}")
  check_shape(mask, "mask", token_scores.shape, "[..., G, T] of token_scores")
  check_shape(rewards, "rewards", token_scores.shape[:-1], "[..., G] of token_scores")
  if outcome not in ("centered", "std"):
    raise ValueError(f"outcome must be 'centered' or 'std'; got {outcome!r}")
  z = _normalize(token_scores, mask, normalization, prior_mean, prior_std, 1e-6)
  beta = adv_lib.group_advantages(rewards, scale=outcome == "std", ddof=ddof, eps=eps)
  return jnp.where(mask.astype(bool), z + beta[..., None], 0.0)
