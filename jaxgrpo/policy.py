"""The policy's next-token distribution, coded once for the sampler and the loss.

π(· | context) = softmax(policy_logits(logits, temperature, allowed)): tokens
outside ``allowed`` get probability 0, then the logits are divided by the
temperature (temperature 0 means greedy decoding; its distribution is the
unscaled one).  ``completion_logprobs`` evaluates log π of given completions
under a model, optionally in chunks of completion positions so the [N, T, V]
logits never exist at once (forward and backward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgrpo.models.transformer import Transformer, causal_mask, positions_from_mask

NEG = -1e30  # logit of a disallowed token: probability exactly 0 after softmax


def allowed_mask(vocab_size: int, allowed_ids: tuple[int, ...] | None) -> jax.Array | None:
  """bool[V] from a tuple of allowed token ids (None: every token)."""
  if allowed_ids is None:
    return None
  return jnp.zeros(vocab_size, bool).at[jnp.asarray(allowed_ids, jnp.int32)].set(True)


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
    allowed_ids: tuple[int, ...] | None = None,
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
  hidden, _ = model.apply({"params": params}, input_ids, positions_from_mask(attention_mask),
                          causal_mask(attention_mask), return_hidden=True)
  s, t = input_ids.shape[1], completion_len
  h = hidden[:, s - t - 1: s - 1]  # the positions that predict the completion tokens
  targets = input_ids[:, s - t:]
  allowed = allowed_mask(model.config.vocab_size, allowed_ids)
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
