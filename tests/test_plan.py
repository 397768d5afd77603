"""`jaxgrpo plan`: per-device memory from XLA's analysis of the trainer's own compiled programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo import cli
from jaxgrpo.rollout import continuous
from jaxgrpo.train import plan, presets
from jaxgrpo.train import step as ts
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.trainer import Trainer


def tiny_cfg(tmp_path, **sections):
  cfg = config_replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False,
                        data={"prompts_per_step": 2}, mesh={"data": 2, "fsdp": 2, "tensor": 2})
  return config_replace(cfg, **sections)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_plan_reports_the_memory_of_the_update_step_the_trainer_runs(tmp_path):
  cfg = tiny_cfg(tmp_path, objective={"kl_beta": 0.05})
  report = plan.plan(cfg, devices=8, prompt_len=1)
  trainer = Trainer(cfg)
  n = cfg.data.prompts_per_step * cfg.sampling.group_size
  t = cfg.sampling.max_new_tokens
  rows = lambda dtype, w: np.zeros((n, w), dtype)
  batch = ts.Batch(prompt_ids=rows(np.int32, 1), prompt_mask=rows(np.int32, 1), tokens=rows(np.int32, t),
                   mask=rows(np.int32, t), advantages=rows(np.float32, t), weights=rows(np.float32, t),
                   old_logp=rows(np.float32, t))
  orders = np.zeros((1, n), np.int32)
  compiled = trainer.update_fn.lower(trainer.state, trainer.frozen, trainer.ref_params, batch, orders).compile()
  mem = compiled.memory_analysis()
  b = report["bytes"]
  assert b["update_temporaries"] == mem.temp_size_in_bytes
  assert b["update_arguments"] == mem.argument_size_in_bytes
  per_device = lambda tree: sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards[:1])
  assert b["params"] == per_device(trainer.state["params"])
  assert b["optimizer"] == per_device(trainer.state["opt_state"])
  assert b["reference"] == per_device(trainer.ref_params)
  assert report["fits"] and b["peak"] >= b["update_temporaries"] > 0 and b["kv_cache"] > 0


def test_plan_shows_what_lora_and_sharding_save():
  base = config_replace(presets.preset("lambda_grpo_paper_full"), sampling={"max_new_tokens": 64},
                        objective={"share_prefix": "none"})  # the packed update's plan: the test below
  full = plan.plan(base, devices=1, prompt_len=16)
  lora = plan.plan(config_replace(base, model={"lora": {"rank": 8, "alpha": 16.0}}), devices=1, prompt_len=16)
  assert lora["bytes"]["optimizer"] < full["bytes"]["optimizer"] / 50  # adapters only
  assert lora["bytes"]["frozen"] > 0 and full["bytes"]["frozen"] == 0
  assert full["params_total"] > 1.5e9 and full["bytes"]["params"] == pytest.approx(4 * full["params_total"], rel=1e-6)
  # one device in bfloat16: ``auto`` runs the continuous engine (measured at least as fast there), which holds one
  # KV copy per prompt (G = 6 here) instead of the static engine's one per completion; its default layout adds a
  # call buffer of steps_per_call positions per slot (float32 on XLA:CPU: twice a bf16 position's bytes)
  kv = full["bytes"]
  assert full["engine"] == "continuous" and kv["kv_cache"] == kv["kv_cache_continuous"]
  g, p, t = base.sampling.group_size, 16, 64
  ring = continuous.ContinuousParams.steps_per_call * continuous._ring_dtype(jnp.bfloat16).itemsize // 2
  assert kv["kv_cache_continuous"] / kv["kv_cache_static"] == pytest.approx((p + g * (t + ring)) / (g * (p + t)))
  stacked = plan.plan(config_replace(base, sampling={"kv_layout": "stacked"}), devices=1, prompt_len=16)["bytes"]
  assert stacked["kv_cache_continuous"] / stacked["kv_cache_static"] == pytest.approx((p + g * t) / (g * (p + t)))
  assert stacked["kv_cache_continuous"] < stacked["kv_cache_static"]


def test_plan_cli_prints_a_table_and_says_whether_it_fits(capsys):
  code = cli.main(["plan", "--preset", "toy", "--devices", "1", "--hbm", "0.001"])
  out = capsys.readouterr().out
  assert "| optimizer state |" in out and "does NOT fit in 0.001 GiB" in out and code == 3
  assert "| sampler: KV cache (continuous engine; static " in out


def test_plan_accounts_for_shared_prefix_training(tmp_path):
  """With ``objective.share_prefix`` the plan compiles the packed update too (its worst case: no completion shares
  a token) and counts it in the peak (``auto``, the default, may run either program: the larger one; an explicit
  mode counts the packed one)."""
  mode = "auto"
  cfg = config_replace(tiny_cfg(tmp_path), mesh={"data": 1, "fsdp": 1, "tensor": 1},
                       objective={"share_prefix": mode})
  report = plan.plan(cfg, devices=1, prompt_len=4)
  b = report["bytes"]
  assert b["update_packed_peak"] > 0 and report["share_prefix"] == mode
  plain = b["update_arguments"] + b["update_temporaries"] + b["update_outputs_not_aliased"]
  assert b["update_peak"] == (b["update_packed_peak"] if mode == "prompt" else max(plain, b["update_packed_peak"]))
  assert "update on packed prefix trees" in plan.format_report(report)
