"""Triton kernels of the ``vertical_slash`` builder (CUDA; on CPU through ``TRITON_INTERPRET=1``
for the tests). Not a pattern: :mod:`.vertical_slash` calls these when ``use_triton`` says so.

* :func:`scores`: the vertical (column) and slash (diagonal) sums of the causal softmax of the
  last ``L <= 64`` queries, in two fused passes over the keys, so no ``L x N`` score tensor
  is stored;
* :func:`select`: both top-k's of every head, exact, in three launches that split each row
  over many programs (a radix select's first digit from all segments' histograms, the rest
  among the few candidates by the row's last program to finish, then the writes: the columns
  ascending, the diagonals as the table the range merge reads);
* :func:`build`: the scores, the selection, then the index: seven launches for a group of
  heads whatever their budgets;
* :func:`index`: MInference's greedy range merge per query block, one lane per query block,
  in ``O(blocks)`` steps instead of ``O(slash_size)``, then the verticals, written compact
  (no ``N``-wide temporaries).
Each function's docstring says how. Entries past the counts are left unwritten (the index's
invariants ignore them).
"""
from __future__ import annotations

import torch

from ..sparse_attention import HAS_TRITON, tl, triton

if HAS_TRITON:
    from ._triton_select import digit_counts, next_digit, order_keys, ranked_keys

    @triton.jit
    def _tile_scores(q, Q, kbase, offs_n, offs_d, stride_kn, limit, qk_scale,
                     ROUND_SCORES: tl.constexpr, DOT_IEEE: tl.constexpr):
        """Scaled scores (BLOCK_M, BLOCK_N) of the query rows ``q`` against the keys ``offs_n``
        (those at or past ``limit`` read as zeros), rounded to the input dtype (``Q``'s) before
        scaling when ROUND_SCORES, as the torch path's matmul in that dtype rounds them."""
        kt = tl.load(kbase + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None],
                     mask=offs_n[None, :] < limit, other=0.0)
        if DOT_IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        if ROUND_SCORES:
            s = s.to(Q.dtype.element_ty).to(tl.float32)
        return s * qk_scale

    @triton.jit
    def _vs_row_stats(Q, K, QH, KVH, MOUT, LOUT,
                      stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn,
                      Hg, N, L, qk_scale, SPLIT, NSPLIT,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                      ROUND_SCORES: tl.constexpr, DOT_IEEE: tl.constexpr):
        pid_bh = tl.program_id(0)
        pid_s = tl.program_id(1)
        b = (pid_bh // Hg).to(tl.int64)
        h = pid_bh % Hg
        qh = tl.load(QH + h).to(tl.int64)
        kvh = tl.load(KVH + h).to(tl.int64)
        offs_i = tl.arange(0, BLOCK_M)
        imask = offs_i < L
        rpos = N - L + offs_i
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + qh * stride_qh + offs_i[:, None] * stride_qr + offs_d[None, :],
                    mask=imask[:, None], other=0.0)
        kbase = K + b * stride_kb + kvh * stride_kh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        j0 = pid_s * SPLIT
        j1 = tl.minimum(j0 + SPLIT, N)
        for start_n in range(j0, j1, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            s = _tile_scores(q, Q, kbase, offs_n, offs_d, stride_kn, j1, qk_scale, ROUND_SCORES, DOT_IEEE)
            s = tl.where((offs_n[None, :] <= rpos[:, None]) & (offs_n[None, :] < j1), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(tl.math.exp2(s - m_safe[:, None]), 1)
            m_i = m_new
        out = (pid_bh.to(tl.int64) * NSPLIT + pid_s) * BLOCK_M + offs_i
        tl.store(MOUT + out, m_i)
        tl.store(LOUT + out, l_i)

    @triton.jit
    def _row_lse(MOUT, LOUT, bh, NSPLIT, BLOCK_M: tl.constexpr, SPLITS: tl.constexpr):
        """Per last-query row, log2 of the sum of exp2 over all keys, from the splits' running
        (max, sum) pairs, all ``NSPLIT <= SPLITS`` of them loaded at once (each program of
        :func:`_vs_sums` combines them for itself: a few KB from L2 instead of a launch; a
        loop over the splits waited on one load after another)."""
        offs_s = tl.arange(0, SPLITS)
        at = (bh * NSPLIT + offs_s[:, None]) * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
        smask = offs_s[:, None] < NSPLIT
        m_s = tl.load(MOUT + at, mask=smask, other=float("-inf"))
        m = tl.max(m_s, 0)
        m = tl.where(m == float("-inf"), 0.0, m)
        l_i = tl.sum(tl.load(LOUT + at, mask=smask, other=0.0) * tl.math.exp2(m_s - m[None, :]), 0)
        return m + tl.math.log2(l_i)

    @triton.jit
    def _vs_sums(Q, K, QH, KVH, MOUT, LOUT, VERT, PART,
                 stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn,
                 Hg, N, L, qk_scale, T, NSPLIT,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                 TILES: tl.constexpr, SPLITS: tl.constexpr, ROUND_SCORES: tl.constexpr,
                 DOT_IEEE: tl.constexpr):
        """Per key tile of ``TILES`` consecutive ones (the query rows and their log-sum-exp
        loaded once for all): the probabilities' column sums and their diagonal partials."""
        pid_bh = tl.program_id(0)
        b = (pid_bh // Hg).to(tl.int64)
        h = pid_bh % Hg
        qh = tl.load(QH + h).to(tl.int64)
        kvh = tl.load(KVH + h).to(tl.int64)
        offs_i = tl.arange(0, BLOCK_M)
        imask = offs_i < L
        rpos = N - L + offs_i
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + qh * stride_qh + offs_i[:, None] * stride_qr + offs_d[None, :],
                    mask=imask[:, None], other=0.0)
        lse = _row_lse(MOUT, LOUT, pid_bh.to(tl.int64), NSPLIT, BLOCK_M, SPLITS)
        kbase = K + b * stride_kb + kvh * stride_kh
        # diagonal sums: u = i - t + BLOCK_N - 1 (distance N - L - j0 - BLOCK_N + 1 + u)
        offs_u = tl.arange(0, 2 * BLOCK_N)
        t = offs_i[:, None] + (BLOCK_N - 1) - offs_u[None, :]                  # (BLOCK_M, 2 BLOCK_N)
        ok = (t >= 0) & (t < BLOCK_N)
        for tile in range(tl.program_id(1) * TILES, tl.minimum((tl.program_id(1) + 1) * TILES, T)):
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            s = _tile_scores(q, Q, kbase, offs_n, offs_d, stride_kn, N, qk_scale, ROUND_SCORES, DOT_IEEE)
            valid = (offs_n[None, :] <= rpos[:, None]) & (offs_n[None, :] < N) & imask[:, None]
            p = tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)
            tl.store(VERT + pid_bh.to(tl.int64) * N + offs_n, tl.sum(p, 0), mask=offs_n < N)
            skew = tl.gather(p, tl.where(ok, t, 0), 1)
            part = tl.sum(tl.where(ok, skew, 0.0), 0)
            tl.store(PART + (pid_bh.to(tl.int64) * T + tile) * (2 * BLOCK_N) + offs_u, part)

    @triton.jit
    def _max(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _score_keys(VERT, PART, bh, offs, N, T, SLASH_AT, is_slash, FORCE,
                    FORCED_COLUMNS: tl.constexpr, FORCED_DIAGONALS: tl.constexpr, BLOCK_N: tl.constexpr):
        """Order-preserving keys in [0, 2^32) of the scores at ``offs`` (columns, or distances
        when ``is_slash``), the forced ones raised by FORCE as the torch path raises them."""
        valid = offs < N
        if is_slash:
            # the slash score of distance d sits at w = d + SLASH_AT of the tiles' diagonal
            # partials laid out by w = (T - 1 - t) * BLOCK_N + u: the low half of one tile plus
            # the high half of the tile after it (the order of the torch path's two adds)
            w = offs + SLASH_AT
            t = w // BLOCK_N
            u = w % BLOCK_N
            base = PART + bh * T * (2 * BLOCK_N)
            lo = tl.load(base + (T - 1 - t).to(tl.int64) * (2 * BLOCK_N) + u, mask=valid & (t < T), other=0.0)
            hi = tl.load(base + (T - t).to(tl.int64) * (2 * BLOCK_N) + BLOCK_N + u,
                         mask=valid & (t >= 1), other=0.0)
            s = lo + hi
            s = tl.where(offs < FORCED_DIAGONALS, s + FORCE, s)
        else:
            s = tl.load(VERT + bh * N + offs, mask=valid, other=0.0)
            s = tl.where(offs < FORCED_COLUMNS, s + FORCE, s)
        return order_keys(s)

    @triton.jit
    def _vs_select_hist(VERT, PART, HIST, CTRL, N, T, SLASH_AT, FORCE, SEG,
                        FORCED_COLUMNS: tl.constexpr, FORCED_DIAGONALS: tl.constexpr,
                        BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, SEGMENTS: tl.constexpr):
        """Selection stage 1, program (row, direction, segment): the histogram of the top 8
        bits of the segment's keys. Segment 0 clears the counters stage 2 counts with."""
        bh = tl.program_id(0).to(tl.int64)
        r = bh * 2 + tl.program_id(1)
        s = tl.program_id(2)
        counts = tl.zeros([256], tl.int32)
        for c0 in range(s * SEG, tl.minimum(s * SEG + SEG, N), CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            key = _score_keys(VERT, PART, bh, offs, N, T, SLASH_AT, tl.program_id(1) == 1, FORCE,
                              FORCED_COLUMNS, FORCED_DIAGONALS, BLOCK_N)
            counts += digit_counts(key, offs < N, 0, 24)
        tl.store(HIST + (r * SEGMENTS + s) * 256 + tl.arange(0, 256), counts)
        if s == 0:
            tl.store(CTRL + r * 2 + tl.arange(0, 2), tl.zeros([2], tl.int32))

    @triton.jit
    def threshold_among(VERT, PART, bh, cand, n_cand, top, rem, at_top, N, T, SLASH_AT, is_slash,
                        FORCE, FORCED_COLUMNS: tl.constexpr, FORCED_DIAGONALS: tl.constexpr,
                        BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
        """The rem-th largest ranked key among the candidates (all with top digit ``top``), 8
        bits a pass below it, stopping once every key left with the prefix is taken. Ranked
        keys are distinct, so take iff ranked key >= the result."""
        prefix = top.to(tl.uint64)
        shift = 56
        while (rem < at_top) & (shift > 0):
            shift -= 8
            counts = tl.zeros([256], tl.int32)
            for c0 in range(0, n_cand, CHUNK):
                i = c0 + tl.arange(0, CHUNK)
                pos = tl.load(cand + i, mask=i < n_cand, other=0, cache_modifier=".cg")
                key = _score_keys(VERT, PART, bh, pos, N, T, SLASH_AT, is_slash, FORCE,
                                  FORCED_COLUMNS, FORCED_DIAGONALS, BLOCK_N)
                counts += digit_counts(ranked_keys(key, pos), i < n_cand, prefix, shift.to(tl.uint64))
            digit, rem = next_digit(counts, rem)
            at_top = tl.sum(tl.where(tl.arange(0, 256) == digit, counts, 0), 0)
            prefix = prefix * 256 + digit.to(tl.uint64)
        return prefix << shift.to(tl.uint64)

    @triton.jit
    def _vs_select_split(VERT, PART, HIST, CTRL, CAND, SEG_TAKEN, SEG_LAST, THR, HEAD_KV, HEAD_KS,
                         HEADS, N, T, SLASH_AT, FORCE, SEG, NSEG,
                         FORCED_COLUMNS: tl.constexpr, FORCED_DIAGONALS: tl.constexpr,
                         BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, SEGMENTS: tl.constexpr):
        """Selection stage 2, program (row, direction, segment). From all segments' histograms,
        the top digit of the k-th largest key; the segment's keys above it are taken (their
        number and last position in SEG_TAKEN / SEG_LAST), those at it are the candidates,
        appended to the row's list in CAND. The row's last program to finish selects among the
        candidates (:func:`threshold_among`), then turns SEG_TAKEN / SEG_LAST into what stage 3
        reads: per segment, how many keys and the last position earlier segments take."""
        bh = tl.program_id(0).to(tl.int64)
        is_slash = tl.program_id(1) == 1
        r = bh * 2 + tl.program_id(1)
        s = tl.program_id(2)
        h = bh % HEADS
        if is_slash:
            k = tl.load(HEAD_KS + h)
        else:
            k = tl.load(HEAD_KV + h)
        k = tl.minimum(k, N)
        segs = tl.arange(0, SEGMENTS)
        hist = tl.load(HIST + (r * SEGMENTS + segs[:, None]) * 256 + tl.arange(0, 256)[None, :],
                       mask=segs[:, None] < NSEG, other=0)
        counts = tl.sum(hist, 0)
        top, rem = next_digit(counts, k)
        taken = tl.zeros([], tl.int32)
        last = tl.full([], -1, tl.int32)
        for c0 in range(s * SEG, tl.minimum(s * SEG + SEG, N), CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            key = _score_keys(VERT, PART, bh, offs, N, T, SLASH_AT, is_slash, FORCE,
                              FORCED_COLUMNS, FORCED_DIAGONALS, BLOCK_N)
            digit = (key >> 24).to(tl.int32)
            above = (offs < N) & (digit > top)
            at = (offs < N) & (digit == top)
            taken += tl.sum(above.to(tl.int32), 0)
            last = tl.maximum(last, tl.max(tl.where(above, offs, -1), 0))
            base = tl.atomic_add(CTRL + r * 2 + 1, tl.sum(at.to(tl.int32), 0), sem="relaxed")
            tl.store(CAND + r * N + base + tl.cumsum(at.to(tl.int32), 0) - 1, offs, mask=at)
        tl.store(SEG_TAKEN + r * SEGMENTS + s, taken)
        tl.store(SEG_LAST + r * SEGMENTS + s, last)
        # every thread's stores before the release; the last to arrive acquires them all
        tl.debug_barrier()
        if tl.atomic_add(CTRL + r * 2, 1, sem="acq_rel") == NSEG - 1:
            n_cand = tl.atomic_add(CTRL + r * 2 + 1, 0, sem="acquire")
            cand = CAND + r * N
            at_top = tl.sum(tl.where(tl.arange(0, 256) == top, counts, 0), 0)
            thr = tl.full([], -1, tl.int64).to(tl.uint64, bitcast=True)     # k == 0 takes nothing
            if k > 0:
                thr = threshold_among(VERT, PART, bh, cand, n_cand, top, rem, at_top, N, T, SLASH_AT,
                                      is_slash, FORCE, FORCED_COLUMNS, FORCED_DIAGONALS, BLOCK_N, CHUNK)
            for c0 in range(0, n_cand, CHUNK):
                i = c0 + tl.arange(0, CHUNK)
                pos = tl.load(cand + i, mask=i < n_cand, other=0, cache_modifier=".cg")
                key = _score_keys(VERT, PART, bh, pos, N, T, SLASH_AT, is_slash, FORCE,
                                  FORCED_COLUMNS, FORCED_DIAGONALS, BLOCK_N)
                sel = (i < n_cand) & (ranked_keys(key, pos) >= thr)
                tl.atomic_add(SEG_TAKEN + r * SEGMENTS + pos // SEG, 1, mask=sel, sem="relaxed")
                tl.atomic_max(SEG_LAST + r * SEGMENTS + pos // SEG, pos, mask=sel, sem="relaxed")
            tl.debug_barrier()
            smask = segs < NSEG
            n_taken = tl.load(SEG_TAKEN + r * SEGMENTS + segs, mask=smask, other=0, cache_modifier=".cg")
            last_at = tl.load(SEG_LAST + r * SEGMENTS + segs, mask=smask, other=-1, cache_modifier=".cg")
            tl.debug_barrier()
            before = tl.max(tl.where(segs[None, :] < segs[:, None], last_at[None, :], -1), 1)
            tl.store(SEG_TAKEN + r * SEGMENTS + segs, tl.cumsum(n_taken, 0) - n_taken, mask=smask)
            tl.store(SEG_LAST + r * SEGMENTS + segs, before, mask=smask)
            tl.store(THR + r, thr.to(tl.int64, bitcast=True))

    @triton.jit
    def _vs_select_write(VERT, PART, SEG_TAKEN, SEG_LAST, THR, COLS, PRED, HEAD_KV, HEAD_KS, HEADS,
                         N, T, SLASH_AT, KV_WIDTH, FORCE, SEG, NSEG, stride_cols, stride_pred,
                         FORCED_COLUMNS: tl.constexpr, FORCED_DIAGONALS: tl.constexpr,
                         BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, SEGMENTS: tl.constexpr):
        """Selection stage 3, program (row, direction, segment): the taken keys of the segment
        written from where earlier segments stop. Verticals: ascending columns (INT32_BIG past
        the count, from the last segment); diagonals: the range merge's table ``pred[t]`` = the
        largest selected distance below t (-1: none)."""
        bh = tl.program_id(0).to(tl.int64)
        is_slash = tl.program_id(1) == 1
        r = bh * 2 + tl.program_id(1)
        s = tl.program_id(2)
        thr = tl.load(THR + r).to(tl.uint64, bitcast=True)
        kept = tl.load(SEG_TAKEN + r * SEGMENTS + s)
        below = tl.load(SEG_LAST + r * SEGMENTS + s)
        for c0 in range(s * SEG, tl.minimum(s * SEG + SEG, N), CHUNK):
            offs = c0 + tl.arange(0, CHUNK)
            valid = offs < N
            key = _score_keys(VERT, PART, bh, offs, N, T, SLASH_AT, is_slash, FORCE,
                              FORCED_COLUMNS, FORCED_DIAGONALS, BLOCK_N)
            take = valid & (ranked_keys(key, offs) >= thr)
            if is_slash:
                run = tl.maximum(tl.associative_scan(tl.where(take, offs, -1), 0, _max), below)
                tl.store(PRED + bh * stride_pred + offs + 1, run, mask=valid)
                below = tl.max(run, 0)
            else:
                pos = kept + tl.cumsum(take.to(tl.int32), 0) - 1
                tl.store(COLS + bh * stride_cols + pos, offs, mask=take & (pos < KV_WIDTH))
                kept += tl.sum(take.to(tl.int32), 0)
        if is_slash:
            if s == 0:
                tl.store(PRED + bh * stride_pred, -1)
        elif s == NSEG - 1:
            k = tl.minimum(tl.load(HEAD_KV + bh % HEADS), N)
            for c0 in range(k, KV_WIDTH, CHUNK):
                offs = c0 + tl.arange(0, CHUNK)
                tl.store(COLS + bh * stride_cols + offs, 2147483647, mask=offs < KV_WIDTH)

    @triton.jit
    def _vs_blocks(PRED, OUT, CNT, NQB, N, WIDTH, stride_p, stride_ob, stride_oq, stride_c,
                   INDEX_BLOCK_M: tl.constexpr, Q_BLOCKS_PER_PROGRAM: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * Q_BLOCKS_PER_PROGRAM + tl.arange(0, Q_BLOCKS_PER_PROGRAM)
        rmask = rows < NQB
        e = (rows + 1) * INDEX_BLOCK_M
        last = tl.minimum(e, N) - 1
        pbase = PRED + bh * stride_p
        p = tl.load(pbase + tl.minimum(e, N), mask=rmask, other=-1)
        E = tl.maximum(e - p, INDEX_BLOCK_M)
        active = rmask & (p >= 0)
        cnt = tl.zeros([Q_BLOCKS_PER_PROGRAM], tl.int32)
        out_row = OUT + bh * stride_ob + rows.to(tl.int64) * stride_oq
        while tl.max(active.to(tl.int32), 0) > 0:
            st = E - INDEX_BLOCK_M
            emit = active & (st <= last) & (cnt < WIDTH)
            tl.store(out_row + cnt, st, mask=emit)
            cnt += emit.to(tl.int32)
            t = e - E
            nxt = emit & (t > 0)
            pn = tl.load(pbase + tl.minimum(tl.maximum(t, 0), N), mask=nxt, other=-1)
            active = nxt & (pn >= 0)
            E = tl.where(active, tl.maximum(E + INDEX_BLOCK_M, e - pn), E)
        tl.store(CNT + bh * stride_c + rows, cnt, mask=rmask)

    @triton.jit
    def _vs_columns(COLS, STARTS, BCNT, CIDX, CCNT, KV, N,
                    stride_vb, stride_sb, stride_sq, stride_bc, stride_ib, stride_iq, stride_cc,
                    INDEX_BLOCK_M: tl.constexpr, INDEX_BLOCK_N: tl.constexpr,
                    COLUMNS_CHUNK: tl.constexpr, SEARCH_STEPS: tl.constexpr):
        """Per (head, query block): the verticals at or before the block's last row that no
        listed block covers, compact. The verticals are ascending, so the program takes them
        ``COLUMNS_CHUNK`` at a time and stops at the first past the last row: its work follows
        the columns this query block can use (about half of them, causally), not the widest
        head's budget (past a head's own count the verticals are INT32_BIG)."""
        bh = tl.program_id(0).to(tl.int64)
        m = tl.program_id(1)
        last = tl.minimum((m + 1) * INDEX_BLOCK_M, N) - 1
        cnt = tl.load(BCNT + bh * stride_bc + m)
        srow = STARTS + bh * stride_sb + m.to(tl.int64) * stride_sq
        crow = COLS + bh * stride_vb
        orow = CIDX + bh * stride_ib + m.to(tl.int64) * stride_iq
        kept = tl.zeros([], tl.int32)
        c0 = tl.zeros([], tl.int32)
        more = tl.load(crow) <= last
        while more:
            offs = c0 + tl.arange(0, COLUMNS_CHUNK)
            cm = offs < KV
            c = tl.load(crow + offs, mask=cm, other=2147483647)
            # the last listed block starting at or before each vertical, by binary search
            lo = tl.zeros([COLUMNS_CHUNK], tl.int32)
            hi = tl.zeros([COLUMNS_CHUNK], tl.int32) + cnt
            for _ in tl.static_range(SEARCH_STEPS):
                act = lo < hi
                mid = (lo + hi) // 2
                v = tl.load(srow + mid, mask=act, other=0)
                go = act & (v <= c)
                lo = tl.where(go, mid + 1, lo)
                hi = tl.where(act & (v > c), mid, hi)
            prev = tl.load(srow + tl.maximum(lo - 1, 0), mask=lo > 0, other=-(1 << 30))
            covered = (lo > 0) & (c < prev + INDEX_BLOCK_N)
            keep = cm & (c <= last) & (covered == 0)
            pos = kept + tl.cumsum(keep.to(tl.int32), 0) - 1
            tl.store(orow + pos, c, mask=keep)
            kept += tl.sum(keep.to(tl.int32), 0)
            c0 += COLUMNS_CHUNK
            more = (c0 < KV) & (tl.load(crow + c0, mask=c0 < KV, other=2147483647) <= last)
        tl.store(CCNT + bh * stride_cc + m, kept)


COLUMNS_CHUNK = 1024     # verticals one program of _vs_columns holds at a time
SUMS_TILES = 8           # key tiles one program of _vs_sums scores: its query rows are loaded once for them
ROW_SPLITS = 32          # key splits of the row statistics (each _vs_sums program reads all of them)
# query blocks per program of the range merge: each lane's steps wait on a load, so many
# small programs (several per SM) hide that latency better than a few wide ones
MERGE_ROWS = 32
MERGE_WARPS = 1


def supported_head_dim(d: int) -> bool:
    return d in (16, 32, 64, 128, 256)


def _score_passes(ql: torch.Tensor, k: torch.Tensor, q_heads: list[int], kv_heads: list[int], scale: float,
                  block_n: int = 64, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The two fused passes over the keys: (vertical (B, Hg, N), the key tiles' diagonal
    partials (B * Hg, T, 2 * block_n), the offset of distance 0 in their layout). ``ql``
    (B, Hq, L, D) the last L query rows of every head (a view: the kernels read the group's
    heads ``q_heads`` from it, so nothing is gathered)."""
    B, L, D = ql.shape[0], ql.shape[2], ql.shape[3]
    Hg = len(q_heads)
    N = k.shape[2]
    dev = ql.device
    block_m = 64                    # one row tile holds the last L <= 64 query rows
    assert L <= block_m and block_n >= block_m
    if ql.stride(-1) != 1:
        ql = ql.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    from ._common import device_index
    qh = device_index(q_heads, dev, torch.int32)
    kvh = device_index(kv_heads, dev, torch.int32)
    LOG2E = 1.4426950408889634
    qk_scale = float(scale) * LOG2E
    rnd = ql.dtype in (torch.bfloat16, torch.float16)
    ieee = ql.dtype == torch.float32
    BH = B * Hg
    # ROW_SPLITS splits (``split`` keys each when given, but never more splits): with fewer, the
    # row statistics leave SMs idle (4096-key splits at 32K: 72 programs on an H100's 132 SMs)
    split = max(split or 0, triton.cdiv(triton.cdiv(N, ROW_SPLITS), block_n) * block_n)
    split = max(block_n, min(split, triton.cdiv(N, block_n) * block_n))
    nsplit = triton.cdiv(N, split)
    mout = torch.empty(BH, nsplit, block_m, dtype=torch.float32, device=dev)
    lout = torch.empty_like(mout)
    warps = 4 if D <= 128 else 8
    _vs_row_stats[(BH, nsplit)](ql, k, qh, kvh, mout, lout, ql.stride(0), ql.stride(1), ql.stride(2),
                                k.stride(0), k.stride(1), k.stride(2), Hg, N, L, qk_scale, split,
                                nsplit, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D,
                                ROUND_SCORES=rnd, DOT_IEEE=ieee, num_warps=warps)
    T = triton.cdiv(N, block_n)
    vert = torch.empty(B, Hg, N, dtype=torch.float32, device=dev)
    part = torch.empty(BH, T, 2 * block_n, dtype=torch.float32, device=dev)
    _vs_sums[(BH, triton.cdiv(T, SUMS_TILES))](ql, k, qh, kvh, mout, lout, vert, part, ql.stride(0), ql.stride(1),
                                               ql.stride(2), k.stride(0), k.stride(1), k.stride(2), Hg, N, L,
                                               qk_scale, T, nsplit, BLOCK_M=block_m, BLOCK_N=block_n,
                                               HEAD_DIM=D, TILES=SUMS_TILES, SPLITS=ROW_SPLITS, ROUND_SCORES=rnd,
                                               DOT_IEEE=ieee, num_warps=warps)
    # tile t contributes at distance N - L - t * BN - BN + 1 + u; laid out by
    # w = (T - 1 - t) * BN + u, distance d sits at w = d + T * BN - N + L - 1
    return vert, part, T * block_n - N + L - 1


def scores(ql: torch.Tensor, k: torch.Tensor, q_heads: list[int], kv_heads: list[int], scale: float,
           block_n: int = 64, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ql (B, Hq, L, D) the last L query rows of every head (a view is fine), k (B, Hkv, N, D),
    ``q_heads`` the group's query heads and ``kv_heads[h]`` the KV head of group head h. Returns (vertical, slash) float32 (B, Hg, N),
    as :func:`.vertical_slash.scores`.

    Two fused passes over the keys: per key split, the rows' running max and sum; per key
    tile, probabilities, their column sums, and their diagonal sums through an in-register
    skew. The scores are rounded to the input dtype before scaling when it is 16-bit, as the
    torch path's matmul in the input dtype does; float32 inputs use IEEE float32 dots (no TF32)."""
    vert, part, o = _score_passes(ql, k, q_heads, kv_heads, scale, block_n, split)
    return vert, _slash_scores(part, o, vert.shape)


def _slash_scores(part: torch.Tensor, slash_at: int, shape: torch.Size) -> torch.Tensor:
    """The slash scores (B, Hg, N) from the key tiles' diagonal partials of :func:`_score_passes`:
    each distance sums the low half of one tile and the high half of the next."""
    BH, T, block_n2 = part.shape
    block_n = block_n2 // 2
    a = part.flip(1)
    buf = torch.zeros(BH, T + 1, block_n, dtype=torch.float32, device=part.device)
    buf[:, :T] += a[..., :block_n]
    buf[:, 1:] += a[..., block_n:]
    return buf.view(BH, -1)[:, slash_at:slash_at + shape[-1]].reshape(shape)


# keys one program of the selection's stages holds at a time, and the most segments (programs
# per row and direction) a row is split into; a segment is a whole number of chunks
SELECT_CHUNK = 4096
SELECT_WARPS = 8
SELECT_SEGMENTS = 32


def build(ql: torch.Tensor, k: torch.Tensor, q_heads: list[int], kv_heads: list[int], scale: float, head_kv: torch.Tensor,
          head_ks: torch.Tensor, kv_width: int, ks_width: int, bm: int, *, force: float,
          forced_columns: int, forced_diagonals: int, counts=None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole vertical-slash index of a group in seven launches: the two score passes, the
    selection in three (both top-k's of every head, each row split into segments: a histogram
    of the keys' top bits, the keys above the k-th's top digit taken and those at it selected
    among by the row's last program, then the writes: the columns ascending and the diagonals
    as the range merge's ``pred`` table), the range merge and the verticals. ``head_kv`` /
    ``head_ks`` int32 (Hg,) or (1,): each head's counts; ``kv_width`` / ``ks_width`` their
    largest; ``ql``, ``q_heads`` and ``kv_heads`` as :func:`scores`. ``counts``, when given,
    maps the scores (vertical, slash) to the counts of every (batch, head), int32 (B * Hg,), at
    most the widths, which then replace ``head_kv`` / ``head_ks``. Returns what :func:`index`
    returns."""
    B, Hg = ql.shape[0], len(q_heads)
    n = k.shape[2]
    vert, part, o = _score_passes(ql, k, q_heads, kv_heads, scale, bm)
    if counts is not None:
        head_kv, head_ks = counts(vert, _slash_scores(part, o, vert.shape))
    cols, pred = select(vert, part, o, head_kv, head_ks, kv_width, force=force, forced_columns=forced_columns,
                        forced_diagonals=forced_diagonals)
    return _index_from_pred(cols[:, :kv_width].view(B, Hg, kv_width), pred, n, bm, min(ks_width, triton.cdiv(n, bm)))


def select(vert: torch.Tensor, part: torch.Tensor, slash_at: int, head_kv: torch.Tensor, head_ks: torch.Tensor,
           kv_width: int, *, force: float, forced_columns: int, forced_diagonals: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both top-k's of every head from :func:`_score_passes`' outputs, exact, equal scores by
    position: (columns ascending (B * Hg, kv_width), INT32_BIG past a head's count; the table
    ``pred`` (B * Hg, N + 1) of the selected distances, as :func:`pred_table`)."""
    n = vert.shape[-1]
    BH, T, block_n2 = part.shape
    dev = vert.device
    chunks = triton.cdiv(n, SELECT_CHUNK)
    seg = triton.cdiv(chunks, SELECT_SEGMENTS) * SELECT_CHUNK
    nseg = triton.cdiv(n, seg)
    hist = torch.empty(BH * 2, SELECT_SEGMENTS, 256, dtype=torch.int32, device=dev)
    ctrl = torch.empty(BH * 2, 2, dtype=torch.int32, device=dev)          # arrivals, candidates
    cand = torch.empty(BH * 2, n, dtype=torch.int32, device=dev)
    seg_taken = torch.empty(BH * 2, SELECT_SEGMENTS, dtype=torch.int32, device=dev)
    seg_last = torch.empty_like(seg_taken)
    thr = torch.empty(BH * 2, dtype=torch.int64, device=dev)
    cols = torch.empty(BH, max(kv_width, 1), dtype=torch.int32, device=dev)
    pred = torch.empty(BH, n + 1, dtype=torch.int32, device=dev)
    grid = (BH, 2, nseg)
    keys = dict(FORCED_COLUMNS=forced_columns, FORCED_DIAGONALS=forced_diagonals, BLOCK_N=block_n2 // 2,
                CHUNK=SELECT_CHUNK, SEGMENTS=SELECT_SEGMENTS, num_warps=SELECT_WARPS)
    _vs_select_hist[grid](vert, part, hist, ctrl, n, T, slash_at, force, seg, **keys)
    _vs_select_split[grid](vert, part, hist, ctrl, cand, seg_taken, seg_last, thr, head_kv, head_ks,
                           head_kv.numel(), n, T, slash_at, force, seg, nseg, **keys)
    _vs_select_write[grid](vert, part, seg_taken, seg_last, thr, cols, pred, head_kv, head_ks,
                           head_kv.numel(), n, T, slash_at, kv_width, force, seg, nseg, cols.stride(0),
                           pred.stride(0), **keys)
    return cols, pred


def pred_table(dists: torch.Tensor, n: int) -> torch.Tensor:
    """(B*H, N + 1) int32: ``pred[t]`` = the largest selected distance ``< t``, else -1
    (a sort of the few selected distances and a batched binary search; a cumulative max
    over the N-wide bitmap is a slow serial scan per row on CUDA)."""
    B, H, S = dists.shape
    dev = dists.device
    ds = dists.reshape(B * H, S).to(torch.int32).sort(-1).values.contiguous()
    t = torch.arange(n + 1, dtype=torch.int32, device=dev).expand(B * H, n + 1).contiguous()
    pos = torch.searchsorted(ds, t, out_int32=True)                          # count of d < t
    got = torch.gather(ds, 1, (pos - 1).clamp(min=0).long())
    return torch.where(pos > 0, got, torch.full_like(got, -1))


def index(cols: torch.Tensor, dists: torch.Tensor, n: int, bm: int, width: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The vertical-slash index of a selection: ``cols`` (B, H, kv) ascending, ``dists``
    (B, H, ks) distinct distances in any order. Returns (block_count, block_offset,
    column_count, column_index) as :func:`.vertical_slash.index_from_selection`."""
    return _index_from_pred(cols, pred_table(dists, n), n, bm, width)


def _index_from_pred(cols: torch.Tensor, pred: torch.Tensor, n: int, bm: int, width: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """With ``pred[t]`` = the largest selected distance ``< t`` (:func:`pred_table`), the next
    diagonal that grows a range ending at key ``E`` in query block ``[e - 64, e)`` is
    ``pred[e - E]``; then the verticals, per query block, by a vectorised binary search over
    the block starts just written and a stable compaction."""
    B, H, kv = cols.shape
    BH = B * H
    dev = cols.device
    nqb = triton.cdiv(n, bm)
    boffs = torch.empty(BH, nqb, max(width, 1), dtype=torch.int32, device=dev)
    bcount = torch.empty(BH, nqb, dtype=torch.int32, device=dev)
    rows = min(MERGE_ROWS, max(16, triton.next_power_of_2(nqb)))
    _vs_blocks[(BH, triton.cdiv(nqb, rows))](pred, boffs, bcount, nqb, n, width, pred.stride(0),
                                             boffs.stride(0), boffs.stride(1), bcount.stride(0),
                                             INDEX_BLOCK_M=bm, Q_BLOCKS_PER_PROGRAM=rows,
                                             num_warps=MERGE_WARPS)
    c = cols.reshape(BH, kv)
    if c.dtype != torch.int32 or c.stride(-1) != 1:
        c = c.to(torch.int32).contiguous()
    cidx = torch.empty(BH, nqb, kv, dtype=torch.int32, device=dev)
    ccount = torch.empty(BH, nqb, dtype=torch.int32, device=dev)
    if kv:
        chunk = min(COLUMNS_CHUNK, max(16, triton.next_power_of_2(kv)))
        _vs_columns[(BH, nqb)](c, boffs, bcount, cidx, ccount, kv, n, c.stride(0), boffs.stride(0),
                               boffs.stride(1), bcount.stride(0), cidx.stride(0), cidx.stride(1),
                               ccount.stride(0), INDEX_BLOCK_M=bm, INDEX_BLOCK_N=bm,
                               COLUMNS_CHUNK=chunk, SEARCH_STEPS=max(1, int(width).bit_length()),
                               num_warps=4)
    else:
        ccount.zero_()
    return (bcount.view(B, H, nqb), boffs[..., :width].view(B, H, nqb, width),
            ccount.view(B, H, nqb), cidx.view(B, H, nqb, kv))
