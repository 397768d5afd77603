"""One-step-off rollouts (``async_rollouts``): step k+1 is sampled with step k's params while step k's update runs.

The schedule is the contract: the threaded run equals the same schedule run sequentially, the sampler gets the
previous step's params at every step, π_old is the sampler's (staleness 1), and a resumed run continues exactly."""

import jax
import numpy as np
import pytest
from checkpoints import final_state
from meshes import trainer

from jaxgrpo.train import config as C
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace


def cfg(tmp_path, **kw):
  base = config_replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False, steps=4,
                        checkpoint_every=2, async_rollouts=True, optim={"learning_rate": 0.01})
  return config_replace(base, **kw)


def leaf_sum(params) -> float:
  return float(sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(params)))


def test_the_sampler_gets_the_previous_steps_params_and_threads_change_nothing(tmp_path):
  runs = {}
  for overlap in (True, False):
    tr = trainer(cfg(tmp_path / str(overlap)))
    tr.overlap_rollouts = overlap
    used, after = [], [leaf_sum(tr.state["params"])]  # θ_0, then θ_k after update k
    generate = tr.engine.generate
    tr.engine.generate = lambda params, *a, **k: (used.append(leaf_sum(params)), generate(params, *a, **k))[1]
    tr.on_step = lambda step, m: after.append(leaf_sum(tr.state["params"]))
    runs[overlap] = (tr.run(resume=False), used, after)
  history, used, after = runs[True]
  # step 0 and step 1 are sampled with θ_0; step k (k ≥ 1) with θ_{k-1}; nothing samples after the last step
  np.testing.assert_allclose(used, [after[0]] + after[:3], rtol=1e-12)
  assert len(set(after)) == 5  # the params did move
  seq_history, seq_used, _ = runs[False]
  assert used == seq_used
  for a, b in zip(history, seq_history):
    assert {k: v for k, v in a.items() if not k.startswith(("time", "tokens_per_s", "async/wait"))} == \
           {k: v for k, v in b.items() if not k.startswith(("time", "tokens_per_s", "async/wait"))}
  assert all(r["async/staleness"] == 1.0 for r in history)
  a = final_state(str(tmp_path / "True" / "run"))[1]
  b = final_state(str(tmp_path / "False" / "run"))[1]
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["sampler_params"], b["sampler_params"])


def test_pi_old_is_the_samplers_so_the_ratio_leaves_one(tmp_path):
  """With one optimizer step per batch a synchronous run's ratio is exactly 1 (π_old = π_θ); one step off, π_old
  is the sampler's (the previous params), so from step 2 on the trainer's log-probs differ from it."""
  tr = trainer(cfg(tmp_path / "a", steps=3))
  assert tr.update_spec.old_logp == "batch"
  sync = trainer(cfg(tmp_path / "b", steps=3, async_rollouts=False))
  assert sync.update_spec.old_logp == "none"
  rows = tr.run(resume=False)
  sync_rows = sync.run(resume=False)
  print([(r["mismatch/k3"], s["mismatch/k3"]) for r, s in zip(rows, sync_rows)])
  assert rows[0]["mismatch/k3"] < 1e-9  # step 1 is sampled with θ_0 = the params it updates
  assert min(r["mismatch/k3"] for r in rows[1:]) > 1e3 * max(max(s["mismatch/k3"] for s in sync_rows), 1e-12)


def test_a_resumed_one_step_off_run_continues_exactly(tmp_path):
  whole = trainer(cfg(tmp_path / "whole")).run(resume=False)
  trainer(cfg(tmp_path / "cut", steps=2)).run(resume=False)
  rest = trainer(cfg(tmp_path / "cut", steps=4)).run()
  a, b = final_state(str(tmp_path / "whole" / "run"), 4)[1], final_state(str(tmp_path / "cut" / "run"), 4)[1]
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  assert [r["loss"] for r in whole[2:]] == [r["loss"] for r in rest]


@pytest.mark.parametrize("overrides, match", [
    (["async_rollouts=true", "sampling.top_k=5"], r"async_rollouts with a sampler that does not draw from the polic"),
    (["async_rollouts=true", "sampling.kv_dtype=bfloat16"], r"needs objective.rollout_correction"),
])
def test_a_stale_sampler_that_is_not_the_policy_needs_a_correction(overrides, match):
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(presets.preset("toy"), overrides)
  C.apply_overrides(presets.preset("toy"), overrides + ["objective.rollout_correction=tis"])  # corrected: allowed
