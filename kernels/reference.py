"""Pure-torch reference for the sparse attention kernel (the test oracle and the CPU path).

Semantics (shared with :mod:`.sparse_attention`): causal self-attention, ``q_len == kv_len``,
query row ``r`` attends key ``c`` iff ``c <= r`` and ``c`` is covered by one of the listed
blocks (``[start, start + block_n)``) or columns of ``r``'s query block, and, when the index
has a ``window``, ``c > r - window[h]``. GQA: query head ``h``
uses KV head ``h // (Hq // Hkv)``. ``scale`` defaults to ``1 / sqrt(head_dim)``.

Rows that select no key give output 0 and LSE ``-inf`` (never NaN). LSE is the natural log
of the softmax denominator ``log(sum_c exp(scale * q_r . k_c))``, in float32.

The computation is chunked over query blocks (about ``budget`` score elements at once), so
16K tokens run on a CPU without an N x N matrix in memory.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .index import SparseIndex, num_q_blocks

_DEFAULT_BUDGET = 1 << 24   # score elements per chunk (64 MiB in fp32)


def _broadcast_index(index: SparseIndex, batch: int, heads: int) -> SparseIndex:
    B, H = index.block_count.shape[:2]
    if (B, H) == (batch, heads):
        return index
    if B in (1, batch) and H in (1, heads):
        return index.expand(batch, heads)
    raise ValueError(f"index is for (B, H) = {(B, H)}, attention has {(batch, heads)} "
                     "(H counts query heads)")


def key_cover(index: SparseIndex, qbs: torch.Tensor, num_keys: int) -> torch.Tensor:
    """(B, H, len(qbs), num_keys) bool: keys listed (blocks or columns) for each query block,
    before causal masking."""
    bc, bo, cc, ci = (t.index_select(2, qbs) for t in index.tensors())
    B, H, nq = bc.shape
    dev = bc.device
    bn = index.block_n
    width = num_keys + bn + 1
    cover = torch.zeros(B, H, nq, width, dtype=torch.int32, device=dev)
    if bo.shape[-1]:
        valid = torch.arange(bo.shape[-1], device=dev) < bc.unsqueeze(-1)
        starts = bo.long().clamp(0, width - 1)
        ends = (bo.long() + bn).clamp(0, width - 1)
        dummy = torch.full_like(starts, width - 1)
        ones = torch.ones(starts.shape, dtype=torch.int32, device=dev)
        cover.scatter_add_(-1, torch.where(valid, starts, dummy), ones)
        cover.scatter_add_(-1, torch.where(valid, ends, dummy), -ones)
        cover = cover.cumsum(-1, dtype=torch.int32)
    mask = cover[..., :num_keys] > 0
    if ci.shape[-1]:
        valid = torch.arange(ci.shape[-1], device=dev) < cc.unsqueeze(-1)
        cols = torch.where(valid, ci.long().clamp(0, num_keys), torch.full_like(ci, num_keys, dtype=torch.long))
        colmask = torch.zeros(B, H, nq, num_keys + 1, dtype=torch.bool, device=dev)
        colmask.scatter_(-1, cols, True)
        mask |= colmask[..., :num_keys]
    return mask


def _rows_mask(index: SparseIndex, qbs: torch.Tensor, seq_len: int):
    """Mask (B, H, R, K) for the rows of query blocks ``qbs`` (rows past seq_len dropped),
    plus the row positions (R,) and K = last row + 1."""
    bm = index.block_m
    dev = index.block_count.device
    rows = (qbs.view(-1, 1) * bm + torch.arange(bm, device=dev).view(1, -1))   # (nq, bm)
    K = int(min(seq_len, int(rows.max()) + 1))
    cover = key_cover(index, qbs, K)                                           # (B,H,nq,K)
    keys = torch.arange(K, device=dev)
    causal = keys.view(1, 1, K) <= rows.unsqueeze(-1)                          # (nq,bm,K)
    mask = cover.unsqueeze(3) & causal                                         # (B,H,nq,bm,K)
    if index.window is not None:                                              # per-head lower bound
        w = index.window.long().view(1, -1, 1, 1, 1)
        mask = mask & (keys.view(1, 1, 1, 1, K) > rows.view(1, 1, *rows.shape, 1) - w)
    B, H = mask.shape[:2]
    mask = mask.reshape(B, H, -1, K)
    rows = rows.reshape(-1)
    keep = rows < seq_len
    if not bool(keep.all()):
        mask = mask[:, :, keep]
        rows = rows[keep]
    return mask, rows, K


def index_to_mask(index: SparseIndex, seq_len: int) -> torch.Tensor:
    """The (B, H, N, N) bool mask the index means (causal applied). Small sizes only."""
    nqb = num_q_blocks(seq_len, index.block_m)
    if index.num_q_blocks != nqb:
        raise ValueError(f"index has {index.num_q_blocks} query blocks, seq_len {seq_len} "
                         f"needs {nqb}")
    B, H = index.block_count.shape[:2]
    if nqb == 0:
        return torch.zeros(B, H, 0, 0, dtype=torch.bool, device=index.device)
    mask, rows, K = _rows_mask(index, torch.arange(nqb, device=index.device), seq_len)
    if K < seq_len:
        mask = torch.nn.functional.pad(mask, (0, seq_len - K))
    return mask


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (B, H, N, D)")
    B, Hq, N, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(f"k/v shape {tuple(k.shape)}/{tuple(v.shape)} do not match q "
                         f"{tuple(q.shape)} (self-attention: q_len == kv_len, same head dim)")
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads {Hq} are not a multiple of KV heads {Hkv}")
    return B, Hq, Hkv, N, D


def _attend(q, k, v, index, qbs, scale, compute_dtype):
    """Outputs (B,Hq,R,D) in compute_dtype, lse (B,Hq,R) float32 and row ids for blocks qbs."""
    B, Hq, Hkv, N, D = _check_qkv(q, k, v)
    G = Hq // Hkv
    mask, rows, K = _rows_mask(index, qbs, N)
    R = rows.numel()
    qc = q.index_select(2, rows).to(compute_dtype).view(B, Hkv, G, R, D)
    kc = k[:, :, :K].to(compute_dtype).unsqueeze(2)                         # (B,Hkv,1,K,D)
    vc = v[:, :, :K].to(compute_dtype).unsqueeze(2)
    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale                      # (B,Hkv,G,R,K)
    s = s.masked_fill(~mask.view(B, Hkv, G, R, K), float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    del s
    l = p.sum(-1, keepdim=True)
    o = torch.matmul(p, vc) / torch.where(l == 0, torch.ones_like(l), l)
    lse = (m + torch.log(l)).squeeze(-1)                                    # -inf where empty
    return o.reshape(B, Hq, R, D), lse.reshape(B, Hq, R).float(), rows


def sparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               index: SparseIndex, scale: float | None = None,
                               return_lse: bool = False, *,
                               compute_dtype: torch.dtype | None = None,
                               budget: int = _DEFAULT_BUDGET):
    """Reference sparse attention: q (B, Hq, N, D), k/v (B, Hkv, N, D) -> out like q
    [, lse (B, Hq, N) float32]. Computes in float32 (float64 for float64 inputs, or
    ``compute_dtype``), returns ``q.dtype``."""
    B, Hq, Hkv, N, D = _check_qkv(q, k, v)
    index = _broadcast_index(index, B, Hq)
    nqb = num_q_blocks(N, index.block_m)
    if index.num_q_blocks != nqb:
        raise ValueError(f"index has {index.num_q_blocks} query blocks, seq_len {N} needs {nqb}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if compute_dtype is None:
        compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(B, Hq, N, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
    bm = index.block_m
    per_row = max(1, B * Hq)
    q0 = 0
    while q0 < nqb:
        nq = 1
        while q0 + nq < nqb and per_row * (nq * 2) * bm * min(N, (q0 + nq * 2) * bm) <= budget:
            nq *= 2
        q1 = min(nqb, q0 + nq)
        qbs = torch.arange(q0, q1, device=q.device)
        o, l, rows = _attend(q, k, v, index, qbs, scale, compute_dtype)
        out[:, :, rows[0]:rows[-1] + 1] = o.to(q.dtype)
        lse[:, :, rows[0]:rows[-1] + 1] = l
        q0 = q1
    return (out, lse) if return_lse else out


def sparse_attention_reference_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                      index: SparseIndex, q_blocks: Sequence[int] | torch.Tensor,
                                      scale: float | None = None, *,
                                      compute_dtype: torch.dtype = torch.float32):
    """Reference for selected query blocks only (for checking very long sequences on
    sampled rows): returns (out (B, Hq, R, D) in compute_dtype, lse (B, Hq, R), rows (R,)),
    one query block at a time concatenated, rows past the end dropped."""
    B, Hq, Hkv, N, D = _check_qkv(q, k, v)
    index = _broadcast_index(index, B, Hq)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    outs, lses, rows = [], [], []
    for qb in (q_blocks.tolist() if isinstance(q_blocks, torch.Tensor) else list(q_blocks)):
        o, l, r = _attend(q, k, v, index, torch.tensor([int(qb)], device=q.device), scale,
                          compute_dtype)
        outs.append(o), lses.append(l), rows.append(r)
    return torch.cat(outs, 2), torch.cat(lses, 2), torch.cat(rows)
