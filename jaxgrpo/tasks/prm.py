"""Process reward models for PRPO: any function (example, segment texts) → scores in [0, 1].

* ``ArithmeticPRM``: rule-based, for the synthetic arithmetic task — checks every
  ``x op y = z`` in a segment.
* ``NeuralPRM``: a Qwen2 body with a 2-layer head (Linear(h, h) → ReLU →
  Linear(h, 2)), the Qwen2.5-Math-PRM architecture: segments are joined with a
  separator token and P(correct) is read at each separator.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxgrpo.models as M
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.models.transformer import Transformer, causal_mask, positions_from_mask
from jaxgrpo.tasks.rewards import load_object
from jaxgrpo.tasks.sources import Example

PRM = Callable[[Example, Sequence[str]], Sequence[float]]

_EQ = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/×x÷])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "×": lambda a, b: a * b,
        "x": lambda a, b: a * b, "/": lambda a, b: a / b if b else float("nan"),
        "÷": lambda a, b: a / b if b else float("nan")}


class ArithmeticPRM:
  """Score 1 if every equation in the segment is right, 0 if any is wrong, ``neutral`` if there is none."""

  def __init__(self, neutral: float = 0.5):
    self.neutral = neutral

  def __call__(self, example: Example, segments: Sequence[str]) -> list[float]:
    scores = []
    for text in segments:
      eqs = _EQ.findall(text)
      if not eqs:
        scores.append(self.neutral)
        continue
      ok = all(abs(_OPS[op](float(a), float(b)) - float(c)) < 1e-6 for a, op, b, c in eqs)
      scores.append(1.0 if ok else 0.0)
    return scores


@dataclasses.dataclass(frozen=True)
class NeuralPRM:
  """Qwen2 body + 2-layer head.  ``params = {"body": ..., "head": {"w1", "b1", "w2", "b2"}}``."""

  body: Any  # jaxgrpo.models.Transformer (qwen2 config)
  separator_id: int

  def init_head(self, rng: jax.Array) -> dict[str, jax.Array]:
    h = self.body.config.hidden_size
    k1, k2 = jax.random.split(rng)
    return {"w1": 0.02 * jax.random.normal(k1, (h, h)), "b1": jnp.zeros(h),
            "w2": 0.02 * jax.random.normal(k2, (h, 2)), "b2": jnp.zeros(2)}

  def step_probs(self, params, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """P(step correct) at every position: float32[B, T] (read it at the separators)."""
    hidden = self.body.apply({"params": params["body"]}, input_ids, positions_from_mask(attention_mask),
                             causal_mask(attention_mask), compute_logits=False).hidden
    head = params["head"]
    x = jax.nn.relu(hidden.astype(jnp.float32) @ head["w1"] + head["b1"])
    logits = x @ head["w2"] + head["b2"]
    return jax.nn.softmax(logits, axis=-1)[..., 1]

  def score_ids(self, params, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[list[float]]:
    """Scores at each separator token, per row."""
    probs = np.asarray(self.step_probs(params, jnp.asarray(input_ids), jnp.asarray(attention_mask)))
    return [probs[i][(input_ids[i] == self.separator_id) & (attention_mask[i] == 1)].tolist()
            for i in range(input_ids.shape[0])]


def load_neural_prm(path: str, separator_id: int, dtype: str = "float32") -> tuple[NeuralPRM, dict[str, Any]]:
  """(prm, params) from a Qwen2.5-Math-PRM-style HF directory: a Qwen2 body ("model.*",
  no LM head) and the head ("score.0.*", "score.2.*")."""
  cfg = M.read_config(path, dtype)
  if cfg.family != "qwen2":
    raise ValueError(f"a neural PRM needs a qwen2 body; {path} has model_type {cfg.family!r}")
  tensors = M.read_safetensors(path)
  head = head_from_hf(tensors)
  body_tensors = {k: v for k, v in tensors.items() if not k.startswith("score.")}
  np_dtype = jnp.bfloat16 if dtype == "bfloat16" else np.float32
  body = M.hf_to_params(body_tensors, cfg, dtype=np_dtype, lm_head=False)
  params = {"body": jax.tree.map(jnp.asarray, body), "head": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), head)}
  return NeuralPRM(Transformer(cfg), separator_id), params


def head_from_hf(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The Qwen2.5-Math-PRM head (score.0 / score.2 torch Linear weights) in our layout."""
  need = ["score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"]
  missing = [n for n in need if n not in tensors]
  if missing:
    raise ValueError(f"PRM checkpoint is missing head tensors {missing}")
  return {"w1": tensors["score.0.weight"].T, "b1": tensors["score.0.bias"],
          "w2": tensors["score.2.weight"].T, "b2": tensors["score.2.bias"]}


class NeuralPRMScorer:
  """A neural PRM as a PRM function: the question and the segments (each followed by the separator,
  the last included) go through the PRM's chat template; P(correct) is read at each separator."""

  SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

  def __init__(self, path: str, separator: str = "<extra_0>", dtype: str = "float32"):
    self.tokenizer = HFTokenizer(path)
    self.separator = separator
    self.prm, self.params = load_neural_prm(path, self.tokenizer.token_id(separator), dtype)
    self._probs = jax.jit(self.prm.step_probs)

  def __call__(self, example: Example, segments: Sequence[str]) -> list[float]:
    messages = [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": example.prompt},
                {"role": "assistant", "content": "".join(s + self.separator for s in segments)}]
    text = self.tokenizer.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = np.asarray([self.tokenizer.tok(text, add_special_tokens=False)["input_ids"]], np.int32)
    n = ids.shape[1]
    padded = -(-n // 64) * 64  # fewer shapes to compile
    ids_p = np.full((1, padded), self.tokenizer.pad_id, np.int32)
    ids_p[0, :n] = ids[0]
    mask = np.zeros((1, padded), np.int32)
    mask[0, :n] = 1
    scores = self.prm.score_ids(self.params, ids_p, mask)[0]
    if len(scores) != len(segments):
      raise ValueError(f"the PRM read {len(scores)} separator scores for {len(segments)} segments (a segment "
                       f"contains the separator {self.separator!r}?)")
    return scores


def make_prm(spec) -> PRM:
  """The PRM an ``ObjectiveSpec`` names: ``arithmetic``, ``neural`` (from ``prm_path``) or ``module:function``."""
  if spec.prm == "arithmetic":
    return ArithmeticPRM()
  if spec.prm == "neural":
    if not spec.prm_path:
      raise ValueError("objective.prm = neural needs objective.prm_path (a Qwen2.5-Math-PRM-style directory)")
    return NeuralPRMScorer(spec.prm_path, spec.prm_separator)
  return load_object(spec.prm, "objective.prm")
