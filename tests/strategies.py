"""Hypothesis strategies for groups of completions that share prefixes."""

from hypothesis import strategies as st


@st.composite
def overlapping_group(draw, g=None, max_g=9, max_len=12, max_vocab=4):
  """A group whose completions branch off each other: duplicates, strict
  prefixes, empty completions and ragged lengths all occur."""
  if g is None:
    g = draw(st.integers(1, max_g))
  vocab = draw(st.integers(1, max_vocab))
  tok = st.integers(1, vocab)
  group = []
  for _ in range(g):
    if group and draw(st.booleans()):
      base = draw(st.sampled_from(group))
      cut = draw(st.integers(0, len(base)))
      tail = draw(st.lists(tok, max_size=max_len - cut))
      group.append(tuple(base[:cut]) + tuple(tail))
    else:
      group.append(tuple(draw(st.lists(tok, max_size=max_len))))
  return group


@st.composite
def batch_of_groups(draw, max_b=3, max_g=9, **kwargs):
  """[B] groups of the same size G."""
  b = draw(st.integers(1, max_b))
  g = draw(st.integers(1, max_g))
  return [draw(overlapping_group(g=g, **kwargs)) for _ in range(b)]
