"""The policy's next-token distribution, coded once for the sampler and the loss.

π(· | context) = softmax(policy_logits(logits, temperature, allowed)): tokens
outside ``allowed`` get probability 0, then the logits are divided by the
temperature (temperature 0 means greedy decoding; its distribution is the
unscaled one).  ``completion_logprobs`` evaluates log π of given completions
under a model, optionally in chunks of completion positions so the [N, T, V]
logits never exist at once (forward and backward).

An allowed-token set has one form everywhere: a sorted tuple of distinct token ids, or None for every token
(hashable, so it can be a static argument of a jitted function).  ``allowed_ids`` makes it from a bool[V] mask or
any sequence of ids; ``allowed_mask`` is the only way back to a bool[V] mask.

When the sampler's log-probs are the policy's (so they can stand for π_old in the PPO ratio) is decided here too,
beside the distribution: ``SAMPLING_OPTIONS`` says, for every sampling option, whether it makes the sampler draw
from anything but π_θ; ``old_logp_source`` applies it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo.models.transformer import Transformer, TreeMask, causal_mask, positions_from_mask

NEG = -1e30  # logit of a disallowed token: probability exactly 0 after softmax

AllowedIds = tuple[int, ...] | None  # sorted distinct token ids the policy may emit; None: every token


def allowed_ids(allowed, vocab_size: int, name: str = "allowed_tokens") -> AllowedIds:
  """The canonical allowed-token set from None, a bool[V] mask or a sequence of ids (checked on the host)."""
  if allowed is None:
    return None
  a = np.asarray(allowed)
  if a.dtype == bool:
    if a.shape != (vocab_size,):
      raise ValueError(f"{name} must be bool[{vocab_size}] (the vocabulary) or a sequence of token ids; got a bool "
                       f"array of shape {a.shape}")
    ids = np.flatnonzero(a)
  else:
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"{name} must be bool[{vocab_size}] or a sequence of token ids; got {a.dtype} {a.shape}")
    bad = a[(a < 0) | (a >= vocab_size)]
    if bad.size:
      raise ValueError(f"{name} holds ids {bad[:5].tolist()} outside the vocabulary [0, {vocab_size})")
    ids = np.unique(a)
  if ids.size == 0:
    raise ValueError(f"{name} allows no token")
  return tuple(int(i) for i in ids)


def allowed_mask(vocab_size: int, allowed: AllowedIds) -> jax.Array | None:
  """bool[V] of an allowed-token set (None: every token, no mask)."""
  if allowed is None:
    return None
  return jnp.zeros(vocab_size, bool).at[jnp.asarray(allowed, jnp.int32)].set(True)


# Every sampling option (the sampler's ``SamplingParams`` fields and the rollout engine's options), with a predicate
# of its value that is True when it makes the sampler draw from a distribution other than the policy's
# π_θ(· | context) = softmax(policy_logits(...)); None: it never does.  ``old_logp_source`` refuses an option that
# is not listed, so a new option cannot be added without deciding this.
SAMPLING_OPTIONS: dict[str, Callable[[Any], bool] | None] = {
    "group_size": None,  # how many samples per prompt, not how each is drawn
    "max_new_tokens": None,  # where a completion is cut; the tokens it has are drawn from π_θ
    "temperature": None,  # part of the policy (``policy_logits`` divides by it)
    "top_k": lambda k: k > 0,  # samples from the k most likely tokens only
    "top_p": lambda p: p < 1.0,  # samples from the nucleus only
    "eos_ids": None,  # which tokens end a completion
    "pad_id": None,  # written after the end; never sampled
    "prompt_multiple": None,  # left padding of the prompts (positions come from the mask)
    "trim": None,  # drops all-padding columns after sampling
    "engine": None,  # which decode loop (static or continuous batching): the same distribution, summed in another order
    "slots": None,  # how many samples decode at once
    "read_growth": None,  # how far past the live length a decode step reads (masked: the same distribution)
    "kv_layout": None,  # where the continuous engine keeps the slots' KV (the same distribution, another sum order)
    "decode_kernel": None,  # what computes its decode attention (the same distribution, another sum order)
    "kv_dtype": lambda d: d is not None,  # a KV cache in another dtype computes other numbers
    "dtype": lambda d: d is not None,  # a sampler in its own compute dtype (bf16 beside f32) computes other numbers
}


def sampler_is_policy(options: Mapping[str, Any]) -> bool:
  """True if sampling with these options draws every token from π_θ, so the sampler's log-probs are π_θ's."""
  unknown = sorted(set(options) - set(SAMPLING_OPTIONS))
  if unknown:
    raise ValueError(f"sampling option(s) {unknown} are not decided: say in jaxgrpo.models.policy.SAMPLING_OPTIONS "
                     "whether each makes the sampler's distribution differ from the policy's")
  return not any(SAMPLING_OPTIONS[k] is not None and SAMPLING_OPTIONS[k](v) for k, v in options.items())


OldLogp = Literal["none", "batch", "recompute"]


def old_logp_source(optimizer_steps_per_batch: int, sampling: Mapping[str, Any], recompute: bool = False,
                    stale: bool = False) -> OldLogp:
  """Where the PPO ratio's π_old comes from in an update of ``optimizer_steps_per_batch`` optimizer steps.

  * "none": one optimizer step per batch — the ratio is exactly 1 at the update (π_old = stop_gradient(π_θ));
  * "batch": the sampler's log-probs, which are π_old's when the sampler drew from the policy (same params, same
    distribution: ``sampler_is_policy``);
  * "recompute": a forward pass at the start of the update, when the sampler's distribution was not the policy's
    (top-k/top-p) or when asked (``recompute``).

  ``stale``: the rollouts were sampled with older params (one-step-off): π_old is the sampler's log-probs even with
  one optimizer step per batch (the behaviour policy is not π_θ), unless asked to recompute (a rollout correction
  then weights the sampler's tokens against the recomputed π_old).
  """
  if stale:
    if recompute:
      return "recompute"
    if not sampler_is_policy(sampling):
      raise ValueError("async_rollouts with a sampler that does not draw from the policy (top_k, top_p, "
                       "sampling.dtype or sampling.kv_dtype) needs objective.rollout_correction (tis or mis): "
                       "the sampler's log-probs are not the behaviour policy's")
    return "batch"
  if optimizer_steps_per_batch == 1:
    sampler_is_policy(sampling)  # still refuses undecided options
    return "none"
  if recompute or not sampler_is_policy(sampling):
    return "recompute"
  return "batch"


def policy_logits(logits: jax.Array, temperature: float, allowed: jax.Array | None = None) -> jax.Array:
  """float32 logits of the policy [..., V]: allowed-token mask, then temperature (0: unscaled)."""
  logits = logits.astype(jnp.float32)
  if allowed is not None:
    logits = jnp.where(allowed, logits, NEG)
  return logits / temperature if temperature > 0 else logits


def entropy(logits: jax.Array) -> jax.Array:
  """Shannon entropy (nats) of softmax(logits) over the last axis; NEG entries count as 0."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.where(logits > NEG / 2, jnp.exp(logp) * logp, 0.0), axis=-1)


def _logprobs_of_hidden(model: Transformer, params, hidden, targets, temperature, allowed, with_entropy):
  """log π of ``targets`` [N, t] from final hidden states [N, t, D] (and the entropies, or None)."""
  logits = policy_logits(model.apply({"params": params}, hidden, method=Transformer.head), temperature, allowed)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]
  return (logp, entropy(logits)) if with_entropy else (logp, None)


def completion_logprobs(
    model: Transformer,
    params,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    completion_len: int,
    temperature: float = 1.0,
    allowed: AllowedIds = None,
    chunk: int = 0,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
  """log π(y_t | x, y_<t) of the last ``completion_len`` tokens: float32[N, T] (and entropies, or None).

  Args:
    input_ids, attention_mask: [N, P + T], the prompt (left-padded) then the completion.
    chunk: if 0 < chunk < T, the LM head and log-softmax run over chunks of
      ``chunk`` completion positions, each rematerialized in the backward pass:
      at most [N, chunk, V] logits exist at once.
  """
  hidden = model.apply({"params": params}, input_ids, positions_from_mask(attention_mask),
                       causal_mask(attention_mask), compute_logits=False).hidden
  s, t = input_ids.shape[1], completion_len
  h = hidden[:, s - t - 1: s - 1]  # the positions that predict the completion tokens
  return logprobs_of_hidden(model, params, h, input_ids[:, s - t:], temperature, allowed, chunk, with_entropy)


def packed_logprobs(
    model: Transformer,
    params,
    tokens: jax.Array,
    positions: jax.Array,
    tree: TreeMask,
    source: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    allowed: AllowedIds = None,
    chunk: int = 0,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
  """``completion_logprobs`` of completions packed as prefix trees (``jaxgrpo.train.packing``): each shared
  prompt and completion prefix is computed once; float32[R, C, T] (and entropies, or None).

  Args:
    tokens, positions: int32[R, S] the packed rows (tree nodes in depth-first order; positions are depths).
    tree: their ``TreeMask``.
    source: int32[R, C, T] for completion slot c of row r, the position in the row whose hidden state predicts its
      token t (the parent node: the prompt's last token for t = 0).
    targets: int32[R, C, T] the completion tokens.
  """
  hidden = model.apply({"params": params}, tokens, positions, tree, compute_logits=False).hidden  # [R, S, D]
  r, c, t = source.shape
  h = jnp.take_along_axis(hidden, source.reshape(r, c * t)[..., None], axis=1).reshape(r * c, t, -1)
  logp, ent = logprobs_of_hidden(model, params, h, targets.reshape(r * c, t), temperature, allowed, chunk,
                                 with_entropy)
  shape = lambda x: None if x is None else x.reshape(r, c, t)
  return shape(logp), shape(ent)


def logprobs_of_hidden(model: Transformer, params, h: jax.Array, targets: jax.Array, temperature: float = 1.0,
                       allowed: AllowedIds = None, chunk: int = 0, with_entropy: bool = False):
  """log π of ``targets`` int[N, T] from the final hidden states [N, T, D] that predict them (and the entropies):
  the LM head and log-softmax, over chunks of ``chunk`` positions (each rematerialized) when 0 < chunk < T."""
  t = targets.shape[1]
  allowed = allowed_mask(model.config.vocab_size, allowed)
  if not chunk or chunk >= t:
    return _logprobs_of_hidden(model, params, h, targets, temperature, allowed, with_entropy)
  n = h.shape[0]
  pad = (-t) % chunk
  h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  nc = (t + pad) // chunk
  hs = jnp.moveaxis(h.reshape(n, nc, chunk, h.shape[-1]), 1, 0)
  ts = jnp.moveaxis(targets.reshape(n, nc, chunk), 1, 0)

  def one_chunk(xs):
    return _logprobs_of_hidden(model, params, xs[0], xs[1], temperature, allowed, with_entropy)

  logp, ent = jax.lax.map(jax.checkpoint(one_chunk, prevent_cse=False), (hs, ts))
  unchunk = lambda x: None if x is None else jnp.moveaxis(x, 0, 1).reshape(n, nc * chunk)[:, :t]
  return unchunk(logp), unchunk(ent)
