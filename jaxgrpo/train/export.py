"""Load a trained run's policy and export it: an HF checkpoint (merged weights + tokenizer) and, for
LoRA runs, the adapter alone in PEFT's format.

    model, params, tokenizer, cfg = load_run("runs/smollm2_arithmetic")          # newest good checkpoint
    export_run("runs/smollm2_arithmetic", "out/hf", step=40)                      # transformers loads out/hf
"""

from __future__ import annotations

import os
from typing import Any

import jax

from jaxgrpo import models
from jaxgrpo.models import lora
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.train import build, checkpointing
from jaxgrpo.train import config as config_lib
from jaxgrpo.train import step as ts
from jaxgrpo.train.run_dir import CONFIG_FILE

PEFT_SUBDIR = "peft_adapter"


def load_run(run_dir: str, step: int | None = None, mesh=None) -> tuple[Any, dict[str, Any], Any, Any]:
  """(model, params with adapters, tokenizer, config) of a run at ``step`` (default: the newest good one)."""
  cfg_path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{run_dir}: no {CONFIG_FILE} (not a jaxgrpo run directory)")
  cfg = config_lib.read_config(cfg_path)
  mesh = mesh if mesh is not None else shard_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model, params, tokenizer = build.build_model(cfg.model, cfg.seed, cfg.data.system_prompt,
                                              cfg.data.chat_template_kwargs)
  tx = ts.make_optimizer(cfg.optim, cfg.steps)
  sh = ts.state_shardings(model, tx, mesh)
  trainable, base = lora.split(params) if model.config.lora is not None else (params, None)
  opt_state = jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sh["opt_state"],
                           jax.eval_shape(tx.init, trainable))
  template = checkpointing.training_state(params=ts.shard_state(trainable, sh["params"]), opt_state=opt_state,
                                          step=0, rng=jax.random.PRNGKey(0), data_pos=0)
  ckpt = checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
  try:
    if step is not None:
      if step not in ckpt.all_steps():
        raise ValueError(f"{run_dir}: no checkpoint at step {step}; saved steps: {ckpt.all_steps()}")
      state = ckpt.restore_step(step, template)
    else:
      restored = ckpt.restore(template)
      if restored is None:
        raise ValueError(f"{run_dir}: no checkpoints to load")
      state, step = restored
  finally:
    ckpt.close()
  full = lora.combine(base, state["params"]) if base is not None else state["params"]
  return model, full, tokenizer, cfg


def export_run(run_dir: str, out_dir: str, step: int | None = None, dtype=None) -> dict[str, str]:
  """Write an HF checkpoint of a run's policy (and its PEFT adapter for LoRA runs); returns the paths."""
  model, params, tokenizer, cfg = load_run(run_dir, step)
  models.save_pretrained(model, params, out_dir, dtype=dtype)
  written = {"hf": out_dir}
  if hasattr(tokenizer, "save"):
    tokenizer.save(out_dir)
  if model.config.lora is not None:
    adapters, _ = lora.split(jax.device_get(params))
    peft_dir = os.path.join(out_dir, PEFT_SUBDIR)
    base = build.checkpoint_dir(cfg.model) if cfg.model.checkpoint else None
    lora.save_peft(model.config, adapters, peft_dir, base_model=base)
    written["peft"] = peft_dir
  return written
