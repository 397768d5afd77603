"""The rollout engine: a jitted group sampler with a preallocated KV cache.

Each prompt is prefilled once; its cache is then shared by (copied to) the G
completions of its group, which are decoded inside ``lax.while_loop`` until
every sequence has emitted an EOS id or ``max_new_tokens`` is reached.  The
decode step donates the cache and loop state, so XLA updates them in place.

What is returned per completion token is what the objectives need:
* ``logprobs``: log-probability of the sampled token under the distribution it
  was actually sampled from (allowed-token mask → temperature → top-k → top-p).
  For greedy decoding (temperature 0) it is the log-probability under the
  unscaled policy (allowed-token mask only).
* ``entropies``: full-vocabulary Shannon entropy (nats) of the policy's
  next-token distribution at the sampling temperature (after the allowed-token
  mask, before top-k/top-p truncation) — what PRPO segments on.
* ``mask``: 1 on completion tokens, EOS included; the rest is padding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo import policy
from jaxgrpo.models.transformer import Transformer, positions_from_mask

FINISH_EOS = 0
FINISH_LENGTH = 1
_NEG = policy.NEG


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to sample (static under jit)."""

  group_size: int = 1
  max_new_tokens: int = 128
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def kwargs(self) -> dict:
    """The keyword arguments of ``sample`` these params stand for."""
    return dataclasses.asdict(self)

  def validate(self) -> None:
    if self.group_size < 1:
      raise ValueError(f"group_size must be >= 1; got {self.group_size}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off); got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")


class SampleOutput(NamedTuple):
  tokens: jax.Array  # int32[B, G, T] completion tokens (pad_id after the end)
  mask: jax.Array  # int32[B, G, T] 1 on completion tokens, EOS included
  logprobs: jax.Array  # float32[B, G, T]
  entropies: jax.Array  # float32[B, G, T]
  lengths: jax.Array  # int32[B, G]
  finish_reason: jax.Array  # int32[B, G]: FINISH_EOS | FINISH_LENGTH


# ----------------------------------------------------------------------------- logits processing


def process_logits(
    logits: jax.Array, sp: SamplingParams, allowed: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """(policy logits at the sampling temperature, truncated sampling logits).

  Args:
    logits: float32[N, V] raw next-token logits.
    allowed: optional bool[V]; disallowed tokens get probability 0.
  """
  pol = policy.policy_logits(logits, sp.temperature, allowed)
  sampling = pol
  if sp.top_k > 0 and sp.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(sampling, sp.top_k)[0][..., -1:]
    sampling = jnp.where(sampling < kth, _NEG, sampling)
  if sp.top_p < 1.0:
    desc = jnp.sort(sampling, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
    keep = before < sp.top_p  # the smallest prefix with mass >= top_p (always the top token)
    threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    sampling = jnp.where(sampling < threshold, _NEG, sampling)
  return pol, sampling


entropy = policy.entropy


def categorical(logits: jax.Array, key: jax.Array, block: int = 128) -> tuple[jax.Array, jax.Array]:
  """Exact inverse-CDF sampling from softmax(logits), one uniform per row.

  Two-level (block sums, then one block) so the scans are short; 5x faster on
  XLA:CPU than ``jax.random.categorical``, whose Gumbel noise needs V random
  numbers per row.  Returns (token int32[N], log-probability float32[N], entropy float32[N] of
  softmax(logits)).
  """
  n, v = logits.shape
  pad = (-v) % block
  z = logits - jnp.max(logits, axis=-1, keepdims=True)
  w = jnp.pad(jnp.exp(z), ((0, 0), (0, pad)))  # unnormalized probabilities, 0 for -1e30 logits
  blocks = w.reshape(n, -1, block)
  block_sums = jnp.sum(blocks, axis=-1)
  block_cdf = jnp.cumsum(block_sums, axis=-1)
  total = block_cdf[:, -1]
  x = jax.random.uniform(key, (n,), jnp.float32) * total
  nb = block_sums.shape[-1]
  j = jnp.minimum(jnp.sum(block_cdf <= x[:, None], axis=-1), nb - 1)
  before = jnp.take_along_axis(block_cdf - block_sums, j[:, None], axis=-1)[:, 0]
  inner = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]  # [N, block]
  i = jnp.minimum(jnp.sum(jnp.cumsum(inner, axis=-1) <= (x - before)[:, None], axis=-1), block - 1)
  token = j * block + i
  # Rounding can land on a zero-probability slot at a block edge: fall back to the row's mode.
  token = jnp.where(jnp.take_along_axis(w, token[:, None], axis=-1)[:, 0] > 0, token, jnp.argmax(z, axis=-1))
  log_total = jnp.log(total)
  logp = jnp.take_along_axis(z, token[:, None], axis=-1)[:, 0] - log_total
  # H = log Σw − Σ w·z / Σw, reusing the exponentials (z = -inf-like entries have w = 0).
  ent = log_total - jnp.sum(jnp.where(w[:, :v] > 0, w[:, :v] * z, 0.0), axis=-1) / total
  return token.astype(jnp.int32), logp, ent


def sample_token(
    logits: jax.Array, rng: jax.Array, sp: SamplingParams, allowed: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sample one token per row: (token int32[N], logprob float32[N], entropy float32[N])."""
  pol, sampling = process_logits(logits, sp, allowed)
  if sp.temperature == 0:
    token = jnp.argmax(sampling, axis=-1).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(sampling, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logp, entropy(pol)
  token, logp, ent = categorical(sampling, rng)
  if sp.top_k or sp.top_p < 1.0:  # truncated: the policy's entropy needs its own pass
    ent = entropy(pol)
  return token, logp, ent


# ----------------------------------------------------------------------------- prefill and decode


def init_cache(model: Transformer, batch: int, length: int) -> dict[str, jax.Array]:
  """An empty KV cache in the compute dtype: {"k", "v"} each [L, B, KV, S, Dh]."""
  cfg = model.config
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}


@functools.partial(jax.jit, static_argnames=("model", "cache_len"))
def prefill(model: Transformer, params, prompt_ids: jax.Array, prompt_mask: jax.Array, cache_len: int):
  """Run the prompts [B, P] once; returns (last-position logits [B, V], cache with P slots filled)."""
  b, p = prompt_ids.shape
  valid = prompt_mask.astype(bool)
  slots = jnp.arange(cache_len)
  causal = slots[None, None, :] <= jnp.arange(p)[None, :, None]
  mask = causal & jnp.pad(valid, ((0, 0), (0, cache_len - p)))[:, None, :]
  logits, cache = model.apply(
      {"params": params}, prompt_ids, positions_from_mask(prompt_mask), mask, init_cache(model, b, cache_len), 0
  )
  return logits[:, -1], cache


def decode_step(model: Transformer, params, cache, tokens: jax.Array, positions: jax.Array, kv_valid: jax.Array, index):
  """One token per row at cache slot ``index``: returns (logits [N, V], cache).

  Args:
    tokens, positions: int32[N]; kv_valid: bool[N, S] slots holding real
      context (prompt tokens and generated tokens up to ``index``).
  """
  mask = (kv_valid & (jnp.arange(kv_valid.shape[-1]) <= index))[:, None, :]
  logits, cache = model.apply({"params": params}, tokens[:, None], positions[:, None], mask, cache, index)
  return logits[:, 0], cache


class _State(NamedTuple):
  step: jax.Array
  cache: dict
  logits: jax.Array  # [N, V] next-token logits
  kv_valid: jax.Array  # [N, S]
  tokens: jax.Array  # [N, T]
  logprobs: jax.Array
  entropies: jax.Array
  done: jax.Array  # [N]
  length: jax.Array  # [N]
  rng: jax.Array


@functools.partial(jax.jit, static_argnames=("model", "sp"), donate_argnames=("state",))
def _decode(model: Transformer, params, state: _State, prompt_len: jax.Array, allowed, sp: SamplingParams) -> _State:
  p = state.kv_valid.shape[-1] - sp.max_new_tokens
  eos = jnp.asarray(sp.eos_ids if sp.eos_ids else (-1,), jnp.int32)

  def cond(s: _State):
    return (s.step < sp.max_new_tokens) & ~jnp.all(s.done)

  def body(s: _State):
    rng, key = jax.random.split(s.rng)
    tok, logp, ent = sample_token(s.logits, key, sp, allowed)
    live = ~s.done
    tok = jnp.where(live, tok, sp.pad_id)
    col = lambda buf, v: jax.lax.dynamic_update_slice_in_dim(buf, v[:, None], s.step, axis=1)
    tokens = col(s.tokens, tok)
    logprobs = col(s.logprobs, jnp.where(live, logp, 0.0))
    entropies = col(s.entropies, jnp.where(live, ent, 0.0))
    length = s.length + live.astype(jnp.int32)
    done = s.done | jnp.isin(tok, eos)
    index = p + s.step
    kv_valid = jax.lax.dynamic_update_slice_in_dim(s.kv_valid, jnp.ones((tok.shape[0], 1), bool), index, axis=1)
    logits, cache = decode_step(model, params, s.cache, tok, prompt_len + s.step, kv_valid, index)
    return _State(s.step + 1, cache, logits, kv_valid, tokens, logprobs, entropies, done, length, rng)

  return jax.lax.while_loop(cond, body, state)


def validate_prompts(prompt_ids, prompt_mask, vocab_size: int) -> None:
  """Host-side checks of left-padded prompts: shapes, a 0/1 mask of zeros-then-ones with at
  least one token per row, and token ids inside the vocabulary.  Raises ValueError naming the row."""
  ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
  if ids.ndim != 2:
    raise ValueError(f"prompt_ids must have shape [B, P]; got {ids.shape}")
  if mask.shape != ids.shape:
    raise ValueError(f"prompt_mask must have the shape of prompt_ids {ids.shape}; got {mask.shape}")
  if not np.isin(mask, (0, 1)).all():
    raise ValueError(f"prompt_mask must hold only 0 and 1; found {np.unique(mask)[:5].tolist()}")
  m = mask.astype(bool)
  bad = np.flatnonzero((m[:, :-1] & ~m[:, 1:]).any(axis=1))
  if bad.size:
    raise ValueError(f"prompts must be left-padded (mask zeros, then ones); row {int(bad[0])} has padding after "
                     f"a token (mask {mask[bad[0]].tolist()})")
  empty = np.flatnonzero(~m.any(axis=1))
  if empty.size:
    raise ValueError(f"prompt row {int(empty[0])} is empty (its mask is all 0): every prompt needs a token")
  out = m & ((ids < 0) | (ids >= vocab_size))
  if out.any():
    r, c = np.argwhere(out)[0]
    raise ValueError(f"prompt_ids[{r}, {c}] = {int(ids[r, c])} is outside the vocabulary [0, {vocab_size})")


def sample(
    model: Transformer,
    params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    *,
    group_size: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    allowed_tokens: jax.Array | np.ndarray | None = None,
    row_sharding: jax.sharding.Sharding | None = None,
) -> SampleOutput:
  """Sample ``group_size`` completions for each of B left-padded prompts.

  Args:
    model, params: from ``jaxgrpo.models`` (cast params to the compute dtype
      once beforehand with ``jaxgrpo.models.cast_params`` to avoid a cast per
      decode step).
    prompt_ids: int[B, P] left-padded prompts; prompt_mask: [B, P].  Checked
      on the host when they are host or fully addressable arrays.
    rng: a PRNG key (not consumed: the caller may reuse it).
    group_size: G completions per prompt.
    max_new_tokens: T, the completion buffer length.
    temperature: 0 for greedy; top_k: 0 = off; top_p in (0, 1].
    eos_ids: token ids that end a completion (the EOS is kept in the mask).
    pad_id: token written after a completion ends.
    allowed_tokens: optional bool[V]; only these tokens can be sampled.
    row_sharding: optional sharding of the B·G decoded rows (e.g. over the
      data-parallel mesh axes); the decode loop then runs data-parallel.

  Returns:
    SampleOutput with arrays shaped [B, G, T] / [B, G].
  """
  sp = SamplingParams(group_size, max_new_tokens, float(temperature), int(top_k), float(top_p),
                      tuple(int(e) for e in eos_ids), int(pad_id))
  sp.validate()
  cfg = model.config
  for name, ids in (("eos_ids", sp.eos_ids), ("pad_id", (sp.pad_id,))):
    bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
    if bad:
      raise ValueError(f"{name} {bad} outside the vocabulary [0, {cfg.vocab_size})")
  if getattr(prompt_ids, "is_fully_addressable", True) and getattr(prompt_mask, "is_fully_addressable", True):
    validate_prompts(prompt_ids, prompt_mask, cfg.vocab_size)
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  b, p = prompt_ids.shape
  cache_len = p + max_new_tokens
  if cache_len > cfg.max_position_embeddings:
    raise ValueError(
        f"prompt length ({p}) + max_new_tokens ({max_new_tokens}) = {cache_len} exceeds the model's "
        f"max_position_embeddings ({cfg.max_position_embeddings}): the KV cache cannot hold it"
    )
  if allowed_tokens is not None:
    allowed_np = np.asarray(allowed_tokens, bool)  # checked on the host: no device round trip per call
    if allowed_np.shape != (cfg.vocab_size,):
      raise ValueError(f"allowed_tokens must be bool[{cfg.vocab_size}] (the vocabulary); got {allowed_np.shape}")
    if not allowed_np.any():
      raise ValueError("allowed_tokens allows no token")
    allowed_tokens = jnp.asarray(allowed_np)

  last_logits, cache = prefill(model, params, prompt_ids, prompt_mask, cache_len)
  state = _expand(last_logits, cache, prompt_mask, jnp.array(rng, copy=True), sp, row_sharding)
  prompt_len = _rows(jnp.sum(prompt_mask, axis=-1).astype(jnp.int32), sp.group_size, row_sharding)
  out = _decode(model, params, state, prompt_len, allowed_tokens, sp)
  t = max_new_tokens
  mask = (jnp.arange(t)[None, :] < out.length[:, None]).astype(jnp.int32)
  ended_eos = out.done & (out.length > 0)
  g = group_size
  shape3 = (b, g, t)
  return SampleOutput(
      tokens=out.tokens.reshape(shape3),
      mask=mask.reshape(shape3),
      logprobs=out.logprobs.reshape(shape3),
      entropies=out.entropies.reshape(shape3),
      lengths=out.length.reshape(b, g),
      finish_reason=jnp.where(ended_eos, FINISH_EOS, FINISH_LENGTH).astype(jnp.int32).reshape(b, g),
  )


def _rows(x: jax.Array, g: int, sharding) -> jax.Array:
  """Repeat each prompt's entry G times along the batch axis: [B, ...] → [B·G, ...] (prompt-major)."""
  x = jnp.repeat(x, g, axis=0)
  return x if sharding is None else jax.device_put(x, sharding)


@functools.partial(jax.jit, static_argnames=("sp", "row_sharding"))
def _expand(last_logits, cache, prompt_mask, rng, sp: SamplingParams, row_sharding) -> _State:
  """The decode loop's initial state: the prompt's cache and logits shared by its G rows."""
  g = sp.group_size
  n = last_logits.shape[0] * g
  t = sp.max_new_tokens
  rows = lambda x, axis=0: jnp.repeat(x, g, axis=axis)
  constrain = lambda x, axis=0: x if row_sharding is None else jax.lax.with_sharding_constraint(
      x, _on_axis(row_sharding, x.ndim, axis))
  kv_valid = jnp.pad(prompt_mask.astype(bool), ((0, 0), (0, t)))
  return _State(
      step=jnp.zeros((), jnp.int32),
      cache=jax.tree.map(lambda x: constrain(rows(x, 1), 1), cache),  # [L, B·G, KV, S, Dh]
      logits=constrain(rows(last_logits)),
      kv_valid=constrain(rows(kv_valid)),
      tokens=constrain(jnp.full((n, t), sp.pad_id, jnp.int32)),
      logprobs=constrain(jnp.zeros((n, t), jnp.float32)),
      entropies=constrain(jnp.zeros((n, t), jnp.float32)),
      done=constrain(jnp.zeros((n,), bool)),
      length=constrain(jnp.zeros((n,), jnp.int32)),
      rng=rng,
  )


def _on_axis(row_sharding, ndim: int, axis: int):
  """``row_sharding`` (a NamedSharding of the row axis) moved to ``axis`` of an ndim-array."""
  spec = list(row_sharding.spec) + [None] * ndim
  lead = spec[0]
  out = [None] * ndim
  out[axis] = lead
  return jax.sharding.NamedSharding(row_sharding.mesh, jax.sharding.PartitionSpec(*out))


def lower(model: Transformer, params, prompt_ids: jax.ShapeDtypeStruct, sp: SamplingParams,
          row_sharding: jax.sharding.Sharding | None = None):
  """(prefill, decode) lowered for abstract inputs, and the abstract KV cache (with its sharding):
  what ``sample`` runs, for memory planning without allocating anything.

  Args:
    params: abstract params (ShapeDtypeStructs, with shardings) in the compute dtype.
    prompt_ids: abstract int32[B, P] prompts (with a sharding).
    row_sharding: the sharding of the B·G decoded rows, as in ``sample``.
  """
  b, p = prompt_ids.shape
  n, t = b * sp.group_size, sp.max_new_tokens
  cfg = model.config
  pre = prefill.lower(model, params, prompt_ids, prompt_ids, p + t)
  rows = (lambda ndim, axis=0: None) if row_sharding is None else (lambda ndim, axis=0: _on_axis(row_sharding, ndim,
                                                                                                  axis))
  spec = lambda shape, dtype, axis=0: jax.ShapeDtypeStruct(shape, dtype, sharding=rows(len(shape), axis))
  cache = jax.eval_shape(lambda: init_cache(model, n, p + t))
  cache = jax.tree.map(lambda c: spec(c.shape, c.dtype, 1), cache)
  state = _State(step=jax.ShapeDtypeStruct((), jnp.int32), cache=cache, logits=spec((n, cfg.vocab_size), jnp.float32),
                 kv_valid=spec((n, p + t), bool), tokens=spec((n, t), jnp.int32), logprobs=spec((n, t), jnp.float32),
                 entropies=spec((n, t), jnp.float32), done=spec((n,), bool), length=spec((n,), jnp.int32),
                 rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  dec = _decode.lower(model, params, state, spec((n,), jnp.int32), None, sp)
  return pre, dec, cache
