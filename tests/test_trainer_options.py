"""The objectives every peer trainer has, as trainer options: checked when the config loads, composable with λ-GRPO
and PRPO, and doing what their core functions say on real (toy) runs."""

import json

import jax
import numpy as np
import pytest
from checkpoints import final_state
from meshes import trainer

import jaxgrpo
from jaxgrpo.train import config as C
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace


def toy_cfg(tmp_path, **sections):
  cfg = config_replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False, steps=2,
                       checkpoint_every=0)
  return config_replace(cfg, **sections)


@pytest.mark.parametrize("override, match", [
    ("objective.rollout_correction_cap=1.0", r"'objective.rollout_correction_cap' must be > 1"),
    ("objective.rollout_correction=is", r"'objective.rollout_correction' must be one of \['none', 'tis', 'mis'\]"),
    ("objective.rollout_correction_level=group", r"'objective.rollout_correction_level' must be one of"),
    ("objective.ratio_level=seq", r"'objective.ratio_level' must be one of \['token', 'sequence', 'sequence_tok"),
    ("objective.kl_estimator=k4", r"'objective.kl_estimator' must be one of \['k1', 'k2', 'k3'\]"),
    ("objective.entropy_coef=-0.1", r"'objective.entropy_coef' must be >= 0"),
    ("objective.kl_in_reward=true", r"'objective.kl_beta' must be > 0 when objective.kl_in_reward is true"),
    ("data.max_sampling_rounds=0", r"'data.max_sampling_rounds' must be >= 1"),
    ("rewards.overlong_buffer=4", r"'rewards.overlong_buffer' must be < sampling.max_new_tokens \(4\)"),
    ("rewards.overlong_penalty=-1", r"'rewards.overlong_penalty' must be >= 0"),
    ("rewards.normalization=gdpo", r"'rewards.normalization' must be one of \['sum_then_normalize', 'normalize_"),
    ("sampling.dtype=int8", r"'sampling.dtype' must be one of \['float32', 'bfloat16', 'float16'\] or null"),
    ("objective.top_entropy_quantile=0", r"'objective.top_entropy_quantile' must be in \(0, 1\]"),
    ("objective.kl_importance_weight=true", r"'objective.kl_importance_weight' must be false without a KL loss"),
    ("objective.surrogate=ppo", r"'objective.surrogate' must be one of \['clip', 'cispo'\]"),
    ("objective.off_policy_mask_threshold=-1", r"'objective.off_policy_mask_threshold' must be >= 0 .* or null"),
    ("objective.top_entropy_quantile=1.2", r"'objective.top_entropy_quantile' must be in \(0, 1\]"),
])
def test_bad_options_are_refused_when_loaded_naming_the_key(override, match):
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(presets.preset("toy"), [override])


@pytest.mark.parametrize("overrides, match", [
    (["objective.ratio_level=sequence", "objective.name=prpo"], r"'token' or 'sequence_token' for objective.name"),
    (["objective.ratio_level=sequence", "objective.name=lambda_grpo"], r"'sequence_token' with λ weights"),
    (["rewards.normalization=normalize_then_sum", "objective.name=prpo"], r"'sum_then_normalize' for objective.na"),
    (["objective.ratio_level=sequence", "objective.rollout_correction=tis"],
     r"'objective.rollout_correction_level' must be 'sequence' with objective.ratio_level = sequence"),
    (["objective.surrogate=cispo", "objective.ratio_level=sequence"], r"'objective.surrogate' must be 'clip' with"),
    (["objective.top_entropy_quantile=0.2", "objective.ratio_level=sequence"],
     r"'objective.ratio_level' must be 'token' or 'sequence_token' with objective.top_entropy_quantile < 1"),
])
def test_meaningless_combinations_are_refused_by_name(overrides, match):
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(presets.preset("toy"), overrides)


def test_a_correction_without_a_source_of_mismatch_warns_that_it_is_a_no_op():
  with pytest.warns(UserWarning, match="correction is \\(close to\\) a no-op"):
    C.apply_overrides(presets.preset("toy"), ["objective.rollout_correction=tis"])


def test_a_bf16_sampler_beside_f32_training_shows_a_mismatch_and_f32_shows_none(tmp_path):
  """The toy model sampled in bf16 and trained in f32: the trainer's log-probs of the sampled tokens differ from
  the sampler's (mismatch/k3 > 0, ratios away from 1); sampling in f32 too, they agree to rounding."""
  f32 = trainer(toy_cfg(tmp_path / "a", steps=1)).run(resume=False)[-1]
  bf16 = trainer(toy_cfg(tmp_path / "b", steps=1, sampling={"dtype": "bfloat16"},
                         objective={"rollout_correction": "tis", "rollout_correction_cap": 1.5})).run(resume=False)[-1]
  print({k: (f32[k], bf16[k]) for k in f32 if k.startswith("mismatch/")})
  assert f32["mismatch/k3"] < 1e-9 and abs(f32["mismatch/ratio_max"] - 1) < 1e-5
  assert bf16["mismatch/k3"] > 100 * max(f32["mismatch/k3"], 1e-10)
  assert bf16["mismatch/ratio_max"] > 1 + 1e-4 and bf16["mismatch/ratio_min"] < 1 - 1e-4
  assert 0 < bf16["mismatch/weight_mean"] <= 1.5 and np.isfinite(bf16["loss"])


@pytest.mark.parametrize("objective", [
    {"ratio_level": "sequence", "aggregation": "seq_mean", "clip_eps_low": 3e-4, "clip_eps_high": 4e-4},
    {"name": "lambda_grpo", "ratio_level": "sequence_token", "kl_beta": 0.04, "kl_estimator": "k1"},
    {"name": "prpo", "lambda_weights": True, "ratio_level": "sequence_token", "prpo_k": 1, "prpo_min_gap": 2,
     "prm": "plugins:share_of_l", "entropy_coef": 0.01},
    {"kl_beta": 0.05, "kl_in_reward": True, "kl_estimator": "k2", "num_iterations": 2},
    {"kl_beta": 0.05, "kl_importance_weight": True, "num_iterations": 2},
    {"rollout_correction": "mis", "rollout_correction_level": "sequence", "num_minibatches": 2},
    {"name": "lambda_grpo", "surrogate": "cispo", "clip_eps_low": 1.0, "clip_eps_high": 4.0, "num_iterations": 2,
     "off_policy_mask_threshold": 0.5, "top_entropy_quantile": 0.5},
])
def test_options_compose_with_lambda_and_prpo_and_report_their_metrics(tmp_path, objective):
  h = trainer(toy_cfg(tmp_path, objective=objective)).run(resume=False)
  m = h[-1]
  want = {"mismatch/k3", "mismatch/ratio_max", "mismatch/ratio_min", "entropy/mean", "entropy/first10",
          "entropy/last10", "loss"}
  assert want <= set(m) and all(np.isfinite(v) for r in h for v in r.values())
  if objective.get("kl_in_reward"):
    assert m["kl_reward_mean"] >= 0 and m["kl_loss"] == 0  # the KL is in the reward, not in the loss
  if "rollout_correction" in objective:
    assert "mismatch/masked_frac" in m


def test_an_entropy_bonus_changes_the_loss_by_its_term(tmp_path):
  a = trainer(toy_cfg(tmp_path / "a", steps=1)).run(resume=False)[-1]
  b = trainer(toy_cfg(tmp_path / "b", steps=1, objective={"entropy_coef": 0.5})).run(resume=False)[-1]
  np.testing.assert_allclose(b["loss"], a["loss"] - 0.5 * b["entropy_loss"], rtol=1e-5, atol=1e-7)
  assert b["entropy_loss"] > 0


def test_overlong_punishment_counts_tokens_and_truncated_completions_can_leave_the_loss(tmp_path):
  """Every toy completion has exactly max_new_tokens = 4 tokens and no EOS (truncated): with a 2-token buffer the
  punishment is the full penalty; with mask_truncated nothing is left to train on."""
  h = trainer(toy_cfg(tmp_path / "a", rewards={"overlong_buffer": 2, "overlong_penalty": 0.3})).run(resume=False)
  assert all(r["reward_overlong"] == pytest.approx(-0.3) and r["truncated_frac"] == 1 for r in h)
  h = trainer(toy_cfg(tmp_path / "b", objective={"mask_truncated": True})).run(resume=False)
  assert all(r["loss"] == 0 and r["update_norm"] == 0 for r in h)


def test_top_entropy_quantile_keeps_the_steps_highest_entropy_tokens_in_the_policy_term(tmp_path):
  """The trainer's advantages are the objective's own times ``high_entropy_mask`` of the sampler's entropies over
  the loss's tokens, its weights (λ-GRPO's 1/|λ|) untouched; a run with a KL term logs the kept fraction, keeps the
  KL term of every token and stays finite."""
  cfg = toy_cfg(tmp_path, objective={"name": "lambda_grpo", "top_entropy_quantile": 0.3})
  tr = trainer(cfg)
  ro = tr.score(tr.sample([tr.source[0], tr.source[1]], jax.random.PRNGKey(5)))
  adv, weights, m = tr.advantages(ro)
  base_adv, base_w, _ = tr._advantages(ro)
  keep, tau = jaxgrpo.high_entropy_mask(ro.entropies, ro.mask, 0.3)
  np.testing.assert_allclose(np.asarray(adv), np.asarray(base_adv) * np.asarray(keep))
  np.testing.assert_array_equal(np.asarray(weights), np.asarray(base_w))
  assert m["entropy_mask/kept_frac"] == pytest.approx(float(np.asarray(keep).sum() / np.asarray(ro.mask).sum()))
  assert 0.3 <= float(m["entropy_mask/kept_frac"]) < 1 and float(m["entropy_mask/threshold"]) == float(tau)
  h = trainer(toy_cfg(tmp_path / "a", objective={"top_entropy_quantile": 0.3, "kl_beta": 0.05})).run(resume=False)
  assert all(0 < r["entropy_mask/kept_frac"] < 1 and np.isfinite(r["loss"]) for r in h)
  assert h[-1]["kl_loss"] > 0  # step 2 has moved away from the reference: the KL term is live beside the mask


def test_off_policy_masking_drops_stale_negative_completions_from_the_policy_term(tmp_path):
  """A bf16 sampler beside f32 training is off-policy by rounding: with δ = 0 some negative completions' policy
  term is masked (and the KL term stays: here kl_beta > 0 is allowed); with a large δ none is."""
  obj = {"off_policy_mask_threshold": 0.0, "kl_beta": 0.02}
  a = trainer(toy_cfg(tmp_path / "a", steps=1, sampling={"dtype": "bfloat16"}, objective=obj)).run(resume=False)[-1]
  b = trainer(toy_cfg(tmp_path / "b", steps=1, sampling={"dtype": "bfloat16"},
                      objective={**obj, "off_policy_mask_threshold": 10.0})).run(resume=False)[-1]
  assert 0 < a["off_policy/masked_frac"] < 1 and b["off_policy/masked_frac"] == 0
  assert a["off_policy/seq_kl_mean"] == pytest.approx(b["off_policy/seq_kl_mean"], rel=1e-5)
  assert a["kl_loss"] == pytest.approx(b["kl_loss"], rel=1e-5) and np.isfinite(a["loss"])


def test_normalize_then_sum_gives_gdpo_advantages(tmp_path):
  cfg = toy_cfg(tmp_path, rewards={"names": ("toy_tree", "plugins:constant_one", "plugins:starts_ll"),
                                   "weights": (1.0, 2.0, 0.5), "normalization": "normalize_then_sum"})
  tr = trainer(cfg)
  ro = tr.score(tr.sample([tr.source[0]], jax.random.PRNGKey(3)))
  adv, _, _ = tr.advantages(ro)
  parts = np.stack([np.asarray(v) for v in ro.reward_parts.values()], -1).reshape(1, 16, 3)
  want = np.asarray(jaxgrpo.normalize_then_sum(parts, np.array([1.0, 2.0, 0.5], np.float32)))[0]
  np.testing.assert_allclose(np.asarray(adv)[:, 0], want, rtol=1e-5, atol=1e-6)


def test_dynamic_sampling_fills_the_step_with_informative_groups_and_resumes_exactly(tmp_path):
  dyn = dict(data={"prompts_per_step": 2, "dynamic_sampling": True, "max_sampling_rounds": 3},
             sampling={"group_size": 4}, rewards={"names": ("plugins:starts_ll",), "weights": (1.0,)},
             optim={"learning_rate": 0.01}, checkpoint_every=2)
  whole = trainer(toy_cfg(tmp_path / "whole", steps=6, **dyn)).run(resume=False)
  rows = [r for r in whole if "loss" in r]
  assert all(1 <= r["dynamic/rounds"] <= 3 and 0 <= r["dynamic/filtered_frac"] <= 1 for r in rows)
  assert all(r["dynamic/kept_groups"] == 2 for r in rows if r["dynamic/rounds"] < 3)  # stops early only when full
  assert any(r["dynamic/rounds"] > 1 for r in rows)  # some step needed more prompts
  consumed = sum(2 * r["dynamic/rounds"] for r in rows)
  assert int(final_state(str(tmp_path / "whole" / "run"), 6)[1]["data_pos"]) == consumed
  # stop after 4 steps, resume to 6: the same parameters and data position as the uninterrupted run
  trainer(toy_cfg(tmp_path / "cut", steps=4, **dyn)).run(resume=False)
  trainer(toy_cfg(tmp_path / "cut", steps=6, **dyn)).run()
  a, b = final_state(str(tmp_path / "whole" / "run"), 6)[1], final_state(str(tmp_path / "cut" / "run"), 6)[1]
  assert int(a["data_pos"]) == int(b["data_pos"])
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  metrics = [json.loads(line) for line in open(tmp_path / "cut" / "run" / "metrics.jsonl")]
  assert [r["step"] for r in metrics] == list(range(1, 7))
