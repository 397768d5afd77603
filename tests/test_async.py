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

STEPS = 3


def cfg(tmp_path, **kw):
  base = config_replace(presets.preset("toy"), output_dir=str(tmp_path / "run"), progress=False, steps=STEPS,
                        checkpoint_every=2, async_rollouts=True, optim={"learning_rate": 0.01})
  return config_replace(base, **kw)


def leaf_sum(params) -> float:
  return float(sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(params)))


def test_the_schedule_threads_pi_old_and_resume(tmp_path):
  runs = {}
  for overlap in (True, False):
    tr = trainer(cfg(tmp_path / str(overlap)))
    tr.overlap_rollouts = overlap
    assert tr.update_spec.old_logp == "batch"  # π_old is the sampler's even with one optimizer step per batch
    used, after = [], [leaf_sum(tr.state["params"])]  # θ_0, then θ_k after update k
    generate = tr.engine.generate
    tr.engine.generate = lambda params, *a, **k: (used.append(leaf_sum(params)), generate(params, *a, **k))[1]
    tr.on_step = lambda step, m: after.append(leaf_sum(tr.state["params"]))
    runs[overlap] = (tr.run(resume=False), used, after)
  history, used, after = runs[True]
  # steps 1 and 2 are sampled with θ_0, every later step with the params from before the previous update (θ after
  # update k − 2 for step k); nothing is sampled after the last step
  np.testing.assert_allclose(used, [after[0]] + after[:STEPS - 1], rtol=1e-12)
  assert len(set(after)) == STEPS + 1  # the params did move
  # the threaded run equals the same schedule run sequentially: every metric, the final and the sampler params
  seq_history, seq_used, _ = runs[False]
  assert used == seq_used
  drop = ("time", "tokens_per_s", "async/wait")
  for a, b in zip(history, seq_history):
    assert {k: v for k, v in a.items() if not k.startswith(drop)} == \
           {k: v for k, v in b.items() if not k.startswith(drop)}
  assert all(r["async/staleness"] == 1.0 for r in history)
  a = final_state(str(tmp_path / "True" / "run"))[1]
  b = final_state(str(tmp_path / "False" / "run"))[1]
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["sampler_params"], b["sampler_params"])
  # step 1 is sampled with the params it updates (k3 at rounding level); later steps with the previous ones
  assert history[0]["mismatch/k3"] < 1e-9
  assert min(r["mismatch/k3"] for r in history[1:]) > 1e3 * max(history[0]["mismatch/k3"], 1e-12)
  # stop after 2 steps, resume to 3: the same params and losses as the uninterrupted run
  trainer(cfg(tmp_path / "cut", steps=2)).run(resume=False)
  rest = trainer(cfg(tmp_path / "cut")).run()
  c = final_state(str(tmp_path / "cut" / "run"), STEPS)[1]
  jax.tree.map(np.testing.assert_array_equal, a["params"], c["params"])
  assert [r["loss"] for r in history[2:]] == [r["loss"] for r in rest]


@pytest.mark.parametrize("overrides, match", [
    (["async_rollouts=true", "sampling.top_k=5"], r"async_rollouts with a sampler that does not draw from the polic"),
    (["async_rollouts=true", "sampling.kv_dtype=bfloat16"], r"needs objective.rollout_correction"),
])
def test_a_stale_sampler_that_is_not_the_policy_needs_a_correction(overrides, match):
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(presets.preset("toy"), overrides)
  C.apply_overrides(presets.preset("toy"), overrides + ["objective.rollout_correction=tis"])  # corrected: allowed
