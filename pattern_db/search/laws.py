"""Budgets as laws of the length, fitted per head from calibrations at several lengths.

The plan is chosen at the longest calibration length (``search.choose``). Each chosen head then
asks, at every shorter length: how large a budget of the same candidate family (the same pattern
and the same non-budget parameters) reaches the loss the head has at the longest length? Its
answer is interpolated between the two scored candidates around that loss (log budget, linear in
loss), so the coarse grid of cost levels does not quantise it. A power law ``a * N^b`` is fitted
through those (length, budget) points per budget parameter (``Law.through``): ``b`` near 0 says
the head needs the same keys at every length (a fixed count, MInference's form), ``b`` near 1 a
fixed fraction. Why a power law: it holds both of those forms as its ends, has two numbers a
database can show, and extrapolates without going negative or past the length.

SampleAttention keeps its parameters as chosen: its window is a fraction by definition
(``window_frac``) and its columns are chosen by mass (``alpha``), not by a budget.

A candidate whose loss rises with the length at the same fraction of the keys needs more than
any power law up to ``b = 1`` gives it (:func:`rising_loss`); ``--refuse-rising-families`` keeps
every head off every member of a family in which most (head, member) pairs are such candidates
(:func:`rising_families`). Per head the test is too weak: a head whose loss does not yet rise
between two short lengths still needs its family's growth later.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from mcompile.kernels.patterns import Law, resolve_budget

from ..schema import Frac, budget_params

BLOCK = 64
LAW_PATTERNS = ("a_shape", "vertical_slash", "block_sparse", "sliding_window")
# a loss above its shorter-length value by this factor, plus RISING_FLOOR, at the same fraction
RISING_FACTOR = 1.05
RISING_FLOOR = 1e-3
# a family is refused for every head when more than this share of its (head, member) pairs rise
RISING_SHARE = 0.5


def items(n: int, param: str) -> int:
    """What a budget counts at length n: key blocks for ``top_k``, tokens otherwise."""
    return -(-n // BLOCK) if param == "top_k" else n


def budget_counts(candidate, n: int) -> dict[str, int]:
    """The candidate's budget parameters resolved at length n."""
    return {k: resolve_budget(v, n, BLOCK if k == "top_k" else 1)
            for k, v in candidate.params.items() if k in budget_params(candidate.pattern)}


def family(candidate, n: int) -> tuple:
    """Candidates that differ only in the size of their budgets. vertical-slash's grid has two
    shapes (diagonal-heavy, and column-heavy with only the forced diagonals), told apart by the
    diagonals a candidate selects."""
    from mcompile.kernels.patterns.vertical_slash import FORCED_DIAGONALS
    budgets = budget_params(candidate.pattern)
    fixed = tuple(sorted((k, repr(v)) for k, v in candidate.params.items() if k not in budgets))
    shape = ""
    if candidate.pattern == "vertical_slash" and candidate.tag != "minference-default":
        shape = "columns" if budget_counts(candidate, n)["slash_size"] <= FORCED_DIAGONALS else "diagonals"
    return candidate.pattern, candidate.tag, shape, fixed


def matched_counts(scores, layer: int, head: int, target: tuple, loss: np.ndarray,
                   goal: float) -> dict[str, float] | None:
    """The budgets of ``target``'s family that reach loss ``goal`` at ``scores.length`` (None when
    the family was not scored there)."""
    n = scores.length
    members = [j for j, c in enumerate(scores.candidates) if family(c, n) == target]
    if not members:
        return None
    counts = {j: budget_counts(scores.candidates[j], n) for j in members}
    members.sort(key=lambda j: sum(counts[j].values()))
    losses = [float(loss[layer, j, head]) for j in members]
    reach = next((i for i, value in enumerate(losses) if value <= goal), None)
    if reach is None:                   # nothing reaches the goal: the largest budget scored
        return {k: float(v) for k, v in counts[members[-1]].items()}
    if reach == 0 or losses[reach - 1] <= losses[reach]:
        return {k: float(v) for k, v in counts[members[reach]].items()}
    below, above = counts[members[reach - 1]], counts[members[reach]]
    w = (losses[reach - 1] - goal) / (losses[reach - 1] - losses[reach])
    return {k: math.exp(math.log(max(below[k], 1)) * (1 - w) + math.log(max(above[k], 1)) * w) for k in above}


def as_budget(law: Law) -> Any:
    """The plainest form of a fitted law: a count (power 0), a fraction (power 1), else the law."""
    if law.power == 0:
        return max(1, round(law.scale))
    if law.power == 1 and law.scale <= 1:
        return Frac(law.scale)
    return law


def fit_laws(longest, choice: np.ndarray, shorter: Sequence, scoring: str) -> list[list[dict]]:
    """Per searched layer and head: the chosen candidate's parameters, with each budget a law
    fitted through its value at the longest length and the matched budgets at ``shorter``."""
    loss_long = longest.loss(scoring)
    shorter_losses = [(s, s.loss(scoring)) for s in shorter]
    out = []
    for i in range(choice.shape[0]):
        row = []
        for h in range(choice.shape[1]):
            chosen = longest.candidates[int(choice[i, h])]
            params = dict(chosen.params)
            if chosen.pattern in LAW_PATTERNS and shorter:
                target = family(chosen, longest.length)
                points = {k: [(items(longest.length, k), v)] for k, v in budget_counts(chosen, longest.length).items()}
                goal = float(loss_long[i, int(choice[i, h]), h])
                for scores, loss in shorter_losses:
                    matched = matched_counts(scores, i, h, target, loss, goal)
                    for k, v in (matched or {}).items():
                        points[k].append((items(scores.length, k), v))
                params.update({k: as_budget(Law.through(p)) for k, p in points.items()})
            row.append(params)
        out.append(row)
    return out


def fractions(candidate, n: int) -> dict[str, float]:
    """The candidate's budgets at length n as fractions of what they count."""
    return {k: v / items(n, k) for k, v in budget_counts(candidate, n).items()}


def rising_loss(longest, shorter: Sequence, scoring: str) -> np.ndarray:
    """(L * H, C) bool: for each searched head, the law-pattern candidates whose loss at the
    longest length exceeds, by ``RISING_FACTOR`` plus ``RISING_FLOOR``, the loss of the same
    family's member nearest in budget fractions at the next shorter length. Their need grows
    faster than the length, which no law extrapolates (measured on SmolLM2, 2K+4K laws checked
    at 8K: vertical-slash's column-heavy family, whose 100 forced diagonals do not grow with N,
    lost 0.046 / 0.053 / 0.077 at 2K / 4K / 8K at a fixed fraction of columns, and its laws gave
    a median 0.34 of the columns 8K needed)."""
    L, H, C = len(longest.layers), longest.num_heads, len(longest.candidates)
    rising = np.zeros((L * H, C), dtype=bool)
    if not shorter:
        return rising
    short = max(shorter, key=lambda s: s.length)
    loss_long, loss_short = longest.loss(scoring), short.loss(scoring)
    short_families = [family(c, short.length) for c in short.candidates]
    for j, c in enumerate(longest.candidates):
        if c.pattern not in LAW_PATTERNS or c.tag == "minference-default":
            continue
        target, frac = family(c, longest.length), fractions(c, longest.length)
        members = [m for m, f in enumerate(short_families) if f == target]
        if not members or not frac:
            continue
        nearest = min(members, key=lambda m: sum(abs(math.log(max(f, 1e-9) / max(frac[k], 1e-9)))
                                                 for k, f in fractions(short.candidates[m], short.length).items()))
        up = loss_long[:, j, :] > loss_short[:, nearest, :] * RISING_FACTOR + RISING_FLOOR      # (L, H)
        rising[:, j] = up.reshape(-1)
    return rising


def rising_families(longest, shorter: Sequence, scoring: str, share: float = RISING_SHARE) -> np.ndarray:
    """(L * H, C) bool: every member of each family (:func:`family` at the longest length) in
    which more than ``share`` of the (searched head, member) pairs have rising loss
    (:func:`rising_loss`), for every head. A family-wide test, because a head whose loss does not
    yet rise between two short lengths still needs the family's super-linear growth later
    (measured on SmolLM2, 2K+4K checked at 8K: vertical-slash's column-heavy family is the only
    one past half, 0.54 of its pairs rising, the others 0.17-0.31; its heads needed 3-10x their
    4K column count at 8K, beyond any law up to ``b = 1``, whether their own loss rose or not)."""
    rising = rising_loss(longest, shorter, scoring)
    refused = np.zeros_like(rising)
    if not shorter:
        return refused
    families: dict = {}
    for j, c in enumerate(longest.candidates):
        if c.pattern in LAW_PATTERNS and c.tag != "minference-default":
            families.setdefault(family(c, longest.length), []).append(j)
    for members in families.values():
        if rising[:, members].mean() > share:
            refused[:, members] = True
    return refused
