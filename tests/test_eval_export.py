"""Evaluation, export and the paper presets from the CLI, on a tiny model with SmolLM2's tokenizer.

A short run evaluates at step 0 and at the end; `jaxgrpo export` writes an HF checkpoint that transformers
loads and generates from, with logits equal to jaxgrpo's on the trained params; `jaxgrpo eval` reads a run or
an HF directory; the prpo_paper preset trains from the CLI with a neural PRM directory and MATH-style JSONL.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_tiny import tiny_llama_with_tokenizer
from meshes import trainer

import jaxgrpo.models as M
from jaxgrpo import analysis, cli
from jaxgrpo.tasks import sources as data_lib
from jaxgrpo.train import export, presets
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.evaluation import evaluate_params, pass_at_k

# One worker runs this file under pytest-xdist, so the module's trained run is made once.
pytestmark = pytest.mark.xdist_group(name="eval_export")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return tiny_llama_with_tokenizer(str(tmp_path_factory.mktemp("tiny_llama")))


def small_cfg(tiny_dir, out, **sections):
  cfg = config_replace(
      presets.preset("smollm2_arithmetic"), output_dir=str(out), steps=2, progress=False, checkpoint_every=1,
      model={"checkpoint": tiny_dir}, sampling={"group_size": 2, "max_new_tokens": 8},
      data={"prompts_per_step": 4}, optim={"learning_rate": 1e-3},
      rewards={"names": ("plugins:text_length", "math"), "weights": (1.0, 1.0)},
      eval={"num_examples": 4, "every": 0, "num_samples": 2, "pass_k": (1, 2), "batch_size": 4})
  return config_replace(cfg, **sections)


def test_pass_at_k_is_the_unbiased_estimator():
  assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
  assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
  assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 − C(3,2)/C(4,2)
  assert pass_at_k(5, 2, 4) == 1.0  # n − c < k
  with pytest.raises(ValueError):
    pass_at_k(3, 1, 4)


def test_run_evaluates_then_export_loads_in_transformers_with_equal_logits(tiny_dir, tmp_path, capsys):
  run = tmp_path / "run"
  history = trainer(small_cfg(tiny_dir, run)).run()
  evals = [h for h in history if "eval/greedy_accuracy" in h]
  assert [h["step"] for h in evals] == [0, 2]
  assert all(0 <= h["eval/pass_at_1"] <= h["eval/pass_at_2"] <= 1 for h in evals)
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert sum("eval/greedy_accuracy" in r for r in rows) == 2
  # per-problem outputs: one line per problem, their mean is the logged accuracy, graded by the task itself
  eval_set = data_lib.make_eval_source(small_cfg(tiny_dir, run).data, small_cfg(tiny_dir, run).eval)
  for h in evals:
    recs = [json.loads(line) for line in open(run / "eval" / f"step_{h['step']:06d}.jsonl")]
    assert [r["index"] for r in recs] == [0, 1, 2, 3]
    assert [r["prompt"] for r in recs] == [e.prompt for e in eval_set.examples]
    assert np.mean([r["greedy_correct"] for r in recs]) == pytest.approx(h["eval/greedy_accuracy"])
    assert [r["greedy_correct"] for r in recs] == [
        int(eval_set.is_correct(e, r["greedy_completion"])) for e, r in zip(eval_set.examples, recs)]
    assert all(0 <= r["sample_correct"] <= 2 for r in recs)
    assert np.mean([r["sample_correct"] for r in recs]) / 2 == pytest.approx(h["eval/sample_accuracy"])

  out = tmp_path / "hf"
  assert cli.main(["export", str(run), str(out)]) == 0
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
  from transformers import AutoModelForCausalLM, AutoTokenizer

  hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
  tok = AutoTokenizer.from_pretrained(str(out))
  ids = tok("What is 2 + 3?", return_tensors="pt")["input_ids"]
  gen = hf.generate(ids, max_new_tokens=4, do_sample=False)
  assert gen.shape[1] == ids.shape[1] + 4
  model, params, run_tok, run_cfg = export.load_run(str(run))
  base_model, base = M.from_pretrained(tiny_dir)
  assert not np.allclose(params["layers"]["mlp"]["up_kernel"], base["layers"]["mlp"]["up_kernel"])  # trained
  x = np.asarray(tok(["What is 12 + 7?", "Hi"], padding=True, return_tensors="np")["input_ids"])
  mask = np.ones_like(x)
  ours = np.asarray(M.logits(model, params, jnp.asarray(x), jnp.asarray(mask)))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(x)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4)

  # outside the trainer, the library's evaluate_params on the loaded checkpoint gives the trainer's own greedy
  # per-problem outputs at that step (greedy decoding does not depend on the key)
  recs: list = []
  spec = config_replace(run_cfg, eval={"num_samples": 0}).eval
  out_params = evaluate_params(model, params, run_tok, run_cfg, eval_set, spec, show_progress=False,
                               records=recs)
  logged = [json.loads(line) for line in open(run / "eval" / "step_000002.jsonl")]
  assert [r["greedy_completion"] for r in recs] == [r["greedy_completion"] for r in logged]
  assert analysis.eval_steps(str(run))[-1] == 2  # jaxgrpo.analysis reads the trainer's files back
  assert analysis.load_outputs(str(run))["greedy_completion"].tolist() == [r["greedy_completion"] for r in logged]
  assert out_params["greedy_accuracy"] == pytest.approx(evals[-1]["eval/greedy_accuracy"])
  assert "pass_at_1" not in out_params

  assert cli.main(["eval", "--run", str(run), "--step", "1", "--set", "eval.num_examples=4",
                   "--outputs", str(tmp_path / "outs.jsonl")]) == 0
  printed = capsys.readouterr().out
  assert "| greedy_accuracy |" in printed and "(step 1)" in printed
  outs = [json.loads(line) for line in open(tmp_path / "outs.jsonl")]
  acc = float(printed.split("| greedy_accuracy |")[1].split("|")[0])
  assert len(outs) == 4 and np.mean([r["greedy_correct"] for r in outs]) == pytest.approx(acc, abs=1e-4)
  assert cli.main(["eval", "--hf", str(out), "--preset", "smollm2_arithmetic", "--set", "eval.num_examples=4",
                   "--set", "sampling.max_new_tokens=8"]) == 0
  assert "| greedy_accuracy |" in capsys.readouterr().out


def test_lora_run_exports_merged_weights_and_a_peft_adapter(tiny_dir, tmp_path):
  run = tmp_path / "lora"
  trainer(small_cfg(tiny_dir, run, model={"lora": {"rank": 4, "alpha": 8.0}}, eval={"num_examples": 0})).run()
  written = export.export_run(str(run), str(tmp_path / "hf"))
  assert os.path.exists(os.path.join(written["peft"], "adapter_config.json"))
  peft = pytest.importorskip("peft")
  from transformers import AutoModelForCausalLM

  model, params, _, _ = export.load_run(str(run))
  x = np.array([[1, 5, 9, 300, 41, 7]])
  ours = np.asarray(M.logits(model, params, jnp.asarray(x), jnp.ones_like(jnp.asarray(x))))
  merged = AutoModelForCausalLM.from_pretrained(written["hf"]).eval()
  with_adapter = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir).eval(),
                                                written["peft"]).eval()
  with torch.no_grad():
    for m in (merged, with_adapter):
      np.testing.assert_allclose(m(input_ids=torch.tensor(x)).logits.numpy(), ours, atol=1e-4)


def _tiny_prm_dir(path, tiny_dir):
  """A Qwen2.5-Math-PRM-shaped directory: a tiny Qwen2 body + score head, SmolLM2's tokenizer plus <extra_0>."""
  from safetensors.numpy import load_file, save_file
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(tiny_dir)
  tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
  tok.save_pretrained(path)
  cfg = M.ModelConfig(family="qwen2", vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, intermediate_size=32, max_position_embeddings=1024,
                      qkv_bias=True, tie_word_embeddings=True)
  body = M.from_config(cfg)
  M.save_pretrained(body, M.init_params(body, jax.random.PRNGKey(0)), path)
  tensors = load_file(os.path.join(path, "model.safetensors"))
  rng = np.random.default_rng(0)
  tensors.update({"score.0.weight": rng.normal(size=(32, 32)).astype(np.float32),
                  "score.0.bias": np.zeros(32, np.float32),
                  "score.2.weight": rng.normal(size=(2, 32)).astype(np.float32),
                  "score.2.bias": np.zeros(2, np.float32)})
  save_file(tensors, os.path.join(path, "model.safetensors"))
  return path


def test_prpo_paper_preset_runs_from_the_cli_with_a_neural_prm_and_math_jsonl(tiny_dir, tmp_path):
  math_dir = tmp_path / "MATH" / "train" / "algebra"
  math_dir.mkdir(parents=True)
  for i in range(4):
    (math_dir / f"{i}.json").write_text(json.dumps({
        "problem": f"Compute ${i} + {i}$.", "level": "Level 1", "type": "Algebra",
        "solution": f"We add: ${i} + {i} = \\boxed{{{2 * i}}}$."}))
  (math_dir / "9.json").write_text(json.dumps({"problem": "No boxed answer", "solution": "none"}))
  jsonl = tmp_path / "math_train.jsonl"
  assert cli.main(["prepare-math", str(tmp_path / "MATH"), str(jsonl)]) == 0
  rows = data_lib.read_jsonl(str(jsonl))
  assert len(rows) == 4 and rows[3].answer == "6"
  assert data_lib.last_boxed("so \\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"
  prm_dir = _tiny_prm_dir(str(tmp_path / "prm"), tiny_dir)
  code = cli.main(["train", "--preset", "prpo_paper", "--set", f"model.checkpoint={tiny_dir}",
                   "--set", f"objective.prm_path={prm_dir}", "--set", f"data.path={jsonl}",
                   "--set", f"output_dir={tmp_path / 'run'}", "--set", "steps=1", "--set", "data.prompts_per_step=4",
                   "--set", "sampling.group_size=2", "--set", "sampling.max_new_tokens=24",
                   "--set", "objective.prpo_k=2", "--set", "objective.prpo_min_gap=3", "--set", "progress=false",
                   "--set", "objective.micro_batches=1"])
  assert code == 0
  row = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
  assert 0 <= row["prm_score_mean"] <= 1 and np.isfinite(row["loss"])
