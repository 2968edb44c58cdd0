"""Run one attention site: decide dense or sparse from the plan, the length, the mask and the
dtype, then call the sparse kernel or dense SDPA.

The decision happens inside an opaque custom op at run time, so a new prompt length never
recompiles. Dense fallbacks rebuild exactly the mask transformers would have built, from what
the mask means (``passes.masks.MaskInfo``), so results match eager.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from . import reporting as _report
from .cuda_graphs import refuse_capture
from .plan import LayerPlan

log = logging.getLogger("mcompile")


SPARSE_DTYPES_CUDA = (torch.float16, torch.bfloat16)
SPARSE_HEAD_DIMS_CUDA = (64, 128, 256)
# One part of a call's index (patterns.index_parts) is built for at most this many bytes (2 GiB:
# 4 chunks at 512K keep the peak under dense and cost 5% of the speed; 1 GiB cost 11%,
# benchmarks/index_chunks.py): above it the part's heads are split, each split's index built,
# used and freed before the next. The vertical-slash index holds min(slash_size, key blocks)
# block slots per query block, 232 MB per head at 512K tokens, which would otherwise push the
# peak above dense attention's.
INDEX_BYTES_PER_CHUNK = 2 << 30
# A smaller layer's part may take as many bytes as its q, k and v hold, and at least this many
# (below it more splits cost launches for little memory: at 64 MiB SmolLM2's database at 32K
# would split three layers' vertical-slash heads, each split 8 launches more, its most mixed
# layer 27 where the target is 20). That database has a layer whose vertical-slash heads' index
# at 128K is 1.6 GiB (one of 32768 columns takes 269 MB alone).
INDEX_BYTES_FLOOR = 256 << 20


def index_budget(q, k, v) -> int:
    """Bytes one part's index may take in a call over these q, k, v."""
    held = sum(t.numel() * t.element_size() for t in (q, k, v))
    return min(INDEX_BYTES_PER_CHUNK, max(INDEX_BYTES_FLOOR, held))


@dataclass
class SiteConfig:
    """One rewritten site at run time: what the compile decided (the backend fills it in from
    the pass's ``AttentionSite`` and the options) and what its calls settle. The op's
    arguments carry the rest: the tensors and what the mask means."""
    key: str
    layer: int
    plan: LayerPlan | None          # None: no sparse plan for this layer
    min_len: int
    mask_recognised: bool = False   # dense calls rebuild the recognised mask; else SDPA's causal flag is the mask
    dropout_p: float = 0.0
    capture: Any = None             # a capture.CaptureWriter in capture mode
    debug: bool = False
    stats: bool = False
    dense_tail: int = 64            # the last this-many rows of a sparse call attend to every key
    cost_model: bool = True         # on the GPU, run dense where the measured cost model says sparse is slower
    cuda_graphs: bool = False       # calls replay from CUDA graphs: routes settle before recording, host time is free
    kv_keep: int = 0                # the cache keeps at most this many of the call's keys (option kv_compress; 0: all)
    _sparse: dict | None = None     # window -> cached (plan, report line) of the sparse path
    _costs: dict | None = None      # window -> cost_gate.SiteCost
    _routes: dict = field(default_factory=dict)   # call signature -> settled route (see run_site)
    _timed: dict = field(default_factory=dict)    # (q shape, window) -> (sparse ms, dense ms) of GPU time, timed once


_SITES: dict[str, SiteConfig] = {}


def register_site(cfg: SiteConfig) -> None:
    _SITES[cfg.key] = cfg


def site_config(key: str) -> SiteConfig:
    try:
        return _SITES[key]
    except KeyError:
        raise RuntimeError(f"mcompile: attention site {key!r} is not registered in this process "
                           "(a compiled graph was reused after mcompile state was cleared?)") from None


# --- dense ------------------------------------------------------------------------------------
def build_mask(q_len: int, kv_len: int, device, causal: bool, window: int, padding, q_offset: int, kv_offset: int):
    """The (B|1, 1, Lq, Lkv) bool mask transformers' sdpa_mask builds, from what it means."""
    q_pos = torch.arange(q_len, device=device)[:, None] + q_offset
    kv_pos = torch.arange(kv_len, device=device)[None, :] + kv_offset
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        mask &= kv_pos <= q_pos
    if window > 0:
        mask &= kv_pos > q_pos - window
    mask = mask[None, None]
    if padding is not None:
        mask = mask & padding[:, kv_pos[0]][:, None, None, :].to(torch.bool)
    return mask


def _is_plain_causal(q, k, padding, q_offset, kv_offset, is_causal, window) -> bool:
    """The recognised mask is plain causal over all keys."""
    n = q.shape[2]
    return (is_causal and (window <= 0 or window >= n) and q_offset == 0 and kv_offset == 0 and n == k.shape[2]
            and (padding is None or no_padding(padding, 0, n)))


_PADDING_SEEN: dict = {}    # id(padding) -> (weakref, version, start, stop, all keys valid)


def no_padding(padding: torch.Tensor, start: int, stop: int) -> bool:
    """Whether ``padding[:, start:stop]`` keeps every key. Every layer of one forward gets the
    same padding tensor, so the answer (one host sync) is kept for that tensor while it lives
    unchanged (its in-place version counter is part of the key): one sync per forward, not one
    per layer, where a sync stalls the host until the GPU drains."""
    import weakref
    seen = _PADDING_SEEN.get(id(padding))
    if seen is not None and seen[0]() is padding and seen[1:4] == (padding._version, start, stop):
        return seen[4]
    valid = bool(padding[:, start:stop].all())
    if len(_PADDING_SEEN) > 64:
        _PADDING_SEEN.clear()
    _PADDING_SEEN[id(padding)] = (weakref.ref(padding), padding._version, start, stop, valid)
    return valid


def dense_attention(cfg: SiteConfig, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale):
    gqa = q.shape[1] != k.shape[1]
    attn_mask = None  # SDPA's causal flag where it is the whole mask: flash / cuDNN, no N^2 mask
    if cfg.mask_recognised and not _is_plain_causal(q, k, padding, q_offset, kv_offset, is_causal, window):
        attn_mask = build_mask(q.shape[2], k.shape[2], q.device, is_causal, window, padding, q_offset, kv_offset)
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=cfg.dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=gqa)


# --- the decision -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _sparse_backend():
    """(build_part, sparse_attention_into) when the kernels are installed, else None."""
    try:
        from .kernels.ops import sparse_attention_into
        from .kernels.patterns import build_part
    except ImportError:
        return None
    return build_part, sparse_attention_into


def why_dense(cfg: SiteConfig, q, k, padding, q_offset, kv_offset, is_causal, window) -> str | None:
    """None when the sparse path applies, else the reason to run dense."""
    n = q.shape[2]
    # a sliding-window layer runs its exact window sparsely unless the plan says dense;
    # other layers need a sparse plan (None: not searched)
    if (cfg.plan is None and window <= 0) or (cfg.plan is not None and cfg.plan.is_dense):
        return "plan: dense"
    if not is_causal:
        return "not causal"
    if n != k.shape[2] or q_offset != 0 or kv_offset != 0:
        return "cache with past keys"
    if n < cfg.min_len:
        return f"short: {n} < min_len {cfg.min_len}"
    if cfg.dropout_p > 0:
        return "dropout"
    if q.is_cuda and (q.dtype not in SPARSE_DTYPES_CUDA or q.shape[-1] not in SPARSE_HEAD_DIMS_CUDA):
        return f"unsupported on GPU: {str(q.dtype).removeprefix('torch.')} d{q.shape[-1]}"
    if padding is not None and not no_padding(padding, kv_offset, kv_offset + n):
        return "padding in the batch"
    if _sparse_backend() is None:
        return "sparse kernels not available"
    return None


def index_work(index, batch: int, heads: int, n: int) -> tuple[int, int, int]:
    """(computed key blocks, computed columns, blocks of dense causal attention) of one call."""
    counts = [t.expand(batch, heads, -1).sum().item() for t in (index.block_count, index.column_count)]
    from .kernels.index import causal_blocks
    dense = batch * heads * causal_blocks(n, index.block_m, index.block_n)
    return counts[0], counts[1], dense


def _tail_listed(index, batch: int, heads: int, n: int, tail_rows: int) -> tuple[int, int]:
    """(blocks, columns) the index lists for the query blocks the dense tail recomputes."""
    from .kernels.tail import tail_blocks
    t = tail_blocks(n, tail_rows, index.block_m)
    if t == 0:
        return 0, 0
    return tuple(x.expand(batch, heads, -1)[..., -t:].sum().item()
                 for x in (index.block_count, index.column_count))


def sparse_plan_for(cfg: SiteConfig, window: int, num_heads: int) -> tuple[LayerPlan, str]:
    """The plan a sparse call runs, and its report line, made once per site.

    Sliding-window layers run their exact window (the kernel masks per row); others follow
    the plan."""
    if cfg._sparse is None:
        cfg._sparse = {}
    if window not in cfg._sparse:
        plan, decision = cfg.plan, "sparse"
        if window > 0:
            plan = LayerPlan.uniform("sliding_window", num_heads, window=window)
            decision = f"sparse: exact window {window}"
        cfg._sparse[window] = (plan, decision)
    return cfg._sparse[window]


def cost_model_for(cfg: SiteConfig, q):
    """The measured cost model for this call: the shipped one on the GPU (the CPU path is the
    reference, for correctness, and follows the plan)."""
    from .kernels.cost_model import shipped
    return shipped() if (cfg.cost_model and q.is_cuda) else None


def _cost_gate(cfg: SiteConfig, plan: LayerPlan, window: int, q, tail_rows: int, replayed: bool):
    """(the site's cost record when this call should measure its index, the reason to run
    dense or None): on the GPU the measured cost model (mcompile.cost_gate) keeps a plan that
    would be slower than dense off. ``replayed``: the call replays from a CUDA graph."""
    model = cost_model_for(cfg, q)
    if model is None:
        return None, None, False
    from . import cost_gate
    from .kernels.patterns import PATTERNS
    from .kernels.tail import tail_work
    if cfg._costs is None:
        cfg._costs = {}
    if window not in cfg._costs:
        cfg._costs[window] = cost_gate.site_cost(plan, PATTERNS)
    site_cost = cfg._costs[window]
    B, hq, n, d = q.shape
    tail = hq * tail_work(n, tail_rows) if tail_rows else 0
    _, reason = cost_gate.decide(model, site_cost, plan, n, d, tail, PATTERNS, replayed=replayed)
    timing = reason is None and cost_gate.needs_timing(site_cost, n, replayed)
    return (site_cost if cost_gate.wants_measurement(site_cost, n, replayed) else None), reason, timing


def sparse_call(cfg: SiteConfig, plan: LayerPlan, q, k, v, scale, tail_rows: int = 0, site_cost=None):
    """Build the index and run the kernel one part at a time (``patterns.index_parts``: each
    online pattern's heads, split where an index would pass :func:`index_budget`, and the static
    heads as one ``BlockRanges`` whose blocks the kernel computes), each part's index built, run
    over its heads of the one output and freed before the next, so no layer-wide index is padded
    to its widest head or copied together; then recompute the last ``tail_rows`` rows densely
    (kernels/tail.py)."""
    build_part, sparse_attention_into = _sparse_backend()
    from .kernels.index import BlockRanges
    from .kernels.patterns import index_parts
    from .kernels.tail import dense_tail_, tail_work
    B, hq, n, _ = q.shape
    if scale is None:
        scale = q.shape[-1] ** -0.5
    parts = index_parts(plan, n, B, index_budget(q, k, v))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    counts = None   # blocks and columns summed over heads, for the cost gate's measurement
    block_m = block_n = 64
    for heads in parts:
        index = build_part(q, k, plan, heads, scale=scale)
        block_m, block_n = index.block_m, index.block_n
        # what the checks and counts read: the lists (a BlockRanges' own, materialised)
        listed = index.to_index() if isinstance(index, BlockRanges) and (cfg.debug or cfg.stats or site_cost is not None) \
            else index
        if cfg.debug:
            from .kernels.index import check_index
            check_index(listed, n)
        if cfg.stats:
            blocks, columns, dense = index_work(listed, B, len(heads), n)
            # the tail's blocks replace those the index lists for the same rows
            tail = B * len(heads) * tail_work(n, tail_rows, index.block_m, index.block_n)
            in_tail = _tail_listed(listed, B, len(heads), n, tail_rows)
            _report.record_work(cfg.key, blocks - in_tail[0] + tail, columns - in_tail[1], dense)
        if site_cost is not None:       # the cost gate asked to measure this length
            work = torch.stack([t.expand(B, len(heads), -1).sum(dtype=torch.int64)
                                for t in (listed.block_count, listed.column_count)])
            counts = work if counts is None else counts + work
        sparse_attention_into(q, k, v, index, out, None if len(heads) == hq else heads, scale)
        del index, listed
    if tail_rows:
        dense_tail_(q, k, v, out, tail_rows, scale, block_m, block_n)
    if counts is not None:
        from .cost_gate import measure
        # under CUDA graphs only the eager warm-up call runs Python: it waits for its count so
        # that the recording call, which follows, takes the settled route
        measure(site_cost, n, B * hq, counts, wait=cfg.cuda_graphs)
    return out


def _route(cfg: SiteConfig, q, k, padding, q_offset, kv_offset, is_causal, window):
    """("sparse", plan, report line, tail rows, cost record to measure into or None, whether to
    time it against dense first) or ("dense", report line), and whether that holds for every
    call with the same shapes and flags (``padding`` aside, which is checked per call)."""
    n = q.shape[2]
    if 0 < window and n <= window and q_offset == 0 and kv_offset == 0 and n == k.shape[2]:
        window = 0          # a window that spans the whole prompt masks nothing: the layer is causal
    reason = why_dense(cfg, q, k, padding, q_offset, kv_offset, is_causal, window)
    if reason is None:
        plan, decision = sparse_plan_for(cfg, window, q.shape[1])
        # a sliding-window layer's last rows are exact already and must not see past the window
        tail_rows = 0 if window > 0 else cfg.dense_tail
        # a padding mask keeps the call out of CUDA graphs (cuda_graphs.refuse_capture)
        replayed = cfg.cuda_graphs and padding is None
        site_cost, reason, timing = _cost_gate(cfg, plan, window, q, tail_rows, replayed)
        if reason is None:
            return ("sparse", plan, decision, tail_rows, site_cost, timing), site_cost is None
    return ("dense", f"dense: {reason}"), True


def _timed_route(cfg: SiteConfig, signature, route, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale):
    """The route after timing a sparse route the cost model only narrowly prefers: dense when
    sparse measured slower. Settles the signature's route either way."""
    from .cost_gate import TIMING_MARGIN, time_both
    _, plan, decision, tail_rows, _, _ = route
    timed_key = (q.shape, window)
    if timed_key not in cfg._timed:
        if len(cfg._timed) > 256:
            cfg._timed.clear()
        cfg._timed[timed_key] = time_both(
            lambda: sparse_call(cfg, plan, q, k, v, scale, tail_rows=tail_rows),
            lambda: dense_attention(cfg, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale))
        log.debug("%s at n=%d: sparse %.3f ms, dense %.3f ms", cfg.key, q.shape[2], *cfg._timed[timed_key])
    sparse_ms, dense_ms = cfg._timed[timed_key]
    if sparse_ms > dense_ms * (1 - TIMING_MARGIN):
        than = ">" if sparse_ms > dense_ms else f"within {TIMING_MARGIN:.0%} of"
        route = ("dense", f"dense: measured {sparse_ms:.2f} {than} {dense_ms:.2f} ms")
    else:
        route = (*route[:5], False)
    if padding is None:
        cfg._routes[signature] = route
    return route


def _capturing(q) -> bool:
    return q.is_cuda and torch.cuda.is_current_stream_capturing()


def _settle_before_capture(cfg: SiteConfig, signature, q, k, v, q_offset, kv_offset, is_causal, window, scale):
    """The eager call before a CUDA graph records has just measured its index (under graphs
    ``sparse_call`` waits for the count): settle the route now, timing it against dense where
    the prediction is close, because the recording call that follows may not time and would
    bake an untimed sparse route into every replay."""
    route, settled = _route(cfg, q, k, None, q_offset, kv_offset, is_causal, window)
    if route[0] == "sparse" and route[5] and not (cfg.stats or cfg.debug):
        _timed_route(cfg, signature, route, q, k, v, None, q_offset, kv_offset, is_causal, window, scale)
    elif settled:
        cfg._routes[signature] = route


def run_site(cfg: SiteConfig, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale):
    if cfg.kv_keep:
        _report.record_kv_kept(cfg.key, min(k.shape[2], cfg.kv_keep), k.shape[2])
    if cfg.capture is not None:
        cfg.capture.record(cfg.layer, q, k, v)
        _report.record_decision(cfg.key, "dense: capture mode")
        return dense_attention(cfg, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale)
    # every call of a site with the same shapes and flags takes the same route once it is
    # settled, so the decision is made once (per-call Python is host time on the GPU's path)
    signature = (q.shape, k.shape, q.dtype, q.device, q_offset, kv_offset, is_causal, window)
    if padding is not None:
        refuse_capture("a padding mask is given: its values choose each call's route")
    route = cfg._routes.get(signature) if padding is None else None
    if route is None:
        route, settled = _route(cfg, q, k, padding, q_offset, kv_offset, is_causal, window)
        if settled and padding is None:
            if len(cfg._routes) > 256:
                cfg._routes.clear()
            cfg._routes[signature] = route
    if route[0] == "sparse":
        _, plan, decision, tail_rows, site_cost, timing = route
        # timing runs each path twice more: not while capturing, nor where those calls would be counted
        if timing and not (cfg.stats or cfg.debug or _capturing(q)):
            route = _timed_route(cfg, signature, route, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale)
    if route[0] == "sparse":
        _, plan, decision, tail_rows, site_cost, _ = route
        _report.record_decision(cfg.key, decision)
        out = sparse_call(cfg, plan, q, k, v, scale, tail_rows=tail_rows, site_cost=site_cost)
        if site_cost is not None and cfg.cuda_graphs and padding is None and not _capturing(q):
            _settle_before_capture(cfg, signature, q, k, v, q_offset, kv_offset, is_causal, window, scale)
        return out
    _report.record_decision(cfg.key, route[1])
    return dense_attention(cfg, q, k, v, padding, q_offset, kv_offset, is_causal, window, scale)
