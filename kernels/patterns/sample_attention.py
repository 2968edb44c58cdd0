"""``sample_attention`` (SampleAttention, Zhu et al. 2024, arXiv 2406.15486): an adaptive
structured pattern, a local window plus the fewest key columns ("column stripes") whose
sampled attention mass reaches a threshold.

One of the online patterns of the pipeline (find sites -> resolve plan -> build index -> one
kernel): :func:`build` turns a head group's q and k into a :class:`SparseIndex` of window
blocks plus columns. The algorithm is the paper's two-stage query-guided key-value filtering:
  1. local window blocks per query block (:func:`index_from_selection`);
  2. stage 1, query-guided sampling: column scores from sampled rows (:func:`column_scores`);
  3. stage 2, score-based filtering: the fewest columns reaching ``alpha`` (:func:`filter_columns`).
``DEFAULTS`` says what the parameters mean; each function's docstring says where this reading
deviates from the paper, or could not be checked against it.
"""
from __future__ import annotations

import logging
import math

import torch

from ..index import SparseIndex
from ..sparse_attention import launch_shrinking
from ._common import (INT32_BIG, HeadMap, StaticCache, block_union_mask, cdiv, check_budget,
                      check_fraction, dense_probs, device_index, planted_qk, plot_selection,
                      resolve_budget, row_chunks, use_triton, window_blocks, with_defaults)
from .registry import FRACTION_SCHEMA, Pattern, register_or_demo

log = logging.getLogger("mcompile")

NAME = "sample_attention"
# Parameters:
#   * alpha in (0, 1]: the cumulative-attention threshold (the paper's CRA threshold), e.g. 0.95;
#   * window_frac in (0, 1]: the local window as a fraction of N (e.g. 0.08);
#   * sample_frac in (0, 1], optional: the fraction of query rows sampled (default 0.05, our
#     choice; the paper's value could not be checked here);
#   * max_samples (count >= 1, optional, default 2048): at most this many rows sampled below the
#     last 64 (the stride grows past N = max_samples / sample_frac, 40960 tokens by default). A
#     column's score is a sum over the sampled rows, so its noise depends on how many are
#     sampled, not on N, while a fixed fraction makes the sampling cost grow as N^2 (24% of the
#     kernel's time at 128K on the H100, where 2048 rows, one per 64-row query block, cost 8%);
#   * max_columns (count or fraction of N, default 0.1): a static cap on the number of
#     columns, needed because the index has a fixed width;
#   * count_window: whether the window's own mass counts towards alpha (see filter_columns).
DEFAULTS = {"alpha": 0.95, "window_frac": 0.08, "sample_frac": 0.05, "max_samples": 2048, "max_columns": 0.1,
            "count_window": True}
BUDGETS = {"max_columns": 0}
OPTIONAL = ("sample_frac", "max_samples", "max_columns", "count_window")
PARAM_SCHEMA = {"alpha": FRACTION_SCHEMA, "window_frac": FRACTION_SCHEMA, "sample_frac": FRACTION_SCHEMA,
                "max_samples": {"type": "integer", "minimum": 1, "description": "the most query rows sampled "
                                "below the last 64"},
                "count_window": {"type": "boolean", "description": "true or false: whether the window's "
                                 "sampled mass counts toward alpha"}}
LAST_Q = 64


def validate(params: dict | None) -> dict:
    p = with_defaults(params, DEFAULTS, tuple(DEFAULTS), NAME)
    for name in ("alpha", "window_frac", "sample_frac"):
        p[name] = check_fraction(name, p[name])
    p["max_columns"] = check_budget("max_columns", p["max_columns"], minimum=BUDGETS["max_columns"])
    if isinstance(p["max_samples"], bool) or not isinstance(p["max_samples"], int) or p["max_samples"] < 1:
        raise ValueError(f"parameter 'max_samples' must be an integer >= 1 (rows sampled), got {p['max_samples']!r}")
    if not isinstance(p["count_window"], bool):
        raise ValueError(f"parameter 'count_window' must be true or false, got {p['count_window']!r}")
    return p


def _window(n: int, p: dict) -> int:
    return max(1, math.ceil(p["window_frac"] * n - 1e-9))


def column_cap(n: int, p: dict) -> int:
    """The most columns a head selects at length n (``max_columns`` resolved)."""
    return resolve_budget(p["max_columns"], n)


def sample_stride(n: int, p: dict) -> int:
    """The stride between sampled rows below the last 64 at length n: ``round(1 / sample_frac)``,
    or wider where that would sample more than ``max_samples`` rows."""
    below = n - min(LAST_Q, n)
    return max(1, round(1.0 / p["sample_frac"]), -(-below // p["max_samples"]))


def sample_rows(n: int, p: dict) -> list[int]:
    """The sampled query rows of validated parameters ``p``: ``0, s, 2s, ...`` below the last
    64 rows (``s = sample_stride(n, p)``), plus the last 64 rows. This is one reading of
    "query-guided sampling"; the paper's exact row choice could not be checked here."""
    L = min(LAST_Q, n)
    return list(range(0, n - L, sample_stride(n, p))) + list(range(n - L, n))


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    """The widths :func:`window_blocks` gives the window's blocks (arithmetic: the runtime asks
    every call) and the column cap."""
    p = validate(params)
    return min(cdiv(_window(n, p) - 1 + block_m, block_n), cdiv(n, block_n)), column_cap(n, p)


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    """Window blocks exactly; columns in the worst case (the cap, cut at each block's window)."""
    p = validate(params)
    count, _, w0 = window_blocks(n, _window(n, p), block_m, block_n, "cpu")
    cap = column_cap(n, p)
    return int(count.sum()), int(torch.clamp(w0, max=cap).sum())


def head_params(params) -> list[dict]:
    """A group's parameters, validated, one dict per head (``params`` one dict for every head,
    or a list of one per head that agree on ``sample_frac``, ``max_samples`` and ``count_window``)."""
    ps = [validate(p) for p in (params if isinstance(params, list) else [params])]
    for name in ("sample_frac", "max_samples", "count_window"):
        if len({p[name] for p in ps}) > 1:
            raise ValueError(f"sample_attention: the heads of one build must share {name!r}, got "
                             f"{[p[name] for p in ps]}")
    return ps


_sampled = StaticCache()     # what depends on N and the parameters alone (rows, windows, thresholds)


def _sampling(n: int, ps: list[dict], block_m: int, device):
    """(rows int64 (R,), window start of each row's query block int64 (1 | H, R), the same
    two as int32, windows int32 (H,)), kept per length and parameters."""
    windows = tuple(_window(n, p) for p in ps)

    def make():
        L = min(LAST_Q, n)
        rows = torch.cat([torch.arange(0, n - L, sample_stride(n, ps[0]), device=device),
                          torch.arange(n - L, n, device=device)])
        start = (rows // block_m) * block_m
        per_row = torch.tensor(windows[:1] if len(set(windows)) == 1 else windows, device=device)
        w0 = torch.clamp(start.view(1, -1) - (per_row.view(-1, 1) - 1), min=0)
        return (rows, w0, rows.to(torch.int32), w0.to(torch.int32),
                torch.tensor(windows, dtype=torch.int32, device=device))
    return _sampled.get((n, windows, sample_stride(n, ps[0]), block_m, str(torch.device(device))), make, device)


def column_scores(q: torch.Tensor, k: torch.Tensor, params: dict | list | None = None, *, heads=None,
                  block_m: int = 64, scale: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 1. Returns (scores (B, Hg, N) float32: sampled mass per key outside each sampled
    row's window (or all mass when count_window is False), window_mass (B, Hg), total (B, Hg)).
    ``params`` one dict, or one per head (each head its own window).

    On CUDA two fused Triton kernels (row log-sum-exp and outside-window fraction, then column
    sums; nothing of size rows x N is stored); elsewhere torch ops chunked over sampled rows.

    Each sampled row (:func:`sample_rows`) gets its exact causal softmax
    ``softmax(q_r k^T * scale)`` in float32; column scores = the sum over sampled rows. Cost:
    about ``2 * sample_frac`` of dense causal attention's QK^T work, inherent to the method's
    sampling (see ``_triton_sa``)."""
    ps = head_params(params)
    B, Hq, N, D = q.shape
    hm = HeadMap(range(Hq) if heads is None else heads, Hq, k.shape[1])
    scale = D ** -0.5 if scale is None else scale
    dev = q.device
    L = min(LAST_Q, N)
    stride = sample_stride(N, ps[0])
    count_window = ps[0]["count_window"]
    rows_t, w0_rows, rpos, w0, windows = _sampling(N, ps, block_m, dev)
    if use_triton(dev) and D in (16, 32, 64, 128, 256):
        return _column_scores_triton(q, k, hm, rpos, w0, windows, scale, count_window, stride, N - L, block_m)
    return _column_scores_torch(q, k, hm, rows_t, [w0_rows], scale, count_window)[0]


def column_scores_by_window(q: torch.Tensor, k: torch.Tensor, params: dict | None, window_fracs, *,
                            heads=None, block_m: int = 64, scale: float | None = None
                            ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`column_scores` for each of ``window_fracs`` (the other parameters from ``params``),
    each equal to its own call. Off the GPU the sampled softmax, the costly part and the same for
    every window, is computed once for all (the search scores candidates that differ only in
    the window); the Triton kernels compute the window's share on the fly, so there each window
    is one call."""
    p = validate(params)
    B, Hq, N, D = q.shape
    if use_triton(q.device) and D in (16, 32, 64, 128, 256):
        return [column_scores(q, k, {**p, "window_frac": f}, heads=heads, block_m=block_m, scale=scale)
                for f in window_fracs]
    hm = HeadMap(range(Hq) if heads is None else heads, Hq, k.shape[1])
    scale = D ** -0.5 if scale is None else scale
    sampled = [_sampling(N, [validate({**p, "window_frac": f})], block_m, q.device) for f in window_fracs]
    return _column_scores_torch(q, k, hm, sampled[0][0], [w0_rows for _, w0_rows, *_ in sampled], scale,
                                p["count_window"])


def _column_scores_torch(q, k, hm: HeadMap, rows_t, w0s, scale, count_window):
    """:func:`column_scores` in torch ops, chunked over the sampled rows, for each of ``w0s``
    (the window starts of the sampled rows, (1 | Hg, R)): one softmax per chunk serves them all."""
    B, _, N, _ = q.shape
    dev = q.device
    ku = hm.select_kv(k)
    Hg = len(hm.heads)
    keys = torch.arange(N, device=dev)
    cols = [torch.zeros(B, Hg, N, dtype=torch.float32, device=dev) for _ in w0s]
    wins = [torch.zeros(B, Hg, dtype=torch.float32, device=dev) for _ in w0s]
    tot = torch.zeros(B, Hg, dtype=torch.float32, device=dev)
    for a, b in row_chunks(rows_t.shape[0], B * Hg * N * 4 * 3):
        r = rows_t[a:b]
        qg = hm.select_q(q.index_select(2, r))                                # (B, Hg, c, D)
        s = hm.scores(qg, ku) * scale
        s = s.masked_fill(keys.view(1, -1) > r.view(-1, 1), float("-inf"))
        pr = torch.softmax(s, -1)
        tot += pr.sum((2, 3))
        for w0_rows, col, win in zip(w0s, cols, wins):
            if count_window:
                in_win = keys.view(1, 1, -1) >= w0_rows[:, a:b].unsqueeze(-1)     # (1 | Hg, c, N)
                win += (pr * in_win).sum((2, 3))
                col += (pr * ~in_win).sum(2)
            else:
                col += pr.sum(2)
    return [(col, win, tot.clone()) for col, win in zip(cols, wins)]


# tilings measured by a sweep (H100, 9 heads of d 64, 32K and 128K): 128-key tiles for the row
# statistics took 5-9% off the scores against 64; wider row tiles or 8 warps were slower
CONFIG = {"row_stats": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
          "col_sums": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}}


# keys one program of the row statistics scores at least, and the most splits of a row tile's keys
ROW_SPLIT_KEYS = 4096
ROW_SPLITS = 32
# the smallest and largest BLOCK_M / BLOCK_N any tiling takes (``CONFIG``, ``_shrinking``)
TILE_MIN, TILE_MAX = 16, 128


def _shrinking(config: dict):
    """``config``, then (each asked for when the one before did not fit the GPU's shared
    memory) one stage fewer, then half the tiles, down to one stage of 16 x 16."""
    c = dict(config)
    yield dict(c)
    while not (c["num_stages"] == 1 and c["BLOCK_N"] <= TILE_MIN and c["BLOCK_M"] <= TILE_MIN):
        if c["num_stages"] > 1:
            c["num_stages"] -= 1
        else:
            c["BLOCK_N"], c["BLOCK_M"] = max(TILE_MIN, c["BLOCK_N"] // 2), max(TILE_MIN, c["BLOCK_M"] // 2)
        log.info("sample_attention: shared memory too small, retrying with %s", c)
        yield dict(c)


def _launch_shrinking(kernel, grid, config: dict, *args, **kwargs):
    """Launch with ``config``, retried smaller while the GPU's shared memory is too small for
    it (the result does not depend on the tiling)."""
    return launch_shrinking(lambda c: kernel[grid(c)](*args, **kwargs, **c), _shrinking(config))


def _column_scores_triton(q, k, hm: HeadMap, rpos, w0, windows, scale, count_window, stride, tail0,
                          block_m: int):
    """``rpos`` int32 (R,) the sampled rows; ``w0`` int32 (1 | Hg, R) their window starts, shared
    or per head; ``windows`` int32 (Hg | 1,) each head's window."""
    import triton

    from ._triton_sa import _sa_col_sums, _sa_row_stats   # imports triton: only where they launch
    B, Hq, N, D = q.shape
    Hg = len(hm.heads)
    R = rpos.shape[0]
    if hm.identity:
        qs = q.index_select(2, rpos)                                          # (B, Hg, R, D)
    else:       # the group's heads and sampled rows in one gather
        qs = q[:, device_index(hm.heads, q.device).view(-1, 1), rpos.view(1, -1)]
    kvh = device_index([h // hm.group for h in hm.heads], q.device, torch.int32)
    if k.stride(-1) != 1:
        k = k.contiguous()
    stride_w0h = R if w0.shape[0] > 1 else 0
    head_window = windows if windows.shape[0] == Hg else windows.expand(Hg).contiguous()
    lse = torch.empty(B, Hg, R, dtype=torch.float32, device=q.device)
    fin = torch.empty_like(lse)      # each sampled row's mass fraction inside its window
    col = torch.empty(B, Hg, N, dtype=torch.float32, device=q.device)
    qk_scale = float(scale) * 1.4426950408889634
    c1, c2 = dict(CONFIG["row_stats"]), dict(CONFIG["col_sums"])
    if D > 128:   # head dim 256 (Gemma 3): smaller tiles, fewer stages, to fit shared memory
        c1.update(BLOCK_N=32, num_warps=8, num_stages=2)
        c2.update(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)
    # the row statistics' key splits, whole multiples of every tiling's key tile; their partials
    # and arrival counters sized for any tiling's row tiles
    split = max(ROW_SPLIT_KEYS, triton.cdiv(triton.cdiv(N, ROW_SPLITS), TILE_MAX) * TILE_MAX)
    nsplit = triton.cdiv(N, split)
    parts = torch.empty(B * Hg * triton.cdiv(R, TILE_MAX) * TILE_MAX * nsplit * 3, dtype=torch.float32,
                        device=q.device)
    # per row tile, its splits done so far (each call's last split sets it back to 0)
    arrived = _sampled.get(("arrived", B * Hg, triton.cdiv(R, TILE_MIN), str(q.device)),
                           lambda: torch.zeros(B * Hg * triton.cdiv(R, TILE_MIN), dtype=torch.int32, device=q.device),
                           q.device)
    _launch_shrinking(_sa_row_stats, lambda c: (triton.cdiv(R, c["BLOCK_M"]), B * Hg, nsplit), c1,
                      qs, k, rpos, w0, kvh, parts, arrived, lse, fin, qs.stride(0), qs.stride(1), qs.stride(2),
                      k.stride(0), k.stride(1), k.stride(2), stride_w0h, Hg, R, N, qk_scale, split, nsplit,
                      HEAD_DIM=D, SPLITS=triton.next_power_of_2(nsplit))
    nstr = len(range(0, tail0, stride))
    _launch_shrinking(_sa_col_sums, lambda c: (triton.cdiv(N, c["BLOCK_N"]), B * Hg), c2,
                      qs, k, rpos, w0, kvh, lse, col, qs.stride(0), qs.stride(1), qs.stride(2),
                      k.stride(0), k.stride(1), k.stride(2), stride_w0h, Hg, R, N, qk_scale, nstr, stride, tail0,
                      head_window, block_m, COUNT_WINDOW=bool(count_window), HEAD_DIM=D)
    tot = _sampled.get(("total", B, Hg, R, str(q.device)),   # read only, kept: no launch per call
                       lambda: torch.full((B, Hg), float(R), dtype=torch.float32, device=q.device), q.device)
    win = fin.sum(-1) if count_window else torch.zeros(B, Hg, device=q.device)
    return col, win, tot


def filter_columns(col: torch.Tensor, win: torch.Tensor, tot: torch.Tensor, alpha, cap
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2. (count int32 (B, Hg), columns ascending int32 (B, Hg, cap); past the count
    INT32_BIG): the fewest top-scored columns with window + column mass >= alpha * total.
    ``alpha`` and ``cap`` a value for every head or a list of one per head (the columns then
    as wide as the largest cap).

    Columns are sorted by score (equal scores by position) and the fewest whose cumulative
    sampled mass reaches ``alpha`` are kept, at most ``cap`` (when alpha needs more, the recall
    is below alpha). On CUDA one kernel per call (``_triton_sa._sa_select``: a radix select of
    the cap best, then the alpha cut among them, no sort); elsewhere a sort and a cumulative sum.

    What "reaches alpha" counts (the paper defines CRA on the final mask): the mass each sampled
    row already gets from its own window counts towards alpha, and only mass outside a row's
    window scores the columns. Counting all mass, a local head would fill the column budget with
    keys just before each sampled row, which its window already covers. ``count_window=False``
    selects the literal reading (columns alone reach alpha of the sampled mass)."""
    B, Hg, N = col.shape
    widest = max(cap) if isinstance(cap, list) else cap
    if widest == 0:
        return (torch.zeros(B, Hg, dtype=torch.int32, device=col.device),
                torch.zeros(B, Hg, 0, dtype=torch.int32, device=col.device))
    alphas, caps = ([x] if not isinstance(x, list) else x for x in (alpha, cap))
    head_alpha = _sampled.get(("alpha", tuple(alphas), str(col.device)),
                              lambda: torch.tensor(alphas, dtype=torch.float32, device=col.device), col.device)
    if use_triton(col.device):
        from . import _triton_sa   # imports triton: only where its kernels launch
        return _triton_sa.filter_columns(col, win, tot, head_alpha, device_index(caps, col.device, torch.int32),
                                         widest)
    # by score, equal scores by position (as the kernel takes them)
    top = torch.sort(col, stable=True, dim=-1, descending=True)
    values, indices = top.values[..., :widest], top.indices[..., :widest]
    need = head_alpha * tot - win                                             # (B, Hg)
    cum = torch.cumsum(values.double(), -1)
    short = (cum < need.double().unsqueeze(-1)).sum(-1)
    cap = device_index(caps, col.device)
    count = torch.where(need > 0, torch.clamp(short + 1, max=cap), torch.zeros_like(short))
    ok = torch.arange(widest, device=col.device) < count.unsqueeze(-1)
    cols = torch.where(ok, indices, INT32_BIG).sort(-1).values.to(torch.int32)
    return count.to(torch.int32), cols


def selection(q: torch.Tensor, k: torch.Tensor, params: dict | list | None = None, *, heads=None,
              block_m: int = 64, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    ps = head_params(params)
    col, win, tot = column_scores(q, k, ps if len(ps) > 1 else ps[0], heads=heads, block_m=block_m, scale=scale)
    alpha, cap = [p["alpha"] for p in ps], [column_cap(q.shape[2], p) for p in ps]
    return filter_columns(col, win, tot, *(x[0] if len(set(x)) == 1 else x for x in (alpha, cap)))


def build(q: torch.Tensor, k: torch.Tensor, params: dict | list | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    count, cols = selection(q, k, params, heads=heads, block_m=block_m, scale=scale)
    return index_from_selection(count, cols, q.shape[2], params, block_m, block_n)


def _window_blocks(n: int, ps: list[dict], block_m: int, block_n: int, device):
    """(count (1 | H, NQB), offsets (1 | H, NQB, MAX), first window key (1 | H, NQB)) of each
    head's window (one row where they agree), kept per length and windows."""
    windows = tuple(_window(n, p) for p in ps)
    if len(set(windows)) == 1:
        windows = windows[:1]

    def make():
        parts = [window_blocks(n, w, block_m, block_n, device) for w in windows]
        width = max(offs.shape[-1] for _, offs, _ in parts)
        return (torch.stack([c for c, _, _ in parts]),
                torch.stack([torch.nn.functional.pad(offs, (0, width - offs.shape[-1])) for _, offs, _ in parts]),
                torch.stack([w0 for _, _, w0 in parts]))
    return _sampled.get(("window", n, windows, block_m, block_n, str(torch.device(device))), make, device)


def index_from_selection(count: torch.Tensor, cols: torch.Tensor, n: int, params: dict | list | None = None,
                         block_m: int = 64, block_n: int = 64) -> SparseIndex:
    """The index of a selection (``filter_columns``' count and columns): each query block's
    window blocks plus the selected columns before its window.

    The local window is ``W = ceil(window_frac * N)`` tokens; each query block gets the union of
    its rows' windows ``[start - W + 1, last]`` as blocks (as ``sliding_window``). The selected
    key positions become columns of every query block that is past them (not already covered
    by its window blocks).

    Deviations: the stripes are single key columns per head, shared by all query blocks, capped
    at ``max_columns``; the column list is stored once per head and broadcast over query blocks
    (stride 0), the counts doing the causal cut. Later versions of the paper's kernel work on
    blocks of keys ("chunked sampling"); this is the column-granular version the index
    expresses directly."""
    B, Hg = count.shape
    ps = head_params(params)
    bcount, boffs, w0 = _window_blocks(n, ps, block_m, block_n, cols.device)
    H, nqb = bcount.shape
    # each query block's window start, laid out as the columns are (searchsorted's contract), kept
    starts = _sampled.get(("starts", n, tuple(_window(n, p) for p in ps), block_m, block_n, B, Hg, str(cols.device)),
                          lambda: w0.to(torch.int32).view(1, H, nqb).expand(B, Hg, nqb).contiguous(), cols.device)
    cc = torch.searchsorted(cols, starts, out_int32=True)
    return SparseIndex(bcount.view(1, H, nqb).expand(B, Hg, nqb),
                       boffs.view(1, H, nqb, -1).expand(B, Hg, nqb, boffs.shape[-1]),
                       cc,
                       cols.view(B, Hg, 1, -1).expand(B, Hg, nqb, cols.shape[-1]),
                       block_m, block_n)


def reference_selection(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *,
                        heads=None, block_m: int = 64, scale: float | None = None
                        ) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Float64 from the full probability matrix: (per (b, h) list of selected columns,
    column scores (B, H, N), needed mass (B, H))."""
    p = validate(params)
    B, Hq, N, D = q.shape
    q, k = q.cpu(), k.cpu()
    if heads is not None:
        g = Hq // k.shape[1]
        hs = torch.tensor(list(heads))
        q, k = q[:, hs], k[:, hs // g]
    probs = dense_probs(q, k, scale)                                          # (B, H, N, N)
    rows = torch.tensor(sample_rows(N, p))
    pr = probs[:, :, rows]
    W = _window(N, p)
    r_start = (rows // block_m) * block_m
    in_win = torch.arange(N).view(1, -1) >= (r_start - W + 1).clamp(min=0).view(-1, 1)
    if not p["count_window"]:
        in_win = torch.zeros_like(in_win)
    col = (pr * ~in_win).sum(2)
    need = p["alpha"] * pr.sum((2, 3)) - (pr * in_win).sum((2, 3))
    cap = column_cap(N, p)
    sel = []
    for b in range(B):
        row = []
        for h in range(q.shape[1]):
            order = sorted(range(N), key=lambda j: -float(col[b, h, j]))
            chosen, acc = [], 0.0
            for j in order[:cap]:
                if acc >= float(need[b, h]):
                    break
                chosen.append(j)
                acc += float(col[b, h, j])
            row.append(sorted(chosen))
        sel.append(row)
    return sel, col, need


def mask_from_columns(columns: list, n: int, window: int, block_m: int = 64) -> torch.Tensor:
    """(B, H, N, N): the per-block union of windows, plus the columns, causal."""
    r = torch.arange(n)
    local = (r.view(1, -1) <= r.view(-1, 1)) & (r.view(1, -1) > r.view(-1, 1) - window)
    base = block_union_mask(local, block_m)
    out = torch.zeros(len(columns), len(columns[0]), n, n, dtype=torch.bool)
    for b, row in enumerate(columns):
        for h, cs in enumerate(row):
            m = base.clone()
            if cs:
                m[:, cs] = True
            out[b, h] = m & (r.view(1, -1) <= r.view(-1, 1))
    return out


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    p = validate(params)
    sel, _, _ = reference_selection(q, k, p, heads=heads, block_m=block_m, scale=scale)
    return mask_from_columns(sel, q.shape[2], _window(q.shape[2], p), block_m)


def demo(path: str = "sample_attention.png", n: int = 1024, **params) -> str:
    p = validate(params or {"alpha": 0.9, "window_frac": 0.1})
    cols = [3] + [n * c // 1024 for c in (200, 450, 777)]
    q, k = planted_qk(n, hot_columns=cols, column_strength=8.0, local=8.0, seed=3)
    return plot_selection(path, f"{NAME} alpha={p['alpha']} window={p['window_frac']}", build, q, k, p,
                          columns=True, planted=f"planted: local window, columns {cols}")


PATTERN = register_or_demo(Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, colour="#d62728",
                                   dynamic=True, per_head=("alpha", "window_frac", "max_columns"), broadcast_lists=True,
                                   defaults=DEFAULTS, budgets=BUDGETS, optional=OPTIONAL, param_schema=PARAM_SCHEMA, doc=__doc__), __name__)
