"""Triton kernel that writes one part of a layer's index into the layer's index (CUDA; on CPU
through ``TRITON_INTERPRET=1`` for the tests). Not a pattern: ``build_layer_index`` calls
:func:`write_part` when ``use_triton`` says so.

A layer whose heads follow several patterns builds one index per pattern group, then writes
each into the heads it covers. In torch that is four indexed copies a part (counts, blocks,
column counts, columns) and two more for the per-head windows; here it is one launch a part:
each program copies the counts and, up to each row's counts, the block and column lists of
``ROWS`` query blocks of one (batch, head), and the first row of programs writes the heads'
windows. Entries past the counts stay unwritten (the index's invariants ignore them). The
part's tensors may be broadcast views (stride 0: the static patterns' shared rows).
"""
from __future__ import annotations

import torch

from ..sparse_attention import HAS_TRITON, tl, triton

ROWS = 16     # query blocks a program
LIST = 64     # list entries a step

if HAS_TRITON:
    @triton.jit
    def _copy_lists(SRC, DST, cnt, rows, rmask, src_row, dst_row, stride_k, MAX_SRC, MAX_DST,
                    LIST: tl.constexpr):
        """Entries [0, cnt) of ``ROWS`` rows of one list, source rows at ``src_row`` (with
        ``stride_k`` between entries), destination rows contiguous, ``MAX_DST`` wide."""
        most = tl.max(tl.where(rmask, cnt, 0), 0)
        for c0 in range(0, tl.minimum(most, MAX_SRC), LIST):
            cols = c0 + tl.arange(0, LIST)
            m = rmask[:, None] & (cols[None, :] < cnt[:, None])
            x = tl.load(SRC + src_row[:, None] + cols[None, :].to(tl.int64) * stride_k, mask=m)
            tl.store(DST + dst_row[:, None] * MAX_DST + cols[None, :], x, mask=m)

    @triton.jit
    def _write_part(HEADS, SBC, SBO, SCC, SCI, SWIN, DBC, DBO, DCC, DCI, DWIN,
                    s_bc_b, s_bc_h, s_bc_q, s_bo_b, s_bo_h, s_bo_q, s_bo_k,
                    s_cc_b, s_cc_h, s_cc_q, s_ci_b, s_ci_h, s_ci_q, s_ci_k, s_win,
                    PART_HEADS, H, NQB, MB_SRC, MC_SRC, MB, MC, NO_WINDOW,
                    HAS_WINDOW: tl.constexpr, WRITE_WINDOW: tl.constexpr,
                    ROWS: tl.constexpr, LIST: tl.constexpr):
        pid = tl.program_id(0)
        b = (pid // PART_HEADS).to(tl.int64)
        j = (pid % PART_HEADS).to(tl.int64)           # the head within the part
        h = tl.load(HEADS + j).to(tl.int64)            # the head within the layer
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        rmask = rows < NQB
        rows64 = rows.to(tl.int64)
        dst_row = (b * H + h) * NQB + rows64
        # stage 1: the counts
        bc = tl.load(SBC + b * s_bc_b + j * s_bc_h + rows64 * s_bc_q, mask=rmask, other=0)
        cc = tl.load(SCC + b * s_cc_b + j * s_cc_h + rows64 * s_cc_q, mask=rmask, other=0)
        tl.store(DBC + dst_row, bc, mask=rmask)
        tl.store(DCC + dst_row, cc, mask=rmask)
        # stage 2: the lists, up to each row's count
        _copy_lists(SBO, DBO, bc, rows, rmask, b * s_bo_b + j * s_bo_h + rows64 * s_bo_q, dst_row,
                    s_bo_k, MB_SRC, MB, LIST)
        _copy_lists(SCI, DCI, cc, rows, rmask, b * s_ci_b + j * s_ci_h + rows64 * s_ci_q, dst_row,
                    s_ci_k, MC_SRC, MC, LIST)
        # stage 3: the head's window (no window: unbounded), once per head
        if WRITE_WINDOW:
            if (b == 0) & (tl.program_id(1) == 0):
                if HAS_WINDOW:
                    w = tl.load(SWIN + j * s_win)
                else:
                    w = NO_WINDOW
                tl.store(DWIN + h, w)


def write_part(heads: torch.Tensor, part, bc, bo, cc, ci, window, no_window: int) -> None:
    """Write ``part`` (an index over ``len(heads)`` heads) into the layer's contiguous index
    tensors ``bc, bo, cc, ci`` at the heads ``heads`` (int64, on the device), and its
    windows into ``window`` (None: the layer has none)."""
    B, H, nqb = bc.shape
    hp = heads.numel()
    part_bc, part_bo = part.block_count.expand(B, hp, nqb), part.block_offset.expand(B, hp, nqb, -1)
    part_cc, part_ci = part.column_count.expand(B, hp, nqb), part.column_index.expand(B, hp, nqb, -1)
    part_win = part.window
    if part_win is not None:
        part_win = part_win.expand(hp)
    grid = (B * hp, triton.cdiv(nqb, ROWS))
    _write_part[grid](
        heads, part_bc, part_bo, part_cc, part_ci, part_win if part_win is not None else bc,
        bc, bo, cc, ci, window if window is not None else bc,
        *part_bc.stride(), *part_bo.stride(), *part_cc.stride(), *part_ci.stride(),
        part_win.stride(0) if part_win is not None else 0,
        hp, H, nqb, part_bo.shape[-1], part_ci.shape[-1], bo.shape[-1], ci.shape[-1], no_window,
        HAS_WINDOW=part_win is not None, WRITE_WINDOW=window is not None, ROWS=ROWS, LIST=LIST)
