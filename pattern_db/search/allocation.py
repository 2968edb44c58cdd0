"""Choosing one candidate per head under a model-wide kernel-cost budget.

The last step of the offline search that writes the plans the backend resolves (find sites ->
resolve plan -> build index -> one kernel). Each searched head ``h`` has candidates ``c`` with
a measured relative cost ``cost[h, c]`` and a loss ``loss[h, c]`` (``1 - recall`` or the
relative output error, see ``scoring``). :func:`allocate` minimises the summed loss over all
searched heads subject to the mean cost being at most ``budget`` (a fraction of dense causal
attention's work); its docstring says how and why the budget is model-wide.
Deterministic: ties go to the cheaper candidate, then the earlier one.
"""
from __future__ import annotations

import numpy as np


def _choose(cost: np.ndarray, loss: np.ndarray, lam: float, allowed: np.ndarray) -> np.ndarray:
    obj = np.where(allowed, loss + lam * cost, np.inf)
    best = obj.min(1, keepdims=True)
    tie = obj <= best + 1e-12 * (1 + np.abs(best))
    c = np.where(tie, cost, np.inf)
    return c.argmin(1)


def allocate(cost: np.ndarray, loss: np.ndarray, budget: float,
             allowed: np.ndarray | None = None) -> np.ndarray:
    """cost, loss: (heads, candidates); budget: mean relative cost allowed over the heads;
    allowed: optional (candidates,) or (heads, candidates) bool. Returns (heads,) indices.

    When even the cheapest allowed candidates exceed the budget they are returned (the
    caller reports the cost reached).

      1. Lagrangian relaxation: for a price ``lam`` every head independently takes the candidate
         minimising ``loss + lam * cost``; the total cost falls as ``lam`` rises, so a bisection
         on ``lam`` finds the cheapest price that fits the budget. This is the greedy allocation
         by marginal gain (loss saved per unit of cost) on each head's lower convex hull, done
         for all heads at once;
      2. the slack the bisection leaves is filled greedily (:func:`fill_slack`): repeatedly the
         single upgrade with the best loss saved per extra cost that still fits.

    Why a model-wide budget instead of "the cheapest candidate reaching a target quality per
    head": the user asks for a speed (the budget), heads differ a lot in what they need, and
    spending where the loss falls fastest is what minimises the total loss at that speed; a
    per-head quality target cannot promise a cost, and a head that cannot reach the target
    would have to go dense. Every head still gets only what it needs: a head whose cheapest
    candidate already loses nothing stays cheap."""
    cost = np.asarray(cost, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    M, C = cost.shape
    if allowed is None:
        allowed = np.ones((M, C), dtype=bool)
    allowed = np.broadcast_to(np.asarray(allowed, dtype=bool), (M, C))
    if not allowed.any(1).all():
        raise ValueError("allocate: a head has no allowed candidate")
    limit = budget * M
    rows = np.arange(M)

    def total(ch: np.ndarray) -> float:
        return float(cost[rows, ch].sum())

    choice = _choose(cost, loss, 0.0, allowed)
    if total(choice) > limit + 1e-9:
        lo, hi = 0.0, 1.0
        while total(_choose(cost, loss, hi, allowed)) > limit + 1e-9 and hi < 1e12:
            hi *= 4
        for _ in range(100):
            mid = (lo + hi) / 2
            if total(_choose(cost, loss, mid, allowed)) > limit + 1e-9:
                lo = mid
            else:
                hi = mid
        choice = _choose(cost, loss, hi, allowed)
    return fill_slack(cost, loss, choice, limit, allowed)


def fill_slack(cost: np.ndarray, loss: np.ndarray, choice: np.ndarray, limit: float,
               allowed: np.ndarray) -> np.ndarray:
    """Greedy upgrades (best loss saved per extra cost first) while the total stays <= limit."""
    choice = choice.copy()
    M = cost.shape[0]
    rows = np.arange(M)
    for _ in range(10 * M * cost.shape[1]):
        spent = float(cost[rows, choice].sum())
        slack = limit - spent
        cur_cost = cost[rows, choice][:, None]
        cur_loss = loss[rows, choice][:, None]
        dl = cur_loss - loss                  # loss saved
        dc = cost - cur_cost                  # extra cost
        ok = allowed & (dl > 1e-12) & (dc <= slack + 1e-12)
        if not ok.any():
            break
        free = ok & (dc <= 0)
        if free.any():          # cheaper and better: always take (largest saving first)
            h, c = np.unravel_index(np.argmax(np.where(free, dl, -np.inf)), dl.shape)
        else:
            ratio = np.where(ok, dl / np.maximum(dc, 1e-12), -np.inf)
            h, c = np.unravel_index(np.argmax(ratio), ratio.shape)
        choice[h] = c
    return choice


def best_uniform(cost: np.ndarray, loss: np.ndarray, budget: float,
                 allowed: np.ndarray | None = None) -> int | None:
    """The one candidate that, used on every head, has the lowest mean loss with mean cost
    <= budget (None when none fits)."""
    mc, ml = cost.mean(0), loss.mean(0)
    ok = mc <= budget + 1e-9
    if allowed is not None:
        ok &= np.asarray(allowed, dtype=bool)
    if not ok.any():
        return None
    return int(np.argmin(np.where(ok, ml, np.inf)))
