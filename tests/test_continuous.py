"""The continuous-batching engine: the static sampler and a teacher-forced forward are its oracles.

Greedy output is token-identical to the static engine, sampled output identical for the same key whatever the slot
count (so a sample does not depend on the slot that ran it), log-probs and entropies equal a teacher-forced forward,
refills and compaction happen, reads follow the live length, prompt-major slots attend as gathered ones (and are
used exactly while every sample has its own slot), a bf16 KV cache is what it says, and bad settings are refused by
name."""

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_tiny import TINY, make_tiny
from meshes import trainer

import jaxgrpo.models as M
from jaxgrpo.models import policy
from jaxgrpo.rollout import RolloutEngine, continuous, sampler
from jaxgrpo.train import config as C
from jaxgrpo.train import presets
from jaxgrpo.train.config import replace as config_replace

EOS = 7


def _load(family, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(family))
  make_tiny(family).save_pretrained(path)
  return M.from_pretrained(path)


# Gemma 3 is left out: its sliding window runs on the static engine only (test_auto_picks_the_engine_...)
@pytest.fixture(scope="module", params=sorted(set(TINY) - {"llama_gqa_llama3rope", "gemma3"}))
def tiny(request, tmp_path_factory):
  """Every family (the engine's attention path is the model's); GQA Llama is the ``llama`` fixture below."""
  return _load(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """One family for the claims that do not depend on it (each run compiles a few loop programs)."""
  return _load("llama_gqa_llama3rope", tmp_path_factory)


def prompts(vocab, seed=0, b=3, p=6):
  """Left-padded prompts of different lengths (rows 0 and 2 padded)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, size=(b, p)).astype(np.int32)
  mask = np.ones((b, p), np.int32)
  ids[0, :2], mask[0, :2] = 0, 0
  ids[2, :1], mask[2, :1] = 0, 0
  return ids, mask


# short calls and read buckets so one run crosses buckets, refills and compactions (T = 16: two read buckets)
SMALL = dict(steps_per_call=4, read_block=8, min_slots=2)
T = 16


def run(model, params, ids, mask, key, sp, **cp):
  return continuous.sample_groups(model, params, ids, mask, key, sp, cp=continuous.ContinuousParams(**cp))


def assert_same_samples(a: sampler.SampleOutput, b: sampler.SampleOutput):
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
  np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
  np.testing.assert_array_equal(np.asarray(a.finish_reason), np.asarray(b.finish_reason))
  # float32 sums in another order, over up to 16 decode steps: equal to a few ulps of |log p| (a 2.07e-5 gap at
  # log p = -3.40 was seen: 6e-6 relative)
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(a.entropies), np.asarray(b.entropies), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", continuous.KV_LAYOUTS)
def test_sampled_output_equals_the_static_engine_for_any_slot_count(tiny, layout):
  model, params = tiny
  ids, mask = prompts(model.config.vocab_size, seed=1)
  sp = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=1.0, eos_ids=(EOS,), pad_id=0)
  key = jax.random.PRNGKey(5)
  ref = sampler.sample_groups(model, params, ids, mask, key, sp)
  for slots in (0, 2):
    out, stats = run(model, params, ids, mask, key, sp, slots=slots, kv_layout=layout, **SMALL)
    assert_same_samples(out, ref)
    assert stats.useful_tokens == int(np.asarray(ref.lengths).sum())
    assert stats.host_calls > 1 and min(stats.reads) < sp.max_new_tokens  # reads followed the live length
    if slots == 2:  # 12 samples through 2 slots: refilled from the queue
      assert max(stats.slot_counts) == 2 and stats.slot_steps >= stats.useful_tokens
      assert set(stats.groups) == {0}  # slots read any prompt: gathered
    else:  # one slot per sample: prompt-major (each prompt's KV read once for its G slots) until a compaction
      assert stats.groups[0] == 4
      assert all(gr == (4 if n == 12 else 0) for gr, n in zip(stats.groups, stats.slot_counts))


def test_a_prompt_as_long_as_a_read_bucket_gets_one_more_masked_column_and_the_same_samples(llama):
  """A prompt cache as long as a read bucket is padded off it (an XLA:CPU slow path in f32); the samples are the
  static engine's all the same."""
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=2, p=8)  # read_block 8: P = 8 is a bucket
  assert continuous._off_buckets(8, 8, T, "pow2") == 1 and continuous._off_buckets(16, 8, T, "pow2") == 1
  assert continuous._off_buckets(6, 8, T, "pow2") == 0 and continuous._off_buckets(12, 8, T, "pow2") == 0
  assert continuous._off_buckets(12, 8, T, "half_octave") == 1 and continuous._off_buckets(10, 8, T, "linear") == 0
  sp = sampler.SamplingParams(group_size=2, max_new_tokens=T, temperature=1.0, eos_ids=(EOS,), pad_id=0)
  key = jax.random.PRNGKey(1)
  out, _ = run(model, params, ids, mask, key, sp, **SMALL)
  assert_same_samples(out, sampler.sample_groups(model, params, ids, mask, key, sp))


@pytest.mark.parametrize("growth", continuous.READ_GROWTHS)
def test_a_read_bucket_covers_the_need_by_at_most_its_growth_factor(growth):
  """Brute force over needs n and caps: a read is ≥ n (up to the cap), ≥ read_block, ≤ cap, and at most 2× n
  (pow2), 1.5× n (half_octave) or n rounded up to read_block (linear) once n is past read_block; reads grow with n."""
  for block in (1, 8, 32, 48, 64):
    for cap in (8, 16, 100, 256, 512):
      reads = [continuous._bucket(n, block, cap, growth) for n in range(1, cap + 1)]
      assert reads == sorted(reads) and max(reads) == cap
      for n, r in enumerate(reads, 1):
        assert n <= r <= cap and r >= min(block, cap)
        if n > block and r < cap:
          bound = {"pow2": 2 * n - 1, "half_octave": 1.5 * n, "linear": n + block - 1}[growth]
          assert r <= bound, (growth, block, cap, n, r)
  with pytest.raises(ValueError, match="read_growth must be one of"):
    continuous.ContinuousParams(read_growth="cubic")


def test_every_read_growth_gives_the_same_samples_with_its_own_reads(llama):
  """How the reads grow changes what a call reads, not what it samples: the static engine's samples for each."""
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=3, p=5)
  sp = sampler.SamplingParams(group_size=2, max_new_tokens=24, temperature=1.0, pad_id=0)  # no EOS: reads grow
  key = jax.random.PRNGKey(2)
  ref = sampler.sample_groups(model, params, ids, mask, key, sp)
  reads = {}
  for growth in continuous.READ_GROWTHS:
    out, stats = run(model, params, ids, mask, key, sp, steps_per_call=4, read_block=4, read_growth=growth,
                     kv_layout="stacked")
    assert_same_samples(out, ref)
    reads[growth] = stats.reads
    assert list(stats.reads) == [continuous._bucket(4 * (c + 1), 4, 24, growth) for c in range(len(stats.reads))]
  assert reads["linear"] == (4, 8, 12, 16, 20, 24) and reads["pow2"] == (4, 8, 16, 16, 24, 24)
  assert reads["half_octave"] == (4, 8, 12, 16, 24, 24)
  # layers layout: a read ≥ the longest live before each call (none before the first), plus the call's 4 steps
  out, stats = run(model, params, ids, mask, key, sp, steps_per_call=4, read_block=4, kv_layout="layers")
  assert_same_samples(out, ref)
  assert stats.reads == (4, 8, 12, 16, 20, 28)  # 0 + 4, then half_octave buckets of 4, 8, 12, 16 and 24, + 4


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(data=st.data())
def test_a_call_buffer_merges_behind_each_slots_earlier_tokens(data):
  """``_merge_local`` against a per-slot list oracle: slot s's tokens before the call (its first
  length − (steps − ring_from) positions of the old buffer) followed by its call-buffer columns ring_from .. steps − 1,
  in a buffer of the new read; the columns past a slot's length are never read (masked), so only its tokens are
  compared."""
  s_, r, j = data.draw(st.integers(1, 5)), data.draw(st.integers(0, 9)), data.draw(st.integers(1, 6))
  steps = data.draw(st.integers(0, j))
  rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
  buf = rng.normal(size=(s_, 2, r, 3)).astype(np.float32)
  ring = rng.normal(size=(s_, 2, j, 3)).astype(np.float32)
  ring_from = np.asarray([data.draw(st.integers(0, steps)) for _ in range(s_)], np.int32)
  before = np.asarray([data.draw(st.integers(0, r)) if f == 0 else 0 for f in ring_from], np.int32)
  length = before + steps - ring_from
  read = data.draw(st.integers(int(length.max()), int(length.max()) + 4))
  for dtype in (jnp.float32, jnp.bfloat16):
    out = np.asarray(continuous._merge_local(jnp.asarray(buf, dtype), jnp.asarray(ring), jnp.asarray(length),
                                             jnp.asarray(ring_from), jnp.asarray(steps, jnp.int32), read),
                     np.float32)
    assert out.shape == (s_, 2, read, 3)
    for i in range(s_):
      want = np.concatenate([buf[i, :, :before[i]], ring[i, :, ring_from[i]:steps]], axis=1)
      want = np.asarray(jnp.asarray(want, dtype), np.float32)  # the cache dtype's rounding
      np.testing.assert_array_equal(out[i, :, :length[i]], want)


@pytest.mark.parametrize("layout", continuous.KV_LAYOUTS)
def test_greedy_and_sampled_output_equal_the_static_engine_with_gqa(llama, layout):
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=7)
  for temperature in (0.0, 1.0):
    sp = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=temperature, eos_ids=(EOS,), pad_id=0)
    ref = sampler.sample_groups(model, params, ids, mask, jax.random.PRNGKey(0), sp)
    key = jax.random.PRNGKey(1 if temperature == 0 else 0)  # greedy: no key matters
    out, _ = run(model, params, ids, mask, key, sp, slots=5, kv_layout=layout, **SMALL)
    assert_same_samples(out, ref)


def test_a_sample_does_not_depend_on_its_slot_or_on_the_others(llama):
  """Sample i's tokens come from its own key: the same samples with the prompts' order kept but different
  neighbours in the queue (fewer prompts), or through one slot, are identical."""
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=2)
  sp = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=1.0, eos_ids=(EOS,), pad_id=0)
  key = jax.random.PRNGKey(9)
  full, _ = run(model, params, ids, mask, key, sp, slots=5, **SMALL)
  one, stats = run(model, params, ids, mask, key, sp, slots=1, **SMALL)
  assert_same_samples(one, full)
  assert stats.slot_counts == (1,) * stats.host_calls
  first, _ = run(model, params, ids[:1], mask[:1], key, sp, slots=2, **SMALL)  # prompt 0 alone: samples 0..3
  np.testing.assert_array_equal(np.asarray(first.tokens[0]), np.asarray(full.tokens[0]))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.8, 5, 1.0), (1.2, 0, 0.7)])
def test_logprobs_and_entropies_equal_a_teacher_forced_forward(llama, temperature, top_k, top_p):
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=3)
  sp = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=temperature, top_k=top_k, top_p=top_p,
                              eos_ids=(EOS,), pad_id=0)
  out, _ = run(model, params, ids, mask, jax.random.PRNGKey(1), sp, slots=5, **SMALL)
  for g in range(4):
    comp, cmask = np.asarray(out.tokens[:, g]), np.asarray(out.mask[:, g])
    logits = M.logits(model, params, jnp.asarray(np.concatenate([ids, comp], 1)),
                      jnp.asarray(np.concatenate([mask, cmask], 1)))[:, ids.shape[1] - 1:-1]
    pol, samp = sampler.process_logits(logits.reshape(-1, logits.shape[-1]), sp)
    logp = jnp.take_along_axis(jax.nn.log_softmax(samp), comp.reshape(-1, 1), -1).reshape(comp.shape)
    ent = sampler.entropy(pol).reshape(comp.shape)
    valid = cmask.astype(bool)
    assert valid.sum() > 0
    np.testing.assert_allclose(np.asarray(out.logprobs[:, g])[valid], np.asarray(logp)[valid], atol=2e-4)
    np.testing.assert_allclose(np.asarray(out.entropies[:, g])[valid], np.asarray(ent)[valid], atol=2e-4)
    assert (np.asarray(out.logprobs[:, g])[~valid] == 0).all()


@pytest.mark.parametrize("layout", continuous.KV_LAYOUTS)
def test_compaction_computes_fewer_rows_than_the_static_batch(llama, layout):
  """With EOS the lengths are ragged: the static batch decodes N rows until the longest ends; continuous slots
  drop finished rows (useful / computed closer to 1)."""
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=4)
  sp = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=1.0, eos_ids=tuple(range(3, 13)),
                              pad_id=0)
  key = jax.random.PRNGKey(2)
  ref = sampler.sample_groups(model, params, ids, mask, key, sp)
  lengths = np.asarray(ref.lengths)
  static_rows = lengths.size * lengths.max()
  out, stats = run(model, params, ids, mask, key, sp, kv_layout=layout, **SMALL)
  assert_same_samples(out, ref)
  assert lengths.min() < lengths.max()  # ragged, as the test needs
  assert stats.slot_steps < static_rows
  assert stats.useful_frac > lengths.sum() / static_rows
  assert list(stats.slot_counts) == sorted(stats.slot_counts, reverse=True) and stats.slot_counts[-1] < 12
  # prompt-major reads while every sample has its own slot, gathered ones after the first compaction
  assert stats.groups[0] == 4 and stats.groups[-1] == 0
  assert all(gr == (4 if n == 12 else 0) for gr, n in zip(stats.groups, stats.slot_counts))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prompt_major_slots_attend_as_the_gathered_ones(dtype):
  """``SlotMask.group``: queries grouped by prompt against one copy of its keys give the per-slot gather's
  attention (random cache, masked prompt positions, ragged completion lengths), in both compute dtypes; a slot count
  that is not B·group is refused."""
  from jaxgrpo.models.transformer import SlotMask, _attend_slots
  rng = np.random.default_rng(0)
  b, g, kv, hg, dh, p, t, read = 3, 4, 2, 3, 8, 7, 12, 8
  dt = jnp.dtype(dtype)
  store = (lambda x: M.as_bits(x)) if dt == jnp.bfloat16 else (lambda x: x)
  arr = lambda *shape: jnp.asarray(rng.normal(size=shape), dt)
  cache = {"prompt_k": store(arr(b, kv, p, dh)), "prompt_v": store(arr(b, kv, p, dh)),
           "k": store(arr(b * g, kv, t, dh)), "v": store(arr(b * g, kv, t, dh))}
  q, k_new, v_new = arr(b * g, kv, hg, dh), arr(b * g, kv, dh), arr(b * g, kv, dh)
  valid = jnp.asarray(rng.random((b, p)) > 0.3).at[:, -1].set(True)
  gathered = SlotMask(prompt_of=jnp.arange(b * g) // g, prompt_valid=valid, length=jnp.asarray(
      rng.integers(0, read, b * g)), read=read)
  out = [np.asarray(_attend_slots(q, k_new, v_new, cache, m, 0.3, dt), np.float32)
         for m in (gathered, dataclasses.replace(gathered, group=g))]
  np.testing.assert_allclose(out[1], out[0], rtol=0, atol=1e-6 if dtype == "float32" else 1e-2)
  assert np.abs(out[0]).max() > 0.1
  with pytest.raises(ValueError, match="B·group"):
    _attend_slots(q, k_new, v_new, cache, dataclasses.replace(gathered, group=g - 1), 0.3, dt)


def test_the_layers_layout_refuses_what_it_does_not_express(llama):
  from jaxgrpo.models.transformer import SlotMask, decode_slots, split_layers
  model, params = llama
  with pytest.raises(ValueError, match="kv_layout must be one of"):
    continuous.ContinuousParams(kv_layout="paged")
  top, layers = split_layers(model, params)
  assert len(layers) == model.config.num_layers and "layers" not in top
  head = params["embed"].T if model.config.tie_word_embeddings else params["lm_head"]
  np.testing.assert_array_equal(np.asarray(top["head"]), np.asarray(head))
  np.testing.assert_array_equal(np.asarray(layers[1]["attn"]["q_kernel"]),
                                np.asarray(params["layers"]["attn"]["q_kernel"][1]))
  mask = SlotMask(prompt_of=jnp.zeros(2, jnp.int32), prompt_valid=jnp.ones((1, 3), bool), length=jnp.zeros(2, int),
                  read=0)
  one = jnp.zeros((2, 1), jnp.int32)
  with pytest.raises(ValueError, match="SlotMask.step and ring_from must be set"):
    decode_slots(model, top, layers, one, one, mask, (), ())
  with pytest.raises(ValueError, match=f"needs {model.config.num_layers} layers"):
    decode_slots(model, top, layers[:1], one, one, dataclasses.replace(
        mask, step=jnp.zeros((), jnp.int32), ring_from=jnp.zeros(2, jnp.int32)), (), ())


def test_a_bf16_kv_cache_is_bf16_half_the_bytes_and_close_to_f32(llama):
  model, params = llama
  ids, mask = prompts(model.config.vocab_size, seed=6)
  sp32 = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=1.0, eos_ids=(EOS,), pad_id=0)
  sp16 = dataclasses.replace(sp32, kv_dtype="bfloat16")
  one = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("rows",))
  ctx = continuous._prefill(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0), 4, "bfloat16",
                            one, ("rows",))
  # on XLA:CPU a bf16 cache is stored as its bits (sampler.storage_dtype; tests/test_precision.py)
  assert ctx.cache["prompt_k"].dtype == sampler.storage_dtype("bfloat16") and ctx.cache["prompt_k"].itemsize == 2
  assert M.from_bits(ctx.cache["prompt_k"]).dtype == jnp.bfloat16 and ctx.cache["prompt_k"].shape[:3] == (1, 2, 3)
  kv_bytes = functools.partial(continuous.kv_bytes, layout="stacked")
  b32 = kv_bytes(model, sp32, 3, 6, 0)
  b16 = kv_bytes(model, sp16, 3, 6, 0)
  assert b16["continuous"] * 2 == b32["continuous"] and b16["static"] * 2 == b32["static"]
  assert b32["continuous"] < b32["static"]  # one prompt copy instead of G
  four = kv_bytes(model, sp32, 8, 6, 16, devices=4)  # per device: 2 prompts, 4 slots
  assert four == kv_bytes(model, sp32, 2, 6, 4)
  # 3 prompts × G 4 on 8 devices: 2 samples each (the last 4 dummies), 1 prompt prefilled each
  per_pos = b32["continuous"] // (3 * 6 + 12 * T)  # 3 prompts of 6 positions once, 12 slots of T
  assert kv_bytes(model, sp32, 3, 6, 0, devices=8)["continuous"] == per_pos * (6 + 2 * T)
  # layers layout: + a call buffer of steps_per_call positions per slot (float32 on XLA:CPU for a bf16 cache)
  cfg = model.config
  ring = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4 * 12 * 4
  assert continuous.kv_bytes(model, sp16, 3, 6, 0, layout="layers", steps_per_call=4)["continuous"] == (
      b16["continuous"] + ring)
  key = jax.random.PRNGKey(4)
  a, _ = run(model, params, ids, mask, key, sp32, **SMALL)
  b, _ = run(model, params, ids, mask, key, sp16, **SMALL)
  st16 = sampler.sample_groups(model, params, ids, mask, key, sp16)
  same = np.asarray(a.tokens) == np.asarray(b.tokens)
  valid = (np.asarray(a.mask) * np.asarray(b.mask)).astype(bool) & np.cumprod(same, -1).astype(bool)
  gap = np.abs(np.asarray(a.logprobs) - np.asarray(b.logprobs))[valid]
  assert 0 < gap.max() < 0.1  # rounded KV: other numbers, not another model
  np.testing.assert_array_equal(np.asarray(st16.tokens)[:, :, 0], np.asarray(b.tokens)[:, :, 0])
  # the layers layout keeps the bf16 cache bf16 (its call buffer float32 on XLA:CPU, holding bf16-rounded values)
  c, _ = run(model, params, ids, mask, key, sp16, kv_layout="layers", **SMALL)
  same = np.asarray(b.tokens) == np.asarray(c.tokens)
  valid = (np.asarray(b.mask) * np.asarray(c.mask)).astype(bool) & np.cumprod(same, -1).astype(bool)
  assert same.mean() > 0.9 and np.abs(np.asarray(b.logprobs) - np.asarray(c.logprobs))[valid].max() < 1e-2
  assert not policy.sampler_is_policy({"kv_dtype": "bfloat16"}) and policy.sampler_is_policy({"kv_dtype": None})


def test_the_rollout_engine_uses_continuous_on_one_device_and_static_on_a_mesh_unless_asked():
  from jaxgrpo.parallel import sharding
  from jaxgrpo.train import build
  model, _, tok = build.build_model(presets.preset("toy").model, 0, None)
  assert RolloutEngine(model, tok).engine == "continuous"
  assert RolloutEngine(model, tok, engine="static").engine == "static"
  if jax.device_count() >= 4:
    mesh = sharding.make_mesh(2, 2, 1, devices=jax.devices()[:4])
    assert RolloutEngine(model, tok, mesh).engine == "static"  # auto: nothing measured on several devices
    assert RolloutEngine(model, tok, mesh, engine="continuous").engine == "continuous"  # data-parallel
    with pytest.raises(ValueError, match="'continuous' is data-parallel .* devices off the batch axes"):
      RolloutEngine(model, tok, sharding.make_mesh(2, 1, 2, devices=jax.devices()[:4]), engine="continuous")


def _mesh(data, fsdp):
  from jaxgrpo.parallel import sharding
  if jax.device_count() < data * fsdp:
    pytest.skip(f"needs {data * fsdp} (simulated) devices")
  return sharding.make_mesh(data, fsdp, 1, devices=jax.devices()[:data * fsdp])


@pytest.mark.parametrize("data, fsdp, b, slots, layout", [
    (4, 1, 3, 4, "stacked"), (2, 2, 4, 8, "stacked"), (8, 1, 3, 0, "stacked"), (4, 2, 3, 8, "stacked"),
    (2, 1, 4, 0, "stacked"), (4, 1, 3, 4, "layers"), (2, 1, 4, 0, "layers")])
def test_on_several_devices_each_runs_its_share_and_the_output_is_the_static_engines(llama, data, fsdp, b, slots,
                                                                                     layout):
  """Data-parallel slots: the same samples whatever the device count (a sample's key is its global index), rows
  sharded over the batch axes (replicated when D does not divide B; then a device's samples may span two prompts,
  or D may exceed B), params sharded by FSDP gathered for sampling, and the slots split over the devices."""
  from jaxgrpo.parallel import sharding
  model, params = llama
  mesh = _mesh(data, fsdp)
  d = data * fsdp
  ids, mask = prompts(model.config.vocab_size, seed=3, b=b)
  sp = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=1.0, eos_ids=(EOS,), pad_id=0)
  key = jax.random.PRNGKey(11)
  ref = sampler.sample_groups(model, params, ids, mask, key, sp)
  shardings = sharding.tree_shardings(M.transformer.logical_axes(model), params, mesh)
  sharded = jax.device_put(params, shardings)
  if fsdp > 1:  # the weights really are split: the engine gathers them
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded))
  out, stats = continuous.sample_groups(model, sharded, ids, mask, key, sp, cp=continuous.ContinuousParams(
      slots=slots, kv_layout=layout, **SMALL), mesh=mesh, axes=sharding.batch_axes(mesh))
  assert_same_samples(out, ref)
  assert stats.devices == d and stats.useful_tokens == int(np.asarray(ref.lengths).sum())
  assert stats.slot_counts[0] == (slots or -(-b * sp.group_size // d) * d)  # over all devices
  # prompt-major slots where every device has one slot per sample of whole groups (the last case)
  assert stats.groups[0] == (sp.group_size if (slots == 0 and b % d == 0) else 0)
  spec = out.tokens.sharding.spec
  assert (len(spec) > 0 and spec[0] is not None) == (b % d == 0), spec  # rows sharded iff D divides B


def test_several_devices_refuse_slots_they_cannot_split(llama):
  model, params = llama
  mesh = _mesh(2, 1)
  ids, mask = prompts(model.config.vocab_size, b=4)
  sp = sampler.SamplingParams(group_size=2, max_new_tokens=4, temperature=1.0, eos_ids=(EOS,), pad_id=0)
  with pytest.raises(ValueError, match=r"sampling.slots \(3\) must be a multiple of the 2 devices"):
    continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(0), sp,
                             cp=continuous.ContinuousParams(slots=3), mesh=mesh, axes=("data",))


@pytest.mark.parametrize("override, match", [
    ("sampling.engine=paged", r"'sampling.engine' must be one of \['auto', 'static', 'continuous'\]"),
    ("sampling.read_growth=cubic", r"'sampling.read_growth' must be one of \['pow2', 'half_octave', 'linear'\]"),
    ("sampling.kv_layout=paged", r"'sampling.kv_layout' must be one of \['layers', 'stacked'\]"),
    ("sampling.decode_kernel=gpu", r"'sampling.decode_kernel' must be one of \['auto', 'xla', 'cpu'\]"),
    ("sampling.decode_kernel=cpu", r"'sampling.kv_dtype' must be bfloat16 with sampling.decode_kernel = 'cpu'"),
    ("sampling.decode_kernel=cpu;sampling.kv_dtype=bfloat16;sampling.kv_layout=stacked",
     r"'sampling.kv_layout' must be 'layers' with sampling.decode_kernel = 'cpu'"),
    ("sampling.slots=-1", r"'sampling.slots' must be >= 0"),
    ("sampling.slots=100000", r"'sampling.slots' must be <= data.prompts_per_step × sampling.group_size"),
    ("sampling.kv_dtype=int8", r"'sampling.kv_dtype' must be one of \['float32', 'bfloat16', 'float16'\]"),
    ("sampling.kv_dtype=float16", r"'sampling.kv_dtype' 'float16' is not supported on the cpu backend"),
    ("mesh.tensor=2", r"'sampling.engine' = 'continuous' is data-parallel .* tensor=2"),
    ("mesh.data=2;sampling.slots=3", r"'sampling.slots' must be a multiple of mesh.data × mesh.fsdp = 2"),
])
def test_bad_engine_settings_are_refused_when_loaded_naming_the_key(override, match):
  overrides = override.split(";") + (["sampling.engine=continuous"] if override.startswith("mesh") else [])
  with pytest.raises(ValueError, match=match):
    C.apply_overrides(presets.preset("toy"), overrides)
  with pytest.raises(ValueError, match="slots must be an integer >= 0"):
    continuous.ContinuousParams(slots=-2)


def test_the_cpu_kernel_samples_as_xlas_attention_with_a_bf16_cache(llama):
  """``decode_kernel``: the CPU kernel (auto picks it for a bf16 cache where it builds) against XLA's ops on the
  same bf16 cache — the same samples up to bf16 rounding in another order — and against the static engine (its
  first tokens read no completion KV: equal); what it cannot run is refused by name."""
  from jaxgrpo import kernels
  model, params = llama
  ids, mask = prompts(model.config.vocab_size)
  sp16 = sampler.SamplingParams(group_size=4, max_new_tokens=T, temperature=1.0, eos_ids=(EOS,), pad_id=0,
                                kv_dtype="bfloat16")
  key = jax.random.PRNGKey(5)
  x, sx = run(model, params, ids, mask, key, sp16, decode_kernel="xla", **SMALL)
  assert sx.decode_kernel == "xla"
  if not kernels.available():
    pytest.skip("the CPU kernel did not build here")
  c, sc = run(model, params, ids, mask, key, sp16, **SMALL)  # auto
  assert sc.decode_kernel == "cpu" and sc.host_calls > 2 and len(set(sc.reads)) > 1  # merges, several buckets
  st16 = sampler.sample_groups(model, params, ids, mask, key, sp16)
  np.testing.assert_array_equal(np.asarray(st16.tokens)[:, :, 0], np.asarray(c.tokens)[:, :, 0])
  # on each pair's common prefix, log-probs apart by bf16 rounding: the kernel's gap to the float32-cache engine is
  # of the size of XLA's bf16 path's (a random tiny model has near-ties: a flipped token then changes the rest)
  sp32 = dataclasses.replace(sp16, kv_dtype=None)
  ref, _ = run(model, params, ids, mask, key, sp32, **SMALL)

  def gap(a, b):
    same = np.cumprod(np.asarray(a.tokens) == np.asarray(b.tokens), -1).astype(bool)
    valid = same & (np.asarray(a.mask) * np.asarray(b.mask)).astype(bool)
    return np.abs(np.asarray(a.logprobs) - np.asarray(b.logprobs))[valid]

  assert gap(x, c).max() < 0.05 and gap(c, ref).max() < 0.05
  assert gap(c, ref).mean() < 2 * gap(x, ref).mean() + 1e-3
  with pytest.raises(ValueError, match="decode_kernel 'cpu' cannot run: it needs a bfloat16 KV cache"):
    run(model, params, ids, mask, key, sp32, decode_kernel="cpu", **SMALL)
  with pytest.raises(ValueError, match="it needs kv_layout 'layers'"):
    run(model, params, ids, mask, key, sp16, decode_kernel="cpu", kv_layout="stacked", **SMALL)
  with pytest.raises(ValueError, match="decode_kernel must be one of"):
    continuous.ContinuousParams(decode_kernel="gpu")
  _, s32 = run(model, params, ids, mask, key, sp32, **SMALL)  # auto with a float32 cache: XLA's ops
  assert s32.decode_kernel == "xla"


def test_training_with_the_continuous_engine_equals_the_static_engine(tmp_path):
  cfg = config_replace(presets.preset("toy"), progress=False, steps=2, checkpoint_every=0)
  a = trainer(config_replace(cfg, output_dir=str(tmp_path / "a"), sampling={"engine": "static"})).run(resume=False)
  b = trainer(config_replace(cfg, output_dir=str(tmp_path / "b"), sampling={"engine": "continuous", "slots": 16})
              ).run(resume=False)
  for sa, sb in zip(a, b):
    for k in ("loss", "reward_mean", "completion_tokens", "grad_norm"):
      np.testing.assert_allclose(sb[k], sa[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert 0 < sb["sampling/useful_frac"] <= 1 and "sampling/useful_frac" not in sa


def test_training_on_a_mesh_with_the_continuous_engine_equals_the_static_engine(tmp_path):
  """Data-parallel continuous sampling inside the sharded trainer (2 devices, slots split 8 + 8): the same step
  metrics as the static engine on the same mesh."""
  from jaxgrpo.train.trainer import Trainer
  mesh = _mesh(2, 1)
  cfg = config_replace(presets.preset("toy"), progress=False, steps=2, checkpoint_every=0)
  a = Trainer(config_replace(cfg, output_dir=str(tmp_path / "a"), sampling={"engine": "static"}), mesh=mesh
              ).run(resume=False)
  tb = Trainer(config_replace(cfg, output_dir=str(tmp_path / "b"), sampling={"engine": "continuous", "slots": 16}),
               mesh=mesh)
  assert tb.engine.engine == "continuous"
  b = tb.run(resume=False)
  for sa, sb in zip(a, b):
    for k in ("loss", "reward_mean", "completion_tokens", "grad_norm"):
      np.testing.assert_allclose(sb[k], sa[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert 0 < sb["sampling/useful_frac"] <= 1
  assert tb.engine.last_stats.devices == 2


def test_auto_picks_the_engine_the_benchmark_measured_faster():
  """experiments/bench_sampler.py (CPU, one device): continuous 1.03–1.17× static in float32, 1.00–1.25× in bf16;
  bench_engine_mesh.py (2 devices, pure data parallelism) faster still; static where the weights are sharded."""
  from jaxgrpo.parallel import sharding
  from jaxgrpo.rollout.engine import resolve_engine

  one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  assert resolve_engine("auto", one) == "continuous"  # either dtype (the bf16 plan: tests/test_plan.py)
  assert resolve_engine("continuous", one) == "continuous" and resolve_engine("static", one) == "static"
  assert resolve_engine("auto", one, windowed=True) == "static"  # Gemma 3's sliding-window layers
  with pytest.raises(ValueError, match="'continuous' does not support sliding-window attention"):
    resolve_engine("continuous", one, windowed=True)
  if jax.device_count() >= 2:  # experiments/bench_engine_mesh.py: continuous faster on a 2-device data mesh
    two = sharding.make_mesh(2, 1, 1, devices=jax.devices()[:2])
    assert resolve_engine("auto", two) == "continuous"
    assert resolve_engine("auto", two, slots=3) == "static"  # slots not a multiple of the devices
    for fsdp_or_tensor in ((1, 2, 1), (1, 1, 2)):  # weights sharded: a full copy per device is not what was asked
      assert resolve_engine("auto", sharding.make_mesh(*fsdp_or_tensor, devices=jax.devices()[:2])) == "static"


def test_the_layer_split_is_reused_only_for_the_very_same_arrays(llama):
  """``continuous._split_cached``: the same parameter arrays again reuse the per-layer split; a tree with any new
  leaf (an update, another adapter) is split again; the entry goes with its arrays."""
  import gc
  model, params = llama
  params = sampler.decode_params(model, params)
  a = continuous._split_cached(model, params)
  assert continuous._split_cached(model, params) is a
  changed = jax.tree.map(lambda x: x, params)  # same leaves, new containers: still the same arrays
  assert continuous._split_cached(model, changed) is a
  leaf = params["layers"]["attn"]["q_kernel"]
  edited = {**params, "layers": {**params["layers"], "attn": {**params["layers"]["attn"], "q_kernel": leaf + 0}}}
  b = continuous._split_cached(model, edited)
  assert b is not a
  from jaxgrpo.models.transformer import from_bits
  np.testing.assert_array_equal(np.asarray(b[1][0]["attn"]["q_kernel"], np.float32),
                                np.asarray(from_bits(edited["layers"]["attn"]["q_kernel"][0]), np.float32))
  del edited, b
  gc.collect()
  assert continuous._SPLIT == []


def test_without_a_compiler_the_engine_keeps_xlas_attention(tmp_path):
  """No C++ compiler (``CXX`` a failing one, an empty kernel cache): ``kernels.available()`` is False with one
  warning naming why, ``auto`` samples with XLA's ops, and ``decode_kernel: cpu`` is refused by name."""
  import subprocess
  import sys
  import textwrap
  script = textwrap.dedent("""
      import warnings, jax, numpy as np
      from jaxgrpo import kernels
      from jaxgrpo.rollout import continuous, sampler
      from jaxgrpo.train import build, presets
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not kernels.available()
      assert any("decode-attention kernel is unavailable" in str(w.message) and "failed" in str(w.message)
                 for w in caught), [str(w.message) for w in caught]
      model, params, tok = build.build_model(presets.preset("toy").model, 0, None)
      model = type(model)(model.config.replace(dtype="bfloat16"))
      ids, mask = np.ones((2, 4), np.int32), np.ones((2, 4), np.int32)
      sp = sampler.SamplingParams(group_size=2, max_new_tokens=4, temperature=1.0, pad_id=0, kv_dtype="bfloat16")
      out, stats = continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(0), sp)
      assert stats.decode_kernel == "xla" and stats.useful_tokens > 0
      try:
        continuous.sample_groups(model, params, ids, mask, jax.random.PRNGKey(0), sp,
                                 cp=continuous.ContinuousParams(decode_kernel="cpu"))
        raise SystemExit("not refused")
      except ValueError as e:
        assert "did not build here" in str(e), e
      print("OK")
  """)
  env = {**__import__("os").environ, "CXX": "/bin/false", "JAXGRPO_KERNEL_CACHE": str(tmp_path)}
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
