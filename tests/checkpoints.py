"""Reading a run's checkpoints in tests, with orbax directly (``Checkpointer`` read-only)."""

import os

from jaxgrpo.train.checkpointing import Checkpointer


def final_state(out, step=None):
  """(step, state) of the newest (or the given) checkpoint of the run in ``out``: params, opt_state, step, ..."""
  ck = Checkpointer(os.path.join(out, "checkpoints"), read_only=True)
  try:
    step = ck.latest_step() if step is None else step
    return step, ck.read(step)
  finally:
    ck.close()
