"""Preemption signals (SIGTERM from SLURM/Kubernetes/`docker stop`, SIGINT) turned into a clean stop.

Inside ``SignalGuard`` a signal never interrupts work that changes the run's state (the update that donates
the parameters, the step counter, the metrics row, a checkpoint write): it is recorded and ``Preempted`` is
raised at the loop's next ``check()``. Only inside ``interruptible()`` blocks (sampling, scoring, evaluation:
they read the state and write nothing) does it raise at once. So the run always saves a completed step whose
metrics are written. Every later signal is logged and ignored: a second ``docker stop`` or Ctrl-C cannot
interrupt the exit checkpoint. On leaving, the guard restores the handlers it found, unless it was built with
``ignore_after_stop`` (the CLI: the process exits next, and a second SIGTERM arriving after the save but
before the exit must not turn a clean ``128 + signum`` exit into death by the default handler).
"""

from __future__ import annotations

import contextlib
import logging
import signal

log = logging.getLogger("jaxgrpo")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """SIGTERM/SIGINT arrived: the run saves its last completed step and exits."""

  def __init__(self, signum: int):
    super().__init__(f"received {signal.Signals(signum).name}")
    self.signum = signum


class SignalGuard:
  """Installs the handlers while entered (a context manager); outside that, its methods do nothing."""

  def __init__(self, ignore_after_stop: bool = False):
    self.signum: int | None = None  # the first signal received
    self.ignore_after_stop = ignore_after_stop  # after a stop, keep ignoring signals once the guard is left
    self._interruptible = False
    self._raised = False
    self._old = {}

  def __enter__(self) -> SignalGuard:
    self._old = {s: signal.signal(s, self._handler) for s in SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    if self.signum is not None and self.ignore_after_stop:
      return  # this guard's handler stays: after a stop it logs and ignores every signal
    for s, h in self._old.items():
      signal.signal(s, h)

  def stopping(self) -> None:
    """From now on every signal is ignored (the run is already on its way out)."""
    self._raised = True

  @contextlib.contextmanager
  def interruptible(self):
    """A block that only reads the state: a signal inside it raises ``Preempted`` at once."""
    self.check()
    self._interruptible = True
    try:
      yield
    finally:
      self._interruptible = False

  def check(self) -> None:
    """Raise ``Preempted`` if a signal arrived since the last check (call at the loop's safe points)."""
    if self.signum is not None and not self._raised:
      self._raised = True
      raise Preempted(self.signum)

  def _handler(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.signum is not None or self._raised:
      log.warning("%s ignored: the run is already stopping and saving its last completed step", name)
      return
    self.signum = signum
    if self._interruptible:
      self._raised = True
      raise Preempted(signum)
    log.warning("%s: stopping once the current update or checkpoint write is done", name)
