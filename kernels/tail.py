"""The dense tail: the last query rows of a sparse attention call, recomputed over every
causal key, in place.

Why: in a prefill the last rows are the ones the first generated token reads (the question
of a needle-in-a-haystack prompt, the end of a chat turn); a sparse pattern that drops the
one block holding the answer loses it there, and nowhere else is it cheaper to be exact:
the last ``rows`` rows cost ``rows * N`` of the ``N^2 / 2`` causal work (0.4% at 32K for one
64-row block, 0.01% at 1M).

CUDA (and the CPU interpreter when asked for): two Triton launches that split the keys
across programs (``_triton_tail.py``; one program per head walking every key alone is
latency-bound). CPU otherwise: plain torch over the tail rows.
"""
from __future__ import annotations

import torch

from .index import causal_blocks, num_q_blocks


def tail_blocks(n: int, rows: int, block_m: int = 64) -> int:
    """Query blocks of ``block_m`` rows, counted from the end, that hold the last ``rows`` rows."""
    if rows <= 0 or n <= 0:
        return 0
    first = max(0, n - rows) // block_m
    return num_q_blocks(n, block_m) - first


def tail_work(n: int, rows: int, block_m: int = 64, block_n: int = 64) -> int:
    """Key blocks of ``block_n`` the dense tail computes per head (for density reports)."""
    return causal_blocks(n, block_m, block_n, num_q_blocks(n, block_m) - tail_blocks(n, rows, block_m))


def _torch_tail(q, k, v, out, start: int, scale: float) -> None:
    """out[:, :, start:] = causal softmax(q k^T) v for the tail rows (fp32 math). The query
    heads of one KV head are stacked as rows, so K/V are never repeated per head."""
    B, Hq, n, D = q.shape
    Hkv = k.shape[1]
    group, t = Hq // Hkv, n - start
    qt = q[:, :, start:].float().reshape(B, Hkv, group * t, D)
    scores = (qt @ k.float().transpose(-1, -2)) * scale                 # (B, Hkv, group * t, n)
    rows = torch.arange(start, n, device=q.device).repeat(group)[:, None]
    keys = torch.arange(n, device=q.device)[None, :]
    scores = scores.masked_fill(keys > rows, float("-inf"))
    out[:, :, start:] = (scores.softmax(-1) @ v.float()).reshape(B, Hq, t, D).to(out.dtype)


def dense_tail_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                rows: int, scale: float, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """Overwrite the last query blocks holding the last ``rows`` rows of ``out`` (B, Hq, N, D)
    with dense causal attention of q (B, Hq, N, D) over k, v (B, Hkv, N, D). Returns ``out``."""
    B, Hq, n, _ = q.shape
    blocks = tail_blocks(n, rows, block_m)
    if blocks == 0:
        return out
    use_kernel = q.is_cuda
    if q.device.type == "cpu":
        from .ops import cpu_backend
        use_kernel = cpu_backend() == "triton"
    if not use_kernel:
        _torch_tail(q, k, v, out, (num_q_blocks(n, block_m) - blocks) * block_m, scale)
        return out
    from ._triton_tail import dense_tail   # imports triton: only where its kernels launch
    dense_tail(q, k, v, out, (num_q_blocks(n, block_m) - blocks) * block_m, scale)
    return out
