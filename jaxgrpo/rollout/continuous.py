"""Continuous batching: a fixed set of decode slots fed from a queue of samples, for long, ragged completions.

The static sampler (``sampler``) decodes all B·G rows until the longest ends, attends every step over the whole
preallocated cache (P + T slots), and copies each prompt's KV G times.  This engine instead:

* **slots and a queue** — ``slots`` decode rows; the B·G samples wait in a queue (sample i belongs to prompt i // G)
  and a slot whose sample ends (EOS or T tokens) takes the next one at once, on device: the decode loop
  (``lax.while_loop``, ``steps_per_call`` steps per host call) refills slots between steps without the host and
  without recompiling.  Once the queue is empty and at most half the slots are live, the live samples move to half
  as many slots (``compact``), so the tail of a long-tailed batch does not keep computing finished rows;
* **shared prompt KV** — each prompt is prefilled once into a prompt cache [L, B, KV, P, Dh]; a slot reads its
  prompt's keys through an index (``models.SlotMask.prompt_of``), so the G samples of a prompt share one copy.  A
  slot's own cache holds its completion only: [L, S, KV, T, Dh];
* **live-length reads** — each host call reads only the first ``read`` completion positions, ``read`` being the
  longest live completion plus the call's steps, rounded up to ``read_block`` or the next power of two: decode
  attention follows the live length (one compilation per bucket and slot count, reused across calls and steps).

Randomness is per sample (``sampler.sample_keys``: the token at completion position j of sample i is drawn with
``fold_in(fold_in(rng, i), j)``), exactly as in the static sampler, so a sample's tokens do not depend on the
slot that ran it or on ``slots``: for the same key the two engines return the same samples (up to float rounding
in the attention sums, which can flip a token only at a near-tie).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo.models import policy
from jaxgrpo.models.transformer import SlotMask, Transformer
from jaxgrpo.rollout import sampler
from jaxgrpo.rollout.sampler import SampleOutput, SamplingParams


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContinuousParams:
  """The continuous engine's own settings (hashable; checked when built)."""

  slots: int = 0  # decode slots (0: one per sample, B·G; more than B·G are never used)
  steps_per_call: int = 32  # decode steps per host call: the on-device loop between host checks
  read_block: int = 64  # the smallest completion-cache read; larger reads are powers of two (one compilation each)
  compact: bool = True  # queue empty and ≤ half the slots live: move the live samples to half as many slots
  min_slots: int = 16  # compaction stops here (below, a decode step costs about the same: it reads the weights)

  def __post_init__(self):
    for field, low in (("slots", 0), ("steps_per_call", 1), ("read_block", 1), ("min_slots", 1)):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}; got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineStats:
  """What a continuous call computed (host side), for benchmarks and metrics."""

  samples: int  # B·G
  useful_tokens: int  # completion tokens returned (Σ lengths)
  slot_steps: int  # rows decoded, summed over decode steps (idle slots included): the tokens computed
  decode_steps: int  # decode steps taken
  host_calls: int  # decode-loop calls (each up to steps_per_call steps)
  slot_counts: tuple[int, ...]  # the slot count of each call (compaction halves it)
  reads: tuple[int, ...]  # the completion positions read by each call

  @property
  def useful_frac(self) -> float:
    """Useful tokens / computed tokens."""
    return self.useful_tokens / max(self.slot_steps, 1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptContext:
  """What every slot reads and nobody writes (B prompts of P positions, N = B·G samples)."""

  cache: dict  # {"prompt_k", "prompt_v"}: [L, B, KV, P, Dh] each prompt's KV, once (the KV dtype)
  valid: jax.Array  # bool[B, P] real prompt positions (left padding False)
  length: jax.Array  # int32[B] prompt lengths (a completion token's position is length + its index)
  logits: jax.Array  # float32[B, V] next-token logits after each prompt (a new sample's first logits)
  keys: jax.Array  # uint32[N, 2] per-sample PRNG keys (``sampler.sample_keys``)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SlotState:
  """The decode loop's state (S slots, N samples, T = max_new_tokens), donated between calls."""

  cache: dict  # {"k", "v"}: [L, S, KV, T, Dh] each slot's completion KV (the KV dtype)
  sample: jax.Array  # int32[S] the sample each slot decodes (−1: idle)
  length: jax.Array  # int32[S] completion tokens the slot's sample has so far
  logits: jax.Array  # float32[S, V] each slot's next-token logits
  next: jax.Array  # int32[] the next sample in the queue (N: empty)
  steps: jax.Array  # int32[] decode steps taken in this call
  slot_steps: jax.Array  # int32[] rows decoded so far, summed over steps (idle slots included)
  tokens: jax.Array  # int32[N, T] sampled tokens per sample (pad_id after the end)
  logprobs: jax.Array  # float32[N, T] their log-probs under the sampling distribution (0 elsewhere)
  entropies: jax.Array  # float32[N, T] the policy's entropies where they were drawn (0 elsewhere)
  lengths: jax.Array  # int32[N] completion lengths (EOS included)
  eos: jax.Array  # bool[N] the sample ended with an EOS id


def _bucket(n: int, block: int, cap: int) -> int:
  """The read length for ``n`` positions: ``block``, then powers of two (few buckets: few compilations), ≤ cap."""
  return min(cap, max(block, 1 << (max(n, 1) - 1).bit_length()))


@functools.partial(jax.jit, static_argnames=("model", "n", "kv_dtype"))
def _prefill(model: Transformer, params, prompt_ids, prompt_mask, rng, n: int, kv_dtype=None):
  logits, cache = sampler.prefill(model, params, prompt_ids, prompt_mask, prompt_ids.shape[1], kv_dtype)
  return PromptContext(cache={"prompt_k": cache["k"], "prompt_v": cache["v"]}, valid=prompt_mask.astype(bool),
                       length=jnp.sum(prompt_mask, axis=-1).astype(jnp.int32), logits=logits,
                       keys=sampler.sample_keys(rng, n))


@functools.partial(jax.jit, static_argnames=("model", "slots", "sp"))
def _start(model: Transformer, ctx: PromptContext, slots: int, sp: SamplingParams) -> SlotState:
  cfg = model.config
  n, t, g = ctx.keys.shape[0], sp.max_new_tokens, sp.group_size
  sample = jnp.where(jnp.arange(slots) < n, jnp.arange(slots), -1).astype(jnp.int32)
  shape = (cfg.num_layers, slots, cfg.num_kv_heads, t, cfg.head_dim)
  dtype = sampler.cache_dtype(model, sp)
  return SlotState(
      cache={"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)},
      sample=sample, length=jnp.zeros((slots,), jnp.int32),
      logits=jnp.take(ctx.logits, jnp.maximum(sample, 0) // g, axis=0),
      next=jnp.asarray(min(slots, n), jnp.int32), steps=jnp.zeros((), jnp.int32),
      slot_steps=jnp.zeros((), jnp.int32),
      tokens=jnp.full((n, t), sp.pad_id, jnp.int32), logprobs=jnp.zeros((n, t), jnp.float32),
      entropies=jnp.zeros((n, t), jnp.float32), lengths=jnp.zeros((n,), jnp.int32), eos=jnp.zeros((n,), bool))


@functools.partial(jax.jit, static_argnames=("model", "sp", "allowed", "steps_per_call", "read"),
                   donate_argnames=("state",))
def _run(model: Transformer, params, ctx: PromptContext, state: SlotState, sp: SamplingParams,
         allowed: policy.AllowedIds, steps_per_call: int, read: int) -> SlotState:
  """Up to ``steps_per_call`` decode steps of every slot, refilling ended slots from the queue."""
  n, t, g = ctx.keys.shape[0], sp.max_new_tokens, sp.group_size
  eos_ids = jnp.asarray(sp.eos_ids if sp.eos_ids else (-1,), jnp.int32)
  allowed_mask = policy.allowed_mask(model.config.vocab_size, allowed)

  def cond(s: SlotState):
    return (s.steps < steps_per_call) & jnp.any(s.sample >= 0)

  def body(s: SlotState):
    live = s.sample >= 0
    sid = jnp.maximum(s.sample, 0)
    u = None if sp.temperature == 0 else sampler.row_uniforms(jnp.take(ctx.keys, sid, axis=0), s.length)
    tok, logp, ent = sampler.sample_token(s.logits, None, sp, allowed_mask, uniforms=u)
    tok = jnp.where(live, tok, sp.pad_id)
    out_row = jnp.where(live, sid, n)  # idle slots write nowhere (index n is dropped)
    put = lambda buf, v: buf.at[out_row, s.length].set(v, mode="drop")
    new_len = s.length + live.astype(jnp.int32)
    hit_eos = live & jnp.isin(tok, eos_ids)
    ended = live & (hit_eos | (new_len >= t))
    prompt = sid // g
    mask = SlotMask(prompt_of=prompt, prompt_valid=ctx.valid, length=s.length, read=read)
    positions = jnp.take(ctx.length, prompt) + s.length
    out = model.apply({"params": params}, tok[:, None], positions[:, None], mask, {**ctx.cache, **s.cache}, 0)
    # refill: the k-th ended slot takes queue entry next + k (while the queue lasts)
    rank = jnp.cumsum(ended.astype(jnp.int32)) - 1
    new_sid = s.next + rank
    refill = ended & (new_sid < n)
    sample = jnp.where(refill, new_sid, jnp.where(ended, -1, s.sample)).astype(jnp.int32)
    logits = jnp.where(refill[:, None], jnp.take(ctx.logits, jnp.minimum(new_sid, n - 1) // g, axis=0),
                       out.logits[:, 0])
    return SlotState(
        cache={"k": out.cache["k"], "v": out.cache["v"]}, sample=sample,
        length=jnp.where(ended, 0, new_len), logits=logits,
        next=jnp.minimum(s.next + jnp.sum(ended.astype(jnp.int32)), n).astype(jnp.int32),
        steps=s.steps + 1, slot_steps=s.slot_steps + s.sample.shape[0],
        tokens=put(s.tokens, tok), logprobs=put(s.logprobs, jnp.where(live, logp, 0.0)),
        entropies=put(s.entropies, jnp.where(live, ent, 0.0)),
        lengths=s.lengths.at[out_row].set(new_len, mode="drop"),
        eos=s.eos.at[out_row].set(hit_eos, mode="drop"))

  return jax.lax.while_loop(cond, body, dataclasses.replace(state, steps=jnp.zeros((), jnp.int32)))


@functools.partial(jax.jit, static_argnames=("slots",))
def _compact(state: SlotState, slots: int) -> SlotState:
  """The live slots moved to the first ``slots`` rows (they must fit)."""
  order = jnp.argsort(jnp.where(state.sample >= 0, 0, 1), stable=True)[:slots]
  take = lambda x, axis=0: jnp.take(x, order, axis=axis)
  return dataclasses.replace(state, cache=jax.tree.map(lambda c: take(c, 1), state.cache), sample=take(state.sample),
                             length=take(state.length), logits=take(state.logits))


@jax.jit
def _progress(state: SlotState):
  live = state.sample >= 0
  return jnp.stack([jnp.sum(live.astype(jnp.int32)), jnp.max(jnp.where(live, state.length, 0)), state.next,
                    state.steps, state.slot_steps])


def sample_groups(model: Transformer, params, prompt_ids, prompt_mask, rng: jax.Array, sp: SamplingParams,
                  allowed: policy.AllowedIds = None,
                  cp: ContinuousParams = ContinuousParams()) -> tuple[SampleOutput, EngineStats]:
  """``sampler.sample_groups`` with continuous batching: the same ``SampleOutput`` (for inputs already checked:
  ``sampler.validate_prompts``), and what was computed.  Runs on one device (params and prompts there)."""
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  b, p = prompt_ids.shape
  g, t = sp.group_size, sp.max_new_tokens
  n = b * g
  sampler.check_positions(model, p, t)
  slots = min(cp.slots or n, n)
  ctx = _prefill(model, params, prompt_ids, prompt_mask, rng, n, sp.kv_dtype)
  state = _start(model, ctx, slots, sp)
  live, longest, queued, steps, slot_steps = slots, 0, slots, 0, 0
  counts, reads, decode_steps = [], [], 0
  while live:
    if cp.compact and queued >= n and live <= slots // 2 and slots // 2 >= cp.min_slots:
      slots = max(cp.min_slots, 1 << (live - 1).bit_length())  # the next power of two ≥ live
      state = _compact(state, slots)
    read = _bucket(longest + cp.steps_per_call, cp.read_block, t)
    state = _run(model, params, ctx, state, sp, allowed, cp.steps_per_call, read)
    counts.append(slots)
    reads.append(read)
    live, longest, queued, steps, slot_steps = (int(x) for x in np.asarray(_progress(state)))
    decode_steps += steps
  out = _outputs(state, b, g)
  stats = EngineStats(samples=n, useful_tokens=int(np.asarray(jnp.sum(state.lengths))), slot_steps=slot_steps,
                      decode_steps=decode_steps, host_calls=len(counts), slot_counts=tuple(counts),
                      reads=tuple(reads))
  return out, stats


@functools.partial(jax.jit, static_argnames=("b", "g"))
def _outputs(state: SlotState, b: int, g: int) -> SampleOutput:
  t = state.tokens.shape[1]
  mask = (jnp.arange(t)[None, :] < state.lengths[:, None]).astype(jnp.int32)
  finish = jnp.where(state.eos, sampler.FINISH_EOS, sampler.FINISH_LENGTH).astype(jnp.int32)
  return SampleOutput(tokens=state.tokens.reshape(b, g, t), mask=mask.reshape(b, g, t),
                      logprobs=state.logprobs.reshape(b, g, t), entropies=state.entropies.reshape(b, g, t),
                      lengths=state.lengths.reshape(b, g), finish_reason=finish.reshape(b, g))


def kv_bytes(model: Transformer, sp: SamplingParams, prompts: int, prompt_len: int, slots: int) -> dict[str, int]:
  """KV-cache bytes of both engines for ``prompts`` prompts of ``prompt_len`` positions: the static sampler's
  (P + T slots for each of B·G rows) and this engine's (P per prompt, once, plus T per slot)."""
  cfg = model.config
  per_pos = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * sampler.cache_dtype(model, sp).itemsize
  n, t = prompts * sp.group_size, sp.max_new_tokens
  slots = min(slots or n, n)
  return {"static": per_pos * n * (prompt_len + t),
          "continuous": per_pos * (prompts * prompt_len + slots * t)}
