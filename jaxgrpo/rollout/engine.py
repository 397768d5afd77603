"""Rollouts: G sampled completions for each of B prompts, as one record.

``RolloutEngine.generate`` tokenizes the prompts, runs the sampler on the mesh
and returns a ``Rollout``: global device arrays with one row per completion
([N, ...], N = B·G, prompt-major, rows sharded over the mesh's batch axes) for
the update, and, for this process's rows only, the decoded texts the host
needs for rewards.  ``score`` and ``grade`` run the reward functions and the
task's correctness check on those texts and return global arrays again.  All
host↔device movement of rollout data happens in this module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgrpo.models import policy
from jaxgrpo.models.transformer import Transformer
from jaxgrpo.parallel import distributed as dist
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.rollout import continuous, sampler
from jaxgrpo.tasks import rewards as rewards_lib
from jaxgrpo.tasks.sources import Example, Source

# The engine's own options (beside ``sampler.SamplingParams``); ``models.policy.SAMPLING_OPTIONS`` decides them too.
ENGINE_OPTIONS = ("prompt_multiple", "trim", "engine", "slots", "read_growth", "kv_layout", "decode_kernel")
ENGINES = ("auto", "static", "continuous")


def resolve_engine(engine: str, mesh, windowed: bool = False,
                   rules: shard_lib.MeshRules = shard_lib.MeshRules(), slots: int = 0) -> str:
  """The engine that runs for ``sampling.engine`` on ``mesh``: ``auto`` is continuous in one process wherever the
  weights are replicated (one device, or a mesh whose devices all lie on batch axes that shard no weight: pure data
  parallelism), whatever the sampler's dtype — where experiments/bench_sampler.py measured it at least as fast as
  static on one CPU device in both dtypes, and experiments/bench_engine_mesh.py faster on a 2-device data mesh
  (bf16: 1.21–1.44× fixed length, 1.4× word problems) — and static otherwise (FSDP or tensor parallelism: the
  continuous engine would hold a full copy of the weights per device; several processes: not measured).  An
  explicit ``continuous`` runs data-parallel on a mesh whose devices all lie on the batch axes (each device a full
  copy of the weights); it is refused on a mesh with tensor parallelism, and for a model with sliding-window layers
  (Gemma 3: its decode slots do not express the window).  ``auto`` also stays static when ``slots`` is not a
  multiple of the devices (the continuous engine splits its slots evenly)."""
  if engine not in ENGINES:
    raise ValueError(f"sampling.engine must be one of {list(ENGINES)}; got {engine!r}")
  if engine == "continuous" and shard_lib.batch_shards(mesh, rules) != mesh.devices.size:
    raise ValueError(f"sampling.engine = 'continuous' is data-parallel (each device its own slots and a full copy "
                     f"of the weights): this mesh {dict(mesh.shape)} has devices off the batch axes "
                     f"{shard_lib.batch_axes(mesh, rules)}; use 'static' or 'auto' with tensor parallelism")
  if engine == "continuous" and windowed:
    raise ValueError("sampling.engine = 'continuous' does not support sliding-window attention (this model has "
                     "local layers, e.g. Gemma 3): use 'static' or 'auto'")
  weight_axes = {a for n in ("vocab", "heads", "kv_heads", "mlp", "embed", "head_dim", "layers")
                 for a in shard_lib.rule_axes(rules, n)}
  replicated = (shard_lib.batch_shards(mesh, rules) == mesh.devices.size
                and not weight_axes & set(shard_lib.batch_axes(mesh, rules)))
  faster = (jax.process_count() == 1 and replicated and slots % mesh.devices.size == 0 and not windowed)
  return "continuous" if engine == "continuous" or (engine == "auto" and faster) else "static"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rollout:
  """One batch of samples: B prompts × G completions = N rows (row r belongs to prompt r // G, prompt-major).

  Device side: global arrays whose leading (row) axis is sharded over the mesh's batch axes (replicated when the
  batch shards do not divide it).  Host side: ``examples``, ``group_size``, and this process's ``rows`` and their
  decoded ``texts``.  Built by ``RolloutEngine.generate``; ``score`` and ``grade`` return copies with the rewards
  and the task's correctness filled in.
  """

  # host side
  examples: list[Example]  # the B prompts
  group_size: int  # G
  rows: range  # the rows this process holds (all of them on one process)
  texts: list[str]  # decoded completions of ``rows`` (special tokens skipped)
  # device side
  prompt_ids: jax.Array  # int32[B, P] left-padded prompt tokens
  prompt_mask: jax.Array  # int32[B, P] 1 on prompt tokens
  tokens: jax.Array  # int32[N, T] completion tokens (T: the buffer trimmed to the longest completion, bucketed)
  mask: jax.Array  # int32[N, T] 1 on completion tokens (EOS included), 0 on padding
  logprobs: jax.Array  # float32[N, T] log-probs of the sampled tokens under the sampling distribution
  entropies: jax.Array  # float32[N, T] the policy's entropies at the sampling temperature
  lengths: jax.Array  # int32[N] completion lengths (EOS included)
  finish_reason: jax.Array  # int32[N] sampler.FINISH_EOS | sampler.FINISH_LENGTH
  rewards: jax.Array | None = None  # float32[N] weighted total reward (after ``score``)
  reward_parts: dict[str, jax.Array] = dataclasses.field(default_factory=dict)  # name → float32[N] unweighted
  correct: jax.Array | None = None  # float32[N] 1 where the task counts the completion correct (after ``grade``)
  keep: jax.Array | None = None  # float32[N] 0 on filler rows that must not train (``select_groups``), else None

  @property
  def num_rows(self) -> int:
    return self.tokens.shape[0]

  def row_examples(self) -> list[Example]:
    """The example of each of this process's rows."""
    return [self.examples[r // self.group_size] for r in self.rows]


class RolloutEngine:
  """Samples, decodes and scores rollouts of a model on a mesh (no optimizer state).

  Args:
    model, tokenizer: the policy and its tokenizer (``encode_prompt``, ``decode``, ``eos_ids``, ``pad_id``,
      ``allowed_ids``).
    mesh: None for the first device alone (evaluation, analysis).
    prompt_multiple: prompts are left-padded to a multiple of this (fewer shapes, fewer compilations).
    trim: drop the all-padding tail of the completion buffer (rounded up to a bucket of T/4).
    engine: ``static`` (``sampler``: one batch of B·G rows, the oracle) | ``continuous`` (``continuous``: decode
      slots fed from a queue, one KV copy per prompt, live-length reads; data-parallel on a mesh) | ``auto``:
      continuous where ``resolve_engine`` finds it measured faster (replicated weights, one process), else static.
    slots: the continuous engine's decode slots (0: one per sample).
    read_growth: how the continuous engine's reads grow (``continuous.ContinuousParams.read_growth``).
    kv_layout: where the continuous engine keeps the slots' KV (``continuous.ContinuousParams.kv_layout``).
    decode_kernel: what runs its decode attention (``continuous.ContinuousParams.decode_kernel``).
  """

  def __init__(self, model: Transformer, tokenizer, mesh=None, rules=shard_lib.MeshRules(), *,
               prompt_multiple: int = 8, trim: bool = True, engine: str = "auto", slots: int = 0,
               read_growth: str = continuous.ContinuousParams.read_growth,
               kv_layout: str = continuous.ContinuousParams.kv_layout,
               decode_kernel: str = continuous.ContinuousParams.decode_kernel):
    if mesh is None:
      mesh = shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    if prompt_multiple < 1:
      raise ValueError(f"prompt_multiple must be >= 1; got {prompt_multiple}")
    self.engine = resolve_engine(engine, mesh, model.config.windowed, rules, slots)
    self.continuous = continuous.ContinuousParams(slots=slots, read_growth=read_growth, kv_layout=kv_layout,
                                                  decode_kernel=decode_kernel)
    self.last_stats: continuous.EngineStats | None = None  # what the last continuous call computed
    self.model, self.tokenizer, self.mesh, self.rules = model, tokenizer, mesh, rules
    self.prompt_multiple, self.trim = prompt_multiple, trim
    self.allowed_ids = policy.allowed_ids(tokenizer.allowed_ids, model.config.vocab_size, "tokenizer.allowed_ids")

  def row_sharding(self, n: int, ndim: int = 1):
    """Rows over the batch mesh axes (replicated when they do not divide n)."""
    return shard_lib.batch_sharding(self.mesh, ndim, self.rules, rows=n)

  def _prompts(self, examples: Sequence[Example], max_new_tokens: int) -> tuple[jax.Array, jax.Array]:
    """Global left-padded prompt arrays [B, P], checked on the host (once: the sampler trusts them); each process
    tokenizes the prompts its devices hold."""
    multiple = self.prompt_multiple
    b = len(examples)
    sh = self.row_sharding(b, 2)
    rows = dist.local_rows(sh, b)
    encoded = [self.tokenizer.encode_prompt(examples[i].prompt) for i in rows]
    p = dist.process_max(max(len(e) for e in encoded))
    rounded = -(-p // multiple) * multiple
    if rounded + max_new_tokens <= self.model.config.max_position_embeddings:
      p = rounded
    ids = np.full((len(rows), p), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), p), np.int32)
    for i, e in enumerate(encoded):
      ids[i, p - len(e):] = e
      mask[i, p - len(e):] = 1
    sampler.validate_prompts(ids, mask, self.model.config.vocab_size)
    return dist.global_rows(ids, sh, b), dist.global_rows(mask, sh, b)

  def generate(self, params, examples: Sequence[Example], key, sp: sampler.SamplingParams) -> Rollout:
    """Sample ``sp.group_size`` completions of each example's prompt; ``params`` already in the compute dtype
    (``sp.eos_ids`` and ``sp.pad_id`` should be the tokenizer's: ``train.build.sampling_params`` makes them so)."""
    prompt_ids, prompt_mask = self._prompts(examples, sp.max_new_tokens)
    b, g = len(examples), sp.group_size
    n = b * g
    if self.engine == "continuous":
      out, self.last_stats = continuous.sample_groups(self.model, params, prompt_ids, prompt_mask, key, sp,
                                                      self.allowed_ids, self.continuous, mesh=self.mesh,
                                                      axes=shard_lib.batch_axes(self.mesh, self.rules))
    else:
      out = sampler.sample_groups(self.model, params, prompt_ids, prompt_mask, key, sp, self.allowed_ids,
                                  row_sharding=self.row_sharding(n))
    t = sp.max_new_tokens
    if self.trim:  # completions rarely use the whole buffer: drop the all-padding tail (bucketed)
      longest = int(dist.fetch(_max(out.lengths)))
      bucket = max(8, t // 4)
      t = min(t, max(bucket, -(-longest // bucket) * bucket))
    flat = _flatten_rows(out, t, self.row_sharding(n, 2), self.row_sharding(n))
    rows = dist.local_rows(self.row_sharding(n), n)
    tok, msk = dist.host_rows(flat["tokens"], rows), dist.host_rows(flat["mask"], rows)
    texts = [self.tokenizer.decode(tok[i][msk[i] == 1]) for i in range(len(rows))]
    return Rollout(examples=list(examples), group_size=g, rows=rows, texts=texts, prompt_ids=prompt_ids,
                   prompt_mask=prompt_mask, **flat)

  def to_global(self, local: np.ndarray, n: int) -> jax.Array:
    """A global row array from this process's rows."""
    return dist.global_rows(np.asarray(local), self.row_sharding(n, np.ndim(local)), n)

  def score(self, rollout: Rollout, rewards: Sequence[tuple[Any, float]],
            names: Sequence[str] | None = None) -> Rollout:
    """Rewards of every completion (host reward functions on this process's rows); ``names`` label
    the parts (default: the functions' names)."""
    total, parts = rewards_lib.score_rows(rewards, rollout.row_examples(), rollout.texts)
    n = rollout.num_rows
    names = names or [rewards_lib.reward_name(fn) for fn, _ in rewards]
    named = {}
    for name, part in zip(names, parts):
      named[name if name not in named else f"{name}_{len(named)}"] = self.to_global(part.astype(np.float32), n)
    return dataclasses.replace(rollout, rewards=self.to_global(total, n), reward_parts=named)

  def grade(self, rollout: Rollout, task: Source) -> Rollout:
    """The task's correctness of every completion."""
    ok = np.asarray([task.is_correct(ex, text) for ex, text in zip(rollout.row_examples(), rollout.texts)],
                    np.float32)
    return dataclasses.replace(rollout, correct=self.to_global(ok, rollout.num_rows))

  def select_groups(self, rollouts: Sequence[Rollout], picks: Sequence[tuple[int, int]],
                    keep: Sequence[bool]) -> Rollout:
    """One rollout made of groups of scored ``rollouts`` (same group size): ``picks[j] = (rollout index, group
    index)`` becomes group j; ``keep[j]`` False marks a filler group (its rows get ``keep`` 0: they fill the
    batch's shape and must not train).  Completions are right-padded and prompts left-padded to the longest."""
    g = rollouts[0].group_size
    t = max(r.tokens.shape[1] for r in rollouts)
    p = max(r.prompt_ids.shape[1] for r in rollouts)
    names = list(rollouts[0].reward_parts)
    offsets = np.cumsum([0] + [r.prompt_ids.shape[0] for r in rollouts])
    groups = np.asarray([offsets[k] + grp for k, grp in picks], np.int32)
    rows = (groups[:, None] * g + np.arange(g)[None]).reshape(-1).astype(np.int32)
    n = len(rows)
    sh2, sh1 = self.row_sharding(n, 2), self.row_sharding(n)
    arrays = [{"tokens": r.tokens, "mask": r.mask, "logprobs": r.logprobs, "entropies": r.entropies,
               "lengths": r.lengths, "finish_reason": r.finish_reason, "rewards": r.rewards, "correct": r.correct,
               **{f"part/{k}": r.reward_parts[k] for k in names}} for r in rollouts]
    prompts = [(r.prompt_ids, r.prompt_mask) for r in rollouts]
    flat, (prompt_ids, prompt_mask) = _select(arrays, prompts, rows, groups, t, p, self.tokenizer.pad_id,
                                              sh2, sh1, self.row_sharding(len(groups), 2))
    keep_rows = np.repeat(np.asarray(keep, np.float32), g)
    local = dist.local_rows(sh1, n)
    tok, msk = dist.host_rows(flat["tokens"], local), dist.host_rows(flat["mask"], local)
    texts = [self.tokenizer.decode(tok[i][msk[i] == 1]) for i in range(len(local))]
    return Rollout(examples=[rollouts[k].examples[grp] for k, grp in picks], group_size=g, rows=local, texts=texts,
                   prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=flat["tokens"], mask=flat["mask"],
                   logprobs=flat["logprobs"], entropies=flat["entropies"], lengths=flat["lengths"],
                   finish_reason=flat["finish_reason"], rewards=flat["rewards"], correct=flat["correct"],
                   reward_parts={k: flat[f"part/{k}"] for k in names}, keep=self.to_global(keep_rows[local], n))

  def host(self, rollout: Rollout, x: jax.Array) -> np.ndarray:
    """This process's rows of a row array of the rollout."""
    return dist.host_rows(x, rollout.rows)

  def group_sums(self, x: jax.Array, group_size: int) -> np.ndarray:
    """Per-prompt sums of a row array [N] (float64 numpy on every process)."""
    return np.asarray(dist.fetch(_group_sums(x, group_size, shard_lib.replicated(self.mesh))), np.float64)


@jax.jit
def _max(x):
  return jnp.max(x)


@functools.partial(jax.jit, static_argnames=("g", "out"))
def _group_sums(x, g, out):
  return jax.lax.with_sharding_constraint(jnp.sum(x.reshape(-1, g).astype(jnp.float32), axis=-1), out)


@functools.partial(jax.jit, static_argnames=("t", "sh2", "sh1"))
def _flatten_rows(out: sampler.SampleOutput, t: int, sh2, sh1) -> dict[str, jax.Array]:
  """The sampler's [B, G, T] outputs as [N, t] rows (the first t positions), row-sharded."""
  n = math.prod(out.lengths.shape)
  two = lambda x: jax.lax.with_sharding_constraint(x.reshape(n, -1)[:, :t], sh2)
  one = lambda x: jax.lax.with_sharding_constraint(x.reshape(n), sh1)
  return {"tokens": two(out.tokens), "mask": two(out.mask), "logprobs": two(out.logprobs),
          "entropies": two(out.entropies), "lengths": one(out.lengths), "finish_reason": one(out.finish_reason)}


@functools.partial(jax.jit, static_argnames=("t", "p", "pad_id", "sh2", "sh1", "shp"))
def _select(arrays, prompts, rows, groups, t, p, pad_id, sh2, sh1, shp):
  """Concatenate rollouts' row arrays (padded to t positions) and prompts (left-padded to p), then take rows."""
  def pad_t(x, fill):
    return x if x.ndim == 1 or x.shape[1] == t else jnp.pad(x, ((0, 0), (0, t - x.shape[1])), constant_values=fill)

  fills = {"tokens": pad_id}
  cat = {k: jnp.concatenate([pad_t(a[k], fills.get(k, 0)) for a in arrays]) for k in arrays[0]}
  out = {k: jax.lax.with_sharding_constraint(v[rows], sh2 if v.ndim == 2 else sh1) for k, v in cat.items()}
  left = lambda x, fill: jnp.pad(x, ((0, 0), (p - x.shape[1], 0)), constant_values=fill)
  ids = jnp.concatenate([left(i, pad_id) for i, _ in prompts])[groups]
  msk = jnp.concatenate([left(m, 0) for _, m in prompts])[groups]
  return out, (jax.lax.with_sharding_constraint(ids, shp), jax.lax.with_sharding_constraint(msk, shp))
