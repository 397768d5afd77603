"""Shared-prefix packing: a step's groups as prefix trees, so each prompt and each completion prefix that a group
shares is computed once in the update (``objective.share_prefix``).

A group's G completions share its prompt, and often their first tokens.  ``pack`` turns an update ``Batch``
(B·G rows, each [prompt | completion]) into a ``PackedBatch`` whose rows hold whole groups as trees:

* ``prompt``: the group's prompt once, then its G completions, each a chain hanging from the prompt's last token;
* ``tree``: the group's trie — completions in lexicographic order, each adding only the tokens after its longest
  common prefix with the previous one (the trie's depth-first order), so duplicates, strict prefixes and shared
  beginnings are computed once;
* several groups per row when they are short (sequence packing: one row's trees never see each other), so padding
  is not computed either.

Positions are depths (a token's position in its own [prompt | completion] row), the attention mask is the
``models.TreeMask`` rule ``s <= q < ends[s]``, and ``source`` says which node's hidden state predicts each
completion token (its parent), so every completion's per-token log-probs come back in [R, C, T] slots for the
loss, which is unchanged.  The trie is built from exact token comparisons on the host (a hash collision may merge
two prefixes in a count — ``core.prefix`` — but must never merge two different activations).

The update's minibatches are formed from packed rows (whole groups): with ``objective.num_minibatches`` > 1 the
rows of one group are never split between minibatches.  Each distinct (R, C, S) compiles the update once: S is
rounded up to ``length_multiple`` and the number of rows to ``row_multiple`` so shapes repeat across steps.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import jax
import numpy as np

# What the update computes once per group (``objective.share_prefix``); declared once, here.
SharePrefix = Literal["none", "prompt", "tree", "auto"]
SHARE_PREFIX: tuple[str, ...] = typing.get_args(SharePrefix)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PackedBatch:
  """The update's batch packed as prefix trees (device side): R rows of S positions, C completion slots per row.

  Slots past a row's completions are empty (mask 0, ``slots`` 0); every [R, C, T] field means what its ``Batch``
  namesake means for the completion in that slot.
  """

  tokens: jax.Array  # int32[R, S] tree nodes in depth-first order (each row: one or more groups' trees, then padding)
  positions: jax.Array  # int32[R, S] each node's depth: its position in its own [prompt | completion] row
  ends: jax.Array  # int32[R, S] exclusive end of each node's subtree (query q sees key s iff s <= q < ends[s])
  source: jax.Array  # int32[R, C, T] position of the node whose hidden state predicts completion token t
  targets: jax.Array  # int32[R, C, T] completion tokens (Batch.tokens)
  mask: jax.Array  # int32[R, C, T] loss mask (Batch.mask)
  advantages: jax.Array  # float32[R, C, T]
  weights: jax.Array  # float32[R, C, T]
  old_logp: jax.Array  # float32[R, C, T] the sampler's log-probs
  slots: jax.Array  # int32[R, C] 1 where a slot holds one of the batch's completions
  window: int = dataclasses.field(metadata={"static": True})  # the longest tree (positions any query can reach back)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Packing:
  """Host-side result of ``pack``: the packed arrays and where each of the batch's rows went."""

  batch: PackedBatch  # numpy leaves
  row_slot: np.ndarray  # int64[N, 2] (packed row, slot) of each batch row
  tokens_computed: int  # R·S, the positions the update's forward computes
  tokens_unique: int  # positions holding a node (the rest is padding)


def _completion_lengths(mask: np.ndarray) -> np.ndarray:
  """Lengths of right-padded completion masks int[N, T]; refuses masks with holes."""
  m = mask.astype(bool)
  lengths = m.sum(axis=1)
  if not np.array_equal(m, np.arange(m.shape[1])[None] < lengths[:, None]):
    raise ValueError("Batch.mask must be right-padded (1s then 0s on every row) to pack prefix trees")
  return lengths


def group_tree(prompt: np.ndarray, completions: np.ndarray, lengths: np.ndarray, mode: str):
  """One group's tree in depth-first order.

  Args:
    prompt: int[p] the prompt's tokens (no padding), p ≥ 1.
    completions: int[G, T]; lengths: int[G] (tokens past a completion's length are ignored).
    mode: "prompt" (completions as separate chains) or "tree" (their trie).

  Returns:
    (tokens [L], positions [L], ends [L], source [G, T]) with positions relative to the tree's start; source
    points at each token's parent node (0 where t ≥ length).
  """
  p = len(prompt)
  g, t = completions.shape
  if mode == "tree":
    keyed = np.where(np.arange(t)[None] < lengths[:, None], completions, -1)
    order = np.lexsort(keyed.T[::-1])  # lexicographic, a prefix before its extensions
    a, b = keyed[order[:-1]], keyed[order[1:]]
    same = (a == b) & (a >= 0)
    lcp = np.concatenate([[0], np.cumprod(same, axis=1).sum(axis=1)])
  else:
    order = np.arange(g)
    lcp = np.zeros(g, np.int64)
  sorted_len = lengths[order]
  new = sorted_len - lcp  # nodes each completion adds
  start = p + np.concatenate([[0], np.cumsum(new)])  # where completion k's new nodes begin; start[g] = tree end
  total = int(start[-1])
  tokens = np.empty(total, np.int64)
  positions = np.empty(total, np.int64)
  ends = np.empty(total, np.int64)
  tokens[:p], positions[:p], ends[:p] = prompt, np.arange(p), total
  node = np.zeros((g, t), np.int64)  # node index of each (sorted completion, token)
  for k in range(g):
    c, n0, ln = lcp[k], start[k], sorted_len[k]
    if k:
      node[k, :c] = node[k - 1, :c]
    idx = n0 + np.arange(ln - c)
    node[k, c:ln] = idx
    tokens[idx] = completions[order[k], c:ln]
    positions[idx] = p + np.arange(c, ln)
    if ln > c:
      # the subtree of (k, d) holds the new nodes of completions k..e-1, e = first k' > k whose lcp ≤ d
      run = np.minimum.accumulate(lcp[k + 1:]) if k + 1 < g else np.zeros(0, np.int64)
      depth = np.arange(c, ln)
      # run is non-increasing: the number of k' > k with run > d is the count of leading entries above d
      stay = np.searchsorted(-run, -depth, side="left")
      ends[idx] = start[k + 1 + stay]
  source = np.zeros((g, t), np.int64)
  sorted_source = np.concatenate([np.full((g, 1), p - 1), node[:, :-1]], axis=1)
  valid = np.arange(t)[None] < sorted_len[:, None]
  source[order] = np.where(valid, sorted_source, 0)
  return tokens, positions, ends, source


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _assign(lengths: np.ndarray, rows: int, per_row: int) -> list[list[int]]:
  """Groups to rows, ``per_row`` each, longest first onto the least-filled row (balanced)."""
  fill = np.zeros(rows, np.int64)
  count = np.zeros(rows, np.int64)
  out: list[list[int]] = [[] for _ in range(rows)]
  for i in np.argsort(-lengths, kind="stable"):
    open_rows = np.flatnonzero(count < per_row)
    r = open_rows[np.argmin(fill[open_rows])]
    out[r].append(int(i))
    fill[r] += lengths[i]
    count[r] += 1
  return out


def pack(prompt_ids, prompt_mask, tokens, mask, advantages, weights, old_logp, *, group_size: int, mode: str,
         row_multiple: int = 1, length_multiple: int = 64, window_multiple: int = 128) -> Packing:
  """Pack an update batch (numpy [N, ·] arrays, ``Batch``'s fields; rows of a group contiguous) as prefix trees.

  ``row_multiple``: the number of packed rows is a multiple of it (data-parallel devices × minibatches ×
  micro-batches); among the numbers of groups per row that divide B and allow it, the one computing the fewest
  positions is chosen.  ``length_multiple``: S is rounded up to it.  ``window_multiple``: the longest tree's size
  (``PackedBatch.window``, a static bound) is rounded up to it, capped at S — pass the tree attention's query block,
  within which every window computes the same thing — so a run compiles one update per few shapes, not one per
  step.
  """
  if mode not in ("prompt", "tree"):
    raise ValueError(f"pack mode must be 'prompt' or 'tree'; got {mode!r}")
  prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask).astype(bool)
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  n, t = tokens.shape
  g = group_size
  if n % g:
    raise ValueError(f"the batch's {n} rows are not whole groups of sampling.group_size = {g}")
  b = n // g
  lengths = _completion_lengths(mask)
  trees = []
  for i in range(b):
    rows = slice(i * g, (i + 1) * g)
    if not (prompt_ids[rows] == prompt_ids[i * g]).all() or not (prompt_mask[rows] == prompt_mask[i * g]).all():
      raise ValueError(f"Batch.prompt_ids: the rows of group {i} (rows {i * g}..{(i + 1) * g - 1}) must hold one "
                       "prompt to share it")
    prompt = prompt_ids[i * g][prompt_mask[i * g]]
    if prompt.size == 0:
      raise ValueError(f"Batch.prompt_mask: group {i} has an empty prompt")
    trees.append(group_tree(prompt, tokens[rows], lengths[rows], mode))
  sizes = np.asarray([len(tr[0]) for tr in trees])
  window = int(sizes.max())
  best = None
  for per_row in (k for k in range(1, b + 1) if b % k == 0 and (b // k) % row_multiple == 0):
    assignment = _assign(sizes, b // per_row, per_row)
    s = _round_up(max(int(sizes[a].sum()) for a in assignment), length_multiple)
    if best is None or (b // per_row) * s < best[0]:
      best = ((b // per_row) * s, assignment, s)
  if best is None:  # fewer groups than the multiple: one group per row, empty rows fill up
    r = _round_up(b, row_multiple)
    assignment = _assign(sizes, b, 1) + [[] for _ in range(r - b)]
    best = (r * _round_up(window, length_multiple), assignment, _round_up(window, length_multiple))
  computed, assignment, s = best
  r = len(assignment)
  c = max(len(a) for a in assignment) * g
  out = {k: np.zeros((r, s), np.int32) for k in ("tokens", "positions", "ends")}
  src = np.zeros((r, c, t), np.int32)
  row_slot = np.zeros((n, 2), np.int64)
  for row, groups in enumerate(assignment):
    off = 0
    for j, i in enumerate(groups):
      tk, pos, ends, source = trees[i]
      span = slice(off, off + len(tk))
      out["tokens"][row, span], out["positions"][row, span], out["ends"][row, span] = tk, pos, ends + off
      src[row, j * g:(j + 1) * g] = source + off
      row_slot[i * g:(i + 1) * g, 0] = row
      row_slot[i * g:(i + 1) * g, 1] = j * g + np.arange(g)
      off += len(tk)
  slots = np.zeros((r, c), np.int32)
  slots[row_slot[:, 0], row_slot[:, 1]] = 1

  def place(x, dtype):
    y = np.zeros((r, c, t), dtype)
    y[row_slot[:, 0], row_slot[:, 1]] = np.asarray(x)
    return y

  packed = PackedBatch(tokens=out["tokens"], positions=out["positions"], ends=out["ends"], source=src,
                       targets=place(tokens, np.int32), mask=place(mask, np.int32),
                       advantages=place(advantages, np.float32), weights=place(weights, np.float32),
                       old_logp=place(old_logp, np.float32), slots=slots,
                       window=min(_round_up(window, window_multiple), s))
  return Packing(batch=packed, row_slot=row_slot, tokens_computed=computed, tokens_unique=int(sizes.sum()))


def unpack(x, row_slot: np.ndarray):
  """[R, C, ...] slot values back to the batch's [N, ...] rows."""
  return np.asarray(x)[row_slot[:, 0], row_slot[:, 1]]


def tokens_unpacked(prompt_mask, mask) -> int:
  """Positions the update computes without sharing: N·(P + T)."""
  return int(np.asarray(prompt_mask).shape[0] * (np.asarray(prompt_mask).shape[1] + np.asarray(mask).shape[1]))
