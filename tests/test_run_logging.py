"""A run as users look at it: an HF dataset through a chat template with template kwargs (the first prompt shown
exactly), per-step rollout dumps checked against brute-force recomputation from their own rows, W&B offline beside
the JSONL record, a resume that drops the dumps it recomputes, and ``jaxgrpo.analysis`` reading it all back."""

import glob
import logging
import os

import datasets
import numpy as np
import pytest
from hf_tiny import tiny_llama_with_tokenizer
from meshes import trainer
from trie_oracle import Trie, completions_from_arrays

from jaxgrpo import analysis
from jaxgrpo.models.tokenizers import ChatTemplateError, HFTokenizer
from jaxgrpo.train import presets, rollout_log
from jaxgrpo.train.config import DataSpec
from jaxgrpo.train.config import replace as config_replace
from jaxgrpo.train.metrics import MetricsWriter

pytestmark = pytest.mark.xdist_group(name="run_logging")

# A Qwen3-style template: `enable_thinking: false` pre-fills an empty think block; a system turn is refused.
TEMPLATE = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
            "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
            "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
            "<think>\n\n</think>\n\n{% endif %}{% endif %}")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  path = tiny_llama_with_tokenizer(str(tmp_path_factory.mktemp("tiny_llama")))
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(path)
  tok.chat_template = TEMPLATE
  tok.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def gsm8k_like(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data") / "train.parquet")
  datasets.Dataset.from_dict({"question": [f"What is {i} + 3?" for i in range(10)],
                              "answer": [f"{i} + 3 = {i + 3}\n#### {i + 3}" for i in range(10)]}).to_parquet(path)
  return path


def test_chat_template_kwargs_and_system_prompts(tiny_dir):
  plain = HFTokenizer(tiny_dir).render_prompt("hi")
  off = HFTokenizer(tiny_dir, chat_template_kwargs={"enable_thinking": False}).render_prompt("hi")
  assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  assert off == plain + "<think>\n\n</think>\n\n"
  with pytest.raises(ChatTemplateError, match=r"'data.chat_template_kwargs' has \['enable_thinkin'\], which the "
                                              r"chat template of .* never reads"):
    HFTokenizer(tiny_dir, chat_template_kwargs={"enable_thinkin": False})
  with pytest.raises(ChatTemplateError, match=r"refused the prompt \(data.system_prompt = 'Be brief.'.*no system"):
    HFTokenizer(tiny_dir, system_prompt="Be brief.").render_prompt("hi")
  assert HFTokenizer(tiny_dir, system_prompt="").render_prompt("hi") == plain  # "" = no system turn
  with pytest.raises(ValueError, match="'data.chat_template_kwargs' must be no key of apply_chat_template's own"):
    DataSpec(chat_template_kwargs={"add_generation_prompt": False})


def run_cfg(tiny_dir, data_path, out, **sections):
  cfg = config_replace(
      presets.preset("smollm2_arithmetic"), output_dir=str(out), steps=2, progress=False, checkpoint_every=1,
      log_rollouts_every=1, model={"checkpoint": tiny_dir}, sampling={"group_size": 4, "max_new_tokens": 8},
      data={"source": "hf", "path": data_path, "prompt_field": "question", "answer_field": "answer",
            "prompts_per_step": 2, "system_prompt": None, "chat_template_kwargs": {"enable_thinking": False}},
      objective={"name": "prpo", "prm": "arithmetic", "prpo_k": 2, "prpo_min_gap": 2, "lambda_weights": True},
      rewards={"names": ("plugins:text_length", "math"), "weights": (1.0, 1.0)},
      logging={"wandb_project": "jaxgrpo-test", "wandb_mode": "offline"}, eval={"num_examples": 0})
  return config_replace(cfg, **sections)


def test_dumps_wandb_resume_and_analysis(tiny_dir, gsm8k_like, tmp_path, caplog):
  out = tmp_path / "run"
  with caplog.at_level(logging.INFO, logger="jaxgrpo"):
    t = trainer(run_cfg(tiny_dir, gsm8k_like, out, steps=1))
    history = t.run()
  first = t.first_prompt
  assert first.startswith("<|im_start|>user\nWhat is ") and first.endswith("<think>\n\n</think>\n\n")
  assert f"first prompt, exactly as the model sees it:\n{first}" in caplog.text
  # resume to step 2; a stale dump of a step the checkpoint does not cover is dropped, then step 2 is dumped anew
  stale = rollout_log.write_rollouts(str(out), 2, [{"step": 2, "stale": True}], "parquet")
  history += trainer(run_cfg(tiny_dir, gsm8k_like, out)).run()
  assert sorted(rollout_log.dumped_steps(str(out))) == [1, 2]
  rows = rollout_log.read_rollouts(stale)
  assert "stale" not in rows[0] and len(rows) == 8

  run = analysis.load_run(str(out))
  assert list(run.metrics.index) == [1, 2] and run.steps == [1, 2] and len(run.rollouts) == 16
  for h in history:  # the dumped rewards are the step's metrics
    dumped = run.rollouts[run.rollouts["step"] == h["step"]]
    assert dumped["reward"].mean() == pytest.approx(h["reward_mean"], abs=1e-5)
  for step in (1, 2):
    for group in (0, 1):
      g = run.group(step, group)
      ids = [list(x) for x in g["completion_ids"]]
      t_max = max(map(len, ids))
      tok = np.zeros((len(ids), t_max), np.int64)
      msk = np.zeros_like(tok)
      for i, x in enumerate(ids):
        tok[i, :len(x)], msk[i, :len(x)] = x, 1
      counts = Trie(completions_from_arrays(tok, msk)).counts(t_max)
      for i, (_, r) in enumerate(g.iterrows()):
        n = r["length"]
        assert list(r["lambda"]) == list(counts[i, :n])  # |λ| from the kernel = a brute-force trie count
        np.testing.assert_allclose(r["weights"], 1.0 / np.asarray(r["lambda"]), rtol=1e-6)  # PRPO + λ weights
        assert r["reward"] == pytest.approx(r["reward/plugins:text_length"] + r["reward/math"], abs=1e-6)
        assert r["finish_reason"] in ("eos", "length") and (r["finish_reason"] == "length") == (n == 8)
        assert len(r["segments"]) == n and len(r["segment_scores"]) == max(r["segments"], default=-1) + 1
        assert r["prompt"].startswith("What is")
      tree = analysis.group_tree(g)  # the analysis trie agrees with the dumped |λ|
      assert tree.count == 4 and sum(c.count for c in tree.children) == 4
  # W&B, offline: one run for the whole directory (its id reused by the resume)
  run_id = open(out / "wandb_run_id").read().strip()
  offline = glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}"))
  assert len(offline) == 2 and all(glob.glob(os.path.join(d, f"run-{run_id}.wandb")) for d in offline)
  import matplotlib

  matplotlib.use("Agg")
  analysis.plot_curves(run, keys=("reward_mean", "accuracy"))
  ax = analysis.plot_group_tree(run, 2, 0)
  assert "4 completions" in ax.get_title()


def test_wandb_sink_logs_each_row_as_the_jsonl_does(tmp_path):
  w = MetricsWriter(str(tmp_path), tensorboard=False, wandb_project="p", wandb_mode="offline", config={"a": 1})
  for s in (1, 2, 3):
    w.write(s, {"loss": 1.0 / s, "eval/acc": 0.1 * s, "nan_metric": float("nan")})
  summary = dict(w.wandb_run.summary)
  assert summary["loss"] == pytest.approx(1 / 3) and summary["eval/acc"] == pytest.approx(0.3)
  assert summary["_step"] == 3 and "nan_metric" not in summary and dict(w.wandb_run.config) == {"a": 1}
  w.close()
  with pytest.raises(ValueError, match="logging.wandb_mode must be one of"):
    MetricsWriter(str(tmp_path / "x"), tensorboard=False, wandb_project="p", wandb_mode="disabled")
