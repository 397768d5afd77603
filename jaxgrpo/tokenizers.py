"""Tokenizers the trainer uses: a tiny one for the toy task, and HF tokenizers with chat templates."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ToyTokenizer:
  """Vocabulary {0: BOS/PAD, 1: L, 2: R}; only L and R may be sampled."""

  vocab_size: int = 3
  pad_id: int = 0
  eos_ids: tuple[int, ...] = ()

  def encode_prompt(self, prompt: str) -> list[int]:
    return [0]

  def decode(self, ids: Sequence[int]) -> str:
    return "".join({1: "L", 2: "R"}.get(int(i), "?") for i in ids)

  def allowed_tokens(self) -> np.ndarray:
    return np.array([False, True, True])


class HFTokenizer:
  """An HF tokenizer (AutoTokenizer) applying the chat template to user prompts."""

  TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

  def __init__(self, path: str, system_prompt: str | None = None):
    from transformers import AutoTokenizer

    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in self.TOKENIZER_FILES):
      raise FileNotFoundError(f"{path}: no tokenizer files (expected one of {list(self.TOKENIZER_FILES)}); "
                              "copy the tokenizer of the base model into the checkpoint directory")
    self.tok = AutoTokenizer.from_pretrained(path)
    self.path = path
    self.system_prompt = system_prompt
    eos = set()
    if self.tok.eos_token_id is not None:
      eos.add(int(self.tok.eos_token_id))
    im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != self.tok.unk_token_id:
      eos.add(im_end)
    self.eos_ids = tuple(sorted(eos))
    self.pad_id = int(self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_ids[0])

  def encode_prompt(self, prompt: str) -> list[int]:
    messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(self.tok(text, add_special_tokens=False)["input_ids"])

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def token_id(self, token: str) -> int:
    ids = self.tok.convert_tokens_to_ids(token)
    if not isinstance(ids, int) or ids == self.tok.unk_token_id:
      raise ValueError(f"token {token!r} is not in the tokenizer of {self.path}")
    return ids

  def allowed_tokens(self):
    return None

  def save(self, path: str) -> None:
    """Write the tokenizer files (for exported checkpoints)."""
    self.tok.save_pretrained(path)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Left-pad token lists into ids [B, P] and mask [B, P]; P is rounded up to ``multiple``
  (fewer distinct shapes: fewer compilations)."""
  p = max(len(s) for s in seqs)
  p = -(-p // multiple) * multiple
  ids = np.full((len(seqs), p), pad_id, np.int32)
  mask = np.zeros((len(seqs), p), np.int32)
  for i, s in enumerate(seqs):
    ids[i, p - len(s):] = s
    mask[i, p - len(s):] = 1
  return ids, mask
