"""``sliding_window``: each query row ``r`` sees keys ``[r - window + 1, r]`` (transformers'
``kv > q - window``), for the local layers of Gemma 2/3, Mistral, ... Exact per row, static.

Parameter: ``window`` (tokens: a count >= 1, or a fraction of N).

The index lists, per query block ``[start, last]`` of ``block_m`` rows, the key blocks that
tile the union of its rows' windows, ``[start - window + 1, last]`` (forward from its first
key), and carries ``window`` itself: the kernel then also drops keys ``<= row - window`` in
every row, so the result is the true per-row window (:func:`exact_mask`), not the block
union. The cost is the union's blocks: ``ceil((window - 1 + block_m) / block_n)`` or so per
query block, O(N x window) for the layer instead of O(N^2).
"""
from __future__ import annotations

import torch

from ..index import SparseIndex, span_blocks
from ._common import plot_selection, resolve_budget, static_index, with_budgets
from .registry import Pattern, register_or_demo

NAME = "sliding_window"
DEFAULTS = {"window": 4096}
BUDGETS = {"window": 1}


def validate(params: dict | None) -> dict:
    return with_budgets(params, DEFAULTS, BUDGETS, NAME)


def _window(n: int, params: dict) -> int:
    return max(1, resolve_budget(params["window"], n))


def spans(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int, int]:
    """(sink_end, local, window) of :class:`~mcompile.kernels.index.BlockRanges` at length n:
    no sinks, the window's union, and the window itself for the per-row bound."""
    window = _window(n, validate(params))
    return 0, window, window


def _blocks(n: int, params: dict | None, block_m: int, block_n: int, device):
    _, local, _ = spans(n, params, block_m, block_n)
    return span_blocks(n, 0, local, block_m, block_n, device=device)


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    count, offs = _blocks(n, params, block_m, block_n, "cpu")
    return offs.shape[-1], 0


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    count, _ = _blocks(n, params, block_m, block_n, "cpu")
    return int(count.sum()), 0


def build(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    p = validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    count, offs = _blocks(N, p, block_m, block_n, q.device)
    return static_index(count, offs, B, H, block_m, block_n).with_window(_window(N, p))


def exact_mask(n: int, window: int, device=None) -> torch.Tensor:
    """(N, N) the true per-row sliding window (what transformers' mask means)."""
    r = torch.arange(n, device=device)
    return (r.view(1, -1) <= r.view(-1, 1)) & (r.view(1, -1) > r.view(-1, 1) - window)


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    p = validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    return exact_mask(N, _window(N, p), q.device).expand(B, H, N, N).clone()


def demo(path: str = "sliding_window.png", n: int = 1024, **params) -> str:
    p = validate(params or {"window": 256})
    q = torch.zeros(1, 1, n, 64)
    return plot_selection(path, f"{NAME} window={p['window']}", build, q, q, p)


PATTERN = register_or_demo(Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, colour="#9467bd",
                                   dynamic=False, defaults=DEFAULTS, budgets=BUDGETS, spans=spans, doc=__doc__), __name__)
