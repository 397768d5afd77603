"""Shared-prefix training (``objective.share_prefix``): each group's prompt, and every completion prefix it shares,
computed once — with the same log-probs, loss, metrics and gradients as the plain batch.

Oracles: the context of every prediction rebuilt by brute force from the packed arrays (it must be exactly the
completion's own prompt + earlier tokens, at their positions); the plain ``Batch`` through the same update
(``none``) for log-probs, losses, metrics and gradients.
"""

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshes import one_device
from meshes import trainer as make_trainer
from strategies import overlapping_group

import jaxgrpo.models as M
from jaxgrpo.models import lora
from jaxgrpo.parallel import sharding as shard_lib
from jaxgrpo.train import config as config_lib
from jaxgrpo.train import packing, presets
from jaxgrpo.train import step as ts
from jaxgrpo.train.config import replace as config_replace

CFG = dict(family="llama", vocab_size=16, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           intermediate_size=64, max_position_embeddings=128)


def as_arrays(group, t):
  g = len(group)
  tokens = np.zeros((g, t), np.int64)
  lengths = np.asarray([len(c) for c in group])
  for j, c in enumerate(group):
    tokens[j, :len(c)] = c
  return tokens, lengths


def contexts(tokens, positions, ends, q):
  """Brute force: the (position, token) pairs query q sees under the TreeMask rule, in order."""
  keys = [s for s in range(len(tokens)) if s <= q < ends[s]]
  return [(int(positions[s]), int(tokens[s])) for s in keys]


@settings(max_examples=150, deadline=None)
@given(group=overlapping_group(max_g=7, max_len=8, max_vocab=3), prompt_len=st.integers(1, 4),
       mode=st.sampled_from(["prompt", "tree"]))
def test_every_prediction_sees_exactly_its_own_prefix(group, prompt_len, mode):
  t = 8
  prompt = np.arange(10, 10 + prompt_len)
  comp, lengths = as_arrays(group, t)
  tokens, positions, ends, source = packing.group_tree(prompt, comp, lengths, mode)
  for j, c in enumerate(group):
    for k in range(len(c)):
      expect = [(i, int(x)) for i, x in enumerate(list(prompt) + list(c[:k]))]
      assert contexts(tokens, positions, ends, source[j, k]) == expect
  distinct = {tuple(c[:k]) for c in group for k in range(1, len(c) + 1)}
  n_nodes = len(distinct) if mode == "tree" else sum(len(c) for c in group)
  assert len(tokens) == prompt_len + n_nodes  # tree: each distinct prefix once (duplicates, strict prefixes)


def model_and_params(**kw):
  model = M.from_config(M.ModelConfig(**{**CFG, **kw}))
  return model, M.init_params(model, jax.random.PRNGKey(0))


def random_batch(groups, p=5, seed=0, t=None):
  """A ``Batch`` (numpy) of these groups: left-padded prompts of random lengths, random advantages and weights."""
  rng = np.random.default_rng(seed)
  g, t = len(groups[0]), t or max(1, max(len(c) for grp in groups for c in grp))
  b = len(groups)
  tokens = np.zeros((b * g, t), np.int32)
  lengths = np.zeros(b * g, np.int64)
  for i, grp in enumerate(groups):
    tk, ln = as_arrays(grp, t)
    tokens[i * g:(i + 1) * g], lengths[i * g:(i + 1) * g] = tk, ln
  mask = (np.arange(t) < lengths[:, None]).astype(np.int32)
  pl = rng.integers(1, p + 1, b)
  pm = np.repeat((np.arange(p)[None] >= p - pl[:, None]).astype(np.int32), g, 0)
  pid = np.repeat(rng.integers(1, 16, (b, p)), g, 0).astype(np.int32) * pm
  f = lambda: rng.normal(size=(b * g, t)).astype(np.float32) * mask
  return ts.Batch(prompt_ids=pid, prompt_mask=pm, tokens=tokens, mask=mask, advantages=f(),
                  weights=np.abs(f()) + mask * 0.5, old_logp=-np.abs(f()))


def pack(batch, g, mode, **kw):
  return packing.pack(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(ts.Batch)}, group_size=g,
                      mode=mode, **kw)


def tree_max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def logprobs(model, params, batch, spec):
  return ts.batch_logprobs(model, params, batch, spec)


@functools.partial(jax.jit, static_argnums=(0, 3))
def loss_and_grad(model, params, batch, spec):
  return jax.value_and_grad(lambda p: ts.loss_fn(p, None, batch, None, None, model, spec), has_aux=True)(params)


MODELS = {"llama": {}, "gpt2 (learned positions), 8-query blocks": {"family": "gpt2", "attention_chunk": 8},
          "qwen2 (qkv bias), 16-query blocks": {"family": "qwen2", "qkv_bias": True, "attention_chunk": 16}}


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=4, deadline=None)
@given(groups=st.lists(overlapping_group(g=4, max_len=6, max_vocab=3), min_size=3, max_size=3),
       mode=st.sampled_from(["prompt", "tree"]), row_multiple=st.sampled_from([1, 3]))
def test_packed_logprobs_loss_and_gradients_equal_the_plain_batch(name, groups, mode, row_multiple):
  """Random groups with heavy overlap, duplicates, strict prefixes and empty completions (hypothesis)."""
  model, params = model_and_params(**MODELS[name])
  batch = random_batch(groups, t=6)
  packed = pack(batch, 4, mode, row_multiple=row_multiple, length_multiple=16)
  spec = ts.LossSpec(aggregation="token_mean")
  plain_lp = np.asarray(logprobs(model, params, batch, spec))
  packed_lp = packing.unpack(logprobs(model, params, packed.batch, spec), packed.row_slot)
  np.testing.assert_allclose(np.where(batch.mask, packed_lp, 0), np.where(batch.mask, plain_lp, 0), atol=1e-5)
  (l0, m0), g0 = loss_and_grad(model, params, batch, spec)
  (l1, m1), g1 = loss_and_grad(model, params, packed.batch, spec)
  assert abs(float(l0) - float(l1)) < 1e-5
  assert set(m0) == set(m1) and all(abs(float(m0[k]) - float(m1[k])) < 1e-5 for k in m0)
  assert tree_max_diff(g0, g1) < 1e-5


def heavy_overlap_groups(b=4, g=4, t=6, seed=1):
  """Groups with duplicates, strict prefixes, shared beginnings and an empty completion."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(b):
    base = list(rng.integers(1, 4, t))
    grp = [tuple(base), tuple(base), tuple(base[:3]), tuple(base[:2] + list(rng.integers(1, 4, t - 2)))][:g]
    out.append(grp)
  out[0][1] = ()
  return out


def run_update(model, params, batch, orders, spec, uspec, mesh, ref=None):
  """One jitted update (SGD, lr 1: the parameter change is the gradient) → (new params, metrics)."""
  tx = ts.make_optimizer(config_lib.OptimSpec(optimizer="sgd", learning_rate=1.0, max_grad_norm=0.0))
  sh = ts.state_shardings(model, tx, mesh)
  trainable, frozen = (lora.split(params) if model.config.lora is not None else (params, None))
  state = ts.shard_state({"params": trainable, "opt_state": tx.init(trainable)},
                         {"params": sh["params"], "opt_state": sh["opt_state"]})
  frozen = None if frozen is None else ts.shard_state(frozen, sh["frozen"])
  ref = None if ref is None else ts.shard_state(ref, sh["full"])
  update = ts.make_update_step(model, tx, spec, uspec, mesh, sh)
  rows = shard_lib.batch_sharding(mesh, 1)
  state, metrics = update(state, frozen, ref, jax.tree.map(lambda x: jax.device_put(x, rows), batch),
                          jnp.asarray(orders, jnp.int32))
  return jax.device_get(state["params"]), jax.device_get(metrics)


# Each case combines several options (one compile per case and mode keeps the file fast); together they cover every
# objective's loss path: GRPO, λ weights, PRPO's per-token advantages, every aggregation, KL, μ > 1 with minibatches,
# micro-batches with π_old recomputed, the entropy bonus, GSPO-token and the rollout correction.
CASES = {
    "grpo token_mean": ("prompt", {}, {}),
    "lambda weights, seq_mean, kl k3, entropy bonus": (
        "tree", {"aggregation": "seq_mean", "kl_beta": 0.1, "entropy_coef": 0.01}, {"reference": "params"}),
    "prpo token advantages, constant, mu 2 x 2 minibatches": (
        "tree", {"aggregation": "constant", "clip_eps_high": 0.28},
        {"num_iterations": 2, "num_minibatches": 2, "old_logp": "batch"}),
    "weight_mean, micro-batches, recompute, tis, gspo-token": (
        "prompt", {"aggregation": "weight_mean", "correction": "tis", "ratio_level": "sequence_token"},
        {"micro_batches": 2, "num_iterations": 2, "old_logp": "recompute"}),
}


def plain_order(packed_order, row_slot, uspec):
  """The plain batch's row order whose minibatches and micro-batch slices hold the same completions as the packed
  rows' (``strided_slices``: micro slice i of a minibatch holds its rows i, i + k, i + 2k, …)."""
  rows_of = lambda q: np.flatnonzero(row_slot[:, 0] == q)
  k = uspec.micro_batches
  out = []
  for mb in np.split(np.asarray(packed_order), uspec.num_minibatches):
    per_slice = [np.concatenate([rows_of(q) for q in mb[i::k]]) for i in range(k)]
    out.append(np.stack(per_slice, axis=1).reshape(-1))  # position p: slice p % k, its row p // k
  return np.concatenate(out)


@pytest.mark.parametrize("case", list(CASES))
def test_update_step_equals_the_plain_batch(case):
  mode, spec_kw, uspec_kw = CASES[case]
  model, params = model_and_params()
  g, groups = 4, heavy_overlap_groups()
  batch = random_batch(groups, seed=3)
  if "prpo" in case:  # per-token advantages that vary along the completion
    batch = dataclasses.replace(batch, advantages=batch.advantages * np.linspace(0.5, 1.5, batch.mask.shape[1]))
  uspec = ts.UpdateSpec(**uspec_kw)
  rows = uspec.num_minibatches * uspec.micro_batches
  packed = pack(batch, g, mode, row_multiple=rows, length_multiple=16)
  r = packed.batch.tokens.shape[0]
  # the same minibatches: packed row k's completions are the plain batch's rows that went to it
  packed_orders = np.stack([np.random.default_rng(i).permutation(r) for i in range(uspec.num_iterations)])
  plain_orders = np.stack([plain_order(o, packed.row_slot, uspec) for o in packed_orders])
  spec = ts.LossSpec(**spec_kw)
  ref = jax.tree.map(lambda x: x * 0.9, params) if uspec.reference == "params" else None
  mesh = one_device()
  p0, m0 = run_update(model, params, batch, plain_orders, spec, uspec, mesh, ref)
  p1, m1 = run_update(model, params, packed.batch, packed_orders, spec, uspec, mesh, ref)
  assert set(m0) == set(m1)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], atol=1e-5, rtol=1e-5, err_msg=k)
  assert tree_max_diff(p0, p1) < 1e-5  # SGD at lr 1: the summed gradients agree


@pytest.mark.parametrize("variant", ["remat + chunked log-probs", "lora", "8 devices"])
def test_update_step_equal_with_remat_lora_and_a_data_parallel_mesh(variant):
  kw = {"remat": "full"} if variant.startswith("remat") else {}
  if variant == "lora":
    kw["lora"] = M.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))
  model, params = model_and_params(**kw)
  if variant == "lora":  # non-zero B so the adapters matter
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(path) else x, params)
  mesh = shard_lib.make_mesh(8, 1, 1) if variant == "8 devices" else one_device()
  groups = heavy_overlap_groups(b=8)
  batch = random_batch(groups, seed=5)
  spec = ts.LossSpec(logprob_chunk=4 if variant.startswith("remat") else 0, kl_beta=0.05 if variant == "lora" else 0)
  uspec = ts.UpdateSpec(reference="base" if variant == "lora" else "none")
  rows = 8 if variant == "8 devices" else 1
  packed = pack(batch, 4, "tree", row_multiple=rows, length_multiple=16)
  order = lambda n: np.arange(n)[None]
  p0, m0 = run_update(model, params, batch, order(batch.tokens.shape[0]), spec, uspec, mesh)
  p1, m1 = run_update(model, params, packed.batch, order(packed.batch.tokens.shape[0]), spec, uspec, mesh)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], atol=1e-5, rtol=1e-5, err_msg=k)
  assert tree_max_diff(p0, p1) < 1e-5


def test_packing_saves_positions_and_shares_rows():
  groups = heavy_overlap_groups(b=4)
  batch = random_batch(groups, p=5)
  plain = packing.tokens_unpacked(batch.prompt_mask, batch.mask)
  prompt = pack(batch, 4, "prompt", length_multiple=1)
  tree = pack(batch, 4, "tree", length_multiple=1)
  assert tree.tokens_unique < prompt.tokens_unique < plain
  # several short groups in one row when that computes fewer positions (row_multiple 1): 4 groups fit one row
  assert tree.batch.tokens.shape[0] < 4 and tree.tokens_computed <= 4 * max(
      len(packing.group_tree(np.ones(5), *as_arrays(grp, 6), "tree")[0]) for grp in groups)
  # a row multiple is honoured (data-parallel devices × minibatches × micro-batches)
  assert pack(batch, 4, "tree", row_multiple=4).batch.tokens.shape[0] == 4
  assert pack(batch, 4, "tree", row_multiple=8).batch.tokens.shape[0] == 8  # empty rows fill up


def test_tree_attention_builds_no_square_mask():
  """Blocked tree attention: no [S, S] array anywhere in the forward or backward (S = 512, trees of ≤ 100)."""
  model, params = model_and_params(attention_chunk=64, max_position_embeddings=512)
  s = 512
  ends = jnp.tile(jnp.minimum((jnp.arange(s) // 100 + 1) * 100, s), (1, 1)).astype(jnp.int32)
  tree = M.TreeMask(ends=ends, window=100, block=64)
  ids = jnp.zeros((1, s), jnp.int32)
  f = lambda p: jnp.sum(model.apply({"params": p}, ids, jnp.arange(s)[None] % 100, tree).logits)
  jaxpr = jax.make_jaxpr(jax.grad(f))(params)

  def shapes(jp):
    for eqn in jp.eqns:
      for v in eqn.outvars:
        yield getattr(v.aval, "shape", ())
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from shapes(sub)

  assert not [sh for sh in shapes(jaxpr.jaxpr) if sum(d >= s for d in sh) >= 2]


def test_bad_input_is_refused_by_name():
  batch = random_batch(heavy_overlap_groups(b=2))
  holes = batch.mask.copy()
  holes[0, 0] = 0
  with pytest.raises(ValueError, match=r"Batch.mask must be right-padded"):
    pack(dataclasses.replace(batch, mask=holes), 4, "tree")
  other = batch.prompt_ids.copy()
  other[1, -1] += 1
  with pytest.raises(ValueError, match=r"Batch.prompt_ids: the rows of group 0"):
    pack(dataclasses.replace(batch, prompt_ids=other), 4, "tree")
  with pytest.raises(ValueError, match=r"not whole groups of sampling.group_size = 3"):
    pack(batch, 3, "tree")
  with pytest.raises(ValueError, match=r"objective.share_prefix"):
    config_lib.ObjectiveSpec(share_prefix="trie")


def test_trainer_with_shared_prefixes_trains_like_the_plain_batch(tmp_path):
  """The toy task, λ-GRPO with KL, μ = 2 and micro-batches: ``auto`` picks the tree (the toy's completions share
  most of their tokens) and trains with the same losses, step by step, as the plain batch."""
  runs = {}
  for mode in ("none", "auto"):
    cfg = config_replace(presets.preset("toy"), steps=2, output_dir=str(tmp_path / mode), progress=False,
                         checkpoint_every=0, eval={"num_examples": 0}, data={"prompts_per_step": 2},
                         objective={"name": "lambda_grpo", "share_prefix": mode, "kl_beta": 0.04,
                                    "num_iterations": 2, "micro_batches": 2})
    runs[mode] = [h for h in make_trainer(cfg).run(resume=False) if "loss" in h]
  for a, b in zip(runs["auto"], runs["none"], strict=True):
    assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["kl_loss"] - b["kl_loss"]) < 1e-5
    assert a["share_prefix/computed_frac"] < 1.0 and a["share_prefix/tree"] == 1.0


def test_a_mode_that_cannot_run_is_refused_by_name_and_auto_falls_back(tmp_path):
  """Minibatches of whole groups need prompts_per_step to divide into them: an explicit mode is refused naming the
  keys; ``auto`` runs the plain batch (it also stays plain with minibatches, whose composition packing changes)."""
  cfg = config_replace(presets.preset("toy"), steps=1, output_dir=str(tmp_path / "run"), progress=False,
                       data={"prompts_per_step": 1}, objective={"num_minibatches": 2, "share_prefix": "tree"})
  with pytest.raises(ValueError, match=r"objective.share_prefix = 'tree' forms minibatches from whole groups: "
                                       r"data.prompts_per_step = 1 must be divisible"):
    make_trainer(cfg)
  assert make_trainer(config_replace(cfg, objective={"share_prefix": "auto"})).share_prefix == "none"
  two = config_replace(cfg, data={"prompts_per_step": 2}, objective={"share_prefix": "auto"})
  assert make_trainer(two).share_prefix == "none"  # divisible, but auto keeps row-level minibatches
  assert make_trainer(config_replace(two, objective={"share_prefix": "prompt"})).share_prefix == "prompt"
