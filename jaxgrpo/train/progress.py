"""A progress display: a tqdm bar on a terminal, plain lines (no control codes) in logs."""

from __future__ import annotations

import sys
import time


class Progress:
  def __init__(self, total: int, initial: int = 0, desc: str = "", enabled: bool = True, stream=None,
               line_every_s: float = 30.0):
    self.stream = stream or sys.stderr
    self.total, self.n, self.desc = total, initial, desc
    self.enabled = enabled
    self.line_every_s = line_every_s
    self._last_line = 0.0
    self.bar = None
    if enabled and getattr(self.stream, "isatty", lambda: False)():
      from tqdm.auto import tqdm

      self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)

  def update(self, n: int = 1, **postfix) -> None:
    self.n += n
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.update(n)
      if postfix:
        self.bar.set_postfix(refresh=False, **postfix)
      return
    now = time.monotonic()
    if now - self._last_line >= self.line_every_s or self.n >= self.total:
      self._last_line = now
      extra = " ".join(f"{k}={v}" for k, v in postfix.items())
      print(f"{self.desc} {self.n}/{self.total} {extra}".rstrip(), file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
