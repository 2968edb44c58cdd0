"""Triton kernels of ``sample_attention``'s two stages (CUDA; on CPU through ``TRITON_INTERPRET=1``
for the tests). Not a pattern: :mod:`.sample_attention` launches them when ``use_triton`` says so.
Stage 2 is one kernel, :func:`_sa_select` (its docstring says how); the rest of this note is
stage 1.

Two fused kernels: per sampled row, the log-sum-exp of its causal scores and the mass outside
its window (its keys split over programs, the last to finish combining them); per key tile, the
column sums. No rows x N score tensor is stored, and both are
batched over the group's heads, GQA without copying K per query head. Each kernel recomputes
the sampled scores (hence the ``2 * sample_frac`` cost); they skip the masks on tiles that need
none (key tiles before every row's window; sampled rows whose window starts after the key tile)
and the rows a key tile cannot score (before it, or whose window already covers it).
"""
from __future__ import annotations

from ..sparse_attention import HAS_TRITON, tl, triton

if HAS_TRITON:
    from ._triton_select import digit_counts, next_digit, order_keys, take_top

    @triton.jit
    def _sa_row_stats(Q, K, RPOS, W0, KVH, PART, ARRIVED, LSE, FIN,
                      stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_w0h,
                      Hg, R, N, qk_scale, SPLIT, NSPLIT,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                      SPLITS: tl.constexpr):
        """Program (row tile, head, key split): the sampled rows' running max, sum and mass
        outside their windows over ``SPLIT`` keys, from each row's window start on (W0: per
        head, or shared when stride_w0h is 0); the row tile's last split to finish combines
        them into log2-sum-exp2 (LSE) and the fraction of the mass inside the window (FIN).
        Split, a tile's chain of key steps is ``SPLIT / BLOCK_N`` long: whole, the last row
        tile's walked every key alone (256 steps at 32K)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_s = tl.program_id(2)
        b = (pid_bh // Hg).to(tl.int64)
        h = pid_bh % Hg
        kvh = tl.load(KVH + h).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mmask = offs_m < R
        rpos = tl.load(RPOS + offs_m, mask=mmask, other=0)
        w0 = tl.load(W0 + h * stride_w0h + offs_m, mask=mmask, other=0)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qr
                    + offs_d[None, :], mask=mmask[:, None], other=0.0)
        kbase = K + b * stride_kb + kvh * stride_kh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        lo_i = tl.zeros([BLOCK_M], tl.float32)
        j0 = pid_s * SPLIT
        j1 = tl.minimum(j0 + SPLIT, tl.max(rpos, 0) + 1)
        # key tiles before every row's window start: no causal or window mask, all of their
        # mass is outside the windows (lo == l there)
        a_end = tl.minimum((tl.min(tl.where(mmask, w0, 1 << 30), 0) // BLOCK_N) * BLOCK_N, j1)
        for start_n in range(j0, a_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kt = tl.load(kbase + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None])
            s = tl.dot(q, kt) * qk_scale
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        lo_i = l_i
        # the rest of the split: causal and window masks (a row may have no key in it yet)
        for start_n in range(tl.maximum(a_end, j0), j1, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kt = tl.load(kbase + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None],
                         mask=offs_n[None, :] < N, other=0.0)
            s = tl.dot(q, kt) * qk_scale
            s = tl.where(offs_n[None, :] <= rpos[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_safe)
            pexp = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(pexp, 1)
            lo_i = lo_i * alpha + tl.sum(tl.where(offs_n[None, :] < w0[:, None], pexp, 0.0), 1)
            m_i = m_new
        tile = pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m
        part = PART + (tile * NSPLIT + pid_s) * 3 * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(part, m_i)
        tl.store(part + BLOCK_M, l_i)
        tl.store(part + 2 * BLOCK_M, lo_i)
        # every thread's stores before the release; the last split to arrive acquires them all
        tl.debug_barrier()
        if tl.atomic_add(ARRIVED + tile, 1, sem="acq_rel") == NSPLIT - 1:
            offs_s = tl.arange(0, SPLITS)
            at = (tile * NSPLIT + offs_s[:, None]) * 3 * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
            smask = offs_s[:, None] < NSPLIT
            m_s = tl.load(PART + at, mask=smask, other=float("-inf"), cache_modifier=".cg")
            m = tl.max(m_s, 0)
            w = tl.math.exp2(m_s - tl.where(m == float("-inf"), 0.0, m)[None, :])
            l_all = tl.sum(w * tl.load(PART + at + BLOCK_M, mask=smask, other=0.0, cache_modifier=".cg"), 0)
            lo_all = tl.sum(w * tl.load(PART + at + 2 * BLOCK_M, mask=smask, other=0.0, cache_modifier=".cg"), 0)
            out = pid_bh.to(tl.int64) * R + offs_m
            tl.store(LSE + out, m + tl.math.log2(l_all), mask=mmask)
            tl.store(FIN + out, 1.0 - lo_all / l_all, mask=mmask)
            tl.atomic_xchg(ARRIVED + tile, 0, sem="relaxed")     # ready for the next call

    @triton.jit
    def _sa_col_masked(qbase, RPOS, W0, lbase, kt, offs_n, offs_d, start_m, R, stride_qr, qk_scale,
                       COUNT_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mmask = offs_m < R
        q = tl.load(qbase + offs_m[:, None].to(tl.int64) * stride_qr + offs_d[None, :],
                    mask=mmask[:, None], other=0.0)
        rpos = tl.load(RPOS + offs_m, mask=mmask, other=-1)
        lse = tl.load(lbase + offs_m, mask=mmask, other=0.0)
        s = tl.dot(q, kt) * qk_scale
        keep = offs_n[None, :] <= rpos[:, None]
        if COUNT_WINDOW:
            w0 = tl.load(W0 + offs_m, mask=mmask, other=0)
            keep = keep & (offs_n[None, :] < w0[:, None])
        return tl.sum(tl.where(keep, tl.math.exp2(s - lse[:, None]), 0.0), 0)

    @triton.jit
    def _sa_col_sums(Q, K, RPOS, W0, KVH, LSE, COL,
                     stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_w0h,
                     Hg, R, N, qk_scale,
                     NUM_STRIDED, SAMPLE_STRIDE, TAIL_START,
                     HEAD_WINDOW, INDEX_BLOCK_M,               # window tokens per head; rows per query block
                     COUNT_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr):
        """Per key tile: the sum over sampled rows of softmax probabilities (outside each
        row's window when COUNT_WINDOW). The sampled rows are the NUM_STRIDED rows 0,
        SAMPLE_STRIDE, 2 * SAMPLE_STRIDE, ... below TAIL_START, then every row from it."""
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // Hg).to(tl.int64)
        h = pid_bh % Hg
        kvh = tl.load(KVH + h).to(tl.int64)
        WINDOW = tl.load(HEAD_WINDOW + h)
        w0base = W0 + h * stride_w0h
        j0 = pid_n * BLOCK_N
        offs_n = j0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kt = tl.load(K + b * stride_kb + kvh * stride_kh + offs_n[None, :].to(tl.int64) * stride_kn
                     + offs_d[:, None], mask=offs_n[None, :] < N, other=0.0)
        acc = tl.zeros([BLOCK_N], tl.float32)
        # sampled rows are sorted: skip those before this key tile (causal zeros) and, when
        # COUNT_WINDOW, those whose window starts at or before it (w0 > j0 needs a row
        # block start >= j0 + WINDOW)
        r0 = j0
        if COUNT_WINDOW:
            r0 = (j0 + WINDOW + INDEX_BLOCK_M - 1) // INDEX_BLOCK_M * INDEX_BLOCK_M
        c = (r0 + SAMPLE_STRIDE - 1) // SAMPLE_STRIDE
        first = tl.where(c < NUM_STRIDED, c, NUM_STRIDED + tl.maximum(r0 - TAIL_START, 0))
        qbase = Q + b * stride_qb + h * stride_qh
        lbase = LSE + pid_bh.to(tl.int64) * R
        # rows from r1 on keep the whole key tile (it lies before their window start, or,
        # without COUNT_WINDOW, at or before the row): no masks for their full row tiles
        if COUNT_WINDOW:
            r1 = (j0 + BLOCK_N + WINDOW - 1 + INDEX_BLOCK_M - 1) // INDEX_BLOCK_M * INDEX_BLOCK_M
        else:
            r1 = j0 + BLOCK_N - 1
        c1 = (r1 + SAMPLE_STRIDE - 1) // SAMPLE_STRIDE
        full = tl.minimum(tl.where(c1 < NUM_STRIDED, c1, NUM_STRIDED + tl.maximum(r1 - TAIL_START, 0)),
                          R)
        t0 = (first // BLOCK_M) * BLOCK_M
        t1 = tl.maximum(t0, (full + BLOCK_M - 1) // BLOCK_M * BLOCK_M)
        t2 = tl.maximum(t1, (R // BLOCK_M) * BLOCK_M)
        for start_m in range(t1, t2, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = tl.load(qbase + offs_m[:, None].to(tl.int64) * stride_qr + offs_d[None, :])
            lse = tl.load(lbase + offs_m)
            s = tl.dot(q, kt) * qk_scale
            acc += tl.sum(tl.math.exp2(s - lse[:, None]), 0)
        for start_m in range(t0, t1, BLOCK_M):
            acc += _sa_col_masked(qbase, RPOS, w0base, lbase, kt, offs_n, offs_d, start_m, R, stride_qr,
                                  qk_scale, COUNT_WINDOW, BLOCK_M)
        for start_m in range(t2, R, BLOCK_M):
            acc += _sa_col_masked(qbase, RPOS, w0base, lbase, kt, offs_n, offs_d, start_m, R, stride_qr,
                                  qk_scale, COUNT_WINDOW, BLOCK_M)
        tl.store(COL + pid_bh.to(tl.int64) * N + offs_n, acc, mask=offs_n < N)

    @triton.jit
    def _top_candidates(row, cols, vals, N, cap, CHUNK: tl.constexpr):
        """The ``cap`` best of the ``N`` scores at ``row`` (equal scores lower column first),
        written ascending by column to ``cols`` with their scores in ``vals``. Returns (how many,
        their scores summed)."""
        # the cap-th largest score (_triton_select's radix select)
        prefix = tl.zeros([], tl.int64)
        rem = cap
        for p in tl.static_range(4):
            counts = tl.zeros([256], tl.int32)
            for c0 in range(0, N, CHUNK):
                offs = c0 + tl.arange(0, CHUNK)
                key = order_keys(tl.load(row + offs, mask=offs < N, other=0.0))
                counts += digit_counts(key, offs < N, prefix, 24 - 8 * p)
            digit, rem = next_digit(counts, rem)
            prefix = prefix * 256 + digit
        # the cap candidates, ascending, with their scores
        ncand = tl.zeros([], tl.int32)
        ties = tl.zeros([], tl.int32)
        mass = tl.zeros([], tl.float64)
        for c0 in range(0, N, CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            s = tl.load(row + offs, mask=offs < N, other=0.0)
            take, chunk_ties = take_top(order_keys(s), offs < N, prefix, ties, rem)
            ties += chunk_ties
            pos = ncand + tl.cumsum(take.to(tl.int32), 0) - 1
            tl.store(cols + pos, offs, mask=take)
            tl.store(vals + pos, s, mask=take)
            ncand += tl.sum(take.to(tl.int32), 0)
            mass += tl.sum(tl.where(take, s.to(tl.float64), 0.0), 0)
        return ncand, mass

    @triton.jit
    def _alpha_cut(cols, vals, ncand, need, mass, CHUNK: tl.constexpr):
        """Of the ``ncand`` candidates (ascending columns ``cols``, their scores ``vals``,
        ``mass`` their sum), the fewest by score, equal scores lower column first, whose mass
        reaches ``need`` (all of them when none does), compacted in place in ascending column
        order. Returns how many. The threshold key is found one bit a pass over the candidates,
        ``CHUNK`` at a time (one sort in registers instead measured slower on the H100: 336
        against 184 us at 32K for 9 heads of 3277 candidates, benchmarks/build_stages.py)."""
        # the fewest of them by score reaching `need`: the largest key t with mass(key >= t)
        # >= need, one bit a pass, then as many of the scores equal to t as `need` still takes
        t = tl.zeros([], tl.int64)
        for b in tl.static_range(32):
            cand = t + (1 << (31 - b))
            above = tl.zeros([], tl.float64)
            for c0 in range(0, ncand, CHUNK):
                offs = c0 + tl.arange(0, CHUNK)
                s = tl.load(vals + offs, mask=offs < ncand, other=0.0)
                above += tl.sum(tl.where((offs < ncand) & (order_keys(s) >= cand), s.to(tl.float64), 0.0), 0)
            t = tl.where(above >= need, cand, t)
        mass_gt = tl.zeros([], tl.float64)
        n_eq = tl.zeros([], tl.int32)
        v_t = tl.zeros([], tl.float64)
        for c0 in range(0, ncand, CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            s = tl.load(vals + offs, mask=offs < ncand, other=0.0)
            key = order_keys(s)
            ok = offs < ncand
            mass_gt += tl.sum(tl.where(ok & (key > t), s.to(tl.float64), 0.0), 0)
            n_eq += tl.sum((ok & (key == t)).to(tl.int32), 0)
            v_t = tl.maximum(v_t, tl.max(tl.where(ok & (key == t), s.to(tl.float64), 0.0), 0))
        short = tl.where(v_t > 0.0, (need - mass_gt) / v_t, 1.0)
        j = tl.minimum(tl.maximum(tl.math.ceil(short), 1.0), n_eq.to(tl.float64))
        # need <= 0: nothing; all candidates short of need: all of them
        t = tl.where(need <= 0.0, 1 << 40, tl.where(mass < need, -1, t))
        j = tl.where((need <= 0.0) | (mass < need), 0, j.to(tl.int32))
        # keep those, compacted in place (each chunk read whole before any of it is written)
        kept = tl.zeros([], tl.int32)
        ties = tl.zeros([], tl.int32)
        for c0 in range(0, ncand, CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            ok = offs < ncand
            s = tl.load(vals + offs, mask=ok, other=0.0)
            c = tl.load(cols + offs, mask=ok, other=0)
            tl.debug_barrier()
            keep, chunk_ties = take_top(order_keys(s), ok, t, ties, j)
            ties += chunk_ties
            tl.store(cols + kept + tl.cumsum(keep.to(tl.int32), 0) - 1, c, mask=keep)
            kept += tl.sum(keep.to(tl.int32), 0)
        return kept

    @triton.jit
    def _sa_select(COL, WIN, TOT, HEAD_ALPHA, HEAD_CAP, HEADS, COLS, VALS, COUNT, N, WIDTH,
                   stride_cols, stride_vals, CHUNK: tl.constexpr):
        """Stage 2 for one row of column scores: the fewest top-scored columns whose mass with
        the window's reaches ``alpha`` of the total, at most the head's cap, ascending, then
        INT32_BIG; their number in COUNT. Equal scores count by position, lowest first."""
        bh = tl.program_id(0).to(tl.int64)
        h = bh % HEADS
        cap = tl.minimum(tl.load(HEAD_CAP + h), N)
        need = (tl.load(HEAD_ALPHA + h) * tl.load(TOT + bh) - tl.load(WIN + bh)).to(tl.float64)
        cols = COLS + bh * stride_cols
        vals = VALS + bh * stride_vals
        kept = tl.zeros([], tl.int32)
        # the window alone reaching alpha needs no columns and no passes (9 such heads at 32K on
        # the H100: 187 -> 2.5 us)
        if need > 0.0:
            ncand, mass = _top_candidates(COL + bh * N, cols, vals, N, cap, CHUNK)
            tl.debug_barrier()      # the candidates are read back by other threads below
            kept = _alpha_cut(cols, vals, ncand, need, mass, CHUNK)
        tl.debug_barrier()
        for c0 in range(kept, WIDTH, CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            tl.store(cols + offs, 2147483647, mask=offs < WIDTH)
        tl.store(COUNT + bh, kept)


SELECT_CHUNK = 8192      # column scores one program of _sa_select holds at a time
SELECT_WARPS = 16


def filter_columns(col, win, tot, head_alpha, head_cap, widest: int):
    """Stage 2 in one kernel (:func:`_sa_select`): ``col`` (B, Hg, N) float32, ``win`` /
    ``tot`` (B, Hg), ``head_alpha`` float32 / ``head_cap`` int32 (Hg,) or (1,). Returns
    (count int32 (B, Hg), columns ascending int32 (B, Hg, widest), INT32_BIG past the count)."""
    import torch
    B, Hg, N = col.shape
    cols = torch.empty(B, Hg, widest, dtype=torch.int32, device=col.device)
    vals = torch.empty(B, Hg, widest, dtype=torch.float32, device=col.device)
    count = torch.empty(B, Hg, dtype=torch.int32, device=col.device)
    col = col.contiguous()
    _sa_select[(B * Hg,)](col, win.contiguous(), tot.contiguous(), head_alpha, head_cap, head_cap.numel(), cols,
                          vals, count, N, widest, widest, widest, CHUNK=SELECT_CHUNK, num_warps=SELECT_WARPS,
                          enable_fp_fusion=False)   # alpha * total - window rounded as torch rounds it: no FMA
    return count, cols
