"""HF tokenizers with chat templates (the toy task's tokenizer lives with its task, ``tasks.sources``).

A tokenizer, for the rest of jaxgrpo, is anything with ``encode_prompt(text) -> ids``, ``decode(ids) -> text``,
``eos_ids``, ``pad_id`` and ``allowed_ids`` (the tokens the policy may emit, in ``models.policy``'s one form).
"""

from __future__ import annotations

import os
from typing import Sequence


class HFTokenizer:
  """An HF tokenizer (AutoTokenizer) applying the chat template to user prompts."""

  TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
  allowed_ids = None  # every token may be sampled

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

  def save(self, path: str) -> None:
    """Write the tokenizer files (for exported checkpoints)."""
    self.tok.save_pretrained(path)
