"""Triton kernel of the ``block_sparse`` builder (CUDA; on CPU through ``TRITON_INTERPRET=1``
for the tests). Not a pattern: :mod:`.block_sparse` calls it when ``use_triton`` says so.

:func:`select`: per (batch, head, query block), from a row of pooled block scores, the
``min(top_k, eligible)`` best eligible key blocks (the first and the diagonal one forced) as
ascending block starts, written compact. One program per row, the row in registers: an exact
top-k by a 33-pass MSB-first radix select on the scores' order-preserving integer keys (the
k-th largest key), then a stable compaction of the keys above it plus, among those equal to
it, the lowest block ids (``torch.topk`` leaves ties unspecified; near-ties aside, the same
selection). Replaces ``topk`` + ``sort`` + masking over the (B, H, NQB, NKB) scores.
"""
from __future__ import annotations

import torch

from ..sparse_attention import HAS_TRITON, tl, triton

if HAS_TRITON:
    from ._triton_select import order_keys

    @triton.jit
    def _bs_select(S, OUT, CNT, Q0, NKB, HEAD_KK, HEADS, N,
                   stride_sb, stride_sr, stride_ob, stride_oq, stride_cb,
                   INDEX_BLOCK_M: tl.constexpr, INDEX_BLOCK_N: tl.constexpr,
                   KEY_BLOCKS_PAD: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        r = tl.program_id(1)
        m = Q0 + r
        last = tl.minimum((m + 1) * INDEX_BLOCK_M, N) - 1
        diag = last // INDEX_BLOCK_N
        j = tl.arange(0, KEY_BLOCKS_PAD)
        elig = j <= diag
        s = tl.load(S + bh * stride_sb + r.to(tl.int64) * stride_sr + j, mask=elig, other=0.0)
        key = order_keys(s)                                                   # [0, 2^32), ordered
        key = tl.where((j == 0) | (j == diag), 4294967296, key)                  # forced: above all
        kk = tl.minimum(tl.load(HEAD_KK + bh % HEADS), diag + 1)      # this head's top_k
        # the kk-th largest key among the eligible ones: the largest thr with
        # count(key >= thr) >= kk, built one bit per pass from the top (bits 32..0). (Two bits
        # a pass, three counts at once, measured slower on an H100: 6.1 vs 4.4 ms per 128K build.)
        thr = tl.zeros([1], tl.int64)
        for i in tl.static_range(33):
            cand = thr + (1 << (32 - i))
            cnt = tl.sum((elig & (key[None, :] >= cand[:, None])).to(tl.int32), 1)
            thr = tl.where(cnt >= kk, cand, thr)
        gt = elig & (key > thr)
        eq = elig & (key == thr)
        need = kk - tl.sum(gt.to(tl.int32), 0)
        take = gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))
        pos = tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(OUT + bh * stride_ob + m.to(tl.int64) * stride_oq + pos, j * INDEX_BLOCK_N, mask=take)
        tl.store(CNT + bh * stride_cb + m, kk)


def max_row(nkb: int) -> bool:
    """Whether a row of ``nkb`` key blocks fits the kernel (held in registers)."""
    return nkb <= 32768


def select(s: torch.Tensor, out: torch.Tensor, cnt: torch.Tensor, q0: int, head_kk: torch.Tensor, n: int,
           block_m: int, block_n: int) -> None:
    """``s`` (BH, c, NKB) float32 scores of query blocks ``q0 .. q0 + c - 1`` (last dim
    contiguous); writes their rows of ``out`` (BH, NQB, max top_k) int32 block starts and
    ``cnt`` (BH, NQB) int32. ``head_kk`` int32 (H,): each head's top_k (row ``bh`` is head
    ``bh % H``), or (1,) for all."""
    BH, c, nkb = s.shape
    if s.stride(-1) != 1:
        s = s.contiguous()
    nkbp = max(16, triton.next_power_of_2(nkb))
    _bs_select[(BH, c)](s, out, cnt, q0, nkb, head_kk, head_kk.numel(), n, s.stride(0), s.stride(1), out.stride(0),
                        out.stride(1), cnt.stride(0), INDEX_BLOCK_M=block_m, INDEX_BLOCK_N=block_n,
                        KEY_BLOCKS_PAD=nkbp, num_warps=min(16, max(4, nkbp // 512)))
