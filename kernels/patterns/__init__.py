"""Sparse attention patterns: online index builders ending in the unified
:class:`~mcompile.kernels.index.SparseIndex`, one file per pattern, plus a registry.

Built-in patterns (each module's docstring says where its parameters and deviations are described):
``dense``, ``sliding_window``, ``a_shape``, ``vertical_slash``, ``block_sparse``,
``sample_attention``. A new pattern is one file that calls :func:`register_pattern` at import
and one import line below.

:func:`build_layer_index` builds one index over all query heads of a layer from its
:class:`~mcompile.plan.LayerPlan`: heads sharing pattern and parameters are built together
in one batched call (a Python loop over groups, never over heads), each group's index padded
to the common widths and written into the layer's index.
"""
from __future__ import annotations

import functools
from collections import OrderedDict

import torch

from ..index import SparseIndex

NO_WINDOW = 1 << 30   # a window no sequence reaches: the heads of a layer without one
from ._common import Law, device_index, index_cost, resolve_budget
from .registry import PATTERNS, Pattern, get_pattern, register_pattern, unregister_pattern, validate_params

# built-in patterns register themselves on import
from . import dense, sliding_window, a_shape, vertical_slash, block_sparse, sample_attention  # noqa: E402,F401

__all__ = ["Law", "PATTERNS", "Pattern", "register_pattern", "unregister_pattern", "get_pattern", "validate_params",
           "build_layer_index", "build_head_group", "index_cost", "resolve_budget",
           "layer_sizes"]


def _plan_heads(layer_plan):
    heads = getattr(layer_plan, "heads", layer_plan)
    return list(heads)


def _groups(layer_plan) -> list[tuple[str, dict, list[int]]]:
    """(pattern, params, heads) per group, in first-head order."""
    if hasattr(layer_plan, "groups"):
        out = []
        for key, heads in layer_plan.groups().items():
            hp = layer_plan.heads[heads[0]]
            out.append((hp.pattern, dict(hp.params), list(heads)))
        return out
    groups: dict = {}
    for i, hp in enumerate(_plan_heads(layer_plan)):
        groups.setdefault(hp.key(), (hp.pattern, dict(hp.params), []))[2].append(i)
    return list(groups.values())


STATIC_CACHE_ENTRIES = 64
_static_indexes: OrderedDict = OrderedDict()   # static pattern and shape -> its (broadcast) index


def build_head_group(q: torch.Tensor, k: torch.Tensor, pattern: str, params: dict | None,
                     heads=None, block_m: int = 64, block_n: int = 64,
                     scale: float | None = None) -> SparseIndex:
    """The index of one group of query heads sharing pattern and params: (B, len(heads), ...).

    A static pattern's index depends on the length and its parameters alone, so it is built
    once per shape and device and kept (the most recent ``STATIC_CACHE_ENTRIES``): later calls
    cost no launches and no host work. Its tensors are broadcast views, which cannot be written
    in place. Nothing is kept while a CUDA graph captures (its memory belongs to the graph)."""
    found = get_pattern(pattern)
    build = functools.partial(found.build, q, k, params or {}, heads=heads, block_m=block_m,
                              block_n=block_n, scale=scale)
    if found.dynamic or (q.is_cuda and torch.cuda.is_current_stream_capturing()):
        return build()
    B, Hq, N, _ = q.shape
    key = (pattern, repr(sorted((params or {}).items())), B, Hq if heads is None else len(heads), N,
           block_m, block_n, str(q.device))
    index = _static_indexes.get(key)
    if index is None:
        index = _static_indexes[key] = build()
        if len(_static_indexes) > STATIC_CACHE_ENTRIES:
            _static_indexes.popitem(last=False)
    _static_indexes.move_to_end(key)
    return index


def layer_sizes(n: int, layer_plan, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    """(MAX_BLOCKS, MAX_COLUMNS) of :func:`build_layer_index`'s result at length n."""
    mb = mc = 0
    for name, params, _ in _groups(layer_plan):
        b, c = get_pattern(name).sizes(n, params, block_m, block_n)
        mb, mc = max(mb, b), max(mc, c)
    return mb, mc


def build_layer_index(q: torch.Tensor, k: torch.Tensor, layer_plan, block_m: int = 64,
                      block_n: int = 64, *, scale: float | None = None) -> SparseIndex:
    """One :class:`SparseIndex` over all query heads of a layer.

    q (B, Hq, N, D) and k (B, Hkv, N, D) after RoPE (GQA: query head h reads KV head
    ``h // (Hq // Hkv)``); ``layer_plan`` a ``LayerPlan`` with one ``HeadPlan`` per query head;
    ``scale`` the softmax scale the online builders score with (default ``1/sqrt(D)``).

    No host synchronisation: all sizes follow from N and the parameters. When one group
    covers every head its index is returned as built (it may hold broadcast views, e.g. the
    static patterns' single row of offsets); otherwise the layer's index is materialised at
    the widest group's widths and each group written into its heads."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"build_layer_index: q and k must be (B, H, N, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    B, Hq, N, D = q.shape
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D or Hq % k.shape[1]:
        raise ValueError(f"build_layer_index: k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    heads_plan = _plan_heads(layer_plan)
    if len(heads_plan) != Hq:
        raise ValueError(f"build_layer_index: the plan has {len(heads_plan)} heads, q has {Hq}")
    groups = _groups(layer_plan)
    if len(groups) == 1:
        name, params, heads = groups[0]
        return build_head_group(q, k, name, params, None, block_m, block_n, scale)

    built = [(heads, build_head_group(q, k, name, params, heads, block_m, block_n, scale))
             for name, params, heads in groups]
    mb = max(ix.max_blocks for _, ix in built)
    mc = max(ix.max_columns for _, ix in built)
    nqb = built[0][1].num_q_blocks
    dev = q.device
    bc = torch.zeros(B, Hq, nqb, dtype=torch.int32, device=dev)
    cc = torch.zeros(B, Hq, nqb, dtype=torch.int32, device=dev)
    bo = torch.zeros(B, Hq, nqb, mb, dtype=torch.int32, device=dev)
    ci = torch.zeros(B, Hq, nqb, mc, dtype=torch.int32, device=dev)
    for heads, ix in built:
        h = device_index(heads, dev)
        bc[:, h] = ix.block_count
        cc[:, h] = ix.column_count
        if ix.max_blocks:
            bo[:, h, :, :ix.max_blocks] = ix.block_offset
        if ix.max_columns:
            ci[:, h, :, :ix.max_columns] = ix.column_index
    window = None
    if any(ix.window is not None for _, ix in built):   # per-head windows; others unbounded
        window = torch.full((Hq,), NO_WINDOW, dtype=torch.int32, device=dev)
        for heads, ix in built:
            if ix.window is not None:
                window[device_index(heads, dev)] = ix.window
    return SparseIndex(bc, bo, cc, ci, block_m, block_n, window)
