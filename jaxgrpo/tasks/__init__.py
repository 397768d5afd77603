"""Tasks: what is asked and how it is graded, on the host.

``sources`` (indexable prompt streams with their correctness check: the toy tree and its tokenizer, synthetic
arithmetic, JSONL, TFDS), ``answers`` (a completion's final answer and whether it matches), ``rewards`` (reward
functions and scoring with checks), ``prm`` (process reward models for PRPO — not GRPO's implicit PRM, which is
``jaxgrpo.core.implicit_prm``).
"""

from jaxgrpo.tasks import answers, prm, rewards, sources
from jaxgrpo.tasks.sources import Example, Source, make_eval_source, make_source

__all__ = ["Example", "Source", "answers", "make_eval_source", "make_source", "prm", "rewards", "sources"]
