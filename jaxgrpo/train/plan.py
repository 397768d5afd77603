"""A memory plan before launch: per-device bytes of the sampler and the update step, from XLA.

``plan(cfg, devices)`` builds the model's abstract parameters (shapes only, nothing allocated), the
trainer's own update program (``train_step.make_update_program``, the one ``Trainer`` runs) and the
sampler's prefill and decode loop, lowers and compiles them for the configured mesh on ``devices``
devices, and reads ``compiled.memory_analysis()``.  With ``jaxgrpo plan`` on a CPU machine the devices are
simulated (``--xla_force_host_platform_device_count``), so the numbers are XLA:CPU's buffer assignment for
the sharded programs: the right order of magnitude for accelerators, not their exact allocator figures.

Per device:
* params / optimizer state / frozen base (LoRA) / reference params: the shards the rule table gives;
* update: arguments + temporaries + outputs not aliased to the donated state (XLA's peak estimate);
* sampling: the resident training state, the compute-dtype copy of the weights the sampler runs, the KV
  cache, and the decode loop's temporaries.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxgrpo.models import lora
from jaxgrpo.models.transformer import Transformer, abstract_params
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.rollout import continuous, sampler
from jaxgrpo.rollout import engine as rollout_engine
from jaxgrpo.train import build, packing
from jaxgrpo.train import step as ts

GIB = 1024 ** 3


def _per_device_bytes(abstract_tree, shardings) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs placed with ``shardings``."""
  total = 0
  for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shape = s.shard_shape(x.shape) if s is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def plan(cfg, devices: int | None = None, hbm_gib: float = 80.0, prompt_len: int | None = None,
         rules=shard_lib.MeshRules()) -> dict[str, Any]:
  """Per-device memory of ``cfg``'s sampler and update step on ``devices`` devices (see the module docstring)."""
  devs = jax.devices()[:devices] if devices else jax.devices()
  if devices and len(devs) < devices:
    raise ValueError(f"asked for {devices} devices but JAX sees {len(jax.devices())} (set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count={devices} before JAX starts; `jaxgrpo plan` does)")
  mesh = shard_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devs)
  model = Transformer(build.model_config(cfg.model))
  mc = model.config
  uspec = ts.update_spec(cfg.objective, cfg.sampling, mc.lora is not None, cfg.nonfinite)
  allowed = build.tokenizer_class(cfg.model).allowed_ids
  loss_spec = ts.loss_spec(cfg.objective, cfg.sampling.temperature, allowed)
  program = ts.make_update_program(model, cfg.optim, cfg.steps, loss_spec, uspec, mesh, rules)
  sh = program.shardings
  full = abstract_params(model)
  trainable, base = lora.split(full) if mc.lora is not None else (full, None)
  opt = jax.eval_shape(program.tx.init, trainable)
  n = cfg.data.prompts_per_step * cfg.sampling.group_size
  t = cfg.sampling.max_new_tokens
  p = prompt_len or max(1, min(256, mc.max_position_embeddings - t))
  rows2 = shard_lib.batch_sharding(mesh, 2, rules)
  i32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows2)
  f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows2)
  batch = ts.Batch(prompt_ids=i32((n, p)), prompt_mask=i32((n, p)), tokens=i32((n, t)), mask=i32((n, t)),
                   advantages=f32((n, t)), weights=f32((n, t)), old_logp=f32((n, t)))
  state = {"params": _abstract(trainable, sh["params"]), "opt_state": _abstract(opt, sh["opt_state"])}
  frozen = None if base is None else _abstract(base, sh["frozen"])
  ref = _abstract(full, sh["full"]) if uspec.reference == "params" else None
  orders = jax.ShapeDtypeStruct((cfg.objective.num_iterations, n), jnp.int32,
                                sharding=shard_lib.replicated(mesh))
  compiled = program.update.lower(state, frozen, ref, batch, orders).compile()
  mem = compiled.memory_analysis()
  packed_mem = None
  # the trainer's choice (Trainer._share_prefix_mode): auto packs only with one minibatch per pass
  if cfg.objective.share_prefix != "none" and not (cfg.objective.share_prefix == "auto"
                                                    and cfg.objective.num_minibatches > 1):
    packed_mem = _packed_update_memory(cfg, program, mesh, rules, state, frozen, ref, p, t)

  out = {
      "preset": cfg.name, "devices": len(devs), "mesh": dict(mesh.shape), "hbm_gib": hbm_gib,
      "model": f"{mc.family}, {mc.num_layers} layers, hidden {mc.hidden_size}, vocab {mc.vocab_size}",
      "params_total": int(sum(math.prod(x.shape) for x in jax.tree.leaves(full))),
      "trainable_total": int(sum(math.prod(x.shape) for x in jax.tree.leaves(trainable))),
      "rows": n, "prompt_len": p, "completion_len": t, "dtype": mc.dtype, "param_dtype": mc.param_dtype,
      "remat": mc.remat, "attention_chunk": mc.attention_chunk, "logprob_chunk": cfg.objective.logprob_chunk,
      "lora_rank": mc.lora.rank if mc.lora else 0,
      "bytes": {
          "params": _per_device_bytes(trainable, sh["params"]),
          "optimizer": _per_device_bytes(opt, sh["opt_state"]),
          "frozen": 0 if base is None else _per_device_bytes(base, sh["frozen"]),
          "reference": 0 if ref is None else _per_device_bytes(full, sh["full"]),
          "update_arguments": int(mem.argument_size_in_bytes),
          "update_temporaries": int(mem.temp_size_in_bytes),
          "update_outputs_not_aliased": int(mem.output_size_in_bytes - mem.alias_size_in_bytes),
      },
  }
  b = out["bytes"]
  b["update_peak"] = b["update_arguments"] + b["update_temporaries"] + b["update_outputs_not_aliased"]
  if packed_mem is not None:
    # shared prefixes: the packed update's worst case (no completion shares a token with another: every group's
    # prompt once + its G completions); "auto" may run either program, so the peak is the larger one
    b["update_packed_peak"] = packed_mem
    out["share_prefix"] = cfg.objective.share_prefix
    b["update_peak"] = packed_mem if cfg.objective.share_prefix != "auto" else max(b["update_peak"], packed_mem)
  b.update(_sampler_bytes(cfg, model, mesh, rules, full, sh["full"], n, p, t, allowed))
  out["engine"] = b.pop("engine")
  resident = b["params"] + b["optimizer"] + b["frozen"] + b["reference"]
  b["sampling_peak"] = resident + b["sampler_weights"] + b["kv_cache"] + b["sampler_temporaries"]
  b["peak"] = max(b["update_peak"], b["sampling_peak"])
  out["fits"] = b["peak"] <= hbm_gib * GIB
  return out


def _packed_update_memory(cfg, program, mesh, rules, state, frozen, ref, p, t) -> int:
  """Peak bytes per device of the update on a ``PackedBatch`` of one group per row, [prompt | G completions]."""
  o = cfg.objective
  g, b = cfg.sampling.group_size, cfg.data.prompts_per_step
  multiple = shard_lib.batch_shards(mesh, rules) * o.num_minibatches * o.micro_batches
  r = -(-b // multiple) * multiple
  s = -(-(p + g * t) // 64) * 64
  rows = shard_lib.batch_sharding(mesh, 1, rules)
  arr = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  batch = packing.PackedBatch(
      tokens=arr((r, s), jnp.int32), positions=arr((r, s), jnp.int32), ends=arr((r, s), jnp.int32),
      source=arr((r, g, t), jnp.int32), targets=arr((r, g, t), jnp.int32), mask=arr((r, g, t), jnp.int32),
      advantages=arr((r, g, t), jnp.float32), weights=arr((r, g, t), jnp.float32),
      old_logp=arr((r, g, t), jnp.float32), slots=arr((r, g), jnp.int32), window=p + g * t)
  orders = jax.ShapeDtypeStruct((o.num_iterations, r), jnp.int32, sharding=shard_lib.replicated(mesh))
  mem = program.update.lower(state, frozen, ref, batch, orders).compile().memory_analysis()
  return int(mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes)


def _sampler_bytes(cfg, model, mesh, rules, full, full_sh, n, p, t, allowed) -> dict[str, int]:
  """The sampler's weights (compute dtype), KV cache and prefill/decode temporaries per device."""
  mc = model.config
  cast = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(mc.dtype) if
                                                     jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), full)
  b = cfg.data.prompts_per_step
  sp = build.sampling_params(cfg.sampling, tuple(mc.eos_token_id) or (0,), mc.pad_token_id or 0)
  prompts = jax.ShapeDtypeStruct((b, p), jnp.int32, sharding=shard_lib.batch_sharding(mesh, 2, rules, rows=b))
  pre, dec, cache = sampler.lower(model, _abstract(cast, full_sh), prompts, sp,
                                  shard_lib.batch_sharding(mesh, 1, rules, rows=n), allowed)
  temps = [x.compile().memory_analysis().temp_size_in_bytes for x in (pre, dec)]
  static_kv = _per_device_bytes(cache, jax.tree.map(lambda c: c.sharding, cache))
  # the engine the trainer picks; the continuous engine's KV is one copy per prompt plus T positions per slot
  # (counted, not lowered: the static loop's temporaries stand for both engines')
  engine = rollout_engine.resolve_engine(cfg.sampling.engine, mesh, mc.windowed, rules, cfg.sampling.slots)
  shards = shard_lib.batch_shards(mesh, rules)
  kv = continuous.kv_bytes(model, sp, b, p, cfg.sampling.slots, shards, cfg.sampling.kv_layout)
  # the continuous engine samples with a full copy of the weights on every device (data-parallel)
  weights_sh = jax.tree.map(lambda _: shard_lib.replicated(mesh), full_sh) if engine == "continuous" else full_sh
  return {"sampler_weights": _per_device_bytes(cast, weights_sh),
          "kv_cache": kv["continuous"] if engine == "continuous" else static_kv,
          "kv_cache_static": static_kv, "kv_cache_continuous": kv["continuous"], "engine": engine,
          "sampler_temporaries": int(max(temps))}


def format_report(r: dict[str, Any]) -> str:
  b = r["bytes"]
  g = lambda x: f"{x / GIB:.2f} GiB" if x >= GIB / 10 else f"{x / 2**20:.1f} MiB"
  lines = [
      f"{r['preset']}: {r['model']}; {r['params_total'] / 1e9:.2f} B params ({r['trainable_total'] / 1e6:.1f} M "
      f"trainable), {r['dtype']} compute / {r['param_dtype']} params, remat {r['remat']}, attention chunk "
      f"{r['attention_chunk']}, log-prob chunk {r['logprob_chunk']}, LoRA rank {r['lora_rank']}",
      f"{r['rows']} rows × ({r['prompt_len']} prompt + {r['completion_len']} completion tokens) on {r['devices']} "
      f"device(s), mesh {r['mesh']}",
      "", "| per device | bytes |", "|---|---|",
      f"| parameters (trainable) | {g(b['params'])} |", f"| optimizer state | {g(b['optimizer'])} |",
      f"| frozen base (LoRA) | {g(b['frozen'])} |", f"| reference params (KL) | {g(b['reference'])} |",
      f"| update: arguments | {g(b['update_arguments'])} |", f"| update: temporaries | {g(b['update_temporaries'])} |",
      *([f"| update on packed prefix trees (share_prefix {r['share_prefix']}; worst case) | "
         f"{g(b['update_packed_peak'])} |"] if "update_packed_peak" in b else []),
      f"| update: peak | {g(b['update_peak'])} |",
      f"| sampler: weights in {r['dtype']} | {g(b['sampler_weights'])} |",
      f"| sampler: KV cache ({r['engine']} engine; static {g(b['kv_cache_static'])}, continuous "
      f"{g(b['kv_cache_continuous'])}) | {g(b['kv_cache'])} |",
      f"| sampler: temporaries | {g(b['sampler_temporaries'])} |", f"| sampling: peak | {g(b['sampling_peak'])} |",
      f"| **peak** | **{g(b['peak'])}** |", "",
      f"{'fits' if r['fits'] else 'does NOT fit'} in {r['hbm_gib']:g} GiB per device",
  ]
  return "\n".join(lines)
