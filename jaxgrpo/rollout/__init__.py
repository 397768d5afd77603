"""Sampling on the mesh: the jitted group sampler (``sampler``: prefill once per prompt, a donated KV cache, a
``lax.while_loop`` decode: the static engine and the oracle), continuous batching (``continuous``: decode slots fed
from a queue, one KV copy per prompt, reads that follow the live length) and the rollout engine (``engine``:
tokenize → sample → decode → score → grade, the ``Rollout`` record; every host↔device transfer of rollout data
happens there)."""

from jaxgrpo.rollout import continuous, engine, sampler
from jaxgrpo.rollout.engine import Rollout, RolloutEngine
from jaxgrpo.rollout.sampler import FINISH_EOS, FINISH_LENGTH, SampleOutput, SamplingParams, sample, sampling_form

__all__ = ["FINISH_EOS", "FINISH_LENGTH", "Rollout", "RolloutEngine", "SampleOutput", "SamplingParams", "continuous",
           "engine", "sample", "sampler", "sampling_form"]
