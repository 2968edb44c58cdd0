"""Sparse attention patterns: online index builders ending in the unified
:class:`~mcompile.kernels.index.SparseIndex`, one file per pattern, plus a registry.

Built-in patterns (each module's docstring says where its parameters and deviations are described):
``dense``, ``sliding_window``, ``a_shape``, ``vertical_slash``, ``block_sparse``,
``sample_attention``. A new pattern is one file that calls :func:`register_pattern` at import
and one import line below.

:func:`build_layer_index` builds one index over all query heads of a layer from its
:class:`~mcompile.plan.LayerPlan`: heads sharing pattern and parameters are built together
in one batched call (a Python loop over groups, never over heads), and so are the heads of a
pattern whose budgets may differ per head (``Pattern.per_head``); the heads of static
patterns with spans (dense, A-shape, sliding windows) are one :class:`BlockRanges` whatever
their budgets; each part is padded to the common widths and written into the layer's index.
The runtime instead takes a layer in the parts of :func:`index_parts`, each built by
:func:`build_part` and run by the kernel over its own heads, so no layer-wide index is ever
materialised, and the static heads' blocks are computed by the kernel, never stored.
"""
from __future__ import annotations

import functools

import torch

from ..index import NO_WINDOW, BlockRanges, SparseIndex, index_memory_bytes, num_q_blocks
from ._common import Law, StaticCache, device_index, index_cost, resolve_budget, use_triton
from .registry import PATTERNS, Pattern, get_pattern, register_pattern, unregister_pattern, validate_params

# built-in patterns register themselves on import
from . import dense, sliding_window, a_shape, vertical_slash, block_sparse, sample_attention  # noqa: E402,F401

__all__ = ["Law", "PATTERNS", "Pattern", "register_pattern", "unregister_pattern", "get_pattern", "validate_params",
           "build_layer_index", "build_head_group", "build_part", "device_index", "index_cost",
           "index_parts", "resolve_budget", "head_sizes", "layer_sizes", "per_plan"]


def _plan_heads(layer_plan):
    heads = getattr(layer_plan, "heads", layer_plan)
    return list(heads)


_PER_PLAN: dict = {}      # (id(plan), what) -> (plan, value): host work done once per plan


def per_plan(layer_plan, what: tuple, make):
    """``make()``, kept per plan object (plans are immutable and live as long as their sites;
    the entry holds the plan, so its id is not reused while the entry lives)."""
    key = (id(layer_plan), *what)
    hit = _PER_PLAN.get(key)
    if hit is None or hit[0] is not layer_plan:
        if len(_PER_PLAN) > 4096:
            _PER_PLAN.clear()
        hit = _PER_PLAN[key] = (layer_plan, make())
    return hit[1]


def _groups(layer_plan) -> list[tuple[str, dict | list[dict], list[int]]]:
    """(pattern, params, heads) per group of heads built in one call, in first-head order:
    heads that share pattern and parameters, apart from those the pattern takes per head
    (``Pattern.per_head``; ``params`` then one dict per head where they differ). Kept per
    plan: the caller must not change what it returns."""
    return per_plan(layer_plan, ("groups",), lambda: _make_groups(layer_plan))


def _make_groups(layer_plan) -> list[tuple[str, dict | list[dict], list[int]]]:
    groups: dict = {}
    for i, hp in enumerate(_plan_heads(layer_plan)):
        shared = {k: v for k, v in hp.params.items() if k not in get_pattern(hp.pattern).per_head}
        group = groups.setdefault((hp.pattern, tuple(sorted(shared.items()))), (hp.pattern, [], []))
        group[1].append(dict(hp.params))
        group[2].append(i)
    return [(name, params[0] if all(p == params[0] for p in params) else params, heads)
            for name, params, heads in groups.values()]


_static_indexes = StaticCache()   # static pattern and shape -> its (broadcast) index
_block_ranges = StaticCache()     # (plan id, heads, shape) -> (plan, BlockRanges of those heads)


def build_head_group(q: torch.Tensor, k: torch.Tensor, pattern: str, params: dict | list | None,
                     heads=None, block_m: int = 64, block_n: int = 64,
                     scale: float | None = None) -> SparseIndex:
    """The index of one group of query heads: (B, len(heads), ...). ``params`` one dict for
    every head, or one per head where they differ in the pattern's ``per_head`` parameters.

    A static pattern's index depends on the length and its parameters alone, so it is built
    once per shape and device and kept (``_common.StaticCache``): later calls cost no launches
    and no host work. Its tensors are broadcast views, which cannot be written in place."""
    found = get_pattern(pattern)
    build = functools.partial(found.build, q, k, params or {}, heads=heads, block_m=block_m,
                              block_n=block_n, scale=scale)
    if found.dynamic:
        return build()
    B, Hq, N, _ = q.shape
    key = (pattern, repr(sorted((params or {}).items())), B, Hq if heads is None else len(heads), N,
           block_m, block_n, str(q.device))
    return _static_indexes.get(key, build, q.device)


def head_sizes(n: int, layer_plan, block_m: int = 64, block_n: int = 64) -> list[tuple[int, int]]:
    """(MAX_BLOCKS, MAX_COLUMNS) each head's pattern needs at length n, one pair a query head
    (kept per plan and length: the runtime asks every call)."""
    def make():
        return [get_pattern(hp.pattern).sizes(n, hp.params, block_m, block_n) for hp in _plan_heads(layer_plan)]
    return per_plan(layer_plan, ("head sizes", n, block_m, block_n), make)


def layer_sizes(n: int, layer_plan, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    """(MAX_BLOCKS, MAX_COLUMNS) of :func:`build_layer_index`'s result at length n: the widest
    head's of each."""
    sizes = head_sizes(n, layer_plan, block_m, block_n)
    return max(b for b, _ in sizes), max(c for _, c in sizes)


def build_layer_index(q: torch.Tensor, k: torch.Tensor, layer_plan, block_m: int = 64,
                      block_n: int = 64, *, scale: float | None = None) -> SparseIndex:
    """One :class:`SparseIndex` over all query heads of a layer.

    q (B, Hq, N, D) and k (B, Hkv, N, D) after RoPE (GQA: query head h reads KV head
    ``h // (Hq // Hkv)``); ``layer_plan`` a ``LayerPlan`` with one ``HeadPlan`` per query head;
    ``scale`` the softmax scale the online builders score with (default ``1/sqrt(D)``).

    No host synchronisation: all sizes follow from N and the parameters. The launches follow
    the patterns, not the heads or their budgets: each online pattern's heads are built in one
    call (:func:`_groups`), and the heads with spans are one :class:`BlockRanges`, materialised
    here (:meth:`BlockRanges.to_index`). When one part covers every head it is returned as
    built (it may hold broadcast views); otherwise the layer's index is materialised at the
    widest part's widths and each part written into its heads."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"build_layer_index: q and k must be (B, H, N, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    B, Hq, N, D = q.shape
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D or Hq % k.shape[1]:
        raise ValueError(f"build_layer_index: k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    heads_plan = _plan_heads(layer_plan)
    if len(heads_plan) != Hq:
        raise ValueError(f"build_layer_index: the plan has {len(heads_plan)} heads, q has {Hq}")
    parts = [(heads, build_part(q, k, layer_plan, heads, block_m, block_n, scale=scale))
             for heads in index_parts(layer_plan, N, B, None, block_m, block_n)]
    parts = [(heads, ix.to_index().expand(B, len(heads)) if isinstance(ix, BlockRanges) else ix)
             for heads, ix in parts]
    if len(parts) == 1:             # one part: all the heads, in order
        return parts[0][1]
    return _assemble(parts, B, Hq, q.device, block_m, block_n)


def index_parts(layer_plan, n: int, batch: int = 1, budget: int | None = None, block_m: int = 64,
                block_n: int = 64) -> list[tuple[int, ...]]:
    """The query heads of a layer as the parts its index is built in, each ascending: every
    online pattern's group of heads (:func:`_groups`), then the heads whose patterns have spans,
    all together (one :class:`BlockRanges`, one launch, whatever their widths), then each
    other static pattern's group. With a
    ``budget`` (bytes), a part whose index at length ``n`` would take more is split: its heads
    widest first (:func:`head_sizes`: one head with many columns widens its part's index)
    while the next still fits, at least one a part; a pattern whose lists are broadcast over
    the query blocks (``Pattern.broadcast_lists``) costs its counts and one column list a head.
    Kept per plan, length and budget: no host work per call."""
    def make() -> list[tuple[int, ...]]:
        groups = _groups(layer_plan)
        sizes = head_sizes(n, layer_plan, block_m, block_n)
        plans = _plan_heads(layer_plan)

        def cost(heads) -> int:
            if all(get_pattern(plans[h].pattern).spans is not None for h in heads):
                return 0                    # BlockRanges: no index, never split
            columns = max(sizes[h][1] for h in heads)
            if all(get_pattern(plans[h].pattern).broadcast_lists for h in heads):
                return 4 * batch * len(heads) * (2 * num_q_blocks(n, block_m) + columns)
            return index_memory_bytes(batch, len(heads), n, max(sizes[h][0] for h in heads), columns, block_m)

        parts = [heads for name, _, heads in groups if get_pattern(name).dynamic]
        ranged = sorted(h for name, _, heads in groups if get_pattern(name).spans is not None for h in heads)
        parts += [ranged] if ranged else []
        parts += [heads for name, _, heads in groups if not get_pattern(name).dynamic
                  and get_pattern(name).spans is None]
        if budget is None:
            return [tuple(p) for p in parts]

        split = []
        for part in parts:
            left = sorted(part, key=lambda h: (-sum(sizes[h]), h))
            while left:
                take = 1
                while take < len(left) and cost(left[:take + 1]) <= budget:
                    take += 1
                split.append(tuple(sorted(left[:take])))
                left = left[take:]
        return split
    return per_plan(layer_plan, ("index parts", n, batch, budget, block_m, block_n), make)


def build_part(q: torch.Tensor, k: torch.Tensor, layer_plan, heads: tuple[int, ...], block_m: int = 64,
               block_n: int = 64, *, scale: float | None = None) -> SparseIndex | BlockRanges:
    """The index over ``heads`` (one part of :func:`index_parts`: heads of one online group,
    or static heads): (B, len(heads), ...), or broadcast views where the part covers every
    head of a static pattern, or the :class:`BlockRanges` of heads whose patterns have spans
    (the kernel computes their blocks). q and k hold all the layer's heads."""
    groups = _groups(layer_plan)
    inside = per_plan(layer_plan, ("part groups", heads), lambda: _part_groups(groups, heads))
    if all(get_pattern(name).spans is not None for name, _, _ in inside):
        return _ranges_part(q, layer_plan, inside, heads, block_m, block_n)
    name, params, hs = inside[0]          # one group: its heads built in one call
    return build_head_group(q, k, name, params, None if len(hs) == q.shape[1] else hs, block_m, block_n, scale)


def _part_groups(groups, heads: tuple[int, ...]) -> list[tuple[str, dict | list[dict], list[int]]]:
    """The groups restricted to ``heads`` (those with none left dropped), per-head parameter
    lists restricted with them."""
    wanted, out = set(heads), []
    for name, params, hs in groups:
        keep = [i for i, h in enumerate(hs) if h in wanted]
        if keep:
            out.append((name, [params[i] for i in keep] if isinstance(params, list) else params,
                        [hs[i] for i in keep]))
    return out


def _ranges_part(q, layer_plan, inside, heads: tuple[int, ...], block_m: int, block_n: int) -> BlockRanges:
    """The :class:`BlockRanges` of ``heads`` (ascending), whose groups' patterns all have
    spans: each head's ``Pattern.spans`` at q's length, made once per plan, heads and shape and
    kept (a few bytes)."""
    n = q.shape[2]

    def make():
        spans = {}
        for name, params, hs in inside:
            for i, h in enumerate(hs):
                p = params[i] if isinstance(params, list) else params
                spans[h] = get_pattern(name).spans(n, p or {}, block_m, block_n)
        return layer_plan, BlockRanges.make([spans[h][:2] for h in heads], n, block_m, block_n,
                                            [spans[h][2] for h in heads], q.device)

    # the entry holds the plan, so its id is not reused while the entry lives
    key = (id(layer_plan), heads, n, block_m, block_n, str(q.device))
    plan, ranges = _block_ranges.get(key, make, q.device)
    if plan is not layer_plan:
        _, ranges = make()
    return ranges


def _assemble(parts: list, B: int, H: int, dev, block_m: int, block_n: int) -> SparseIndex:
    """The index over H heads from (heads, index over those heads) parts covering each head
    once: materialised at the widest part's widths, each part written into its heads (on the
    Triton path one launch a part, ``_triton_assemble``)."""
    mb = max(ix.max_blocks for _, ix in parts)
    mc = max(ix.max_columns for _, ix in parts)
    nqb = parts[0][1].num_q_blocks
    # every head's counts are written below, and entries past the counts are never read
    bc = torch.empty(B, H, nqb, dtype=torch.int32, device=dev)
    cc = torch.empty(B, H, nqb, dtype=torch.int32, device=dev)
    bo = torch.empty(B, H, nqb, mb, dtype=torch.int32, device=dev)
    ci = torch.empty(B, H, nqb, mc, dtype=torch.int32, device=dev)
    # per-head windows where any part has them (the others unbounded); every head is written
    has_window = any(ix.window is not None for _, ix in parts)
    window = torch.empty(H, dtype=torch.int32, device=dev) if has_window else None
    if use_triton(dev):
        from . import _triton_assemble   # imports triton: only where its kernels launch
        for heads, ix in parts:
            _triton_assemble.write_part(device_index(heads, dev), ix, bc, bo, cc, ci, window, NO_WINDOW)
        return SparseIndex(bc, bo, cc, ci, block_m, block_n, window)
    for heads, ix in parts:
        h = device_index(heads, dev)
        bc[:, h] = ix.block_count
        cc[:, h] = ix.column_count
        if ix.max_blocks:
            bo[:, h, :, :ix.max_blocks] = ix.block_offset
        if ix.max_columns:
            ci[:, h, :, :ix.max_columns] = ix.column_index
        if has_window:
            window[h] = NO_WINDOW if ix.window is None else ix.window
    return SparseIndex(bc, bo, cc, ci, block_m, block_n, window)
