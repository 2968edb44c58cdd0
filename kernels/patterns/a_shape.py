"""``a_shape`` (StreamingLLM / MInference's "stream_llm"): attention sinks plus a local
window. Static, blocks only.

Parameters: ``n_init`` sink tokens (count >= 0 or a fraction of N), ``n_local`` window tokens
(count >= 1 or a fraction of N). MInference's A-shape kernel also works at block granularity.

Selection per query block ``[start, last]``:
  * sinks: keys ``[0, S)`` with ``S = block_n * ceil(n_init / block_n)`` (whole blocks, as the
    kernel computes them anyway);
  * local: the union of the rows' windows ``[start - n_local + 1, last]`` (as in
    ``sliding_window``), tiled forward from its first key;
  * when the two meet (``start - n_local + 1 <= S``) one range ``[0, last]`` in aligned blocks.
Like ``sliding_window``, the local part is the per-query-block union of the rows' windows (a
row sees up to ``block_m - 1`` keys older than its own window); sinks are whole key blocks.
These are :class:`~mcompile.kernels.index.BlockRanges` spans (:func:`spans`): the runtime
passes the two numbers per head and the kernel computes the blocks.
"""
from __future__ import annotations

import torch

from ..index import SparseIndex, span_blocks
from ._common import block_union_mask, cdiv, plot_selection, resolve_budget, static_index, with_budgets
from .registry import Pattern, register_or_demo

NAME = "a_shape"
DEFAULTS = {"n_init": 128, "n_local": 4096}
BUDGETS = {"n_init": 0, "n_local": 1}     # the least count of each


def validate(params: dict | None) -> dict:
    return with_budgets(params, DEFAULTS, BUDGETS, NAME)


def spans(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int, None]:
    """(sink_end, local, window) of :class:`~mcompile.kernels.index.BlockRanges` at length n:
    the sinks in whole key blocks, the local window in tokens, no per-row window."""
    p = validate(params)
    return (cdiv(resolve_budget(p["n_init"], n), block_n) * block_n,
            max(1, resolve_budget(p["n_local"], n)), None)


def _blocks(n: int, params: dict, block_m: int, block_n: int, device):
    sink_end, local, _ = spans(n, params, block_m, block_n)
    return span_blocks(n, sink_end, local, block_m, block_n, device=device)


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    count, offs = _blocks(n, validate(params), block_m, block_n, "cpu")
    return offs.shape[-1], 0


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    count, _ = _blocks(n, validate(params), block_m, block_n, "cpu")
    return int(count.sum()), 0


def build(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    p = validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    count, offs = _blocks(N, p, block_m, block_n, q.device)
    return static_index(count, offs, B, H, block_m, block_n)


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    p = validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    n_init = resolve_budget(p["n_init"], N)
    n_local = max(1, resolve_budget(p["n_local"], N))
    r = torch.arange(N, device=q.device)
    local = (r.view(1, -1) <= r.view(-1, 1)) & (r.view(1, -1) > r.view(-1, 1) - n_local)
    m = block_union_mask(local, block_m)
    sink = r < cdiv(n_init, block_n) * block_n
    m = (m | sink.view(1, -1)) & (r.view(1, -1) <= r.view(-1, 1))
    return m.expand(B, H, N, N).clone()


def demo(path: str = "a_shape.png", n: int = 1024, **params) -> str:
    p = validate(params or {"n_init": 64, "n_local": 192})
    q = torch.zeros(1, 1, n, 64)
    return plot_selection(path, f"{NAME} n_init={p['n_init']} n_local={p['n_local']}", build, q, q, p)


PATTERN = register_or_demo(Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, colour="#1f77b4",
                                   dynamic=False, defaults=DEFAULTS, budgets=BUDGETS, spans=spans, doc=__doc__), __name__)
