"""A completion's final answer and whether it matches a reference: what the math reward and the math tasks grade.

``final_answer`` takes the completion's last ``\\boxed{}`` (an empty box is no answer), else its last number.
``answer_matches`` compares it with the reference: numerically when the reference is a number (an expression that
merely evaluates to it is wrong), else with math-verify.
"""

from __future__ import annotations

import fractions
import functools
import re


@functools.lru_cache(maxsize=1)
def _math_verify():
  from math_verify import parse, verify  # lazy: optional dependency

  return parse, verify


_BOX = "\\boxed{"
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?")
_LATEX_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_LAST_NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?(/\d+)?|[-+]?\.\d+")


def boxed_contents(text: str) -> list[str]:
  """The contents of every ``\\boxed{...}`` in ``text``, in order, with nested braces (``\\boxed{\\frac{1}{2}}``)."""
  out, start = [], 0
  while (i := text.find(_BOX, start)) >= 0:
    depth, j = 1, i + len(_BOX)
    while j < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[j], 0)
      j += 1
    if depth:  # unclosed: no answer
      break
    out.append(text[i + len(_BOX):j - 1])
    start = j
  return out


def final_answer(completion: str) -> str | None:
  """The completion's final answer: its last ``\\boxed{}``'s content if it has a box (an empty box is no answer),
  else its last number; None if it has neither."""
  if _BOX in completion:
    return last_boxed(completion) or None
  numbers = [m.group(0) for m in _LAST_NUMBER.finditer(completion)]
  return numbers[-1] if numbers else None


def _as_number(text: str) -> fractions.Fraction | None:
  t = text.strip().strip("$").strip().rstrip(".").replace(",", "").replace("\\!", "").replace("−", "-")
  t = _LATEX_FRAC.sub(r"\1\2/\3", t.replace(" ", ""))
  if not _NUMBER.fullmatch(t):
    return None
  try:
    return fractions.Fraction(t)
  except (ValueError, ZeroDivisionError):
    return None


def answer_matches(answer: str, completion: str) -> bool:
  """True if the completion's final answer (``final_answer``) equals the reference ``answer``.

  A numeric reference needs a number (``\\boxed{12}``, ``12``, ``12.0``, ``1,234``): an expression that evaluates
  to it (``\\boxed{5 + 7}``, or restating the question before an empty box) is wrong, else a policy learns to
  copy the question. Any other reference is compared with math-verify (``\\frac{1}{2}`` = ``0.5``)."""
  final = final_answer(completion)
  if final is None:
    return False
  gold_number = _as_number(answer)
  if gold_number is not None:
    return _as_number(final) == gold_number
  parse, verify = _math_verify()
  gold = parse("$" + answer + "$") if "\\boxed" not in answer else parse(answer)
  pred = parse("$" + final + "$")
  if not pred:
    return False
  try:
    return bool(verify(gold, pred))
  except Exception:  # math-verify can raise on exotic expressions: count as wrong
    return False


def last_boxed(text: str) -> str | None:
  """The content of the last \\boxed{...} in ``text`` (nested braces balanced), stripped, or None."""
  boxes = boxed_contents(text)
  return boxes[-1].strip() if boxes else None


