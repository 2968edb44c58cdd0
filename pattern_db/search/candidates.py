"""Candidates for the offline search: every registered pattern, sized to kernel-cost levels.

The search picks per head the pattern the backend later resolves from the database (find
sites -> resolve plan -> build index -> one kernel); these are the choices it weighs.
Kernel cost is counted the way the sparse kernel works (:func:`static_cost`): a relative cost
of 0.1 means the kernel computes a tenth of the 64x64 tiles dense causal attention would.
:func:`make_candidates` says how each pattern is sized to a cost level. The search itself
always uses the cost measured on the built index (``scoring``), so dynamic patterns are
compared with static ones at the cost the kernel really pays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from mcompile.kernels.index import causal_blocks
from mcompile.kernels.patterns import PATTERNS, get_pattern, sample_attention, vertical_slash

from ..schema import Frac, params_to_json

BLOCK = 64
DEFAULT_LEVELS: tuple[float, ...] = (0.04, 0.06, 0.09, 0.13, 0.19, 0.27, 0.38, 0.55)
SA_ALPHAS: tuple[float, ...] = (0.9, 0.97)
SINK_TOKENS = 64
MINFERENCE_DEFAULT = vertical_slash.MINFERENCE_COUNTS
MINFERENCE_DEFAULT_LABEL = "MInference default vs({vertical_size},{slash_size})".format(**MINFERENCE_DEFAULT)


@dataclass(frozen=True)
class Candidate:
    pattern: str
    params: dict[str, Any] = field(default_factory=dict)   # in-memory form (Frac for fractions)
    level: float | None = None                             # the cost level it was sized for
    tag: str = ""                                           # e.g. "minference-default"

    def key(self) -> tuple:
        return (self.pattern, tuple(sorted((k, repr(v)) for k, v in self.params.items())))

    @property
    def label(self) -> str:
        from ..summary import head_label
        from ..database import HeadEntry
        return head_label(HeadEntry(self.pattern, dict(self.params)))

    def to_obj(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "params": params_to_json(self.params),
                "level": self.level, "tag": self.tag}

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "Candidate":
        from ..schema import params_from_json
        return cls(obj["pattern"], params_from_json(obj.get("params", {}), obj["pattern"]), obj.get("level"),
                   obj.get("tag", ""))


# --- cost -------------------------------------------------------------------------------------
def static_cost(pattern: str, params: dict, n: int, block: int = BLOCK) -> float:
    """Relative cost from the pattern's ``cost`` function (exact for static patterns, the
    worst case for data-dependent ones). Kernel cost is counted the way the sparse kernel
    works: per query block of 64 rows, one tile per listed 64-key block plus one tile per 64
    gathered single columns, summed over query blocks and divided by the tiles of dense causal
    attention (``kernels.index.causal_blocks``)."""
    blocks, cols = get_pattern(pattern).cost(n, params, block, block)
    return (blocks + cols / block) / causal_blocks(n, block, block)


def build_overhead(pattern: str, params: dict, n: int) -> float:
    """The index builder's own score work at length n, relative to dense causal attention
    (``N^2 / 2`` query-key pairs, each a QK^T and a PV product): a scored query-key pair
    without PV counts half. Static patterns build nothing from q/k (0).

      * ``vertical_slash``: the last 64 queries against all keys: ``64 N / N^2 = 64 / N``;
      * ``block_sparse``: mean-pooled blocks, one score per (query block, key block) pair:
        ``(N/64)^2 / 2`` pairs, i.e. ``1 / 4096``;
      * ``sample_attention``: the sampled rows (``sample_frac`` of the rows below the last 64,
        at most ``max_samples``, each against its causal keys, plus the last 64 against all):
        about ``sample_frac / 2 + 64 / N`` below 40960 tokens;
      * other patterns: 0 (unknown to this cost model).
    The search adds this to the kernel cost, so a dynamic pattern must recall more to win
    against a static one at the same kernel cost (what its index builder really costs)."""
    n = max(1, n)
    if pattern == "vertical_slash":
        return min(64, n) / n
    if pattern == "block_sparse":
        return 1.0 / (BLOCK * BLOCK)
    if pattern == "sample_attention":
        p = get_pattern(pattern).validate(dict(params))
        last = min(64, n)
        rows = range(0, n - last, sample_attention.sample_stride(n, p))
        pairs = sum(r + 1 for r in rows) + last * n
        return pairs / (n * n)
    return 0.0


def _round_down(f: float) -> float:
    """A short decimal not above f (readable JSON), at least 1e-4."""
    for digits in (2, 3, 4, 5, 6):
        s = float(f"{f:.{digits}g}")
        if s <= f:
            if abs(s - f) <= 0.02 * f:
                return max(s, 1e-6)
    return f


def _largest_fraction(cost_of: Callable[[float], float], level: float, total: int) -> float:
    """The largest fraction f in (0, 1] with cost_of(f) <= level; when even one item of the
    ``total`` (tokens or blocks) costs more, the fraction of one item."""
    lo, hi = 1.0 / total, 1.0
    if cost_of(hi) <= level:
        return 1.0
    if cost_of(lo) > level:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost_of(mid) <= level:
            lo = mid
        else:
            hi = mid
    f = _round_down(lo)
    return f if cost_of(f) <= level else lo


# --- per-pattern candidate makers ---------------------------------------------------------------
def _a_shape(n: int, level: float) -> list[dict]:
    f = _largest_fraction(lambda x: static_cost("a_shape", {"n_init": SINK_TOKENS, "n_local": Frac(x)}, n),
                          level, n)
    return [{"n_init": SINK_TOKENS, "n_local": Frac(f)}]


def _sliding(n: int, level: float) -> list[dict]:
    f = _largest_fraction(lambda x: static_cost("sliding_window", {"window": Frac(x)}, n), level, n)
    return [{"window": Frac(f)}]


def _block_sparse(n: int, level: float) -> list[dict]:
    f = _largest_fraction(lambda x: static_cost("block_sparse", {"top_k": Frac(x)}, n), level, -(-n // BLOCK))
    return [{"top_k": Frac(f)}]


def _sample_attention(n: int, level: float) -> list[dict]:
    def window_cost(x: float) -> float:
        blocks, _ = get_pattern("sample_attention").cost(n, {"alpha": 0.9, "window_frac": x}, BLOCK, BLOCK)
        return blocks / causal_blocks(n)
    f = _largest_fraction(window_cost, level / 2, n)
    return [{"alpha": a, "window_frac": f} for a in SA_ALPHAS]


def _geometric(lo: float, hi: float, count: int) -> list[float]:
    if count <= 1 or hi <= lo:
        return [lo]
    r = (hi / lo) ** (1 / (count - 1))
    return [lo * r ** i for i in range(count)]


def vertical_slash_grid(n: int, points: int = 8) -> list[dict]:
    """vertical_slash candidates: a grid spanning the cost range, not sized per level.

    Its positions are data-dependent and its ``cost`` function is a worst case far above real
    selections (measured on SmolLM2: the 100 forced diagonals merge into about 3 blocks per
    query block; further diagonals cost from under one to one block each, depending on how
    they cluster), so no static sizing is reliable. Two families, as fractions of the length:
    slash-heavy (``slash_size`` geometric from the forced 100 to N/2, ``vertical_size`` a
    quarter of it) and vertical-heavy (only the forced diagonals, ``vertical_size`` geometric
    from 60 to N/4). The search measures each one's real cost per head."""
    from mcompile.kernels.patterns.vertical_slash import FORCED_DIAGONALS, MIN_VERTICAL
    out = []
    for ks in _geometric(FORCED_DIAGONALS, n / 2, points):
        kv = max(MIN_VERTICAL, ks / 4)
        out.append({"vertical_size": Frac(min(1.0, _round_down(kv / n))),
                    "slash_size": Frac(min(1.0, _round_down(ks / n)))})
    for kv in _geometric(2 * MIN_VERTICAL, n / 4, max(2, points - 2)):
        out.append({"vertical_size": Frac(min(1.0, _round_down(kv / n))),
                    "slash_size": Frac(min(1.0, _round_down(FORCED_DIAGONALS / n)))})
    return out


SIZERS: dict[str, Callable[[int, float], list[dict]]] = {
    "a_shape": _a_shape,
    "sliding_window": _sliding,
    "block_sparse": _block_sparse,
    "sample_attention": _sample_attention,
}


def _resolved_key(pattern: str, params: dict, n: int) -> tuple:
    """Two candidates that select the same thing at length n are the same candidate: budgets
    are compared as the counts they resolve to at n."""
    from mcompile.kernels.patterns import resolve_budget as kernel_budget
    found = get_pattern(pattern)
    p = found.validate(dict(params))
    if pattern == "block_sparse":
        return (pattern, get_pattern(pattern).sizes(n, p, BLOCK, BLOCK))
    if pattern == "vertical_slash":
        from mcompile.kernels.patterns.vertical_slash import budgets
        return (pattern, budgets(n, p))
    items = []
    for k in sorted(p):
        v = p[k]
        if k in found.budgets:
            v = kernel_budget(v, n, BLOCK if k == "top_k" else 1)
        elif k == "window_frac":
            v = max(1, math.ceil(v * n - 1e-9))
        items.append((k, repr(v)))
    return (pattern, tuple(items))


def make_candidates(n: int, levels: Sequence[float] = DEFAULT_LEVELS,
                    patterns: Iterable[str] | None = None,
                    include_minference_default: bool = True) -> list[Candidate]:
    """Candidates of every registered pattern (or of ``patterns``) for length ``n``.

    Deterministic order: by pattern (registry order), then level. Candidates that select the
    same thing at length ``n`` (e.g. budgets clamped by the pattern's minimums) appear once.

    Sizing, for each cost level ``L`` of ``levels``:
      * static patterns (``a_shape``, ``sliding_window``, ``block_sparse``) are sized exactly with
        the pattern's own ``cost`` function: the largest budget (a fraction of the length, so the
        relative cost stays the same at other lengths) whose cost is at most ``L``;
      * ``sample_attention``: the window is sized to ``L / 2`` with the cost function, two
        thresholds ``alpha``; its columns are data-dependent and measured;
      * ``vertical_slash``: the positions are data-dependent, and the pattern's ``cost`` is a
        worst case (every diagonal its own block) that is far above what real selections
        compute, so candidates are a grid of diagonal and column fractions spanning the cost
        range (:func:`vertical_slash_grid`), plus MInference's default (1000 columns, 6096
        diagonals); the search measures their real cost on the calibration data per head;
      * ``dense``: one candidate (cost 1, recall 1);
      * any other registered pattern: one candidate with its default parameters (measured)."""
    names = list(PATTERNS) if patterns is None else list(patterns)
    unknown = [p for p in names if p not in PATTERNS]
    if unknown:
        raise ValueError(f"unknown pattern(s) {unknown}; registered: {sorted(PATTERNS)}")
    seen: set = set()
    out: list[Candidate] = []

    def add(c: Candidate) -> None:
        k = _resolved_key(c.pattern, c.params, n)
        if k not in seen:
            seen.add(k)
            out.append(c)

    for name in names:
        if name == "dense":
            add(Candidate("dense", {}, 1.0))
            continue
        if name == "vertical_slash":
            if include_minference_default:
                add(Candidate("vertical_slash", dict(MINFERENCE_DEFAULT), None, "minference-default"))
            for params in vertical_slash_grid(n):
                add(Candidate("vertical_slash", params, None, "grid"))
            continue
        sizer = SIZERS.get(name)
        if sizer is None:   # a pattern registered later: its defaults, cost measured
            defaults = {k: v for k, v in get_pattern(name).defaults.items()}
            add(Candidate(name, defaults, None, "defaults"))
            continue
        for level in sorted(levels):
            for params in sizer(n, level):
                add(Candidate(name, params, float(level)))
    return out


def minference_default_index(candidates: Sequence[Candidate]) -> int | None:
    for i, c in enumerate(candidates):
        if c.tag == "minference-default":
            return i
    return None
