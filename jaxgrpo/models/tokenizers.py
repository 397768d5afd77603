"""HF tokenizers with chat templates (the toy task's tokenizer lives with its task, ``tasks.sources``).

A tokenizer, for the rest of jaxgrpo, is anything with ``encode_prompt(text) -> ids``, ``decode(ids) -> text``,
``eos_ids``, ``pad_id`` and ``allowed_ids`` (the tokens the policy may emit, in ``models.policy``'s one form).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

# apply_chat_template's own arguments and the variables it sets itself: not template kwargs a config may pass
RESERVED_TEMPLATE_KWARGS = frozenset({"conversation", "messages", "tools", "documents", "chat_template",
                                      "add_generation_prompt", "continue_final_message", "tokenize", "padding",
                                      "truncation", "max_length", "return_tensors", "return_dict",
                                      "return_assistant_tokens_mask", "tokenizer_kwargs", "bos_token", "eos_token"})


class ChatTemplateError(ValueError):
  """The chat template cannot render a prompt with the given system prompt or template kwargs."""


class HFTokenizer:
  """An HF tokenizer (AutoTokenizer) applying the chat template to user prompts."""

  TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
  allowed_ids = None  # every token may be sampled

  def __init__(self, path: str, system_prompt: str | None = None,
               chat_template_kwargs: Mapping[str, Any] | None = None):
    from transformers import AutoTokenizer

    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in self.TOKENIZER_FILES):
      raise FileNotFoundError(f"{path}: no tokenizer files (expected one of {list(self.TOKENIZER_FILES)}); "
                              "copy the tokenizer of the base model into the checkpoint directory")
    self.tok = AutoTokenizer.from_pretrained(path)
    self.path = path
    self.system_prompt = system_prompt or None
    self.chat_template_kwargs = dict(chat_template_kwargs or {})
    self._check_template()
    eos = set()
    if self.tok.eos_token_id is not None:
      eos.add(int(self.tok.eos_token_id))
    im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != self.tok.unk_token_id:
      eos.add(im_end)
    self.eos_ids = tuple(sorted(eos))
    self.pad_id = int(self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_ids[0])

  def _check_template(self) -> None:
    """Refuse, by name, a template kwarg the chat template never reads (a typo would silently change nothing) and
    a tokenizer without a chat template."""
    template = self.tok.chat_template
    if isinstance(template, dict):  # named templates: the default one renders prompts
      template = template.get("default")
    if not template:
      raise ChatTemplateError(f"the tokenizer of {self.path} has no chat template (prompts are chat user turns)")
    if not self.chat_template_kwargs:
      return
    import jinja2
    from jinja2 import meta

    reads = meta.find_undeclared_variables(jinja2.Environment().parse(template))
    unread = sorted(set(self.chat_template_kwargs) - reads)
    if unread:
      raise ChatTemplateError(f"config key 'data.chat_template_kwargs' has {unread}, which the chat template of "
                              f"{self.path} never reads (it reads: {sorted(reads - {'messages'})})")

  def render_prompt(self, prompt: str) -> str:
    """The exact text the model sees for a user prompt: the chat template with the system turn (when set), the
    template kwargs and the generation prompt."""
    messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    try:
      return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                          **self.chat_template_kwargs)
    except Exception as e:  # jinja's raise_exception (e.g. a template refusing a system turn) or a bad kwarg value
      raise ChatTemplateError(f"the chat template of {self.path} refused the prompt (data.system_prompt = "
                              f"{self.system_prompt!r}, data.chat_template_kwargs = {self.chat_template_kwargs}): "
                              f"{type(e).__name__}: {e}") from None

  def encode_prompt(self, prompt: str) -> list[int]:
    return list(self.tok(self.render_prompt(prompt), add_special_tokens=False)["input_ids"])

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
