"""A decoder-only transformer covering GPT-2, Llama, Qwen2, Qwen3 and Gemma 3 (text), in Flax linen.

Parameters are a plain nested dict of arrays (layers stacked on a leading axis,
scanned with ``nn.scan``); every parameter is created with logical axis names
(``vocab``, ``embed``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``,
``layers``) so the trainer can shard it from one rule table
(``logical_axes``).

Precision: parameters live in ``config.param_dtype`` (float32 master weights by
default) and are cast to ``config.dtype`` where they are used, so gradients
reach the master weights in their own dtype.  Callers that run many forward
passes on the same weights (the sampler, the update step) cast them once with
``cast_params``; the casts here are then no-ops.

Memory: ``config.remat`` rematerializes each scanned layer (a jax.checkpoint
policy), ``config.attention_chunk`` computes full-sequence attention in query
blocks (so no [T, T] score matrix per head exists), and ``head`` applies the LM
head to any slice of hidden states (chunked log-probs, see ``jaxgrpo.policy``).

LoRA (``config.lora``): adapters ``<name>_lora_a`` / ``<name>_lora_b`` next to
each targeted kernel.  They are used when present in the params, so the same
model with the adapters left out of the params is the base model (the
reference policy), with no second copy of the weights.

The module takes an explicit boolean attention mask [B, T, S] and an optional
KV cache, which makes one code path serve full forward passes (S = T) and
cached decoding (S = cache length).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo import kernels
from jaxgrpo.models.config import ModelConfig, remat_policy

# KV cache, one buffer for all layers: {"k": [L, B, KV, S, Dh], "v": [L, B, KV, S, Dh]}.
# The layer scan only reads it (as scanned xs) and returns the new slots of each
# layer (as ys); one dynamic_update_slice after the scan writes them.  Writing
# inside the loop a buffer that the loop also reads made XLA copy the whole
# cache at every layer (measured 20x slower per decode step).  The [KV, S]
# order feeds the attention matmuls without a transpose.
Cache = dict[str, jax.Array]
Params = dict[str, Any]  # a model's parameters: a nested dict of arrays (layers stacked on a leading axis)

# bf16 arrays carried as their bits.  XLA:CPU slices a bf16 array in float32: a layer scan over stacked bf16 weights
# (or a bf16 KV cache) converted every stack to f32 outside the decode loop and each layer's slice back to bf16
# inside it, at every step — more time than the matmuls.  The same bytes sliced as uint16 need no conversion; the
# model reads params and caches through ``from_bits`` and writes caches through ``to_storage``, so either form runs.
BITS = jnp.dtype(jnp.uint16)


def from_bits(x: jax.Array) -> jax.Array:
  """A bf16 array carried as its bits (uint16: ``as_bits``) as bf16; any other array unchanged."""
  return jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == BITS else x


def to_storage(x: jax.Array, dtype) -> jax.Array:
  """``x`` cast to a buffer's dtype: into a bits buffer (uint16) as the bits of bf16."""
  if jnp.dtype(dtype) == BITS:
    return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), BITS)
  return x.astype(dtype)


def as_bits(tree):
  """The bf16 leaves of a pytree as their bits (uint16), other leaves unchanged; ``from_bits`` inverts it.  What the
  samplers run on XLA:CPU (``rollout.sampler.decode_params``): identical values, no per-step conversions."""
  return jax.tree.map(lambda x: jax.lax.bitcast_convert_type(x, BITS) if x.dtype == jnp.bfloat16 else x, tree)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Output:
  """What ``Transformer.__call__`` returns, whatever its flags (B rows, T query positions)."""

  hidden: jax.Array  # [B, T, D] final-norm hidden states, in the compute dtype
  logits: jax.Array | None  # float32[B, T, V]; None when called with compute_logits=False (see ``Transformer.head``)
  cache: Cache | None  # the KV cache with this call's T slots written ({"k", "v"}: [L, B, KV, S, Dh]), or None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class TreeMask:
  """The attention mask of packed prefix trees, without an [S, S] array (``jaxgrpo.train.packing`` builds it).

  Each row packs one or more trees (a group's prompt, then its completions' trie) in depth-first order, so the
  ancestors of position q are exactly the positions s ≤ q whose subtree still contains q: query q sees key s iff
  ``s <= q < ends[s]``.  One rule covers causality, the tree (siblings never see each other) and several trees per
  row (a tree's ``ends`` never pass its own end).  Padding keys have ``ends[s] <= s`` (seen by nobody).
  """

  ends: jax.Array  # int32[B, S] exclusive end of each position's subtree
  window: int = dataclasses.field(metadata={"static": True})  # every tree spans ≤ window positions (keys to read)
  block: int = dataclasses.field(default=128, metadata={"static": True})  # query-block length


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SlotMask:
  """The attention context of continuous-batching decode slots (S slots, one new token each; B prompts of P
  positions).  Passed as the mask with a cache of four buffers: the prompts' KV, one copy per prompt
  (``prompt_k``/``prompt_v`` [L, B, KV, P, Dh]), and each slot's own completion KV (``k``/``v`` [L, S, KV, T, Dh]).
  Slot s reads its prompt's keys through ``prompt_of`` (an indirection: the G samples of a prompt share one copy)
  and the first ``length[s]`` keys of its own completion; only the first ``read`` completion positions are read
  (the host buckets ``read`` to the longest live completion, so decode cost follows the live length).  The new
  token's key and value are written at completion position ``length[s]`` of each slot.
  """

  prompt_of: jax.Array  # int32[S] the prompt whose KV each slot reads
  prompt_valid: jax.Array  # bool[B, P] real (not left-padding) prompt positions
  length: jax.Array  # int32[S] completion tokens already in each slot's cache (the new token's write position)
  read: int = dataclasses.field(metadata={"static": True})  # completion positions read, ≥ max(length) (≤ T)
  # > 0: the slots are prompt-major (slot s reads prompt s // group, S = B·group, ``prompt_of`` says the same):
  # each prompt's keys are read once for its `group` slots' queries instead of gathered per slot
  group: int = dataclasses.field(default=0, metadata={"static": True})
  # a call buffer (``decode_slots``): the layer cache also holds ``ring_k`` [S, KV, Dh, J] (keys transposed) and
  # ``ring_v`` [S, KV, J, Dh], where every slot wrote its tokens of this host call at column = the call's step;
  # ``k``/``v`` (read-only in the call) hold what came before.  ``step``: int32[] this step (the column written
  # now); ``ring_from``: int32[S] the first column of each slot's current sample (its later refill step + 1, or 0),
  # so slot s has length[s] − (step − ring_from[s]) tokens in ``k``/``v``.  None: no call buffer (the new token
  # goes to ``k``/``v`` at ``length``)
  step: jax.Array | None = None
  ring_from: jax.Array | None = None
  # with a call buffer: ``k``/``v`` are bf16 in the CPU kernel's layouts (``kernels.pair_keys`` [S, KV, Dh/2, R', 2],
  # ``kernels.pair_values`` [S, KV, R'/2, Dh, 2], R' = ``read`` rounded up to even) and the completion part of the
  # attention runs in ``kernels.decode_attention`` (the prompt part in XLA, the two softmax parts combined)
  kernel: bool = dataclasses.field(default=False, metadata={"static": True})


_INIT = nn.initializers.normal(0.02)
LORA_A, LORA_B = "_lora_a", "_lora_b"


def _param(mod: nn.Module, name: str, shape, axes, init=_INIT):
  """A parameter in param_dtype, returned cast to the compute dtype."""
  cfg = mod.config
  p = mod.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))
  return from_bits(p).astype(cfg.dtype)


def _lora(mod: nn.Module, target: str, name: str, in_shape, out_shape, in_axes, out_axes):
  """(A, B) adapters of kernel ``name`` (None when absent): A [*in, r] starts random, B [r, *out] at zero."""
  cfg = mod.config
  if cfg.lora is None or target not in cfg.lora.targets:
    return None
  if not (mod.is_initializing() or mod.has_variable("params", name + LORA_A)):
    return None  # adapters off: the base model
  r = cfg.lora.rank
  fan_in = int(np.prod(in_shape))
  a = _param(mod, name + LORA_A, (*in_shape, r), (*in_axes, None), nn.initializers.normal(1.0 / math.sqrt(fan_in)))
  b = _param(mod, name + LORA_B, (r, *out_shape), (None, *out_axes), nn.initializers.zeros)
  return a, b * jnp.asarray(cfg.lora.scale, cfg.dtype)


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
  """Rotary inverse frequencies (float32, like transformers), with Llama-3 scaling; Gemma 3: the local layers' own
  base (``local``), the global layers' linear scaling."""
  d = cfg.head_dim
  exponents = np.arange(0, d, 2, dtype=np.float32) / np.float32(d)
  theta = cfg.rope_local_theta if local and cfg.rope_local_theta else cfg.rope_theta
  inv = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
  if local:
    return inv
  if cfg.rope_linear_factor != 1.0:
    inv = (inv / np.float32(cfg.rope_linear_factor)).astype(np.float32)
  s = cfg.rope_scaling
  if s is None:
    return inv
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: ModelConfig, positions: jax.Array, local: bool = False) -> tuple[jax.Array, jax.Array]:
  """cos, sin: float32[B, T, head_dim] for integer positions [B, T] (``local``: of the sliding-window layers)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg, local))
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [B, T, N, Dh]; the rotate-half convention of HF checkpoints."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


def _rms(x, scale, eps, offset: bool = False):
  """RMSNorm over the last axis, statistics in float32; the scale applied in x's dtype (Llama, Qwen), or
  ``offset`` (Gemma): (1 + scale) applied in float32, then cast (as transformers does for each)."""
  h = x.astype(jnp.float32)
  h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
  if offset:
    return (h * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
  return scale * h.astype(x.dtype)


def _norm_init(cfg: ModelConfig):
  """Norm scales start at the identity: 1, or 0 for Gemma's (1 + w)."""
  return nn.initializers.zeros if cfg.gemma_norms else nn.initializers.ones


class Norm(nn.Module):
  """RMSNorm (Llama/Qwen; Gemma's (1 + w)) or LayerNorm (GPT-2), statistics in float32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    scale = _param(self, "scale", (cfg.hidden_size,), ("embed",), _norm_init(cfg))
    h = x.astype(jnp.float32)
    if cfg.is_gpt2:
      bias = _param(self, "bias", (cfg.hidden_size,), ("embed",), nn.initializers.zeros)
      h = h - jnp.mean(h, axis=-1, keepdims=True)
      h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + cfg.norm_eps)
      return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
    return _rms(x, scale, cfg.norm_eps, cfg.gemma_norms)


def mm(equation: str, a: jax.Array, b: jax.Array, dtype=None) -> jax.Array:
  """``jnp.einsum`` accumulated in float32 and returned as ``dtype`` (default: ``a``'s dtype; float32 for logits and
  scores).  Every matmul of the model goes through here: with bf16 operands this is the usual mixed-precision
  contract (bf16 inputs, f32 accumulation, one rounding of the output), and it is what XLA:CPU needs to use the
  AVX512-BF16 dot — a bf16 dot with a float32 result ran 2–3× faster than the f32 dot and 3–4.5× faster than a
  bf16 → bf16 dot at SmolLM2's decode shapes (experiments/bench_xla_flags.py).  In float32 it is a plain einsum."""
  out = jnp.einsum(equation, a, b, preferred_element_type=jnp.float32)
  return out.astype(a.dtype if dtype is None else dtype)


def _attend(qg, k, v, mask, scale):
  """Softmax attention without a cache.  qg [B, T, KV, G, Dh]; k, v [B, S, KV, Dh]; mask bool [B, T, S]."""
  scores = mm("btkgd,bskd->bkgts", qg, k, jnp.float32) * scale
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(qg.dtype)
  return mm("bkgts,bskd->btkgd", probs, v)


def _attend_in_blocks(qg, k, v, mask, scale, block: int):
  """``_attend`` over query blocks of ``block`` rows, each rematerialized in the backward pass:
  the scores that exist at once are [B, KV, G, block, S] instead of [B, KV, G, T, S]."""
  b, t = qg.shape[:2]
  pad = (-t) % block
  qg = jnp.pad(qg, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
  nb = (t + pad) // block
  q_blocks = jnp.moveaxis(qg.reshape(b, nb, block, *qg.shape[2:]), 1, 0)
  m_blocks = jnp.moveaxis(mask.reshape(b, nb, block, mask.shape[-1]), 1, 0)
  body = jax.checkpoint(lambda qm: _attend(qm[0], k, v, qm[1], scale), prevent_cse=False)
  out = jax.lax.map(body, (q_blocks, m_blocks))  # [nb, B, block, KV, G, Dh]
  return jnp.moveaxis(out, 0, 1).reshape(b, t + pad, *qg.shape[2:])[:, :t]


def tree_visible(ends: jax.Array, q_index: jax.Array, k_index: jax.Array) -> jax.Array:
  """bool[B, Tq, Tk]: query positions ``q_index`` [Tq] see key positions ``k_index`` [Tk] (``ends`` [B, Tk] of
  those keys; keys outside the row carry ends 0)."""
  return (k_index[None, None, :] <= q_index[None, :, None]) & (q_index[None, :, None] < ends[:, None, :])


def _attend_tree(qg, k, v, tree: TreeMask, scale):
  """Attention under a ``TreeMask``, in query blocks: block [q0, q0 + b) reads only the keys [q0 − W, q0 + b)
  (W = the window rounded up to blocks) — the positions its trees can reach — so the work is S·(W + b), not S²,
  and no [S, S] mask or score array exists; each block is rematerialized in the backward pass.

  Accelerators: the same mask is what TPU splash attention takes as segment ids plus a custom block mask, and what
  cuDNN (``jax.nn.dot_product_attention``) takes as a bias/mask per block; this XLA version is the portable
  reference and runs everywhere (on CPU it is what the tests and benchmarks measure).
  """
  b, s = qg.shape[:2]
  blk = min(tree.block, s)
  pad = (-s) % blk
  nb = (s + pad) // blk
  w = -(-max(min(tree.window, s) - 1, 0) // blk) * blk  # keys before a block's start that its trees can reach
  kw = w + blk
  # keys padded by w on the left (ends 0: seen by nobody) and up to the padded length on the right
  kp = jnp.pad(k, ((0, 0), (w, pad), (0, 0), (0, 0)))
  vp = jnp.pad(v, ((0, 0), (w, pad), (0, 0), (0, 0)))
  ep = jnp.pad(tree.ends, ((0, 0), (w, pad)))
  qp = jnp.pad(qg, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
  q_blocks = jnp.moveaxis(qp.reshape(b, nb, blk, *qg.shape[2:]), 1, 0)

  def one(args):
    i, qb = args
    q0 = i * blk
    ks = jax.lax.dynamic_slice_in_dim(kp, q0, kw, axis=1)
    vs = jax.lax.dynamic_slice_in_dim(vp, q0, kw, axis=1)
    es = jax.lax.dynamic_slice_in_dim(ep, q0, kw, axis=1)
    visible = tree_visible(es, q0 + jnp.arange(blk), q0 - w + jnp.arange(kw))
    return _attend(qb, ks, vs, visible, scale)

  out = jax.lax.map(jax.checkpoint(one, prevent_cse=False), (jnp.arange(nb), q_blocks))
  return jnp.moveaxis(out, 0, 1).reshape(b, s + pad, *qg.shape[2:])[:, :s]


def _decode_scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """float32 scores [N, KV, G, S] of one query per row, q [N, KV, G, Dh], against keys k [N, KV, S, Dh] (both in
  the compute dtype).  f32: multiply-and-reduce (XLA:CPU ran it faster than many tiny batched dots); bf16: batched
  dots with f32 accumulation (``mm``, XLA:CPU's AVX512-BF16 path; 1.5× the bf16 multiply-and-reduce, whose
  elementwise bf16 math XLA:CPU emulates, over 256 cached positions)."""
  if q.dtype == jnp.float32:
    return jnp.sum(q[:, :, :, None, :] * k[:, :, None], axis=-1)
  return mm("nkgd,nksd->nkgs", q, k, jnp.float32)


def _decode_values(p: jax.Array, v: jax.Array) -> jax.Array:
  """float32 [N, KV, G, Dh]: probabilities p [N, KV, G, S] (float32) times values v [N, KV, S, Dh] (compute
  dtype), as ``_decode_scores`` chooses."""
  if v.dtype == jnp.float32:
    return jnp.sum(p[..., None] * v[:, :, None], axis=-2)
  return mm("nkgs,nksd->nkgd", p.astype(v.dtype), v, jnp.float32)


def _attend_slots(q, k_new, v_new, layer_cache, slots: SlotMask, scale, dtype):
  """One decode step of S slots under a ``SlotMask``: q [S, KV, G, Dh]; the new key/value [S, KV, Dh]; the layer's
  cache {"prompt_k", "prompt_v": [B, KV, P, Dh], "k", "v": [S, KV, T, Dh]}.  Returns [S, KV, G, Dh].

  As the static decode path: scores and value sums by ``_decode_scores``/``_decode_values`` in the compute
  ``dtype`` with float32 accumulation, the softmax in float32 over [prompt | completion | new]; prompt-major slots
  (``slots.group``) stack each group's queries against one copy of its prompt's keys.  With a call buffer
  (``slots.ring_from``, ``decode_slots``): [prompt | completion before the call | the call's tokens], the cache's
  ``ring_k`` [S, KV, Dh, J] / ``ring_v`` [S, KV, J, Dh] holding the call's tokens with the new one already written
  (read in their own dtype), and no separate new key (``k_new``, ``v_new`` None); with ``slots.kernel`` the
  completion part (earlier tokens and call buffer) in ``kernels.decode_attention``.
  """
  neg = jnp.finfo(jnp.float32).min
  read = lambda c: from_bits(c).astype(dtype)
  before = slots.length
  if slots.kernel and slots.ring_from is None:
    raise ValueError("SlotMask.kernel needs the call buffer (ring_from and step: decode_slots)")
  if slots.ring_from is not None:  # this call's tokens are in the call buffer, the earlier ones in k/v
    before = slots.length - (slots.step - slots.ring_from)
    rk, rv = layer_cache["ring_k"], layer_cache["ring_v"]  # [S, KV, Dh, J], [S, KV, J, Dh]: read as stored
    j = jnp.arange(rk.shape[3])[None, :]
    r_valid = (j >= slots.ring_from[:, None]) & (j <= slots.step)  # [S, J]: the new token's column included
  q = q.astype(dtype)
  n, kv, hg, dh = q.shape
  p_len = layer_cache["prompt_k"].shape[2]
  if slots.group:  # prompt-major slots: one read of each prompt's keys for its slots' queries (no per-slot copy)
    b, g = layer_cache["prompt_k"].shape[0], slots.group
    if b * g != n:
      raise ValueError(f"SlotMask.group = {g} needs S = B·group slots; got S = {n} for B = {b} prompts")
    by_prompt = lambda x: x.reshape(b, g, kv, hg, -1).transpose(0, 2, 1, 3, 4).reshape(b, kv, g * hg, -1)
    by_slot = lambda x: x.reshape(b, kv, g, hg, -1).transpose(0, 2, 1, 3, 4).reshape(n, kv, hg, -1)
    pv = read(layer_cache["prompt_v"])  # [B, KV, P, Dh]
    p_scores = by_slot(_decode_scores(by_prompt(q), read(layer_cache["prompt_k"])))  # [S, KV, G, P]
    p_valid = jnp.repeat(slots.prompt_valid, g, axis=0)  # [S, P]
    p_values = lambda probs: by_slot(_decode_values(by_prompt(probs), pv))
  else:  # any slot → prompt map: each slot's prompt keys gathered
    pk = read(jnp.take(layer_cache["prompt_k"], slots.prompt_of, axis=0))  # [S, KV, P, Dh]
    pv = read(jnp.take(layer_cache["prompt_v"], slots.prompt_of, axis=0))
    p_scores = _decode_scores(q, pk)
    p_valid = jnp.take(slots.prompt_valid, slots.prompt_of, axis=0)  # [S, P]
    p_values = lambda probs: _decode_values(probs, pv)
  p_scores = jnp.where(p_valid[:, None, None], p_scores * scale, neg)
  if slots.kernel:  # the completion part's softmax statistics from the CPU kernel, combined with the prompt's
    m_c, l_c, o_c = kernels.decode_attention(q, layer_cache["k"], layer_cache["v"], before, rk, rv,
                                             slots.ring_from, slots.step, scale)
    top = jnp.maximum(jnp.max(p_scores, axis=-1), m_c)  # [S, KV, G]; finite: the prompt's scores are
    e_p = jnp.exp(p_scores - top[..., None])
    w_c = jnp.exp(m_c - top)  # 0 where the slot read no completion position (m_c = −inf)
    total = jnp.sum(e_p, axis=-1) + l_c * w_c
    out = (p_values(e_p) + o_c * w_c[..., None]) / total[..., None]
    return out.astype(dtype)
  ck = read(layer_cache["k"][:, :, :slots.read])  # [S, KV, R, Dh]: the live part only
  cv = read(layer_cache["v"][:, :, :slots.read])
  c_valid = jnp.arange(slots.read)[None, :] < before[:, None]  # [S, R]
  parts = [p_scores]
  if slots.read:
    parts.append(jnp.where(c_valid[:, None, None], _decode_scores(q, ck) * scale, neg))
  if slots.ring_from is not None:  # one [G, Dh] x [Dh, J] dot per slot and head (float32 on CPU: as stored)
    r_scores = mm("nkgd,nkds->nkgs", q.astype(rk.dtype), rk, jnp.float32)
    parts.append(jnp.where(r_valid[:, None, None], r_scores * scale, neg))
  if k_new is not None:  # the new token's key apart (without a call buffer)
    s_n = jnp.sum(q.astype(jnp.float32) * k_new.astype(jnp.float32)[:, :, None, :], axis=-1)[..., None]
    parts.append(s_n * scale)  # [S, KV, G, 1]
  probs = jax.nn.softmax(jnp.concatenate(parts, axis=-1), axis=-1)
  r_len = rk.shape[3] if slots.ring_from is not None else 0
  c_end = p_len + slots.read
  out = p_values(probs[..., :p_len])
  if k_new is not None:
    out = out + probs[..., -1:] * v_new.astype(jnp.float32)[:, :, None, :]
  if slots.read:
    out = out + _decode_values(probs[..., p_len:c_end], cv)
  if r_len:
    out = out + mm("nkgs,nksd->nkgd", probs[..., c_end:c_end + r_len].astype(rv.dtype), rv, jnp.float32)
  return out.astype(dtype)


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, rope, mask, layer_cache, cache_index):
    """Returns (y, new k/v slots [B, KV, T, Dh] or None without a cache)."""
    cfg = self.config
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def project_in(target, n_heads, heads_axis):
      w = _param(self, f"{target}_kernel", (d, n_heads, dh), ("embed", heads_axis, "head_dim"))
      y = mm("btd,dhk->bthk", x, w)
      ab = _lora(self, target, f"{target}_kernel", (d,), (n_heads, dh), ("embed",), (heads_axis, "head_dim"))
      if ab is not None:
        y = y + mm("btr,rhk->bthk", mm("btd,dr->btr", x, ab[0]), ab[1])
      if cfg.qkv_bias:
        y = y + _param(self, f"{target}_bias", (n_heads, dh), (heads_axis, "head_dim"), nn.initializers.zeros)
      return y

    q = project_in("q", h, "heads")
    k = project_in("k", kv, "kv_heads")
    v = project_in("v", kv, "kv_heads")
    if cfg.qk_norm:  # Qwen3, Gemma 3: each query/key head RMS-normalized over head_dim, before RoPE
      init = _norm_init(cfg)
      q = _rms(q, _param(self, "q_norm_scale", (dh,), ("head_dim",), init), cfg.norm_eps, cfg.gemma_norms)
      k = _rms(k, _param(self, "k_norm_scale", (dh,), ("head_dim",), init), cfg.norm_eps, cfg.gemma_norms)
    if rope is not None:
      q = _apply_rope(q, *rope)
      k = _apply_rope(k, *rope)
    wo = _param(self, "o_kernel", (h, dh, d), ("heads", "head_dim", "embed"))
    o_lora = _lora(self, "o", "o_kernel", (h, dh), (d,), ("heads", "head_dim"), ("embed",))
    o_bias = _param(self, "o_bias", (d,), ("embed",), nn.initializers.zeros) if cfg.out_bias else None

    def project_out(out):  # [B, T, H, Dh] -> [B, T, D]
      y = mm("bthk,hkd->btd", out, wo)
      if o_lora is not None:
        y = y + mm("btr,rd->btd", mm("bthk,hkr->btr", out, o_lora[0]), o_lora[1])
      return y if o_bias is None else y + o_bias

    b, t = x.shape[:2]
    qg = q.reshape(b, t, kv, h // kv, dh)
    neg = jnp.finfo(jnp.float32).min
    scale = 1.0 / math.sqrt(cfg.query_pre_attn_scalar or dh)
    if isinstance(mask, TreeMask):
      if layer_cache is not None:
        raise ValueError("a TreeMask (packed prefix trees) is for full forward passes, not cached decoding")
      return project_out(_attend_tree(qg, k, v, mask, scale).reshape(b, t, h, dh)), None
    if isinstance(mask, SlotMask):
      if layer_cache is None or t != 1:
        raise ValueError("a SlotMask (continuous-batching decode) needs the slot cache and one token per slot")
      if mask.ring_from is not None:  # written into the call buffers first, then read with them (``decode_slots``)
        # rounded to the cache dtype, held in the call buffer's (float32 on XLA:CPU: ``decode_slots``)
        # keys as [S, KV, Dh, 1] into [S, KV, Dh, J] (transposed: the scores are one [G, Dh] x [Dh, J] dot per slot
        # and head), values as [S, KV, 1, Dh] into [S, KV, J, Dh]
        ring = {n: jax.lax.dynamic_update_slice_in_dim(
            layer_cache[f"ring_{n}"], new.transpose(order).astype(layer_cache[n].dtype).astype(
                layer_cache[f"ring_{n}"].dtype), mask.step, axis=axis)
            for n, new, order, axis in (("k", k, (0, 2, 3, 1), 3), ("v", v, (0, 2, 1, 3), 2))}
        out = _attend_slots(qg[:, 0], None, None, {**layer_cache, "ring_k": ring["k"], "ring_v": ring["v"]}, mask,
                            scale, x.dtype)
        return project_out(out.reshape(b, 1, h, dh)), ring
      out = _attend_slots(qg[:, 0], k[:, 0], v[:, 0], layer_cache, mask, scale, x.dtype)
      new_slots = {"k": to_storage(k.transpose(0, 2, 1, 3), layer_cache["k"].dtype),
                   "v": to_storage(v.transpose(0, 2, 1, 3), layer_cache["v"].dtype)}
      return project_out(out.reshape(b, 1, h, dh)), new_slots
    if layer_cache is None:
      if cfg.attention_chunk and t > cfg.attention_chunk:
        out = _attend_in_blocks(qg, k, v, mask, scale, cfg.attention_chunk)
      else:
        out = _attend(qg, k, v, mask, scale)
      return project_out(out.reshape(b, t, h, dh)), None
    new_slots = {"k": to_storage(k.transpose(0, 2, 1, 3), layer_cache["k"].dtype),
                 "v": to_storage(v.transpose(0, 2, 1, 3), layer_cache["v"].dtype)}
    if isinstance(cache_index, int) and cache_index == 0:
      # Prefill into an empty cache: only the new keys exist (no scores against empty slots).
      mask_new = mask[:, :, :t]
      return project_out(_attend(qg, k, v, mask_new, scale).reshape(b, t, h, dh)), new_slots
    # With a cache: attend to the cached slots before ``cache_index`` (read in
    # place, never copied) and to the T new keys, then return the new slots.
    index = jnp.asarray(cache_index, jnp.int32)
    s_len = layer_cache["k"].shape[2]
    old_k, old_v = (from_bits(layer_cache[n]).astype(x.dtype) for n in ("k", "v"))  # [B, KV, S, Dh]
    mask_old = mask & (jnp.arange(s_len) < index)
    mask_new = jax.lax.dynamic_slice_in_dim(mask, index, t, axis=2)  # [B, T, T]
    if t == 1:  # decoding: one query per row (``_decode_scores``)
      s_old = _decode_scores(qg[:, 0], old_k)[:, :, :, None, :]
      s_new = jnp.sum(qg.astype(jnp.float32) * k.astype(jnp.float32)[:, :, :, None, :],
                      axis=-1).transpose(0, 2, 3, 1)[..., None]
    else:
      s_old = mm("btkgd,bksd->bkgts", qg, old_k, jnp.float32)
      s_new = mm("btkgd,bskd->bkgts", qg, k, jnp.float32)
    scores = jnp.concatenate(
        [jnp.where(mask_old[:, None, None], s_old.astype(jnp.float32) * scale, neg),
         jnp.where(mask_new[:, None, None], s_new.astype(jnp.float32) * scale, neg)], axis=-1
    )
    if t == 1:
      probs = jax.nn.softmax(scores, axis=-1)
      out = (_decode_values(probs[:, :, :, 0, :s_len], old_v)
             + probs[:, :, :, 0, s_len:] * v[:, 0, :, None, :].astype(jnp.float32))
      out = out.reshape(b, 1, h, dh).astype(x.dtype)
    else:
      probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
      out = (mm("bkgts,bksd->btkgd", probs[..., :s_len], old_v)
             + mm("bkgts,bskd->btkgd", probs[..., s_len:], v)).reshape(b, t, h, dh)
    return project_out(out), new_slots


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    d, f = cfg.hidden_size, cfg.intermediate_size
    shape = x.shape
    x = x.reshape(-1, d)  # 2-D matmuls: XLA:CPU's weight gradients are ~1.5x faster than with [B, T, D]

    def dense(target, h, n_in, n_out, axes):
      y = mm("nd,df->nf", h, _param(self, f"{target}_kernel", (n_in, n_out), axes))
      ab = _lora(self, target, f"{target}_kernel", (n_in,), (n_out,), axes[:1], axes[1:])
      if ab is not None:
        y = y + mm("nr,rf->nf", mm("nd,dr->nr", h, ab[0]), ab[1])
      if cfg.mlp_bias:
        y = y + _param(self, f"{target}_bias", (n_out,), axes[1:], nn.initializers.zeros)
      return y

    up = dense("up", x, d, f, ("embed", "mlp"))
    if cfg.activation == "silu":
      hidden = jax.nn.silu(dense("gate", x, d, f, ("embed", "mlp"))) * up
    elif cfg.activation == "gelu_pytorch_tanh":  # Gemma: gated, tanh-approximated GELU
      hidden = jax.nn.gelu(dense("gate", x, d, f, ("embed", "mlp")), approximate=True) * up
    else:
      hidden = jax.nn.gelu(up, approximate=True)  # GPT-2's gelu_new
    return dense("down", hidden, f, d, ("mlp", "embed")).reshape(shape)


class Block(nn.Module):
  """Pre-norm residual block (Gemma: with post-attention and post-MLP norms too); the unit scanned over layers.

  ``layer_in``: (this layer's cache or None, whether it is a sliding-window layer or None).  A model with local
  layers passes ``rope`` and ``mask`` as (global, local) pairs and each layer picks its own."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, layer_in, rope, mask, cache_index):
    cfg = self.config
    layer_cache, local = layer_in
    if local is not None:
      pick = lambda pair: jax.tree.map(lambda g, loc: jnp.where(local, loc, g), pair[0], pair[1])
      rope, mask = pick(rope), pick(mask)
    attn_out, new_slots = Attention(cfg, name="attn")(Norm(cfg, name="attn_norm")(x), rope, mask, layer_cache,
                                                      cache_index)
    if cfg.gemma_norms:
      attn_out = Norm(cfg, name="post_attn_norm")(attn_out)
    x = x + attn_out
    mlp_out = MLP(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x))
    if cfg.gemma_norms:
      mlp_out = Norm(cfg, name="post_mlp_norm")(mlp_out)
    return x + mlp_out, new_slots


class Transformer(nn.Module):
  """Decoder-only LM.  ``__call__`` returns an ``Output`` (hidden states, logits, updated KV cache)."""

  config: ModelConfig

  @nn.compact
  def __call__(
      self,
      input_ids: jax.Array,  # int[B, T]
      positions: jax.Array,  # int[B, T]
      mask: jax.Array | TreeMask,  # bool[B, T, S]: query t may attend key slot s; or packed prefix trees (S = T)
      cache: Cache | None = None,
      cache_index: jax.Array | int = 0,
      compute_logits: bool = True,  # False: skip the LM head (chunked log-probs apply ``head`` themselves)
  ) -> Output:
    cfg = self.config
    embed = _param(self, "embed", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
    pos_embed = None
    if cfg.is_gpt2:
      pos_embed = _param(self, "pos_embed", (cfg.max_position_embeddings, cfg.hidden_size), (None, "embed"))
    x, rope = _embed(cfg, embed, pos_embed, input_ids, positions)
    local = None
    if cfg.windowed:  # each layer picks (global, local) RoPE tables and masks
      if isinstance(mask, (TreeMask, SlotMask)):
        raise ValueError(f"{type(mask).__name__} does not express sliding-window attention ({cfg.family}): use the "
                         "plain causal mask (objective.share_prefix: none) and the static sampling engine")
      local = jnp.asarray(cfg.local_layers)
      rope = (rope, rope_tables(cfg, positions, local=True))
      mask = (mask, _window(mask, positions, cache, cache_index, cfg.sliding_window))
    block = Block
    if cfg.remat != "none" and cache is None:
      block = nn.remat(Block, policy=remat_policy(cfg.remat), prevent_cse=False)
    layers = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")
    x, new_slots = layers(x, (cache, local), rope, mask, cache_index)
    if cfg.windowed:
      mask = mask[0]
    new_cache = None
    if isinstance(mask, SlotMask):  # each slot writes its new key/value at its own completion position
      rows = jnp.arange(input_ids.shape[0])
      new_cache = dict(cache)
      for name in ("k", "v"):  # new slots [L, S, KV, 1, Dh] → indexed [S, L, KV, Dh]
        new_cache[name] = cache[name].at[:, rows, :, mask.length].set(
            jnp.swapaxes(new_slots[name][:, :, :, 0], 0, 1), mode="promise_in_bounds")
    elif cache is not None:
      zero = jnp.zeros((), jnp.int32)
      start = (zero, zero, zero, jnp.asarray(cache_index, jnp.int32), zero)
      new_cache = {name: jax.lax.dynamic_update_slice(cache[name], new_slots[name], start) for name in ("k", "v")}
    x = Norm(cfg, name="final_norm")(x)
    if not cfg.tie_word_embeddings and (self.is_initializing() or self.has_variable("params", "lm_head")):
      # created by init whatever the flags; a body converted without its head (a PRM's) runs with compute_logits=False
      _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))
    return Output(hidden=x, logits=self.head(x) if compute_logits else None, cache=new_cache)

  def head(self, hidden: jax.Array) -> jax.Array:
    """The LM head: float32 logits [..., V] of final-norm hidden states [..., D]."""
    cfg = self.config
    params = self.variables["params"]
    w = from_bits(nn.meta.unbox(params["embed"] if cfg.tie_word_embeddings else params["lm_head"]))
    return _head(cfg, hidden, w.T if cfg.tie_word_embeddings else w)


def _head(cfg: ModelConfig, hidden: jax.Array, w: jax.Array) -> jax.Array:
  """float32 logits [..., V] of hidden states [..., D] under the LM head's kernel ``w`` [D, V] (Gemma: soft-capped)."""
  logits = mm("...d,dv->...v", hidden, w.astype(cfg.dtype), jnp.float32)
  if cfg.final_logit_softcap:
    logits = cfg.final_logit_softcap * jnp.tanh(logits / cfg.final_logit_softcap)
  return logits


def _embed(cfg: ModelConfig, embed, pos_embed, input_ids, positions):
  """Token embeddings [B, T, D] (plus GPT-2's learned positions) and the RoPE tables (None for GPT-2)."""
  x = jnp.take(embed, input_ids, axis=0)
  if cfg.embed_scale:  # Gemma: × √D, the factor in the embeddings' dtype (as transformers)
    x = x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype)
  if pos_embed is not None:
    return x + jnp.take(pos_embed, positions, axis=0), None
  return x, rope_tables(cfg, positions)


def split_layers(model: Transformer, params: Params) -> tuple[Params, tuple[Params, ...]]:
  """(the params without the layer stack, each layer's params on its own): what ``decode_slots`` runs on, made
  once per sampling call so no decode step slices a layer out of the stack.  The first also holds the LM head's
  kernel as [D, V] (``head``; for tied embeddings a transposed copy: a dot against the transposed embedding ran at
  half the speed on XLA:CPU, experiments/README.md §8)."""
  stack = params["layers"]
  n = jax.tree.leaves(stack)[0].shape[0]
  top = {k: v for k, v in params.items() if k != "layers"}
  top["head"] = params["embed"].T if model.config.tie_word_embeddings else params["lm_head"]
  return top, tuple(jax.tree.map(lambda x, i=i: x[i], stack) for i in range(n))


def decode_slots(model: Transformer, top: Params, layers: tuple[Params, ...], input_ids: jax.Array,
                 positions: jax.Array, mask: SlotMask, prompt_cache: tuple[Cache, ...],
                 caches: tuple[Cache, ...]) -> tuple[jax.Array, tuple[Cache, ...]]:
  """One continuous-batching decode step with the layers unrolled and each layer's KV in its own buffers: S slots,
  one token each (``input_ids``, ``positions`` int[S, 1]); ``prompt_cache[l]`` {"prompt_k", "prompt_v"} [B, KV,
  P, Dh]; ``caches[l]`` {"k", "v"} [S, KV, R, Dh] (R = ``mask.read``: what the slots decoded before this host
  call, read-only here; with ``mask.kernel`` in the CPU kernel's pair layouts) and {"ring_k" [S, KV, Dh, J],
  "ring_v" [S, KV, J, Dh]} (this call's tokens: every slot writes its new key/value at column ``mask.step``).

  Why: on XLA:CPU a bf16 buffer that a loop updates is updated through float32 (whole buffer, every step) or, kept
  as uint16 bits, copied to bf16 before every read; the slots' earlier tokens here are a bf16 buffer nobody writes
  in the loop, so the attention dots read it in place, and only the J-column call buffer is written — before the
  layer reads it (a write that does not depend on the read made XLA copy the buffer to keep the read's view), in
  the buffer's own dtype (the caller's choice: float32 on XLA:CPU, which it updates in place and its dots read as
  stored).  No window is sliced out of a longer cache, no layer out of a stack.  Returns (float32 logits [S, V],
  the caches with the call buffer's new column written).  The same arithmetic as ``Transformer.__call__`` with a
  ``SlotMask`` over layer-stacked caches, summed in another order (attention is order-free: keys carry their RoPE
  positions)."""
  cfg = model.config
  if cfg.windowed:
    raise ValueError(f"decode_slots does not express sliding-window attention ({cfg.family})")
  if mask.ring_from is None or mask.step is None:
    raise ValueError("decode_slots writes a call buffer: SlotMask.step and ring_from must be set")
  if len(layers) != cfg.num_layers or len(caches) != cfg.num_layers or len(prompt_cache) != cfg.num_layers:
    raise ValueError(f"decode_slots needs {cfg.num_layers} layers of params, prompt caches and caches; got "
                     f"{len(layers)}, {len(prompt_cache)}, {len(caches)}")
  param = lambda x: from_bits(x).astype(cfg.dtype)
  pos_embed = param(top["pos_embed"]) if cfg.is_gpt2 else None
  x, rope = _embed(cfg, param(top["embed"]), pos_embed, input_ids, positions)
  block = Block(cfg)
  new_caches = []
  for p, pc, c in zip(layers, prompt_cache, caches):
    held = 2 * c["v"].shape[2] if mask.kernel else c["v"].shape[2]  # kernel: [S, KV, R/2, Dh, 2]
    if held != mask.read + (mask.read % 2 if mask.kernel else 0):
      raise ValueError(f"decode_slots: each layer's cache must hold the read ({mask.read}"
                       f"{', rounded up to even' if mask.kernel else ''}); got v {c['v'].shape}")
    x, new = block.apply({"params": p}, x, ({**pc, **c}, None), rope, mask, 0)
    new_caches.append({**c, "ring_k": new["k"], "ring_v": new["v"]})
  x = Norm(cfg).apply({"params": top["final_norm"]}, x)
  return _head(cfg, x[:, 0], param(top["head"])), tuple(new_caches)


def _window(mask, positions, cache, cache_index, window: int):
  """The mask of the sliding-window layers: also require that the key is fewer than ``window`` positions back.
  Without a cache, positions come from ``positions`` (S = T); with the static cache, slot indices (the prompt's
  slots and the new tokens' are contiguous, so slot distance = position distance for every unmasked key)."""
  if cache is None:
    return mask & (positions[:, :, None] - positions[:, None, :] < window)
  t, s = mask.shape[1], mask.shape[2]
  q = jnp.asarray(cache_index, jnp.int32) + jnp.arange(t)
  return mask & ((q[:, None] - jnp.arange(s)[None, :]) < window)[None]


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """Positions for left- (or right-) padded rows: cumsum(mask) − 1, 0 on left padding."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(attention_mask: jax.Array) -> jax.Array:
  """bool[B, T, T]: causal and restricted to valid keys."""
  t = attention_mask.shape[-1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  return causal[None] & attention_mask.astype(bool)[:, None, :]


def _init_variables(model: Transformer, rng):
  ids = jnp.zeros((1, 1), jnp.int32)
  return model.init(rng, ids, ids, jnp.ones((1, 1, 1), bool))


@functools.partial(jax.jit, static_argnums=0)
def init_params(model: Transformer, rng: jax.Array) -> Params:
  """Random parameters (normal(0.02) weights, zero biases, unit norms; LoRA A random, B zero), in one compiled
  program (eagerly, initialization dispatched one small program per op)."""
  return nn.meta.unbox(_init_variables(model, rng)["params"])


def abstract_boxed_params(model: Transformer) -> dict[str, Any]:
  """Shape-only params, each boxed with its logical axis names (``nn.LogicallyPartitioned``)."""
  return jax.eval_shape(lambda: _init_variables(model, jax.random.PRNGKey(0)))["params"]


def abstract_params(model: Transformer) -> dict[str, Any]:
  """Shape-only params (``jax.ShapeDtypeStruct`` leaves): nothing is allocated."""
  return nn.meta.unbox(abstract_boxed_params(model))


def logical_axes(model: Transformer, tree=None) -> dict[str, Any]:
  """PartitionSpecs of logical axis names for the params, or for any pytree built
  from the boxed params (e.g. ``jax.eval_shape(tx.init, abstract_boxed_params(model))``)."""
  return nn.get_partition_spec(abstract_boxed_params(model) if tree is None else tree)


def cast_params(params, dtype) -> dict[str, Any]:
  """Floating leaves cast to ``dtype`` (once per step, before many forward passes)."""
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


@functools.partial(jax.jit, static_argnums=0)
def logits(model: Transformer, params: Params, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Full forward pass: float32[B, T, V] logits.

  Args:
    input_ids: int[B, T]; attention_mask: [B, T] (left or right padding; the
      positions come from the mask, so left-padded prompts work).
  """
  if input_ids.shape != attention_mask.shape:
    raise ValueError(f"attention_mask must have the shape of input_ids {input_ids.shape}; got {attention_mask.shape}")
  out = model.apply({"params": params}, input_ids, positions_from_mask(attention_mask), causal_mask(attention_mask))
  return out.logits


def from_config(cfg: ModelConfig) -> Transformer:
  """A model (no parameters yet: see ``init_params``) from a config."""
  return Transformer(cfg)
