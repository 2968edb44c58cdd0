"""``sliding_window``: each query row ``r`` sees keys ``[r - window + 1, r]`` (transformers'
``kv > q - window``), for the local layers of Gemma 2/3, Mistral, ... Blocks only, static.

Parameter: ``window`` (tokens: a count >= 1, or a fraction of N).

Granularity: the index lists key blocks per query block of ``block_m`` rows, so what it can
express is the union of the rows' windows, ``[start - window + 1, last]`` for a query block
``[start, last]``: the first row of a block is exact, the last row also sees up to
``block_m - 1`` keys older than its window. The blocks tile that union exactly (forward from
its first key; the part past the diagonal is masked by the kernel), so
``reference_mask`` (the per-block union) equals the index, and :func:`exact_mask` (the true
per-row window) is contained in it. Exact per-row windows need the kernel to mask
``key <= row - window`` as well (a lower bound per row), which the current index cannot say.
"""
from __future__ import annotations

import torch

from ..index import SparseIndex
from ._common import (block_union_mask, check_budget, plot_mask, resolve_budget,
                      static_index, window_blocks, with_defaults)
from .registry import Pattern, register_pattern

NAME = "sliding_window"
DEFAULTS = {"window": 4096}


def validate(params: dict | None) -> dict:
    p = with_defaults(params, DEFAULTS, ("window",), NAME)
    p["window"] = check_budget("window", p["window"], minimum=1)
    return p


def _window(n: int, params: dict) -> int:
    return max(1, resolve_budget(params["window"], n))


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    p = validate(params)
    count, offs, _ = window_blocks(n, _window(n, p), block_m, block_n, "cpu")
    return offs.shape[-1], 0


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    p = validate(params)
    count, _, _ = window_blocks(n, _window(n, p), block_m, block_n, "cpu")
    return int(count.sum()), 0


def build(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    p = validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    count, offs, _ = window_blocks(N, _window(N, p), block_m, block_n, q.device)
    return static_index(count, offs, B, H, block_m, block_n)


def exact_mask(n: int, window: int, device=None) -> torch.Tensor:
    """(N, N) the true per-row sliding window (what transformers' mask means)."""
    r = torch.arange(n, device=device)
    return (r.view(1, -1) <= r.view(-1, 1)) & (r.view(1, -1) > r.view(-1, 1) - window)


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    p = validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    m = block_union_mask(exact_mask(N, _window(N, p), q.device), block_m)
    return m.expand(B, H, N, N).clone()


def demo(path: str = "sliding_window.png", n: int = 1024, **params) -> str:
    p = validate(params or {"window": 256})
    q = torch.zeros(1, 1, n, 64)
    from ..reference import index_to_mask
    mask = index_to_mask(build(q, q, p), n)[0, 0]
    b, _ = cost(n, p)
    return plot_mask(mask, path, f"sliding_window window={p['window']}  N={n}: {b} blocks")


PATTERN = Pattern(NAME, build, validate, sizes, cost, reference_mask, demo,
                                   dynamic=False, defaults=DEFAULTS, doc=__doc__)

if __name__ == "__main__":      # python -m mcompile.kernels.patterns.<name> [out.png]
    import sys
    print(demo(sys.argv[1] if len(sys.argv) > 1 else f"{NAME}.png"))
else:
    register_pattern(PATTERN)
