"""``dense``: full causal attention expressed as an index (every key block up to the
diagonal, aligned to ``block_n``). No parameters.

The index is :func:`mcompile.kernels.index.dense_causal_index`: one row of block starts
broadcast over batch, heads and query blocks, the counts doing the causal cut.
"""
from __future__ import annotations

import torch

from ..index import SparseIndex, dense_causal_index, num_q_blocks
from ._common import causal_mask, cdiv, plot_selection, with_defaults
from .registry import Pattern, register_or_demo

NAME = "dense"
DEFAULTS: dict = {}


def validate(params: dict | None) -> dict:
    return with_defaults(params, DEFAULTS, (), NAME)


def spans(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int, None]:
    """(sink_end, local, window) of :class:`~mcompile.kernels.index.BlockRanges`: a window as
    long as the sequence, every key up to the diagonal."""
    return 0, max(1, n), None


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    return cdiv(n, block_n), 0


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    nqb = num_q_blocks(n, block_m)
    return sum((min(n, (m + 1) * block_m) - 1) // block_n + 1 for m in range(nqb)), 0


def build(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    validate(params)
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    return dense_causal_index(B, H, N, block_m, block_n, device=q.device)


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    B, Hq, N, _ = q.shape
    H = Hq if heads is None else len(heads)
    return causal_mask(N, q.device).expand(B, H, N, N).clone()


def demo(path: str = "dense.png", n: int = 1024, **params) -> str:
    q = torch.zeros(1, 1, n, 64)
    return plot_selection(path, NAME, build, q, q, params)


PATTERN = register_or_demo(Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, colour="#444444", short="dense",
                                   dynamic=False, defaults=DEFAULTS, spans=spans, doc=__doc__), __name__)
