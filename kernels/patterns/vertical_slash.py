"""``vertical_slash`` (MInference 1.0, Jiang et al. 2024): a few key columns (verticals) plus a
few diagonals (slashes), positions chosen online per head from the last 64 queries.

One of the online patterns of the pipeline (find sites -> resolve plan -> build index -> one
kernel): :func:`build` scores (:func:`scores`), selects (:func:`select`) and turns the selection
into a :class:`SparseIndex` (:func:`index_from_selection`), each step as MInference does it;
the functions' docstrings say where and why this deviates. Parameters: ``vertical_size``
(columns), ``slash_size`` (diagonals): counts or fractions of N (``DEFAULTS``); optional
``coverage`` (a fraction in (0, 1]): each (batch, head) then takes only the columns and the
diagonals, forced ones first, that hold that fraction of its last queries' attention mass
(:func:`coverage_counts`), at least the minimums and at most the two budgets, which become
caps. Counts then follow what each head and prompt needs, as FlexPrefill's cumulative-mass
budgets (Lai et al. 2025) do, instead of one count for every head at every length.
On CUDA (``use_triton``) the whole build is seven Triton launches (scores, the two top-k's, the
range merge, the verticals; ``_triton_vs.py`` describes them); elsewhere the selection is a
stable sort and the merge a scan over the sorted diagonals in torch ops, looping over the
``slash_size`` diagonals in Python (fine at test sizes, slow at long lengths). Both give the
same index from the same scores (equal scores go to the lowest positions in both); the two
paths' scores may differ in their last bits.
"""
from __future__ import annotations

import torch

from ..index import SparseIndex, num_q_blocks
from ._common import (INT32_BIG, HeadMap, cdiv, check_budget, check_fraction, compact, dense_probs, device_index,
                      planted_qk, plot_selection, q_blocks, resolve_budget, row_chunks, use_triton, with_defaults)
from .registry import FRACTION_SCHEMA, Pattern, register_or_demo

NAME = "vertical_slash"
# MInference's default for heads without a searched config
MINFERENCE_COUNTS = {"vertical_size": 1000, "slash_size": 6096}
COVERAGE = "coverage"
# ``coverage`` None: every head takes its two counts
DEFAULTS = {**MINFERENCE_COUNTS, COVERAGE: None}
BUDGETS = {"vertical_size": 1, "slash_size": 1}
PARAM_SCHEMA = {COVERAGE: {**FRACTION_SCHEMA, "description": "a number in (0, 1]: the fraction of the last "
                           "queries' attention mass each head's columns and diagonals hold"}}
LAST_Q = 64
# always kept, as MInference does (it sets their scores to +inf)
FORCED_COLUMNS = 30
FORCED_DIAGONALS = 100
# MInference's minimum slash_size is 50, with 100 diagonals forced to +inf and topk choosing
# among ties arbitrarily; 100 here keeps the 100 forced diagonals, the main one among them,
# always all kept. The minimum vertical_size is MInference's.
MIN_VERTICAL = 30
MIN_SLASH = 100
# forced entries get this instead of +inf, so topk among them is deterministic
_FORCE = 1.0e4       # > any column/diagonal sum of 64 probability rows


def validate(params: dict | None) -> dict:
    """The parameters with their defaults; ``coverage`` only where it is set."""
    p = with_defaults(params, DEFAULTS, tuple(DEFAULTS), NAME)
    for name, minimum in BUDGETS.items():
        p[name] = check_budget(name, p[name], minimum=minimum)
    if p[COVERAGE] is None:
        del p[COVERAGE]
    else:
        p[COVERAGE] = check_fraction(COVERAGE, p[COVERAGE])
    return p


def coverage_of(params) -> float | None:
    """The ``coverage`` of a group's parameters (one dict, or one per head: heads with
    different coverages are never grouped, since it is not a per-head budget). Read, not
    checked: :func:`head_budgets` validates the same parameters on every build."""
    p = params[0] if isinstance(params, list) else params
    return (p or {}).get(COVERAGE)


def budgets(n: int, params: dict | None) -> tuple[int, int]:
    """(columns, diagonals) selected at length n (after minimums and clamping)."""
    p = validate(params)
    kv = min(n, max(resolve_budget(p["vertical_size"], n), MIN_VERTICAL))
    ks = min(n, max(resolve_budget(p["slash_size"], n), MIN_SLASH))
    return kv, ks


def head_budgets(n: int, params) -> tuple[int | list[int], int | list[int]]:
    """:func:`budgets` of a group: ``params`` one dict for every head (two counts) or a list
    with one per head (a count where all heads agree, else a list of counts)."""
    if not isinstance(params, list):
        return budgets(n, params)
    kv, ks = zip(*(budgets(n, p) for p in params))
    return tuple(c[0] if len(set(c)) == 1 else list(c) for c in (kv, ks))


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    kv, ks = budgets(n, params)
    return min(ks, num_q_blocks(n, block_m)), kv


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    """Worst case for one head: each selected diagonal valid for a query block is its own block
    (at most one block per key block up to the diagonal), each vertical before the block a
    column. Real selections merge neighbouring diagonals into far fewer blocks; measure them
    with ``index_cost``."""
    kv, ks = budgets(n, params)
    nqb = num_q_blocks(n, block_m)
    blocks = cols = 0
    for m in range(nqb):
        end = min(n, (m + 1) * block_m)
        blocks += min(ks, end, cdiv(end, block_n))
        cols += min(kv, m * block_m)
    return blocks, cols


# --- scores ------------------------------------------------------------------------------------
def _diag_sums(p: torch.Tensor) -> torch.Tensor:
    """p (B, H, L, C): probabilities of the last L rows against C consecutive keys. Returns
    (B, H, C + L) sums along diagonals: entry u sums p[i, u + i - L] over i (a diagonal of
    constant ``row - key``); key j0 + t of row N - L + i has distance N - j0 - u."""
    B, H, L, C = p.shape
    z = torch.nn.functional.pad(p, (L, L)).contiguous()                  # (B, H, L, C + 2L)
    W = C + 2 * L
    v = z.as_strided((B, H, L, C + L), (H * L * W, L * W, W + 1, 1))
    return v.sum(2)


def _last_queries(q: torch.Tensor, k: torch.Tensor, heads, scale: float | None):
    """(HeadMap of the group, every head's last ``min(64, N)`` query rows (B, Hq, L, D), a
    view, scale). The Triton kernels read the group's heads from the view; torch gathers them."""
    B, Hq, N, D = q.shape
    hm = HeadMap(range(Hq) if heads is None else heads, Hq, k.shape[1])
    return hm, q[:, :, N - min(LAST_Q, N):], D ** -0.5 if scale is None else scale


def _triton_scores(q: torch.Tensor, k: torch.Tensor) -> bool:
    return use_triton(q.device) and q.dtype == k.dtype and q.shape[-1] in (16, 32, 64, 128, 256)


def scores(q: torch.Tensor, k: torch.Tensor, heads=None, scale: float | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertical, slash) float32 (B, Hg, N): column sums and diagonal sums (index = distance
    ``row - key``) of the causal softmax of the last ``min(64, N)`` queries.

    As MInference's ``vertical_and_slash_kernel`` (minference/modules/minference_forward.py):
    ``A = softmax(q[-64:] k^T * scale)`` in float32, causal among the last 64 queries (the
    matmul runs in the input dtype, as MInference's einsum does); vertical score of key ``j`` =
    column sum of A; slash score of distance ``d = row - key`` = sum of A along that diagonal.
    Unlike MInference, which loops over heads, the heads of a group are scored in one batched
    matmul, chunked over keys (two passes: log-sum-exp, then probabilities) when the float32
    score tensor would exceed ``SCORE_BUDGET_BYTES``."""
    B, Hq, N, D = q.shape
    hm, ql, scale = _last_queries(q, k, heads, scale)
    L = ql.shape[2]
    dev = q.device
    if _triton_scores(q, k):
        from . import _triton_vs   # imports triton: only where its kernels launch
        return _triton_vs.scores(ql, k, hm.heads, [h // hm.group for h in hm.heads], scale)
    qg = hm.select_q(ql)
    Hg = qg.shape[1]
    row_pos = torch.arange(N - L, N, device=dev)
    chunks = row_chunks(N, B * Hg * L * 4 * 3, multiple=64)

    def chunk_scores(j0: int, j1: int) -> torch.Tensor:
        s = hm.scores(qg, hm.select_kv(k[:, :, j0:j1])) * scale             # (B, Hg, L, C)
        if j1 > N - L:
            keys = torch.arange(j0, j1, device=dev)
            s = s.masked_fill(keys.view(1, -1) > row_pos.view(-1, 1), float("-inf"))
        return s

    vertical = torch.zeros(B, Hg, N, dtype=torch.float32, device=dev)
    rs = torch.zeros(B, Hg, N + L + 1, dtype=torch.float32, device=dev)      # by x = N - d
    if len(chunks) == 1:
        p = torch.softmax(chunk_scores(0, N), -1)
        vertical = p.sum(2)
        rs[..., :N + L] = _diag_sums(p)
    else:
        lse = torch.full((B, Hg, L), float("-inf"), device=dev)
        for j0, j1 in chunks:
            lse = torch.logaddexp(lse, torch.logsumexp(chunk_scores(j0, j1), -1))
        for j0, j1 in chunks:
            p = torch.exp(chunk_scores(j0, j1) - lse.unsqueeze(-1))
            vertical[..., j0:j1] = p.sum(2)
            rs[..., j0:j1 + L] += _diag_sums(p)
    slash = rs[..., 1:N + 1].flip(-1)                                          # d = 0 .. N-1
    return vertical, slash


def select(vertical: torch.Tensor, slash: torch.Tensor, kv, ks, *, sort_dists: bool = True,
           coverage: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forced entries + top-k: (columns ascending (B, H, kv), distances descending (B, H, ks)),
    int64 (the distances in no particular order when ``sort_dists`` is False).

    The first ``FORCED_COLUMNS`` columns and the ``FORCED_DIAGONALS`` diagonals ``d = 0..99``
    are always kept (``_FORCE``); then the top ``kv`` columns and ``ks`` diagonals. ``kv`` and
    ``ks`` are counts, or lists of one count per head (dim 1), and with ``coverage`` the caps of
    :func:`coverage_counts`' counts per (batch, head). Where counts differ, every head takes the
    top ``max`` and the entries past its own count become a column no row reaches
    (``INT32_BIG``, sorted last) and the main diagonal ``d = 0`` (selected by every head, so a
    repeat adds nothing), which keeps the shapes, and so the launches, those of one shared
    budget."""
    kv_width, ks_width = (c if isinstance(c, int) else max(c) for c in (kv, ks))
    if coverage is not None:
        kv = coverage_counts(vertical, FORCED_COLUMNS, coverage, MIN_VERTICAL, kv)
        ks = coverage_counts(slash, FORCED_DIAGONALS, coverage, MIN_SLASH, ks)
    v = vertical.clone()
    v[..., :FORCED_COLUMNS] += _FORCE
    s = slash.clone()
    s[..., :FORCED_DIAGONALS] += _FORCE
    cols = _top_per_head(v, kv, kv_width, INT32_BIG).sort(-1).values
    dists = _top_per_head(s, ks, ks_width, 0)
    if sort_dists:
        dists = dists.sort(-1, descending=True).values
    return cols, dists


def coverage_counts(scores: torch.Tensor, forced: int, coverage: float, floor: int, cap) -> torch.Tensor:
    """Per (batch, head) of ``scores`` (B, H, N), int32 (B, H): the fewest entries, the
    ``forced`` first ones (kept whatever their scores, so counted first) and then the others by
    score, whose scores sum to at least ``coverage`` of the row's total: what a selection of
    that many holds. Clamped to ``[floor, cap]`` and N; ``cap`` a count or one per head. On the
    device, no sync: a sort, a cumulative sum and a count per row."""
    N = scores.shape[-1]
    forced_mass = scores[..., :forced].sum(-1, keepdim=True)
    rest = scores[..., forced:].sort(dim=-1, descending=True).values.cumsum(-1)
    held = forced_mass + rest                                  # mass of the first forced + j + 1
    need = coverage * (held[..., -1:] if rest.shape[-1] else forced_mass)
    # j of the others: 0 when the forced ones hold enough, else one past the prefixes still short
    taken = (held < need).sum(-1) + (forced_mass[..., 0] < need[..., 0]).long()
    caps = device_index([cap] if isinstance(cap, int) else cap, scores.device).view(1, -1)   # no copy under a graph
    count = torch.minimum(torch.clamp(forced + taken, min=floor), caps)
    return count.clamp(max=N).to(torch.int32)


def _top_per_head(x: torch.Tensor, k, width: int, fill: int) -> torch.Tensor:
    """Indices of the top ``width`` of ``x`` (B, H, N) along the last dim, by score, equal
    scores by position (as the Triton selection takes them); ``k`` a count (``width``), one per
    head or a tensor (B, H), the entries past a count then replaced by ``fill``."""
    top = torch.sort(x, stable=True, dim=-1, descending=True).indices[..., :width]
    if isinstance(k, int):
        return top
    counts = k.unsqueeze(-1) if isinstance(k, torch.Tensor) else device_index(k, x.device).view(1, -1, 1)
    return torch.where(torch.arange(width, device=x.device) < counts, top, fill)


# --- the index from a selection -------------------------------------------------------------------
def _scan_torch(dists: torch.Tensor, n: int, bm: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MInference's range merge, one lane per (batch, head, query block), in torch ops."""
    B, H, S = dists.shape
    dev = dists.device
    start, last = q_blocks(n, bm, dev)
    end = start + bm
    nqb = start.shape[0]
    E = torch.full((B, H, nqb), -(1 << 40), dtype=torch.int64, device=dev)
    cnt = torch.zeros(B, H, nqb, dtype=torch.int64, device=dev)
    out = torch.full((B, H, nqb, width + 1), INT32_BIG, dtype=torch.int64, device=dev)
    dump = torch.full_like(cnt, width)
    for j in range(S):
        d = dists[:, :, j:j + 1]                                       # (B, H, 1)
        e = torch.clamp(end - d, min=bm)                               # range end of this diagonal
        grow = (d < end) & (e > E)
        st = torch.where(e > E + bm, e - bm, E)                        # new range, or extend by one
        emit = grow & (st <= last)
        out.scatter_(-1, torch.where(emit, torch.minimum(cnt, dump), dump).unsqueeze(-1),
                     st.unsqueeze(-1))
        E = torch.where(grow, st + bm, E)
        cnt = cnt + emit
    return cnt.to(torch.int32), out[..., :width].to(torch.int32)


def index_from_selection(cols: torch.Tensor, dists: torch.Tensor, n: int, block_m: int = 64,
                         block_n: int = 64) -> SparseIndex:
    """The index of a selection: ``cols`` (B, H, kv) ascending key positions, ``dists``
    (B, H, ks) descending distances (``row - key``; any order on the Triton path). Entries
    past the counts are INT32_BIG (blocks) / 0 (columns) on the torch path, unwritten on the
    Triton path.

    As MInference's ``convert_vertical_slash_indexes`` (csrc/vertical_slash_index.cu): per
    query block ``[s, e)`` (``e = s + 64``, also for the last partial block), diagonal ``d``
    covers keys ``[max(e - d, 64) - 64, max(e - d, 64))``; diagonals with ``d >= e`` are skipped;
    taken in increasing key order they are merged greedily into ranges (a range grows by one
    block when the next diagonal overlaps or touches its end, else a new range starts at the
    diagonal), and each range is tiled into 64-key blocks from its start (so block starts are
    arbitrary). This greedy is a minimum cover of the diagonals' keys by 64-key blocks.

    Deviations from MInference: blocks that would start after the last row of the sequence
    (possible only in the last, partial query block) are dropped (they hold no key; MInference
    keeps them and masks); ``block_m == block_n`` is required (MInference asserts 64/64).

    Verticals at or before the query block's last row and in no block become columns. (When
    the main diagonal is selected, as it always is from :func:`select`, this is exactly
    MInference's rule; for a selection without it MInference would also drop verticals past
    its last range, we keep them.)"""
    if block_m != block_n:
        raise ValueError(f"vertical_slash needs block_m == block_n, got {block_m}, {block_n}")
    B, H, ks = dists.shape
    nqb = num_q_blocks(n, block_m)
    width = min(ks, nqb)
    if use_triton(dists.device):
        from . import _triton_vs   # imports triton: only where its kernels launch
        return SparseIndex(*_triton_vs.index(cols, dists, n, block_m, width), block_m, block_n)
    bcount, boffs = _scan_torch(dists, n, block_m, width)
    # verticals -> columns: keep those at or before the block's last row and in no block
    _, last = q_blocks(n, block_m, cols.device)
    kv = cols.shape[-1]
    c = cols.to(torch.int32).unsqueeze(2).expand(B, H, nqb, kv).contiguous()
    starts = boffs.contiguous()            # entries past the count are INT32_BIG (the scans' fill)
    if width:
        pos = torch.searchsorted(starts, c, right=True, out_int32=True) - 1
        prev = torch.gather(starts, -1, pos.clamp(min=0))
        covered = (pos >= 0) & (c < prev + block_n)
    else:
        covered = torch.zeros_like(c, dtype=torch.bool)
    keep = ~covered & (c <= last.view(1, 1, -1, 1))
    ccount, cidx = compact(c, keep)
    return SparseIndex(bcount, boffs, ccount, cidx, block_m, block_n)


def selection(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
              scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns ascending, distances descending) the builder selects, int64 (B, Hg, .)."""
    kv, ks = head_budgets(q.shape[2], params)
    vertical, slash = scores(q, k, heads, scale)
    return select(vertical, slash, kv, ks, coverage=coverage_of(params))


def head_count_tables(kv, ks, device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The Triton selection's count tables from :func:`head_budgets`' counts: (vertical counts,
    slash counts) int32 on ``device``, one a head for both where either differs per head, else
    one shared, and their largest."""
    kvs, kss = ([c] if isinstance(c, int) else c for c in (kv, ks))
    heads_n = max(len(kvs), len(kss))
    kvs, kss = (c * heads_n if len(c) == 1 else c for c in (kvs, kss))
    return device_index(kvs, device, torch.int32), device_index(kss, device, torch.int32), max(kvs), max(kss)


def build(q: torch.Tensor, k: torch.Tensor, params: dict | list | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    kv, ks = head_budgets(q.shape[2], params)
    coverage = coverage_of(params)
    if _triton_scores(q, k) and block_m == block_n:
        # scores, both top-k's and the index in seven launches, whatever the heads' budgets
        # (with ``coverage``, a few torch ops between the scores and the top-k's count them)
        from . import _triton_vs   # imports triton: only where its kernels launch
        hm, ql, scale = _last_queries(q, k, heads, scale)
        head_kv, head_ks, kv_width, ks_width = head_count_tables(kv, ks, q.device)

        def covering_counts(vertical: torch.Tensor, slash: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (coverage_counts(vertical, FORCED_COLUMNS, coverage, MIN_VERTICAL, kv).flatten(),
                    coverage_counts(slash, FORCED_DIAGONALS, coverage, MIN_SLASH, ks).flatten())
        return SparseIndex(*_triton_vs.build(
            ql, k, hm.heads, [h // hm.group for h in hm.heads], scale, head_kv, head_ks, kv_width, ks_width,
            block_m, force=_FORCE, forced_columns=FORCED_COLUMNS, forced_diagonals=FORCED_DIAGONALS,
            counts=covering_counts if coverage is not None else None), block_m, block_n)
    vertical, slash = scores(q, k, heads, scale)
    cols, dists = select(vertical, slash, kv, ks, coverage=coverage)
    return index_from_selection(cols, dists, q.shape[2], block_m, block_n)


# --- the slow reference ------------------------------------------------------------------------------
def reference_scores(q: torch.Tensor, k: torch.Tensor, heads=None, scale: float | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertical, slash) (B, H, N) float64, the obvious way: dense probabilities of the last
    rows, column sums, and for every distance d an explicit gather along the diagonal."""
    B, Hq, N, D = q.shape
    if heads is not None:
        g = Hq // k.shape[1]
        hs = torch.tensor(list(heads))
        q, k = q[:, hs], k[:, hs // g]
    L = min(LAST_Q, N)
    rows = torch.arange(N - L, N, device=q.device)
    p = dense_probs(q, k, scale, rows)                                    # (B, H, L, N)
    vertical = p.sum(2)
    slash = torch.zeros(B, q.shape[1], N, dtype=torch.float64, device=q.device)
    i = torch.arange(L, device=q.device)
    for d in range(N):
        keys = rows - d
        ok = keys >= 0
        if bool(ok.any()):
            slash[..., d] = p[:, :, i[ok], keys[ok]].sum(-1)
    return vertical, slash


def reference_index_mask(cols: torch.Tensor, dists: torch.Tensor, n: int, block_m: int = 64
                         ) -> torch.Tensor:
    """(B, H, N, N) mask of a selection through a literal, per-row Python port of MInference's
    ``convert_vertical_slash_indexes`` CUDA kernel (the last partial query block uses
    ``end = start + 64`` as MInference; keys past the sequence simply do not exist)."""
    B, H, _ = dists.shape
    mask = torch.zeros(B, H, n, n, dtype=torch.bool)
    bm = block_m
    for b in range(B):
        for h in range(H):
            v_list = sorted(int(x) for x in cols[b, h])
            s_list = sorted((int(x) for x in dists[b, h]), reverse=True)
            for m in range(num_q_blocks(n, bm)):
                start_m, end_m = m * bm, m * bm + bm
                blocks, columns = [], []
                s = v = 0
                v_idx = v_list[v] if v < len(v_list) else end_m + bm
                v += 1
                s_idx = s_list[s] if s < len(s_list) else -1
                s += 1
                while s_idx >= end_m and s < len(s_list):
                    s_idx = s_list[s]
                    s += 1
                s_idx = end_m + bm if s_idx >= end_m else max(end_m - s_idx, bm)
                r0, r1 = s_idx - bm, s_idx
                while True:
                    if v_idx < r1:
                        if v_idx < r0:
                            columns.append(v_idx)
                        if v < len(v_list):
                            v_idx = v_list[v]
                            v += 1
                        else:
                            v_idx = end_m + bm
                    else:
                        if s < len(s_list):
                            s_idx = max(end_m - s_list[s], bm)
                            s += 1
                        else:
                            blocks.extend(range(r0, r1, bm))
                            break
                        if s_idx > r1 + bm:
                            blocks.extend(range(r0, r1, bm))
                            r0, r1 = s_idx - bm, s_idx
                        elif s_idx > r1:
                            r1 += bm
                rows = slice(start_m, min(end_m, n))
                for st in blocks:
                    if st < n:
                        mask[b, h, rows, st:min(n, st + bm)] = True
                for c in columns:
                    if c < n:
                        mask[b, h, rows, c] = True
    return mask & torch.ones(n, n, dtype=torch.bool).tril()


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    kv, ks = budgets(q.shape[2], params)
    vertical, slash = reference_scores(q.cpu(), k.cpu(), heads, scale)
    cols, dists = select(vertical, slash, kv, ks, coverage=validate(params).get(COVERAGE))
    return reference_index_mask(cols, dists, q.shape[2], block_m)


def selection_mask(cols: torch.Tensor, dists: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, N, N) the thin selection: the chosen columns and diagonals, causal."""
    B, H, _ = cols.shape
    r = torch.arange(n)
    m = torch.zeros(B, H, n, n, dtype=torch.bool)
    m.scatter_(-1, cols.cpu().view(B, H, 1, -1).expand(B, H, n, -1), True)
    diff = r.view(-1, 1) - r.view(1, -1)                                    # row - key
    dsel = torch.zeros(B, H, n + 1, dtype=torch.bool)
    dsel.scatter_(-1, dists.cpu(), True)
    m |= dsel[:, :, diff.clamp(0, n)] & (diff >= 0)
    return m & torch.ones(n, n, dtype=torch.bool).tril()


def demo(path: str = "vertical_slash.png", n: int = 1024, **params) -> str:
    p = validate(params or {"vertical_size": 40, "slash_size": 104})
    cols, diags = [5, n * 300 // 1024, n * 700 // 1024], [n * 150 // 1024, n * 400 // 1024]
    q, k = planted_qk(n, hot_columns=cols, diagonals=diags, seed=1)
    return plot_selection(path, f"{NAME} v={p['vertical_size']} s={p['slash_size']}", build, q, k, p,
                          columns=True, planted=f"planted: columns {cols}; diagonals {diags}")


PATTERN = register_or_demo(Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, colour="#ff7f0e",
                                   dynamic=True, per_head=tuple(BUDGETS), defaults=DEFAULTS, budgets=BUDGETS,
                                   optional=(COVERAGE,), param_schema=PARAM_SCHEMA, doc=__doc__), __name__)
