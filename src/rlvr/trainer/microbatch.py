"""Which rows each learner rank runs in which micro-batch.

Two ways to cut an optimiser step's rows into micro-batches (``Budget``):

* by rows: ``algo.micro_batch_size`` rows each, in the step's order (the default);
* by tokens: ``algo.max_tokens_per_micro_batch``: each micro-batch holds rows whose prompt + completion tokens,
  padding counted (a padded forward runs ``rows × longest`` positions), stay within the budget. Rows are sorted by
  length, longest first, and a micro-batch takes rows while ``(rows + 1) × its longest ≤ budget``, so rows of
  similar length share a micro-batch and little is spent on padding. Packed (``model.pack_sequences``), nothing
  is padding: a micro-batch's cost is the sum of its rows' lengths, and rows go longest first into the first
  micro-batch they fit (first-fit decreasing). A row longer than the budget gets a micro-batch of its own, with a
  warning. With several ranks, whole prompt groups go to ranks longest-first onto
  the least-loaded rank (balanced token counts) before each rank packs its share.

Either way the optimiser step's normaliser is computed over all its rows (``losses.loss_normalizer``), so how the
rows are cut changes no gradient, only float rounding. Across ranks every rank gets the same number of micro-batches:
shorter lists are padded with ``None`` (an empty micro-batch). Every rank computes every rank's plan from the same
inputs, so no communication is needed to agree on it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from rlvr.logprobs import pack_into_rows
from rlvr.trainer.dist import World

Tensor = torch.Tensor

__all__ = ["Budget", "rank_rows", "micro_batches", "token_shares", "pack"]


@dataclass(frozen=True)
class Budget:
    """``rows`` per micro-batch, or, when ``tokens`` is set, at most that many prompt + completion tokens per
    micro-batch: padding counted, or, when ``packed``, the rows' own tokens only."""

    rows: int = 16
    tokens: int | None = None
    packed: bool = False


def rank_rows(rows: Tensor, world: World, rank: int | None = None, group_size: int = 1) -> Tensor:
    """The contiguous share of ``rows`` that ``rank`` (default: this one) trains: ranks get equal numbers of whole
    groups of ``group_size`` rows when ``rows`` holds whole groups, else equal numbers of rows (± 1)."""
    rank = world.rank if rank is None else rank
    unit = group_size if group_size > 1 and len(rows) % group_size == 0 else 1
    n = len(rows) // unit
    lo, hi = (rank * n) // world.size, ((rank + 1) * n) // world.size
    return rows[lo * unit:hi * unit]


def token_shares(rows: Tensor, lengths: Tensor, world: World, group_size: int = 1) -> list[Tensor]:
    """Each rank's rows, balanced by tokens: the prompt groups present in ``rows`` (row // group_size), longest
    first, each onto the rank with the fewest tokens so far (the lowest rank on ties); rows keep their order."""
    groups: dict[int, list[int]] = {}
    for r in rows.tolist():
        groups.setdefault(r // group_size, []).append(r)
    load, owner = [0] * world.size, {}
    for g in sorted(groups, key=lambda g: (-sum(int(lengths[r]) for r in groups[g]), g)):
        rank = min(range(world.size), key=lambda k: (load[k], k))
        owner[g] = rank
        load[rank] += sum(int(lengths[r]) for r in groups[g])
    return [torch.tensor([r for r in rows.tolist() if owner[r // group_size] == k], dtype=torch.long)
            for k in range(world.size)]


def pack(rows: Tensor, lengths: Tensor, max_tokens: int, packed: bool = False) -> list[Tensor]:
    """``rows`` in micro-batches of at most ``max_tokens`` tokens, longest row first: padded, rows × the micro-batch's
    longest row, each micro-batch filled in turn; ``packed``, the sum of the rows' lengths, each row into the first
    micro-batch with room. A row over the budget alone (with a warning)."""
    ids = sorted(rows.tolist())
    for r in ids:
        if int(lengths[r]) > max_tokens:
            warnings.warn(f"a row of {int(lengths[r])} prompt + completion tokens exceeds "
                          f"algo.max_tokens_per_micro_batch={max_tokens}: it gets a micro-batch of its own",
                          stacklevel=2)
    if packed:
        return [torch.tensor([ids[i] for i in mb], dtype=torch.long)
                for mb in pack_into_rows([int(lengths[r]) for r in ids], max_tokens)]
    out: list[list[int]] = []
    for r in sorted(ids, key=lambda r: (-int(lengths[r]), r)):
        if out and (len(out[-1]) + 1) * int(lengths[out[-1][0]]) <= max_tokens:
            out[-1].append(r)
        else:
            out.append([r])
    return [torch.tensor(mb, dtype=torch.long) for mb in out]


def micro_batches(rows: Tensor, budget: Budget | int, world: World, group_size: int = 1,
                  lengths: Tensor | None = None) -> list[Tensor | None]:
    """This rank's share of ``rows`` in micro-batches under ``budget`` (an int: that many rows each), padded with
    None (an empty micro-batch) to the largest count of any rank, so that every rank runs the same number of
    forward/backward passes. A token budget needs ``lengths`` (prompt + completion tokens of every row id)."""
    budget = Budget(rows=budget) if isinstance(budget, int) else budget
    if budget.tokens is None:
        mine = list(rank_rows(rows, world, group_size=group_size).split(budget.rows)) if len(rows) else []
        most = max(math.ceil(len(rank_rows(rows, world, r, group_size)) / budget.rows) for r in range(world.size))
        return mine + [None] * (most - len(mine))
    if lengths is None:
        raise ValueError("micro_batches: a token budget needs the rows' lengths")
    shares = token_shares(rows, lengths, world, group_size) if world.parallel else [rows]
    plans = [pack(share, lengths, budget.tokens, budget.packed) if len(share) else [] for share in shares]
    mine = plans[world.rank if world.parallel else 0]
    return mine + [None] * (max(len(p) for p in plans) - len(mine))
