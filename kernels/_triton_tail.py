"""Triton kernels of the dense tail (CUDA; on CPU through ``TRITON_INTERPRET=1`` for the tests).
Not called directly: :func:`mcompile.kernels.tail.dense_tail_` uses them.

The tail is a few query rows against every causal key: one program per (head, row block)
would walk all N keys alone on one SM (9 programs for SmolLM2, 1.35 ms a layer at 128K on an
H100, a tenth of the whole prefill). So the keys are split as flash-decoding splits them:

* :func:`_tail_partial`, grid (heads x row blocks, splits): each program runs the online
  softmax of its ``BLOCK_T`` rows over one range of keys and writes its running max, sum and
  unnormalised output (float32);
* :func:`_tail_combine`, grid (heads x row blocks, rows): rescales one row's splits to their
  common max, sums them and writes the row of ``out`` in place.
"""
from __future__ import annotations

import torch

from .sparse_attention import HAS_TRITON, _InterpretLaunch, launch_shrinking, tl, triton

BLOCK_T = 64             # query rows a program
SPLIT_UNIT = 64          # the keys of a split are a multiple of this (and of every config's BLOCK_N)
TARGET_PROGRAMS = 512    # about four programs an SM on a 132-SM GPU: the splits follow from it


def _configs(head_dim: int):
    """(BLOCK_N keys a step, warps, pipeline stages) of the partial kernel, first choice first;
    the next is tried while the GPU's shared memory is too small (``launch_shrinking``). Head dim
    256 (Gemma 3) keeps fewer stages: its K and V tiles are four times d 64's."""
    yield (64, 4, 3) if head_dim <= 128 else (64, 8, 2)
    yield (32, 8, 1)

if HAS_TRITON:
    @triton.jit
    def _tail_partial(Q, K, V, M, L, ACC,
                      stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn,
                      HQ, GROUP, ROW_BLOCKS, N, START, SPLIT, NSPLIT, qk_scale,
                      BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        rb = pid % ROW_BLOCKS
        bh = pid // ROW_BLOCKS
        b = (bh // HQ).to(tl.int64)
        h = (bh % HQ).to(tl.int64)
        kvh = h // GROUP
        rows = START + rb * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None].to(tl.int64) * stride_qn + offs_d[None, :],
                    mask=rows[:, None] < N, other=0.0)
        kbase = K + b * stride_kb + kvh * stride_kh
        vbase = V + b * stride_vb + kvh * stride_vh
        m_i = tl.full([BLOCK_T], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_T], tl.float32)
        acc = tl.zeros([BLOCK_T, HEAD_DIM], tl.float32)
        j0 = split * SPLIT
        j1 = tl.minimum(j0 + SPLIT, N)
        # stage 1: the online softmax over this split's keys (causal: key <= row)
        for start_n in range(j0, j1, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            keys = offs_n < j1
            kt = tl.load(kbase + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None],
                         mask=keys[None, :], other=0.0)
            s = tl.dot(q, kt) * qk_scale
            s = tl.where((offs_n[None, :] <= rows[:, None]) & keys[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vbase + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                        mask=keys[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        # stage 2: the split's partial result (rows past N are written and never read)
        o = (pid.to(tl.int64) * NSPLIT + split) * BLOCK_T + tl.arange(0, BLOCK_T)
        tl.store(M + o, m_i)
        tl.store(L + o, l_i)
        tl.store(ACC + o[:, None] * HEAD_DIM + offs_d[None, :], acc)

    @triton.jit
    def _tail_combine(M, L, ACC, OUT, stride_ob, stride_oh, stride_on,
                      HQ, ROW_BLOCKS, N, START, NSPLIT,
                      BLOCK_T: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        """Program (head and row block, row): the row's splits, ``SPLITS`` at a time (all of
        them in one step unless the keys were split very finely), rescaled to their running
        max and summed. One program a row: a program a row block waited on its splits one
        after another (SmolLM2: 9 programs, 56 serial steps, 43 us a layer at 32K)."""
        pid = tl.program_id(0)
        t = tl.program_id(1)
        rb = pid % ROW_BLOCKS
        bh = pid // ROW_BLOCKS
        b = (bh // HQ).to(tl.int64)
        h = (bh % HQ).to(tl.int64)
        offs_s = tl.arange(0, SPLITS)
        offs_d = tl.arange(0, HEAD_DIM)
        base = pid.to(tl.int64) * NSPLIT * BLOCK_T + t
        m = tl.full([], float("-inf"), tl.float32)
        l_i = tl.zeros([], tl.float32)
        acc = tl.zeros([HEAD_DIM], tl.float32)
        for s0 in range(0, NSPLIT, SPLITS):
            ok = s0 + offs_s < NSPLIT
            o = base + (s0 + offs_s) * BLOCK_T
            m_s = tl.load(M + o, mask=ok, other=float("-inf"))
            m_new = tl.maximum(m, tl.max(m_s, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m - m_safe)
            w = tl.math.exp2(m_s - m_safe)                 # 0 for splits with no causal key
            l_i = l_i * alpha + tl.sum(w * tl.load(L + o, mask=ok, other=0.0), 0)
            a = tl.load(ACC + o[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha + tl.sum(w[:, None] * a, 0)
            m = m_new
        row = START + rb * BLOCK_T + t
        tl.store(OUT + b * stride_ob + h * stride_oh + row.to(tl.int64) * stride_on + offs_d,
                 (acc / l_i).to(OUT.dtype.element_ty), mask=offs_d < tl.where(row < N, HEAD_DIM, 0))


COMBINE_ELEMENTS = 8192  # partial outputs (splits x head dim) one combine program holds at once


def dense_tail(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, start: int,
               scale: float) -> None:
    """out[:, :, start:] = causal attention of those rows of q over k, v (GQA by head
    groups), in two launches. ``out``'s last dim must be contiguous."""
    if out.stride(-1) != 1:
        raise ValueError("dense_tail: out needs a contiguous last dim")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, Hq, n, D = q.shape
    row_blocks = triton.cdiv(n - start, BLOCK_T)
    programs = B * Hq * row_blocks
    nsplit = max(1, min(triton.cdiv(n, SPLIT_UNIT), TARGET_PROGRAMS // programs))
    split = triton.cdiv(triton.cdiv(n, nsplit), SPLIT_UNIT) * SPLIT_UNIT
    nsplit = triton.cdiv(n, split)
    m = torch.empty(programs * nsplit * BLOCK_T, dtype=torch.float32, device=q.device)
    l_sum = torch.empty_like(m)
    acc = torch.empty(programs * nsplit * BLOCK_T, D, dtype=torch.float32, device=q.device)
    # CPU tensors (the tests) take Triton's interpreter, as the sparse kernel's do
    partial, combine = ((_InterpretLaunch(_tail_partial), _InterpretLaunch(_tail_combine)) if q.device.type == "cpu"
                        else (_tail_partial, _tail_combine))
    launch_shrinking(lambda c: partial[(programs, nsplit)](
        q, k, v, m, l_sum, acc, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        Hq, Hq // k.shape[1], row_blocks, n, start, split, nsplit, scale * 1.4426950408889634,
        BLOCK_T=BLOCK_T, BLOCK_N=c[0], HEAD_DIM=D, num_warps=c[1], num_stages=c[2]), _configs(D))
    most = 1 << (max(1, COMBINE_ELEMENTS // D).bit_length() - 1)      # a power of 2
    splits = min(triton.next_power_of_2(nsplit), most)
    combine[(programs, BLOCK_T)](
        m, l_sum, acc, out, *out.stride()[:3], Hq, row_blocks, n, start, nsplit, BLOCK_T=BLOCK_T, HEAD_DIM=D,
        SPLITS=splits, num_warps=4)
