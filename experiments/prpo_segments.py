"""Where PRPO's entropy spikes fall in real rollouts, and how entropy cuts compare with random and uniform cuts.

SmolLM2-135M-Instruct samples the word problems in data/word_problems.jsonl; every completion is cut
by PRPO's rule (the k highest-entropy tokens, a cut kept only ≥ m tokens after the previous one).  Reported:
the relative position of the cuts in the completion, the tokens that start a segment (line starts, digits,
operators, words), segment lengths, how often the min-gap rule removes a spike, and for the same number of
cuts per completion placed at random or uniformly: the entropy at the cut, how often a cut starts a line or an
equation, and how often the arithmetic PRM can judge a segment (it holds a whole `x op y = z`) instead of
returning its neutral 0.5.

    python experiments/prpo_segments.py     # ≈ 5 min on 2 cores; writes experiments/results/prpo_segments.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re

import jax
import numpy as np

import jaxgrpo
from jaxgrpo import models
from jaxgrpo.models.tokenizers import HFTokenizer
from jaxgrpo.rollout import RolloutEngine
from jaxgrpo.tasks import sources as data_lib
from jaxgrpo.tasks.prm import ArithmeticPRM
from jaxgrpo.train import build, presets
from jaxgrpo.train.config import replace as config_replace

WORD_PROBLEMS = os.path.join(os.path.dirname(__file__), "..", "data", "word_problems.jsonl")


def token_class(text: str) -> str:
  s = text.lstrip(" ")
  if text.startswith("\n") or text == "":
    return "line start"
  if re.fullmatch(r"\d+", s):
    return "number"
  if s and s[0] in "+-*/×÷=":
    return "operator / ="
  if s and not s[0].isalnum():
    return "punctuation"
  return "word"


def cuts_from_segments(seg: np.ndarray) -> list[int]:
  valid = seg >= 0
  return [int(i) for i in np.flatnonzero(valid[1:] & (seg[1:] != seg[:-1])) + 1]


def min_gap_removals(ent: np.ndarray, length: int, k: int, min_gap: int) -> tuple[int, int]:
  """(spikes considered, spikes the min-gap rule removed) for one completion."""
  if length < k + 1:
    return 0, 0
  top = sorted(np.argsort(-ent[:length], kind="stable")[:k])
  last, removed = 0, 0
  for p in top:
    if p - last >= min_gap:
      last = p
    else:
      removed += 1
  return k, removed


def segments_of(cuts: list[int], length: int) -> list[tuple[int, int]]:
  bounds = [0] + sorted(cuts) + [length]
  return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def describe(name, comps, cut_lists, tok, prm):
  ent_at, classes, seg_lens, judged, line_or_eq, pos = [], collections.Counter(), [], [], [], []
  for (ids, ent, ex), cuts in zip(comps, cut_lists):
    n = len(ids)
    for c in cuts:
      ent_at.append(float(ent[c]))
      piece = tok.decode([int(ids[c])]) if c < n else ""
      cls = token_class(piece)
      classes[cls] += 1
      line_or_eq.append(cls in ("line start", "operator / =", "number"))
      pos.append(c / max(n, 1))
    segs = segments_of(cuts, n)
    texts = [tok.decode([int(i) for i in ids[a:b]]) for a, b in segs]
    seg_lens += [b - a for a, b in segs]
    judged += [s != prm.neutral for s in prm(ex, texts)]
  total = sum(classes.values()) or 1
  return {"method": name, "cuts": len(ent_at), "entropy_at_cut": float(np.mean(ent_at)) if ent_at else 0.0,
          "cut_token_classes": {k: v / total for k, v in classes.most_common()},
          "cut_at_line_number_or_operator": float(np.mean(line_or_eq)) if line_or_eq else 0.0,
          "segment_length_mean": float(np.mean(seg_lens)), "segment_length_median": float(np.median(seg_lens)),
          "segment_lengths": seg_lens, "prm_judges_segment": float(np.mean(judged)),
          "cut_relative_positions": pos}


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--prompts", type=int, default=32)
  p.add_argument("--group-size", type=int, default=4)
  p.add_argument("--max-new-tokens", type=int, default=96)
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--min-gap", type=int, default=10)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "prpo_segments.json"))
  args = p.parse_args()
  base = presets.preset("smollm2_arithmetic")
  path = build.checkpoint_dir(base.model)
  model, params = models.from_pretrained(path)
  tok = HFTokenizer(path)
  engine = RolloutEngine(model, tok, trim=False)
  src = data_lib.jsonl_source(WORD_PROBLEMS)
  examples = [src[i] for i in range(args.prompts)]
  spec = config_replace(base, sampling={"group_size": args.group_size, "temperature": 1.0,
                                         "max_new_tokens": args.max_new_tokens}).sampling
  spec = build.sampling_params(spec, tok.eos_ids, tok.pad_id)
  ro = engine.generate(params, examples, jax.random.PRNGKey(0), spec)
  tokens, mask, ents = (np.asarray(x) for x in (ro.tokens, ro.mask, ro.entropies))
  seg = np.asarray(jaxgrpo.entropy_segments(ents, mask, k=args.k, min_gap=args.min_gap))
  prm = ArithmeticPRM()
  comps, entropy_cuts, considered, removed = [], [], 0, 0
  for r in range(tokens.shape[0]):
    n = int(mask[r].sum())
    comps.append((tokens[r, :n], ents[r, :n], examples[r // args.group_size]))
    entropy_cuts.append(cuts_from_segments(seg[r, :n]))
    c, d = min_gap_removals(ents[r], n, args.k, args.min_gap)
    considered += c
    removed += d
  rng = np.random.default_rng(0)
  random_cuts = [sorted(rng.choice(np.arange(1, len(c[0])), size=min(len(e), len(c[0]) - 1), replace=False).tolist())
                 if len(c[0]) > 1 else [] for c, e in zip(comps, entropy_cuts)]
  uniform_cuts = [[int(round(len(c[0]) * (j + 1) / (len(e) + 1))) for j in range(len(e))]
                  for c, e in zip(comps, entropy_cuts)]
  results = {"k": args.k, "min_gap": args.min_gap, "completions": len(comps),
             "mean_length": float(np.mean([len(c[0]) for c in comps])),
             "spikes_considered": considered, "spikes_removed_by_min_gap": removed,
             "methods": [describe(n, comps, cl, tok, prm) for n, cl in (("entropy", entropy_cuts),
                                                                        ("random", random_cuts),
                                                                        ("uniform", uniform_cuts))],
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"}
  example = comps[0]
  results["example"] = {"text_pieces": [tok.decode([int(i)]) for i in example[0]], "entropies": example[1].tolist(),
                        "cuts": entropy_cuts[0]}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f)
  print(f"{len(comps)} completions (mean {results['mean_length']:.0f} tokens); min-gap removed {removed} of "
        f"{considered}"
        f" top-{args.k} spikes ({removed / max(considered, 1):.1%})\n")
  print("| cuts | cuts / completion | entropy at cut (nats) | cut at line start / number / operator | "
        "segment length mean (median) | PRM can judge the segment | top cut-token classes |")
  print("|---|---|---|---|---|---|---|")
  for m in results["methods"]:
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(m["cut_token_classes"].items())[:3])
    print(f"| {m['method']} | {m['cuts'] / len(comps):.2f} | {m['entropy_at_cut']:.2f} | "
          f"{m['cut_at_line_number_or_operator']:.0%} | {m['segment_length_mean']:.1f} "
          f"({m['segment_length_median']:.0f}) | {m['prm_judges_segment']:.0%} | {top} |")
  hist, _ = np.histogram(results["methods"][0]["cut_relative_positions"], bins=5, range=(0, 1))
  print("\nentropy cuts by relative position (fifths of the completion): " + ", ".join(str(int(h)) for h in hist))


if __name__ == "__main__":
  main()
