"""Attention-mass recall of each registered pattern, per head, at equal cost, from the
per-candidate scores a search wrote (``mcompile search --details FILE``): no model runs.

For each pattern, each head and each cost target ``c``: the best recall among that pattern's
candidates whose measured cost on that head is at most ``c`` (``-`` when even its cheapest
candidate costs more; the means are over the heads where one fits). benchmarks/pattern_recall.py
writes it as JSON and markdown tables.
"""
from __future__ import annotations

import numpy as np


def best_at_cost(cost: np.ndarray, recall: np.ndarray, error: np.ndarray, pattern_of: list[str], pattern: str,
                 target: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, H) best recall of ``pattern``'s candidates with cost <= target per head (NaN when
    none fits), and that candidate's output error and cost. Arrays are (L, C, H)."""
    cols = [i for i, p in enumerate(pattern_of) if p == pattern]
    c, r, e = cost[:, cols], recall[:, cols], error[:, cols]
    r_ok = np.where(c <= target + 1e-9, r, -np.inf)
    best = r_ok.argmax(1)                                              # (L, H)
    pick = lambda a: np.take_along_axis(a, best[:, None], 1)[:, 0]   # noqa: E731
    fits = np.isfinite(pick(r_ok))
    nan = np.full(best.shape, np.nan)
    return np.where(fits, pick(r), nan), np.where(fits, pick(e), nan), np.where(fits, pick(c), nan)


def analyse(details: dict, costs: list[float]) -> dict:
    s = details["scores"] if "scores" in details else details
    cost, recall, error = (np.asarray(s[k], dtype=float) for k in ("cost", "recall", "error"))
    patterns = [c["pattern"] for c in s["candidates"]]
    names = [p for p in dict.fromkeys(patterns) if p != "dense"]
    out = {"length": s["length"], "layers": s["layers"], "num_heads": s["num_heads"], "samples": s.get("samples"),
           "costs": costs, "patterns": {}}
    for p in names:
        per = {}
        for target in costs:
            r, e, c = best_at_cost(cost, recall, error, patterns, p, target)
            per[f"{target:g}"] = {"head_recall": np.round(r, 5).tolist(), "head_error": np.round(e, 5).tolist(),
                                  "head_cost": np.round(c, 5).tolist(),
                                  "mean_recall": None if np.isnan(r).all() else float(np.nanmean(r)),
                                  "min_recall": None if np.isnan(r).all() else float(np.nanmin(r)),
                                  "mean_error": None if np.isnan(e).all() else float(np.nanmean(e)),
                                  "heads_fitting": int((~np.isnan(r)).sum())}
        out["patterns"][p] = per
    return out


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def summary_table(res: dict) -> str:
    costs = [f"{c:g}" for c in res["costs"]]
    heads = len(res["layers"]) * res["num_heads"]
    lines = ["| pattern | " + " | ".join(f"cost <= {c}: mean (min) recall" for c in costs) + " |",
             "|---|" + "---|" * len(costs)]
    for p, per in res["patterns"].items():
        def cell(c):
            n = per[c]["heads_fitting"]
            some = f", {n}/{heads} heads fit" if 0 < n < heads else ""
            return f"{_fmt(per[c]['mean_recall'], '.4f')} ({_fmt(per[c]['min_recall'])}{some})"
        cells = [cell(c) for c in costs]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def head_table(res: dict, target: float) -> str:
    key = f"{target:g}"
    names = list(res["patterns"])
    lines = [f"| layer.head | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, layer in enumerate(res["layers"]):
        for h in range(res["num_heads"]):
            cells = []
            best = max((res["patterns"][p][key]["head_recall"][i][h] for p in names
                        if not np.isnan(res["patterns"][p][key]["head_recall"][i][h])), default=None)
            for p in names:
                v = res["patterns"][p][key]["head_recall"][i][h]
                text = _fmt(v, ".4f")
                cells.append(f"**{text}**" if best is not None and v == best else text)
            lines.append(f"| {layer}.{h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
