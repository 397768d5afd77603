"""Continuous batching: a fixed set of decode slots fed from a queue of samples, for long, ragged completions.

The static sampler (``sampler``) decodes all B·G rows until the longest ends, attends every step over the whole
preallocated cache (P + T slots), and copies each prompt's KV G times.  This engine instead:

* **slots and a queue** — ``slots`` decode rows; the B·G samples wait in a queue (sample i belongs to prompt i // G)
  and a slot whose sample ends (EOS or T tokens) takes the next one at once, on device: the decode loop
  (``lax.while_loop``, ``steps_per_call`` steps per host call) refills slots between steps without the host and
  without recompiling.  Once the queue is empty and at most half the slots are live, the live samples move to half
  as many slots (``compact``), so the tail of a long-tailed batch does not keep computing finished rows;
* **shared prompt KV** — each prompt is prefilled once into a prompt cache [L, B, KV, P, Dh]; a slot reads its
  prompt's keys through an index (``models.SlotMask.prompt_of``), so the G samples of a prompt share one copy.  With
  one slot per sample (``slots`` 0) the slots stay prompt-major until the first compaction, and a decode step reads
  each prompt's keys once for the G·H/KV queries of its samples (``SlotMask.group``) instead of gathering a copy per
  slot.  A slot's own cache holds its completion only;
* **KV layout** (``kv_layout``) — ``layers`` (the default): one buffer per layer holding each slot's tokens before
  the host call, sized to the call's read and written only between calls (``_merged``, one layer at a time), plus
  a per-call buffer of ``steps_per_call`` columns that every step writes, the layers unrolled
  (``models.decode_slots``): nothing is copied per step (1.22× the tokens/s of ``stacked`` on SmolLM2's word
  problems in bf16, 1.10× in f32, 1.05× at fixed length; experiments/README.md §8).  ``stacked``: [L, S, KV, T, Dh]
  per K and V, T long, read by a layer scan (the model's own ``SlotMask`` path) that copies each layer's read window
  every step (a stacked cache resized to the bucket between calls measured 0.93–1.00×: the layer slice still
  copies; experiments/bench_decode_cache.py);
* **decode attention kernel** (``decode_kernel``) — with the layers layout and a bf16 KV cache on XLA:CPU, the
  attention over the slots' completion KV runs in ``jaxgrpo.kernels.decode_attention`` (C++ through ``jax.ffi``,
  AVX512-BF16 pair dots, each slot's live positions only; the earlier tokens stored in its pair layouts): 1.20× the
  tokens/s of XLA's ops on the word problems, 1.12× at fixed length (experiments/README.md §8); ``auto`` falls back
  to XLA's ops wherever it cannot run;
* **live-length reads** — each host call reads only the completion positions its samples can reach: the longest
  live completion (``layers``: plus the call buffer; ``stacked``: plus the call's steps), rounded up to
  ``read_block`` or the next 2^k or 3·2^k (``read_growth``; 1.09× the tokens/s of powers of two on SmolLM2's word
  problems, experiments/bench_read_growth.py): decode attention follows the live length (one compilation per
  bucket and slot count, reused across calls and steps).

Randomness is per sample (``sampler.sample_keys``: the token at completion position j of sample i is drawn with
``fold_in(fold_in(rng, i), j)``), exactly as in the static sampler, so a sample's tokens do not depend on the
slot that ran it or on ``slots``: for the same key the two engines return the same samples (up to float rounding
in the attention sums, which can flip a token only at a near-tie).

On several devices (``mesh`` and its row ``axes``) the engine is data-parallel: each device runs its own slots and
queue on its share of the prompts (``shard_map``; nothing crosses devices inside the decode loop) with a replicated
copy of the parameters; the host loop reads every device's progress and compacts all devices to the same slot count.
A sample's key is still ``fold_in(rng, i)`` with i its global index, so the output does not depend on the device
count either.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo import kernels
from jaxgrpo.models import policy
from jaxgrpo.models.transformer import SlotMask, Transformer, decode_slots, from_bits, split_layers, to_storage
from jaxgrpo.parallel import distributed as dist
from jaxgrpo.rollout import sampler
from jaxgrpo.rollout.sampler import SampleOutput, SamplingParams


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContinuousParams:
  """The continuous engine's own settings (hashable; checked when built)."""

  slots: int = 0  # decode slots (0: one per sample, B·G; more than B·G are never used)
  steps_per_call: int = 32  # decode steps per host call: the on-device loop between host checks
  read_block: int = 64  # the smallest completion-cache read (one compilation per read length used)
  # how reads grow past read_block: pow2 (powers of two) | half_octave (2^k and 3·2^k) | linear (multiples of
  # read_block: the tightest reads, one compilation per read_block of max_new_tokens)
  read_growth: str = "half_octave"
  compact: bool = True  # queue empty and ≤ half the slots live: move the live samples to half as many slots
  min_slots: int = 16  # compaction stops here (below, a decode step costs about the same: it reads the weights)
  # one slot per sample (slots 0): keep the slots prompt-major and read each prompt's KV once for its G slots
  # until the first compaction (False: gather each slot's prompt KV, the earlier path; benchmarks compare the two)
  prompt_major: bool = True
  # where the slots' KV lives: layers (one buffer per layer of the tokens before the host call, sized to its read,
  # plus a per-call buffer; the layers unrolled: nothing copied per step; 1.22x tokens/s on the word problems in
  # bf16, experiments/README.md §8) | stacked ([L, S, KV, T, Dh], a layer scan copying each layer's read window)
  kv_layout: str = "layers"
  # the layers layout's decode attention over the slots' completion KV: auto (the C++ kernel of jaxgrpo.kernels on
  # XLA:CPU with a bf16 KV cache where it builds, else XLA's ops) | xla | cpu (the kernel, refused where it cannot
  # run).  The kernel reads each slot's live positions only; experiments/README.md §8
  decode_kernel: str = "auto"

  def __post_init__(self):
    for field, low in (("slots", 0), ("steps_per_call", 1), ("read_block", 1), ("min_slots", 1)):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}; got {value!r}")
    if self.kv_layout not in KV_LAYOUTS:
      raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}; got {self.kv_layout!r}")
    if self.decode_kernel not in DECODE_KERNELS:
      raise ValueError(f"decode_kernel must be one of {DECODE_KERNELS}; got {self.decode_kernel!r}")
    if self.read_growth not in READ_GROWTHS:
      raise ValueError(f"read_growth must be one of {READ_GROWTHS}; got {self.read_growth!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineStats:
  """What a continuous call computed (host side), for benchmarks and metrics."""

  samples: int  # B·G
  useful_tokens: int  # completion tokens returned (Σ lengths)
  slot_steps: int  # rows decoded, summed over decode steps (idle slots included): the tokens computed
  decode_steps: int  # decode steps taken (per call, the most any device took)
  host_calls: int  # decode-loop calls (each up to steps_per_call steps)
  slot_counts: tuple[int, ...]  # the slot count of each call, over all devices (compaction halves it)
  reads: tuple[int, ...]  # the completion positions read by each call (layers layout: the read + the call buffer)
  groups: tuple[int, ...] = ()  # per call: G where slots were prompt-major (one prompt-KV read per group), else 0
  devices: int = 1  # devices the slots are split over (data-parallel; counts and steps above are over all)
  decode_kernel: str = "xla"  # what ran the completion part of decode attention: xla | cpu (jaxgrpo.kernels)

  @property
  def useful_frac(self) -> float:
    """Useful tokens / computed tokens."""
    return self.useful_tokens / max(self.slot_steps, 1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptContext:
  """What every slot reads and nobody writes (B prompts of P positions, N samples; on several devices, per device:
  the prompts its samples belong to and its share of the samples)."""

  # {"prompt_k", "prompt_v"}: [L, B, KV, P, Dh] each prompt's KV, once (the KV dtype); layers layout: a tuple of L
  # such dicts of [B, KV, P, Dh]
  cache: dict | tuple
  valid: jax.Array  # bool[B, P] real prompt positions (left padding False)
  length: jax.Array  # int32[B] prompt lengths (a completion token's position is length + its index)
  logits: jax.Array  # float32[B, V] next-token logits after each prompt (a new sample's first logits)
  keys: jax.Array  # uint32[N, 2] per-sample PRNG keys (``sampler.sample_keys``)
  prompt_of: jax.Array  # int32[N] each sample's prompt (an index into the B prompts above)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SlotState:
  """The decode loop's state (S slots, N samples, T = max_new_tokens), donated between calls."""

  # stacked layout: {"k", "v"} [L, S, KV, T, Dh] each slot's completion KV (the KV dtype).  layers layout: a tuple
  # of L {"k", "v": [S, KV, R, Dh] the slot's tokens before this call (the KV dtype, R the call's read; with the CPU
  # kernel bf16 in its pair layouts, R rounded up to even: ``kernels.pair_keys``/``pair_values``), "ring_k" [S, KV,
  # Dh, J], "ring_v" [S, KV, J, Dh]: its tokens of this call (J = steps_per_call; ``_ring_dtype``)}
  cache: dict | tuple
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
  ring_from: jax.Array  # int32[S] layers layout: each slot's first call-buffer column of its current sample


READ_GROWTHS = ("pow2", "half_octave", "linear")
KV_LAYOUTS = ("layers", "stacked")
DECODE_KERNELS = ("auto", "xla", "cpu")


def _bucket(n: int, block: int, cap: int, growth: str) -> int:
  """The read length for ``n`` positions, ≤ cap: at least ``block``, then the next power of two (``pow2``), the
  next 2^k or 3·2^k (``half_octave``: reads at most 1.5× the need instead of 2×, twice the compilations), or the
  next multiple of ``block`` (``linear``: one compilation per block of T)."""
  n = max(n, 1)
  if growth == "linear":
    return min(cap, max(block, -(-n // block) * block))
  up = 1 << (n - 1).bit_length()  # the next power of two ≥ n
  if growth == "half_octave" and n <= 3 * up // 4:
    up = 3 * up // 4
  return min(cap, max(block, up))


def _off_buckets(p: int, block: int, cap: int, growth: str) -> int:
  """How many masked columns to add to prompts of ``p`` positions so their cache length is no read bucket: in f32,
  a decode step whose prompt part and completion part have the same length ran 3–5× slower on XLA:CPU (SmolLM2, 64
  slots: 620–740 ms against 150–240 ms at prompt lengths 41, 56, 65, 72, 96 for the same read of 64; the same at
  128; f32 sampling with 64-token prompts 1.84× faster padded, experiments/bench_decode_cache.py).  One more
  masked position costs nothing measurable."""
  return int(_bucket(p, block, cap, growth) == p)


# ----------------------------------------------------------------------------- one device's engine
# Each function below is what one device runs on its own share (B/D prompts, their N/D samples, S slots).


def _prefill_local(model: Transformer, params, prompt_ids, prompt_mask, keys, prompt_of, kv_dtype,
                   layout: str) -> PromptContext:
  logits, cache = sampler.prefill(model, params, prompt_ids, prompt_mask, prompt_ids.shape[1], kv_dtype)
  if layout == "layers":
    pc = tuple({"prompt_k": from_bits(cache["k"][i]), "prompt_v": from_bits(cache["v"][i])}
               for i in range(cache["k"].shape[0]))
  else:
    pc = {"prompt_k": cache["k"], "prompt_v": cache["v"]}
  return PromptContext(cache=pc, valid=prompt_mask.astype(bool),
                       length=jnp.sum(prompt_mask, axis=-1).astype(jnp.int32), logits=logits, keys=keys,
                       prompt_of=prompt_of)


def _start_local(model: Transformer, ctx: PromptContext, slots: int, sp: SamplingParams, layout: str,
                 steps: int, kernel: bool = False) -> SlotState:
  cfg = model.config
  n, t = ctx.keys.shape[0], sp.max_new_tokens
  sample = jnp.where(jnp.arange(slots) < n, jnp.arange(slots), -1).astype(jnp.int32)
  if layout == "layers":  # nothing decoded yet (0 columns) and a call buffer of ``steps`` columns
    dtype = sampler.cache_dtype(model, sp)
    zeros = lambda *shape, dt: jnp.zeros((slots, cfg.num_kv_heads, *shape), dt)
    ring = _ring_dtype(dtype)
    dh = cfg.head_dim
    k0, v0 = (zeros(dh // 2, 0, 2, dt=dtype), zeros(0, dh, 2, dt=dtype)) if kernel else (zeros(0, dh, dt=dtype),) * 2
    cache = tuple({"k": k0, "v": v0, "ring_k": zeros(dh, steps, dt=ring), "ring_v": zeros(steps, dh, dt=ring)}
                  for _ in range(cfg.num_layers))
  else:
    shape = (cfg.num_layers, slots, cfg.num_kv_heads, t, cfg.head_dim)
    dtype = sampler.storage_dtype(sampler.cache_dtype(model, sp))
    cache = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  return SlotState(
      cache=cache,
      sample=sample, length=jnp.zeros((slots,), jnp.int32),
      logits=jnp.take(ctx.logits, jnp.take(ctx.prompt_of, jnp.maximum(sample, 0)), axis=0),
      next=jnp.asarray(min(slots, n), jnp.int32), steps=jnp.zeros((), jnp.int32),
      slot_steps=jnp.zeros((), jnp.int32),
      tokens=jnp.full((n, t), sp.pad_id, jnp.int32), logprobs=jnp.zeros((n, t), jnp.float32),
      entropies=jnp.zeros((n, t), jnp.float32), lengths=jnp.zeros((n,), jnp.int32), eos=jnp.zeros((n,), bool),
      ring_from=jnp.zeros((slots,), jnp.int32))


def _run_local(model: Transformer, params, ctx: PromptContext, state: SlotState, sp: SamplingParams,
               allowed: policy.AllowedIds, steps_per_call: int, read: int, group: int,
               kernel: bool = False) -> SlotState:
  """Up to ``steps_per_call`` decode steps of every slot, refilling ended slots from the queue; ``group`` > 0: the
  slots are prompt-major (slot s runs sample s, of prompt s // group; no queue), so each prompt's KV is read once
  for its slots (``SlotMask.group``)."""
  n, t = ctx.keys.shape[0], sp.max_new_tokens
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
    prompt = jnp.take(ctx.prompt_of, sid)
    ring = isinstance(s.cache, tuple)
    mask = SlotMask(prompt_of=prompt, prompt_valid=ctx.valid, length=s.length, read=read, group=group,
                    step=s.steps if ring else None, ring_from=s.ring_from if ring else None, kernel=kernel)
    positions = jnp.take(ctx.length, prompt) + s.length
    if ring:
      next_logits, new_cache = decode_slots(model, *params, tok[:, None], positions[:, None], mask, ctx.cache,
                                            s.cache)
    else:
      out = model.apply({"params": params}, tok[:, None], positions[:, None], mask, {**ctx.cache, **s.cache}, 0)
      next_logits, new_cache = out.logits[:, 0], {"k": out.cache["k"], "v": out.cache["v"]}
    # refill: the k-th ended slot takes queue entry next + k (while the queue lasts)
    rank = jnp.cumsum(ended.astype(jnp.int32)) - 1
    new_sid = s.next + rank
    refill = ended & (new_sid < n)
    sample = jnp.where(refill, new_sid, jnp.where(ended, -1, s.sample)).astype(jnp.int32)
    new_prompt = jnp.take(ctx.prompt_of, jnp.minimum(new_sid, n - 1))
    logits = jnp.where(refill[:, None], jnp.take(ctx.logits, new_prompt, axis=0),
                       next_logits)
    return SlotState(
        cache=new_cache, sample=sample,
        length=jnp.where(ended, 0, new_len), logits=logits,
        next=jnp.minimum(s.next + jnp.sum(ended.astype(jnp.int32)), n).astype(jnp.int32),
        steps=s.steps + 1, slot_steps=s.slot_steps + s.sample.shape[0],
        tokens=put(s.tokens, tok), logprobs=put(s.logprobs, jnp.where(live, logp, 0.0)),
        entropies=put(s.entropies, jnp.where(live, ent, 0.0)),
        lengths=s.lengths.at[out_row].set(new_len, mode="drop"),
        eos=s.eos.at[out_row].set(hit_eos, mode="drop"),
        ring_from=jnp.where(refill, s.steps + 1, s.ring_from) if ring else s.ring_from)

  return jax.lax.while_loop(cond, body, dataclasses.replace(state, steps=jnp.zeros((), jnp.int32)))


def _compact_local(state: SlotState, slots: int) -> SlotState:
  """The live slots moved to the first ``slots`` rows (they must fit)."""
  order = jnp.argsort(jnp.where(state.sample >= 0, 0, 1), stable=True)[:slots]
  take = lambda x, axis=0: jnp.take(x, order, axis=axis)
  axis = 0 if isinstance(state.cache, tuple) else 1
  return dataclasses.replace(state, cache=jax.tree.map(lambda c: take(c, axis), state.cache),
                             sample=take(state.sample), ring_from=take(state.ring_from),
                             length=take(state.length), logits=take(state.logits))


def _progress_local(state: SlotState) -> jax.Array:
  live = state.sample >= 0
  return jnp.stack([jnp.sum(live.astype(jnp.int32)), jnp.max(jnp.where(live, state.length, 0)), state.next,
                    state.steps, state.slot_steps])


# ----------------------------------------------------------------------------- D devices, data-parallel
# Every device runs its own slots and queue on its B/D prompts (shard_map over the row axes; no collective inside
# the decode loop, so a device whose samples end first just stops).  Device-side records carry a leading axis of
# D (one entry per device, sharded over the row axes); parameters are replicated (gathered once per call).


def _lead(axes: tuple[str, ...]):
  return None if not axes else (axes[0] if len(axes) == 1 else axes)


def _per_device(fn, mesh, axes, replicated: int):
  """``fn`` run on every device: its first ``replicated`` arguments replicated, the rest (and the result) pytrees
  whose leaves carry the leading device axis."""
  spec = jax.sharding.PartitionSpec(_lead(axes))

  def inner(*args):
    local = jax.tree.map(lambda x: x[0], args[replicated:])
    return jax.tree.map(lambda x: x[None], fn(*args[:replicated], *local))

  def call(*args):
    specs = (jax.sharding.PartitionSpec(),) * replicated + (spec,) * (len(args) - replicated)
    return jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(*args)

  return call


def _shares(b: int, g: int, d: int) -> tuple[int, np.ndarray, np.ndarray]:
  """How N = B·G samples split over D devices: each device takes ⌈N/D⌉ consecutive samples (the last device's
  tail past N are dummies of the last prompt, dropped) and prefills the prompts they belong to.  Returns (samples
  per device, int32[D, Bd] the prompts each device prefills, int32[D, ⌈N/D⌉] each sample's index among them)."""
  n_local = -(-b * g // d)
  sample = np.arange(d * n_local).reshape(d, n_local)
  prompt = np.minimum(sample // g, b - 1)
  first = prompt[:, 0]
  per_device = int((prompt[:, -1] - first).max()) + 1
  prompts = np.minimum(first[:, None] + np.arange(per_device)[None], b - 1).astype(np.int32)
  return n_local, prompts, (prompt - first[:, None]).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("model", "g", "kv_dtype", "mesh", "axes", "layout"))
def _prefill(model: Transformer, params, prompt_ids, prompt_mask, rng, g: int, kv_dtype, mesh, axes,
             layout: str = "stacked"):
  """Prompts [B, P] → the per-device contexts of their B·G samples (``_shares``); sample i's key is
  ``fold_in(rng, i)`` wherever it runs."""
  d = _devices(mesh, axes)
  b = prompt_ids.shape[0]
  n_local, prompts, prompt_of = _shares(b, g, d)
  keys = sampler.sample_keys(rng, d * n_local).reshape(d, n_local, 2)
  fn = lambda params, ids, mask, keys, of: _prefill_local(model, params, ids, mask, keys, of, kv_dtype, layout)
  take = lambda x: jnp.take(x, jnp.asarray(prompts), axis=0)  # [D, Bd, P]
  return _per_device(fn, mesh, axes, 1)(params, take(prompt_ids), take(prompt_mask), keys, jnp.asarray(prompt_of))


@functools.partial(jax.jit, static_argnames=("model", "slots", "sp", "mesh", "axes", "layout", "steps", "kernel"))
def _start(model: Transformer, ctx: PromptContext, slots: int, sp: SamplingParams, mesh, axes, layout="stacked",
           steps: int = 0, kernel: bool = False) -> SlotState:
  return _per_device(lambda c: _start_local(model, c, slots, sp, layout, steps, kernel), mesh, axes, 0)(ctx)


def _ring_dtype(dtype) -> jnp.dtype:
  """The call buffers' dtype for a cache of ``dtype``: on XLA:CPU float32 for a 16-bit cache (a bf16 buffer that
  the loop writes is written through float32, whole buffer, every step; kept as bits, it is copied before every
  read and around every write — float32 is written in place and read by the dots as it is), else ``dtype``."""
  dtype = jnp.dtype(dtype)
  return jnp.dtype(jnp.float32) if jax.default_backend() == "cpu" and dtype.itemsize == 2 else dtype


def _merge_local(buf, ring, length, ring_from, steps, read: int):
  """One layer's K or V after a host call of ``steps`` steps: what each slot decoded before the call (``buf`` [S,
  KV, R, Dh], the cache dtype) then its tokens in the call buffer (``ring`` [S, KV, J, Dh], the storage dtype:
  from column ``ring_from``) as one buffer of the slot's first ``read`` completion positions (≥ the longest
  live).  Moved as stored bits (a gather, no float math)."""
  r = buf.shape[2]
  before = length - (steps - ring_from)  # [S]
  c = jnp.arange(read)[None, :]
  src = jnp.where(c < before[:, None], c, r + ring_from[:, None] + c - before[:, None])
  src = jnp.clip(src, 0, r + ring.shape[2] - 1)  # past a slot's length: anything already there (masked)
  bits = sampler.storage_dtype(buf.dtype)
  both = jnp.concatenate([to_storage(buf, bits), to_storage(ring.astype(buf.dtype), bits)], axis=2)
  return from_bits(jnp.take_along_axis(both, src[:, None, :, None], axis=2)).astype(buf.dtype)


def _merge_layout(buf, ring, length, ring_from, steps, read: int, name: str, kernel: bool):
  """``_merge_local`` of one layer's keys (``name`` "k": the call buffer transposed, [S, KV, Dh, J]) or values
  ("v") in their stored layouts: with ``kernel``, the CPU kernel's pair layouts, ``read`` rounded up to even."""
  if name == "k":
    ring = ring.swapaxes(-1, -2)
  if not kernel:
    return _merge_local(buf, ring, length, ring_from, steps, read)
  pair, unpair = ((kernels.pair_keys, kernels.unpair_keys) if name == "k" else
                  (kernels.pair_values, kernels.unpair_values))
  return pair(_merge_local(unpair(buf), ring, length, ring_from, steps, read + read % 2))


@functools.partial(jax.jit, static_argnames=("read", "mesh", "axes", "name", "kernel"))
def _merge(buf, ring, length, ring_from, steps, read: int, mesh, axes, name: str = "v", kernel: bool = False):
  """``_merge_layout`` on every device (one layer's K or V per call: the peak holds one layer twice, not the
  cache)."""
  return _per_device(lambda *a: _merge_layout(*a, read, name, kernel), mesh, axes, 0)(buf, ring, length, ring_from,
                                                                                       steps)


@functools.partial(jax.jit, static_argnames=("model",))
def _split(model: Transformer, params):
  """``models.split_layers`` in the compute dtype (bf16 as bf16, not bits: no layer is sliced out of a stack)."""
  return jax.tree.map(from_bits, split_layers(model, params))


_SPLIT: list = []  # the last split: [(weak references to every leaf of its params, model, split params)]


def _split_cached(model: Transformer, params):
  """``_split``, reused while the very same parameter arrays come back (sampling again with unchanged weights:
  evaluation, benchmarks; 0.7–0.8 s of a 31 s SmolLM2 call here).  Keyed on the identity of every leaf, so any
  new array (an update, another adapter) splits again; the entry goes when its arrays do."""
  leaves = jax.tree.leaves(params)
  if _SPLIT:
    refs, cached_model, split = _SPLIT[0]
    if cached_model == model and len(refs) == len(leaves) and all(r() is x for r, x in zip(refs, leaves)):
      return split
  _SPLIT.clear()
  split = _split(model, params)

  def drop(ref):
    if _SPLIT and any(r is ref for r in _SPLIT[0][0]):
      _SPLIT.clear()

  _SPLIT.append((tuple(weakref.ref(x, drop) for x in leaves), model, split))
  return split


@functools.partial(jax.jit, static_argnames=("model", "sp", "allowed", "steps_per_call", "read", "group", "mesh",
                                             "axes", "kernel"), donate_argnames=("state",))
def _run(model: Transformer, params, ctx: PromptContext, state: SlotState, sp: SamplingParams,
         allowed: policy.AllowedIds, steps_per_call: int, read: int, mesh, axes, group: int = 0,
         kernel: bool = False) -> SlotState:
  fn = lambda params, c, s: _run_local(model, params, c, s, sp, allowed, steps_per_call, read, group, kernel)
  return _per_device(fn, mesh, axes, 1)(params, ctx, state)


@functools.partial(jax.jit, static_argnames=("slots", "mesh", "axes"))
def _compact(state: SlotState, slots: int, mesh, axes) -> SlotState:
  return _per_device(lambda s: _compact_local(s, slots), mesh, axes, 0)(state)


@functools.partial(jax.jit, static_argnames=("mesh", "axes"))
def _progress(state: SlotState, mesh, axes) -> jax.Array:
  """int32[D, 5] per device: live slots, longest live completion, queue position, steps of the last call, rows
  decoded — replicated, so every process reads it."""
  out = _per_device(_progress_local, mesh, axes, 0)(state)
  return jax.lax.with_sharding_constraint(out, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _merged(state: SlotState, read: int, mesh, axes, kernel: bool = False) -> SlotState:
  """The layers layout after a host call: each layer's call buffer merged into its earlier tokens, a buffer of
  ``read`` positions (layer by layer, the old buffers freed as it goes); the call buffer starts over."""
  layers = list(state.cache)
  state = dataclasses.replace(state, cache=())
  for i, c in enumerate(layers):
    layers[i] = {**c, **{n: _merge(c[n], c[f"ring_{n}"], state.length, state.ring_from, state.steps, read, mesh,
                                   axes, n, kernel) for n in ("k", "v")}}
  return dataclasses.replace(state, cache=tuple(layers), ring_from=jnp.zeros_like(state.ring_from))


def kernel_refusal(model: Transformer, sp: SamplingParams, cp: ContinuousParams) -> str | None:
  """Why the CPU decode-attention kernel cannot run these settings (None: it can)."""
  cfg = model.config
  if cp.kv_layout != "layers":
    return f"it needs kv_layout 'layers' (got {cp.kv_layout!r})"
  cache = jnp.dtype(sampler.cache_dtype(model, sp))
  if cache != jnp.bfloat16:
    return f"it needs a bfloat16 KV cache (got {cache.name})"
  if cfg.windowed:
    return f"the layers layout has no sliding-window attention ({cfg.family})"
  if cfg.head_dim % 2 or not 1 <= cfg.num_heads // cfg.num_kv_heads <= kernels.MAX_GROUP:
    return (f"it needs an even head_dim and 1 to {kernels.MAX_GROUP} query heads per KV head (got head_dim "
            f"{cfg.head_dim}, {cfg.num_heads} / {cfg.num_kv_heads} heads)")
  if jax.default_backend() != "cpu":
    return f"it is an XLA:CPU kernel (the backend is {jax.default_backend()})"
  if not kernels.available():
    return "it did not build here (see the warning)"
  return None


def use_kernel(model: Transformer, sp: SamplingParams, cp: ContinuousParams) -> bool:
  """Whether the decode loop runs the CPU kernel (``cp.decode_kernel``): auto where it can, cpu or refused."""
  if cp.decode_kernel == "xla":
    return False
  why = kernel_refusal(model, sp, cp)  # the layout first: a stacked cache never builds the kernel
  if why is not None and cp.decode_kernel == "cpu":
    raise ValueError(f"sampling.decode_kernel 'cpu' cannot run: {why}")
  return why is None


def _devices(mesh, axes) -> int:
  return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def sample_groups(model: Transformer, params, prompt_ids, prompt_mask, rng: jax.Array, sp: SamplingParams,
                  allowed: policy.AllowedIds = None, cp: ContinuousParams = ContinuousParams(), *,
                  mesh: jax.sharding.Mesh | None = None,
                  axes: tuple[str, ...] = ()) -> tuple[SampleOutput, EngineStats]:
  """``sampler.sample_groups`` with continuous batching: the same ``SampleOutput`` (for inputs already checked:
  ``sampler.validate_prompts``), and what was computed.

  On one device by default; with ``mesh`` and its row ``axes`` (D devices in all), data-parallel: each device
  runs ``cp.slots / D`` slots (``cp.slots`` must then be a multiple of D; 0: one per sample) over its ⌈N/D⌉
  consecutive samples (prefilling the prompts they belong to) with a full copy of ``params``; the outputs are
  row-sharded over ``axes`` (replicated when D does not divide B)."""
  if mesh is None:
    mesh, axes = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("rows",)), ("rows",)
  axes = tuple(axes)
  d = _devices(mesh, axes)
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  b, p = prompt_ids.shape
  g, t = sp.group_size, sp.max_new_tokens
  sampler.check_positions(model, p, t)
  extra = _off_buckets(p, cp.read_block, t, cp.read_growth)
  if extra:  # left padding (masked): positions follow the mask, so nothing else moves
    prompt_ids, prompt_mask = (jnp.pad(x, ((0, 0), (extra, 0))) for x in (prompt_ids, prompt_mask))
  if cp.slots % d:
    raise ValueError(f"sampling.slots ({cp.slots}) must be a multiple of the {d} devices the continuous engine "
                     "splits its slots over (0: one per sample)")
  n_local = _shares(b, g, d)[0]
  slots = min(cp.slots // d or n_local, n_local)
  params = sampler.decode_params(model, params)
  layout = cp.kv_layout
  ctx = _prefill(model, params, prompt_ids, prompt_mask, rng, g, sp.kv_dtype, mesh, axes, layout)
  kernel = use_kernel(model, sp, cp)
  state = _start(model, ctx, slots, sp, mesh, axes, layout, cp.steps_per_call, kernel)
  if layout == "layers":
    params = _split_cached(model, params)
  # one slot per sample, each device's samples whole groups: slot s keeps sample s (no queue) until a compaction,
  # and reads its prompt's KV as one of the group's queries (measured faster than a gather per slot; §8)
  group = g if cp.prompt_major and slots == n_local and b % d == 0 else 0
  live, longest, queued = slots, 0, False
  counts, reads, groups, decode_steps, slot_steps = [], [], [], 0, 0
  while live:
    if cp.compact and queued and live <= slots // 2 and slots // 2 >= cp.min_slots:
      slots = max(cp.min_slots, 1 << (live - 1).bit_length())  # the next power of two ≥ the most live on a device
      state = _compact(state, slots, mesh, axes)
      group = 0
    if layout == "layers":  # the tokens before this call (a bucket ≥ the longest live), then the call buffer
      read = _bucket(longest, cp.read_block, t, cp.read_growth) if longest else 0
      if counts:
        state = _merged(state, read, mesh, axes, kernel)
    else:
      read = _bucket(longest + cp.steps_per_call, cp.read_block, t, cp.read_growth)
    state = _run(model, params, ctx, state, sp, allowed, cp.steps_per_call, read, mesh, axes, group, kernel)
    groups.append(group)
    counts.append(slots * d)
    reads.append(read + (cp.steps_per_call if layout == "layers" else 0))
    prog = np.asarray(dist.fetch(_progress(state, mesh, axes)), np.int64)  # [D, 5]
    live, longest, queued = int(prog[:, 0].max()), int(prog[:, 1].max()), bool((prog[:, 2] >= n_local).all())
    decode_steps += int(prog[:, 3].max())
    slot_steps = int(prog[:, 4].sum())
  rows = jax.sharding.PartitionSpec(_lead(axes) if b % d == 0 else None)
  out, useful = _outputs(state, b, g, jax.sharding.NamedSharding(mesh, rows))
  stats = EngineStats(samples=b * g, useful_tokens=int(dist.fetch(useful)), slot_steps=slot_steps,
                      decode_steps=decode_steps, host_calls=len(counts), slot_counts=tuple(counts),
                      reads=tuple(reads), groups=tuple(groups), devices=d, decode_kernel="cpu" if kernel else "xla")
  return out, stats


@functools.partial(jax.jit, static_argnames=("b", "g", "row_sharding"))
def _outputs(state: SlotState, b: int, g: int, row_sharding) -> SampleOutput:
  """Per-device [D, ⌈N/D⌉, ...] records → [B, G, ...] (the first N samples), rows sharded by ``row_sharding``;
  and the tokens returned (replicated)."""
  t = state.tokens.shape[-1]
  n = b * g
  flat = lambda x: x.reshape(-1, *x.shape[2:])[:n]
  lengths, eos = flat(state.lengths), flat(state.eos)
  mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
  finish = jnp.where(eos, sampler.FINISH_EOS, sampler.FINISH_LENGTH).astype(jnp.int32)
  shaped = lambda x: jax.lax.with_sharding_constraint(
      x.reshape(b, g, *x.shape[1:]), jax.sharding.NamedSharding(
          row_sharding.mesh, jax.sharding.PartitionSpec(*row_sharding.spec, *([None] * x.ndim))))
  out = SampleOutput(tokens=shaped(flat(state.tokens)), mask=shaped(mask), logprobs=shaped(flat(state.logprobs)),
                     entropies=shaped(flat(state.entropies)), lengths=shaped(lengths), finish_reason=shaped(finish))
  useful = jax.lax.with_sharding_constraint(jnp.sum(lengths), jax.sharding.NamedSharding(
      row_sharding.mesh, jax.sharding.PartitionSpec()))
  return out, useful


def kv_bytes(model: Transformer, sp: SamplingParams, prompts: int, prompt_len: int, slots: int,
             devices: int = 1, layout: str = ContinuousParams.kv_layout,
             steps_per_call: int = ContinuousParams.steps_per_call) -> dict[str, int]:
  """KV-cache bytes per device of both engines for ``prompts`` prompts of ``prompt_len`` positions on ``devices``
  data-parallel devices: the static sampler's (P + T slots for each of its ⌈B·G/D⌉ rows) and this engine's (P for
  each prompt its samples belong to, once, plus T per slot; ``_shares``); the layers layout adds its call buffers
  (``steps_per_call`` positions per slot, ``_ring_dtype``), and while it merges them, one layer's K or V twice."""
  cfg = model.config
  dtype = sampler.cache_dtype(model, sp)
  values_per_pos = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim  # K and V, every layer
  per_pos = values_per_pos * dtype.itemsize
  n_local, local_prompts, _ = _shares(prompts, sp.group_size, devices)
  t = sp.max_new_tokens
  slots = min(slots // devices or n_local, n_local)
  cont = per_pos * (local_prompts.shape[1] * prompt_len + slots * t)
  if layout == "layers":
    cont += values_per_pos * _ring_dtype(dtype).itemsize * slots * steps_per_call
  return {"static": per_pos * n_local * (prompt_len + t), "continuous": cont}
