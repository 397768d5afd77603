"""Writes data/word_problems.jsonl: a few hundred two-step arithmetic word problems with integer answers.

Each line: {"prompt": ..., "answer": ..., "steps": ["a + b = c", ...], "id": i}.  Deterministic (seeded), so
the shipped file can be regenerated exactly:

    python experiments/make_word_problems.py [--n 300] [--out data/word_problems.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import random

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards", "stamps", "buttons"]
INSTRUCTION = "Solve it step by step and put the final answer in \\boxed{}."


def problem(rng: random.Random) -> tuple[str, int, list[str]]:
  name, item = rng.choice(NAMES), rng.choice(ITEMS)
  a, b = rng.randint(2, 30), rng.randint(2, 30)
  kind = rng.randrange(4)
  if kind == 0:
    c = rng.randint(1, a + b - 1)
    q = f"{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} does {name} have now?"
    return q, a + b - c, [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"]
  if kind == 1:
    c = rng.randint(2, 6)
    q = f"{name} buys {c} boxes with {a} {item} each and finds {b} more. How many {item} are there in total?"
    return q, c * a + b, [f"{c} * {a} = {c * a}", f"{c * a} + {b} = {c * a + b}"]
  if kind == 2:
    c = rng.randint(2, 5)
    q = (f"{name} shares {a * c} {item} equally among {c} friends, then each friend gets {b} more. "
         f"How many {item} does each friend have?")
    return q, a + b, [f"{a * c} / {c} = {a}", f"{a} + {b} = {a + b}"]
  c = rng.randint(2, 4)
  q = f"{name} has {a} {item} and {b} more than that in a second bag, then doubles the second bag {c - 1} time(s)."
  second = (a + b) * 2 ** (c - 1)
  q += f" How many {item} are in the second bag?"
  return q, second, [f"{a} + {b} = {a + b}", f"{a + b} * {2 ** (c - 1)} = {second}"]


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--n", type=int, default=300)
  p.add_argument("--seed", type=int, default=2026)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "word_problems.jsonl"))
  args = p.parse_args()
  rng = random.Random(args.seed)
  seen, rows = set(), []
  while len(rows) < args.n:
    q, ans, steps = problem(rng)
    if q in seen:
      continue
    seen.add(q)
    rows.append({"prompt": f"{q} {INSTRUCTION}", "answer": str(ans), "steps": steps, "id": len(rows)})
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  print(f"wrote {len(rows)} problems to {args.out}")


if __name__ == "__main__":
  main()
