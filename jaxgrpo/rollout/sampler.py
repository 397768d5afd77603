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

``sample`` is the public entry point: it checks every argument on the host (errors name the argument), then runs
``sample_groups``, which assumes checked inputs (the rollout engine checks its prompts once, on the host, before
they become device arrays).  Neither may be called inside a user's ``jax.jit``: the decode loop is its own
compiled program with a donated cache.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo.core import selection
from jaxgrpo.models import policy
from jaxgrpo.models.transformer import BITS, Transformer, as_bits, cast_params, positions_from_mask

FINISH_EOS = 0
FINISH_LENGTH = 1
_NEG = policy.NEG


def check_sampling(*, group_size: int, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                   name: Callable[[str], str] = str) -> None:
  """The one set of rules for sampling settings; ``name(field)`` says how an error names the field (an argument
  of ``sample`` here, a config key for ``train.config.SamplingSpec``)."""
  rules = (("group_size", group_size >= 1, ">= 1", group_size),
           ("max_new_tokens", max_new_tokens >= 1, ">= 1", max_new_tokens),
           ("temperature", temperature >= 0, ">= 0 (0 = greedy)", temperature),
           ("top_k", top_k >= 0, ">= 0 (0 = off)", top_k),
           ("top_p", 0 < top_p <= 1, "in (0, 1]", top_p))
  for field, ok, expected, value in rules:
    if not ok:
      raise ValueError(f"{name(field)} must be {expected}; got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
  """How to sample (hashable: a static argument of the compiled prefill and decode loop); checked when built."""

  group_size: int = 1  # G completions per prompt
  max_new_tokens: int = 128  # T, the completion buffer length
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  eos_ids: tuple[int, ...] = ()  # tokens that end a completion (kept in its mask)
  pad_id: int = 0  # written after a completion ends
  kv_dtype: str | None = None  # the KV cache's dtype (None: the model's compute dtype; "bfloat16" halves it)

  def __post_init__(self):
    check_sampling(group_size=self.group_size, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                   top_k=self.top_k, top_p=self.top_p)
    object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
    if self.kv_dtype is not None:
      check_kv_dtype(self.kv_dtype)


KV_DTYPES = ("float32", "bfloat16", "float16")


def check_kv_dtype(kv_dtype: str, name: str = "kv_dtype", backend: str | None = None) -> None:
  """A KV-cache dtype this library implements and the backend can compute in (float16 is refused on CPU, where
  XLA emulates it slowly)."""
  if kv_dtype not in KV_DTYPES:
    raise ValueError(f"{name} must be one of {list(KV_DTYPES)} or null (the compute dtype); got {kv_dtype!r}")
  backend = backend or jax.default_backend()
  if kv_dtype == "float16" and backend == "cpu":
    raise ValueError(f"{name} 'float16' is not supported on the cpu backend (XLA:CPU has no native float16 "
                     "arithmetic); use 'bfloat16'")


def cache_dtype(model: Transformer, sp: "SamplingParams"):
  """The KV cache's dtype: ``sp.kv_dtype``, else the model's compute dtype."""
  return jnp.dtype(sp.kv_dtype) if sp.kv_dtype else jnp.dtype(model.config.dtype)


class SampleOutput(NamedTuple):
  """What ``sample`` returns: B prompts × G completions × T = max_new_tokens positions."""

  tokens: jax.Array  # int32[B, G, T] completion tokens (pad_id after the end)
  mask: jax.Array  # int32[B, G, T] 1 on completion tokens, EOS included
  logprobs: jax.Array  # float32[B, G, T] log-prob of each sampled token under the distribution it was drawn from
  entropies: jax.Array  # float32[B, G, T] entropy of the policy at the sampling temperature (before top-k/top-p)
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
    # Row-local, no sort (core.selection: lax.top_k is a full sort per row on XLA:CPU, all-gathered when sharded).
    sampling = jnp.where(sampling < selection.kth_largest(sampling, sp.top_k), _NEG, sampling)
  if sp.top_p < 1.0:
    # The smallest set of top tokens with mass >= top_p (always the top token), ties with its last token kept.
    sampling = jnp.where(sampling < selection.top_p_threshold(sampling, sp.top_p), _NEG, sampling)
  return pol, sampling


entropy = policy.entropy


def sample_keys(rng: jax.Array, n: int) -> jax.Array:
  """One PRNG key per sample: ``fold_in(rng, i)`` for sample i = 0..n-1 (uint32[n, 2]).  A sample's tokens depend
  on its own key and its completion position only, never on which row or decode slot computed it."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n, dtype=jnp.uint32))


def row_uniforms(keys: jax.Array, position: jax.Array) -> jax.Array:
  """float32[N]: the uniform that draws the token at completion ``position`` (int32[N] or a scalar) of each row,
  from the rows' sample keys [N, 2]."""
  position = jnp.broadcast_to(jnp.asarray(position, jnp.uint32), keys.shape[:1])
  return jax.vmap(lambda k, j: jax.random.uniform(jax.random.fold_in(k, j), (), jnp.float32))(keys, position)


def categorical(logits: jax.Array, key: jax.Array, block: int = 128, *,
                uniforms: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Exact inverse-CDF sampling from softmax(logits), one uniform per row (drawn from ``key``, or given as
  ``uniforms`` float32[N] in [0, 1)).

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
  u = jax.random.uniform(key, (n,), jnp.float32) if uniforms is None else uniforms
  x = u * total
  nb = block_sums.shape[-1]
  j = jnp.minimum(jnp.sum(block_cdf <= x[:, None], axis=-1), nb - 1)
  before = jnp.take_along_axis(block_cdf - block_sums, j[:, None], axis=-1)[:, 0]
  inner = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]  # [N, block]
  i = jnp.minimum(jnp.sum(jnp.cumsum(inner, axis=-1) <= (x - before)[:, None], axis=-1), block - 1)
  token = j * block + i
  # Rounding can land on a zero-probability slot at a block edge: fall back to the row's mode (``selection.argmax``:
  # jnp.argmax's variadic reduce was two thirds of this function's time on XLA:CPU).
  ok = jnp.take_along_axis(w, token[:, None], axis=-1)[:, 0] > 0
  token = jnp.where(ok, token, selection.argmax(z))
  log_total = jnp.log(total)
  logp = jnp.take_along_axis(z, token[:, None], axis=-1)[:, 0] - log_total
  # H = log Σw − Σ w·z / Σw, reusing the exponentials (z = -inf-like entries have w = 0).
  ent = log_total - jnp.sum(jnp.where(w[:, :v] > 0, w[:, :v] * z, 0.0), axis=-1) / total
  return token.astype(jnp.int32), logp, ent


def sample_token(
    logits: jax.Array, rng: jax.Array | None, sp: SamplingParams, allowed: jax.Array | None = None, *,
    uniforms: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sample one token per row: (token int32[N], logprob float32[N], entropy float32[N]); the randomness is ``rng``
  (a key) or one given uniform per row (``uniforms``, see ``row_uniforms``)."""
  pol, sampling = process_logits(logits, sp, allowed)
  if sp.temperature == 0:
    token = selection.argmax(sampling)
    logp = jnp.take_along_axis(jax.nn.log_softmax(sampling, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logp, entropy(pol)
  token, logp, ent = categorical(sampling, rng, uniforms=uniforms)
  if sp.top_k or sp.top_p < 1.0:  # truncated: the policy's entropy needs its own pass
    ent = entropy(pol)
  return token, logp, ent


# ----------------------------------------------------------------------------- prefill and decode


def storage_dtype(dtype) -> jnp.dtype:
  """How a KV cache of ``dtype`` is stored: on XLA:CPU bf16 as its bits (uint16, ``models.transformer.BITS``: a
  layer scan over a bf16 cache converted it to float32 and back at every step), else as ``dtype``."""
  dtype = jnp.dtype(dtype)
  return BITS if dtype == jnp.bfloat16 and jax.default_backend() == "cpu" else dtype


def init_cache(model: Transformer, batch: int, length: int, dtype=None) -> dict[str, jax.Array]:
  """An empty KV cache (in ``dtype``, default the compute dtype; stored as ``storage_dtype``): {"k", "v"} each
  [L, B, KV, S, Dh]."""
  cfg = model.config
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  dtype = storage_dtype(cfg.dtype if dtype is None else dtype)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def decode_params(model: Transformer, params):
  """The params both engines run on.  On XLA:CPU: cast to the compute dtype once and bf16 leaves carried as their
  bits (``models.transformer.as_bits``) — with bf16 weights stacked over layers, XLA:CPU otherwise converts every
  layer's weights to float32 and back at every decode step (measured: more time than the matmuls).  Params already
  in that form, or in float32 for a float32 model, pass through without a copy; on other backends params pass
  through unchanged."""
  if jax.default_backend() != "cpu":
    return params
  dtype = jnp.dtype(model.config.dtype)
  floats = [x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == BITS]
  if all(d == (BITS if dtype == jnp.bfloat16 else dtype) for d in floats):
    return params
  return _cast_to_bits(params, dtype.name)


def sampling_form(model: Transformer, params):
  """``params`` (float leaves in any dtype) made once into what the engines run on, in one pass: on XLA:CPU
  ``decode_params`` (the compute dtype, bf16 as bits), elsewhere cast to the compute dtype.  Callers that sample
  many times with the same params (the trainer, ``evaluate_params``) call it once instead of a cast per call."""
  if jax.default_backend() == "cpu":
    return decode_params(model, params)
  return cast_params(params, model.config.dtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _cast_to_bits(params, dtype: str):
  return as_bits(cast_params(params, dtype))


@functools.partial(jax.jit, static_argnames=("model", "cache_len", "kv_dtype"))
def prefill(model: Transformer, params, prompt_ids: jax.Array, prompt_mask: jax.Array, cache_len: int,
            kv_dtype: str | None = None):
  """Run the prompts [B, P] once; returns (last-position logits [B, V], cache with P slots filled, in
  ``kv_dtype`` — default the compute dtype)."""
  b, p = prompt_ids.shape
  valid = prompt_mask.astype(bool)
  slots = jnp.arange(cache_len)
  causal = slots[None, None, :] <= jnp.arange(p)[None, :, None]
  mask = causal & jnp.pad(valid, ((0, 0), (0, cache_len - p)))[:, None, :]
  out = model.apply(
      {"params": params}, prompt_ids, positions_from_mask(prompt_mask), mask,
      init_cache(model, b, cache_len, None if kv_dtype is None else jnp.dtype(kv_dtype)), 0
  )
  return out.logits[:, -1], out.cache


def decode_step(model: Transformer, params, cache, tokens: jax.Array, positions: jax.Array, kv_valid: jax.Array, index):
  """One token per row at cache slot ``index``: returns (logits [N, V], cache).

  Args:
    tokens, positions: int32[N]; kv_valid: bool[N, S] slots holding real
      context (prompt tokens and generated tokens up to ``index``).
  """
  mask = (kv_valid & (jnp.arange(kv_valid.shape[-1]) <= index))[:, None, :]
  out = model.apply({"params": params}, tokens[:, None], positions[:, None], mask, cache, index)
  return out.logits[:, 0], out.cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeState:
  """The decode loop's state (N = B·G rows, S = P + T cache slots, T = max_new_tokens), donated between steps."""

  step: jax.Array  # int32[] decode steps taken (the next token's completion position)
  cache: dict  # KV cache {"k", "v"}: [L, N, KV, S, Dh] in the compute dtype
  logits: jax.Array  # float32[N, V] next-token logits
  kv_valid: jax.Array  # bool[N, S] slots holding real context (prompt tokens, then generated ones)
  tokens: jax.Array  # int32[N, T] sampled tokens so far (pad_id elsewhere)
  logprobs: jax.Array  # float32[N, T] their log-probs (0 elsewhere)
  entropies: jax.Array  # float32[N, T] the policy's entropies where they were drawn (0 elsewhere)
  done: jax.Array  # bool[N] the row has emitted an EOS id
  length: jax.Array  # int32[N] completion tokens so far (EOS included)
  keys: jax.Array  # uint32[N, 2] each row's sample key (``sample_keys``): the token at step j uses fold_in(key, j)


@functools.partial(jax.jit, static_argnames=("model", "sp", "allowed"), donate_argnames=("state",))
def _decode(model: Transformer, params, state: DecodeState, prompt_len: jax.Array, sp: SamplingParams,
            allowed: policy.AllowedIds) -> DecodeState:
  p = state.kv_valid.shape[-1] - sp.max_new_tokens
  eos = jnp.asarray(sp.eos_ids if sp.eos_ids else (-1,), jnp.int32)
  allowed_mask = policy.allowed_mask(model.config.vocab_size, allowed)

  def cond(s: DecodeState):
    return (s.step < sp.max_new_tokens) & ~jnp.all(s.done)

  def body(s: DecodeState):
    u = None if sp.temperature == 0 else row_uniforms(s.keys, s.step)
    tok, logp, ent = sample_token(s.logits, None, sp, allowed_mask, uniforms=u)
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
    return DecodeState(step=s.step + 1, cache=cache, logits=logits, kv_valid=kv_valid, tokens=tokens,
                       logprobs=logprobs, entropies=entropies, done=done, length=length, keys=s.keys)

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
    allowed_tokens=None,
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
    allowed_tokens: optional bool[V] mask or sequence of token ids; only these
      tokens can be sampled.
    row_sharding: optional sharding of the B·G decoded rows (e.g. over the
      data-parallel mesh axes); the decode loop then runs data-parallel.

  Returns:
    SampleOutput with arrays shaped [B, G, T] / [B, G].
  """
  if isinstance(prompt_ids, jax.core.Tracer) or isinstance(prompt_mask, jax.core.Tracer):
    raise ValueError("sampler.sample runs its own compiled prefill and decode loop: call it outside jax.jit / vmap "
                     "(its prompt_ids or prompt_mask is a tracer here)")
  sp = SamplingParams(group_size=int(group_size), max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                      top_k=int(top_k), top_p=float(top_p), eos_ids=tuple(int(e) for e in eos_ids), pad_id=int(pad_id))
  vocab = model.config.vocab_size
  for name, ids in (("eos_ids", sp.eos_ids), ("pad_id", (sp.pad_id,))):
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
      raise ValueError(f"{name} {bad} outside the vocabulary [0, {vocab})")
  if getattr(prompt_ids, "is_fully_addressable", True) and getattr(prompt_mask, "is_fully_addressable", True):
    validate_prompts(prompt_ids, prompt_mask, vocab)
  allowed = policy.allowed_ids(allowed_tokens, vocab)  # checked on the host: no device round trip per call
  return sample_groups(model, params, prompt_ids, prompt_mask, rng, sp, allowed, row_sharding)


def check_positions(model: Transformer, p: int, t: int) -> None:
  """Prompts of ``p`` positions and ``t`` new tokens must fit the model's positions (either engine)."""
  limit = model.config.max_position_embeddings
  if p + t > limit:
    raise ValueError(f"prompt length ({p}) + max_new_tokens ({t}) = {p + t} exceeds the model's "
                     f"max_position_embeddings ({limit}): the KV cache cannot hold it")


def sample_groups(model: Transformer, params, prompt_ids, prompt_mask, rng: jax.Array, sp: SamplingParams,
                  allowed: policy.AllowedIds = None,
                  row_sharding: jax.sharding.Sharding | None = None) -> SampleOutput:
  """``sample`` for inputs already checked (``validate_prompts``; ``allowed`` in ``models.policy``'s form)."""
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  b, p = prompt_ids.shape
  t = sp.max_new_tokens
  cache_len = p + t
  check_positions(model, p, t)
  params = decode_params(model, params)
  last_logits, cache = prefill(model, params, prompt_ids, prompt_mask, cache_len, sp.kv_dtype)
  state = _expand(last_logits, cache, prompt_mask, rng, sp, row_sharding)
  prompt_len = _rows(jnp.sum(prompt_mask, axis=-1).astype(jnp.int32), sp.group_size, row_sharding)
  out = _decode(model, params, state, prompt_len, sp, allowed)
  mask = (jnp.arange(t)[None, :] < out.length[:, None]).astype(jnp.int32)
  ended_eos = out.done & (out.length > 0)
  g = sp.group_size
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
def _expand(last_logits, cache, prompt_mask, rng, sp: SamplingParams, row_sharding) -> DecodeState:
  """The decode loop's initial state: the prompt's cache and logits shared by its G rows."""
  g = sp.group_size
  n = last_logits.shape[0] * g
  t = sp.max_new_tokens
  rows = lambda x, axis=0: jnp.repeat(x, g, axis=axis)
  constrain = lambda x, axis=0: x if row_sharding is None else jax.lax.with_sharding_constraint(
      x, _on_axis(row_sharding, x.ndim, axis))
  kv_valid = jnp.pad(prompt_mask.astype(bool), ((0, 0), (0, t)))
  return DecodeState(
      step=jnp.zeros((), jnp.int32),
      cache=jax.tree.map(lambda x: constrain(rows(x, 1), 1), cache),  # [L, B·G, KV, S, Dh]
      logits=constrain(rows(last_logits)),
      kv_valid=constrain(rows(kv_valid)),
      tokens=constrain(jnp.full((n, t), sp.pad_id, jnp.int32)),
      logprobs=constrain(jnp.zeros((n, t), jnp.float32)),
      entropies=constrain(jnp.zeros((n, t), jnp.float32)),
      done=constrain(jnp.zeros((n,), bool)),
      length=constrain(jnp.zeros((n,), jnp.int32)),
      keys=constrain(sample_keys(rng, n)),
  )


def _on_axis(row_sharding, ndim: int, axis: int):
  """``row_sharding`` (a NamedSharding of the row axis) moved to ``axis`` of an ndim-array."""
  spec = list(row_sharding.spec) + [None] * ndim
  lead = spec[0]
  out = [None] * ndim
  out[axis] = lead
  return jax.sharding.NamedSharding(row_sharding.mesh, jax.sharding.PartitionSpec(*out))


def lower(model: Transformer, params, prompt_ids: jax.ShapeDtypeStruct, sp: SamplingParams,
          row_sharding: jax.sharding.Sharding | None = None, allowed: policy.AllowedIds = None):
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
  pre = prefill.lower(model, params, prompt_ids, prompt_ids, p + t, sp.kv_dtype)
  rows = (lambda ndim, axis=0: None) if row_sharding is None else (lambda ndim, axis=0: _on_axis(row_sharding, ndim,
                                                                                                  axis))
  spec = lambda shape, dtype, axis=0: jax.ShapeDtypeStruct(shape, dtype, sharding=rows(len(shape), axis))
  cache = jax.eval_shape(lambda: init_cache(model, n, p + t, cache_dtype(model, sp)))
  cache = jax.tree.map(lambda c: spec(c.shape, c.dtype, 1), cache)
  state = DecodeState(step=jax.ShapeDtypeStruct((), jnp.int32), cache=cache,
                      logits=spec((n, cfg.vocab_size), jnp.float32), kv_valid=spec((n, p + t), bool),
                      tokens=spec((n, t), jnp.int32), logprobs=spec((n, t), jnp.float32),
                      entropies=spec((n, t), jnp.float32), done=spec((n,), bool), length=spec((n,), jnp.int32),
                      keys=spec((n, 2), jnp.uint32))
  dec = _decode.lower(model, params, state, spec((n,), jnp.int32), sp, allowed)
  return pre, dec, cache
