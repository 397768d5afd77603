"""The group sampler: KV cache == full forward, greedy == transformers, statistics, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_tiny import TINY, make_tiny

import jaxgrpo.models as M
from jaxgrpo.rollout import sampler


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
  hf = make_tiny(request.param)
  path = str(tmp_path_factory.mktemp(request.param))
  hf.save_pretrained(path)
  model, params = M.from_pretrained(path)
  return hf, model, params


def left_padded_prompts(vocab, seed=0, b=2, p=6):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, size=(b, p))
  mask = np.ones((b, p), np.int64)
  mask[0, :2] = 0
  ids[0, :2] = 0
  return ids, mask


def test_kv_cache_decoding_equals_full_forward_at_every_step(tiny):
  _, model, params = tiny
  ids, mask = left_padded_prompts(model.config.vocab_size)
  new = np.random.default_rng(1).integers(1, model.config.vocab_size, size=(2, 9))
  steps = new.shape[1]
  cache_len = ids.shape[1] + steps
  logits, cache = sampler.prefill(model, params, jnp.asarray(ids), jnp.asarray(mask), cache_len)
  full_ids = np.concatenate([ids, new], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(new)], axis=1)
  full = np.asarray(M.logits(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask)))
  kv_valid = jnp.pad(jnp.asarray(mask, bool), ((0, 0), (0, steps)))
  prompt_len = mask.sum(-1)
  step = jax.jit(sampler.decode_step, static_argnums=0)
  p = ids.shape[1]
  for t in range(steps):
    np.testing.assert_allclose(np.asarray(logits), full[:, p - 1 + t], atol=1e-4)
    kv_valid = kv_valid.at[:, p + t].set(True)
    logits, cache = step(model, params, cache, jnp.asarray(new[:, t], jnp.int32),
                         jnp.asarray(prompt_len + t, jnp.int32), kv_valid, p + t)


def test_greedy_equals_transformers_generate(tiny):
  hf, model, params = tiny
  ids, mask = left_padded_prompts(model.config.vocab_size, seed=3)
  eos = 7
  out = sampler.sample(model, params, ids, mask, jax.random.PRNGKey(0), group_size=2, max_new_tokens=16,
                       temperature=0.0, eos_ids=(eos,), pad_id=0)
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                      max_new_tokens=16, eos_token_id=eos, pad_token_id=0)[:, ids.shape[1]:].numpy()
  ref = np.pad(ref, ((0, 0), (0, 16 - ref.shape[1])))
  for g in range(2):  # every group member is the same greedy completion
    np.testing.assert_array_equal(np.asarray(out.tokens[:, g]), ref)
  for b in range(2):
    n = int(out.lengths[b, 0])
    ended = eos in ref[b, :n]
    assert int(out.finish_reason[b, 0]) == (sampler.FINISH_EOS if ended else sampler.FINISH_LENGTH)
    assert np.asarray(out.mask[b, 0]).tolist() == [1] * n + [0] * (16 - n)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.6)])
def test_returned_logprobs_and_entropies_equal_teacher_forced_forward(tiny, temperature, top_k, top_p):
  _, model, params = tiny
  ids, mask = left_padded_prompts(model.config.vocab_size, seed=5)
  out = sampler.sample(model, params, ids, mask, jax.random.PRNGKey(1), group_size=3, max_new_tokens=10,
                       temperature=temperature, top_k=top_k, top_p=top_p)
  sp = sampler.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
  for g in range(3):
    comp = np.asarray(out.tokens[:, g])
    full_ids = np.concatenate([ids, comp], axis=1)
    full_mask = np.concatenate([mask, np.asarray(out.mask[:, g])], axis=1)
    logits = M.logits(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask))
    step_logits = logits[:, ids.shape[1] - 1: -1]  # the logits that produced each completion token
    policy, sampling = sampler.process_logits(step_logits.reshape(-1, step_logits.shape[-1]), sp)
    logp = jnp.take_along_axis(jax.nn.log_softmax(sampling), comp.reshape(-1, 1), -1).reshape(comp.shape)
    ent = sampler.entropy(policy).reshape(comp.shape)
    valid = np.asarray(out.mask[:, g]).astype(bool)
    np.testing.assert_allclose(np.asarray(out.logprobs[:, g])[valid], np.asarray(logp)[valid], atol=2e-4)
    np.testing.assert_allclose(np.asarray(out.entropies[:, g])[valid], np.asarray(ent)[valid], atol=2e-4)
    assert np.isfinite(np.asarray(logp)[valid]).all()


def _expected(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Reference distribution after temperature, top-k and top-p (HF's warper semantics)."""
  z = np.asarray(logits, np.float64) / temperature
  if top_k:
    z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
  p = np.exp(z - z.max())
  p /= p.sum()
  if top_p < 1:
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    drop = order[before >= top_p]
    p[drop] = 0
    p /= p.sum()
  return p


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0),
                                                       (1.0, 3, 1.0), (1.0, 0, 0.7), (0.8, 4, 0.9)])
def test_sampling_distribution_statistics(temperature, top_k, top_p):
  logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], np.float32)
  n = 40_000
  sp = sampler.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
  tok, _, _ = sampler.sample_token(jnp.tile(logits, (n, 1)), jax.random.PRNGKey(0), sp)
  freq = np.bincount(np.asarray(tok), minlength=8) / n
  want = _expected(logits, temperature, top_k, top_p)
  sigma = np.sqrt(want * (1 - want) / n)
  assert (np.abs(freq - want) <= 5 * sigma + 1e-9).all(), (freq, want)
  assert (freq[want == 0] == 0).all()


def test_end_to_end_first_token_distribution_with_allowed_tokens(tiny):
  _, model, params = tiny
  v = model.config.vocab_size
  ids, mask = left_padded_prompts(v, seed=7, b=1)
  allowed = np.zeros(v, bool)
  allowed[[3, 5, 11]] = True
  n = 3000
  out = sampler.sample(model, params, ids, mask, jax.random.PRNGKey(2), group_size=n, max_new_tokens=4,
                       temperature=1.5, allowed_tokens=allowed)
  toks = np.asarray(out.tokens)
  assert set(np.unique(toks)) <= {3, 5, 11}
  logits = np.asarray(M.logits(model, params, jnp.asarray(ids), jnp.asarray(mask)))[0, -1]
  want = _expected(np.where(allowed, logits, -np.inf), 1.5)[[3, 5, 11]]
  freq = np.array([(toks[0, :, 0] == t).mean() for t in (3, 5, 11)])
  assert (np.abs(freq - want) <= 5 * np.sqrt(want * (1 - want) / n) + 1e-9).all(), (freq, want)


def tiny_llama(max_positions):
  cfg = M.ModelConfig(family="llama", vocab_size=4, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=4, intermediate_size=16, max_position_embeddings=max_positions)
  model = M.from_config(cfg)
  return model, M.init_params(model, jax.random.PRNGKey(0))


def test_early_stop_and_finish_reasons():
  model, params = tiny_llama(64)
  ids, mask = np.ones((3, 2), np.int32), np.ones((3, 2), np.int32)
  # Token 2 is EOS; only tokens {1, 2} allowed, so completions end quickly at random points.
  out = sampler.sample(model, params, ids, mask, jax.random.PRNGKey(3), group_size=8, max_new_tokens=40,
                       eos_ids=(2,), pad_id=0, allowed_tokens=np.array([False, True, True, False]))
  toks, m, lengths = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.lengths)
  for b in range(3):
    for g in range(8):
      n = lengths[b, g]
      assert m[b, g].tolist() == [1] * n + [0] * (40 - n)
      assert (toks[b, g, n:] == 0).all()
      if out.finish_reason[b, g] == sampler.FINISH_EOS:
        assert toks[b, g, n - 1] == 2 and 2 not in toks[b, g, : n - 1]
      else:
        assert n == 40 and 2 not in toks[b, g]
  assert (np.asarray(out.finish_reason) == sampler.FINISH_EOS).any()


def test_bad_arguments_are_named():
  model, params = tiny_llama(16)
  ids, mask = np.ones((1, 4), np.int32), np.ones((1, 4), np.int32)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="group_size must be >= 1"):
    sampler.sample(model, params, ids, mask, key, group_size=0)
  for top_p in (0.0, 1.5):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
      sampler.sample(model, params, ids, mask, key, max_new_tokens=4, top_p=top_p)
  with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
    sampler.sample(model, params, ids, mask, key, max_new_tokens=13)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    sampler.sample(model, params, ids, mask, key, max_new_tokens=4, temperature=-1.0)
  with pytest.raises(ValueError, match=r"allowed_tokens must be bool\[4\]"):
    sampler.sample(model, params, ids, mask, key, max_new_tokens=4, allowed_tokens=np.ones(5, bool))
  with pytest.raises(ValueError, match="prompt_mask must have the shape of prompt_ids"):
    sampler.sample(model, params, ids, mask[:, :2], key, max_new_tokens=4)


def test_inverse_cdf_categorical_over_several_blocks():
  rng = np.random.default_rng(0)
  v = 300  # three 128-wide blocks, the last one padded
  logits = rng.normal(0, 2, size=v).astype(np.float32)
  logits[rng.choice(v, 50, replace=False)] = -1e30  # forbidden tokens
  n = 60_000
  tok, logp, ent = sampler.categorical(jnp.tile(logits, (n, 1)), jax.random.PRNGKey(4))
  want = _expected(np.where(logits < -1e29, -np.inf, logits))
  freq = np.bincount(np.asarray(tok), minlength=v) / n
  assert (freq[want == 0] == 0).all()
  sigma = np.sqrt(want * (1 - want) / n)
  assert (np.abs(freq - want) <= 5 * sigma + 1e-9).all()
  np.testing.assert_allclose(np.asarray(logp[:100]), np.log(want[np.asarray(tok[:100])]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(ent[0]), -np.sum(want[want > 0] * np.log(want[want > 0])), rtol=1e-5)


def test_a_draw_landing_on_a_forbidden_token_falls_back_to_the_rows_mode_and_only_that_row():
  """Inverse-CDF rounding can land on a zero-probability slot at the end of a block; ``categorical`` then returns
  the row's mode for that row only.  Made exact here:
  equal allowed logits (every weight exactly 1, so every sum is exact) and a uniform of exactly 1 (outside [0, 1):
  white-box), which walks each row to the last slot of its last block."""
  v = 256  # two full blocks of 128
  logits = np.zeros((2, v), np.float32)
  logits[0, 0] = logits[0, -3:] = -1e30  # row 0 ends in forbidden slots: fallback to its mode, the first max (1)
  tok, logp, _ = sampler.categorical(jnp.asarray(logits), None, uniforms=jnp.ones((2,), jnp.float32))
  assert np.asarray(tok).tolist() == [1, v - 1]  # row 1's last slot is allowed: no fallback there
  np.testing.assert_allclose(np.asarray(logp), [-np.log(v - 4), -np.log(v)], rtol=1e-6)
  # no row needs it: the plain inverse-CDF draw
  tok1, _, _ = sampler.categorical(jnp.asarray(logits[1:]), None, uniforms=jnp.ones((1,), jnp.float32))
  assert int(tok1[0]) == v - 1
