"""Hand-written XLA:CPU kernels, built on first use with the machine's C++ compiler and called through ``jax.ffi``.

``decode_attention`` is the continuous engine's decode attention over the slots' completion KV (the layers
layout, bf16 cache): see ``decode_attention.cc`` for what it computes and why.  The shared object is compiled once
per source, compiler and CPU (``-O3 -march=native``) into ``$JAXGRPO_KERNEL_CACHE`` (default
``~/.cache/jaxgrpo/kernels``) and reused by later processes.  Where no compiler is found or the build fails,
``available()`` is False, says why once (a warning), and callers keep XLA's ops — nothing else changes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE = os.path.join(_HERE, "decode_attention.cc")
_TARGET = "jaxgrpo_decode_attention"
MAX_GROUP = 8  # query heads per KV head the kernel is instantiated for


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return ""


def _cache_dir() -> str:
  return os.environ.get("JAXGRPO_KERNEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxgrpo",
                                                             "kernels"))


def _build() -> str:
  """The shared object's path, compiled now unless an identical build is cached."""
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
  if not cxx:
    raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
           f"-I{jax.ffi.include_dir()}"]
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
  with open(_SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_flags().encode(),
                                   jax.__version__.encode()])).hexdigest()[:20]
  out = os.path.join(_cache_dir(), f"decode_attention_{key}.so")
  if os.path.exists(out):
    return out
  os.makedirs(_cache_dir(), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
  os.close(fd)
  try:
    proc = subprocess.run([cxx, *flags, _SOURCE, "-o", tmp], capture_output=True, text=True)
    if proc.returncode:
      errors = [line for line in proc.stderr.splitlines() if "error" in line]
      raise RuntimeError(f"{cxx} failed:\n" + "\n".join(errors[:10] or proc.stderr.splitlines()[-10:]))
    os.replace(tmp, out)  # atomic: concurrent builders each write their own file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernels; None when they work, else why not."""
  if jax.default_backend() != "cpu":
    return f"the default backend is {jax.default_backend()}, not cpu"
  try:
    lib = ctypes.cdll.LoadLibrary(_build())
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.JaxgrpoDecodeAttention), platform="cpu")
  except Exception as e:  # noqa: BLE001 - any failure means: keep XLA's ops
    return f"{type(e).__name__}: {e}"
  return None


def available() -> bool:
  """Whether the CPU kernels built and registered here (warns once with the reason when not)."""
  why = _load()
  if why is not None:
    _warn_once(why)
  return why is None


@functools.cache
def _warn_once(why: str):
  warnings.warn(f"jaxgrpo's CPU decode-attention kernel is unavailable ({why}); using XLA's ops", stacklevel=3)


def pair_keys(k: jax.Array) -> jax.Array:
  """Keys [..., R, Dh] → the kernel's layout [..., Dh/2, R, 2] (dims in pairs, positions in between)."""
  *lead, r, dh = k.shape
  return k.reshape(*lead, r, dh // 2, 2).swapaxes(-3, -2)


def unpair_keys(kp: jax.Array) -> jax.Array:
  """``pair_keys``'s inverse: [..., Dh/2, R, 2] → [..., R, Dh]."""
  *lead, half, r, _ = kp.shape
  return kp.swapaxes(-3, -2).reshape(*lead, r, 2 * half)


def pair_values(v: jax.Array) -> jax.Array:
  """Values [..., R, Dh] (R even) → the kernel's layout [..., R/2, Dh, 2] (positions in pairs)."""
  *lead, r, dh = v.shape
  return v.reshape(*lead, r // 2, 2, dh).swapaxes(-2, -1)


def unpair_values(vp: jax.Array) -> jax.Array:
  """``pair_values``'s inverse: [..., R/2, Dh, 2] → [..., R, Dh]."""
  *lead, half, dh, _ = vp.shape
  return vp.swapaxes(-2, -1).reshape(*lead, 2 * half, dh)


def decode_attention(q: jax.Array, kp: jax.Array, vp: jax.Array, before: jax.Array, rk: jax.Array, rv: jax.Array,
                     ring_from: jax.Array, step: jax.Array, scale: float):
  """Softmax statistics of S slots' decode attention over their completion KV (``decode_attention.cc``).

  q [S, KV, G, Dh] (used as bf16); the cached keys ``kp`` [S, KV, Dh/2, R, 2] and values ``vp`` [S, KV, R/2, Dh,
  2] (bf16, ``pair_keys``/``pair_values`` layouts), of which slot s reads its first ``before[s]`` positions; the
  call buffer's keys ``rk`` [S, KV, Dh, J] (transposed) and values ``rv`` [S, KV, J, Dh] (float32), of which it
  reads columns ``ring_from[s]`` .. ``step``.  Returns float32 (m [S, KV, G] the largest scaled score, l [S, KV, G]
  Σ exp(score − m), o [S, KV, G, Dh] Σ exp(score − m)·value); m = −inf, l = 0, o = 0 where a slot reads nothing.
  Raises where the kernel is unavailable (``available()`` says so without raising)."""
  why = _load()
  if why is not None:
    raise RuntimeError(f"jaxgrpo's CPU decode-attention kernel is unavailable: {why}")
  s, kv, g, dh = q.shape
  if not 1 <= g <= MAX_GROUP or dh % 2:
    raise ValueError(f"decode_attention: 1 to {MAX_GROUP} query heads per KV head and an even head dim; got "
                     f"q {q.shape}")
  if kp.dtype != jnp.bfloat16 or vp.dtype != jnp.bfloat16:
    raise ValueError(f"decode_attention: kp and vp must be bfloat16; got {kp.dtype}, {vp.dtype}")
  r = kp.shape[3] if kp.ndim == 5 else -1
  if kp.shape != (s, kv, dh // 2, r, 2) or vp.shape != (s, kv, r // 2, dh, 2) or r % 2:
    raise ValueError(f"decode_attention: kp [S, KV, Dh/2, R, 2] and vp [S, KV, R/2, Dh, 2] (R even) for q "
                     f"{q.shape}; got {kp.shape}, {vp.shape}")
  if rk.shape[:3] != (s, kv, dh) or rv.shape != (s, kv, rk.shape[3], dh):
    raise ValueError(f"decode_attention: rk [S, KV, Dh, J] and rv [S, KV, J, Dh] for q {q.shape}; got "
                     f"{rk.shape}, {rv.shape}")
  f32 = jnp.float32
  out = (jax.ShapeDtypeStruct((s, kv, g), f32), jax.ShapeDtypeStruct((s, kv, g), f32),
         jax.ShapeDtypeStruct((s, kv, g, dh), f32))
  return jax.ffi.ffi_call(_TARGET, out)(
      q.astype(jnp.bfloat16), kp, vp, before.astype(jnp.int32), rk.astype(f32), rv.astype(f32),
      ring_from.astype(jnp.int32), jnp.asarray(step, jnp.int32), scale=np.float32(scale))
