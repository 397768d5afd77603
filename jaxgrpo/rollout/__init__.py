"""Sampling on the mesh: the jitted group sampler (``sampler``: prefill once per prompt, a donated KV cache, a
``lax.while_loop`` decode) and the rollout engine (``engine``: tokenize → sample → decode → score → grade, the
``Rollout`` record; every host↔device transfer of rollout data happens there)."""

from jaxgrpo.rollout import engine, sampler
from jaxgrpo.rollout.engine import Rollout, RolloutEngine
from jaxgrpo.rollout.sampler import FINISH_EOS, FINISH_LENGTH, SampleOutput, SamplingParams, sample

__all__ = ["FINISH_EOS", "FINISH_LENGTH", "Rollout", "RolloutEngine", "SampleOutput", "SamplingParams", "engine",
           "sample", "sampler"]
