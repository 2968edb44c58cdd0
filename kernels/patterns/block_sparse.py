"""``block_sparse`` (MInference 1.0): top-k key blocks per query block from mean-pooled q and k.

One of the online patterns of the pipeline (find sites -> resolve plan -> build index -> one
kernel): :func:`build` turns a head group's q and k into a :class:`SparseIndex` of key blocks
(no columns) for the one sparse kernel. Parameter: ``top_k`` (see ``DEFAULTS``).
:func:`select_blocks` says how blocks are chosen and where this deviates from MInference;
:func:`build` which path runs on CUDA.
"""
from __future__ import annotations

import torch

from ..index import SparseIndex, num_q_blocks
from ._common import (INT32_BIG, HeadMap, cdiv, device_index, planted_qk, plot_selection, q_blocks,
                      resolve_budget, row_chunks, use_triton, with_budgets)
from .registry import Pattern, register_or_demo

NAME = "block_sparse"
# ``top_k``: key blocks per query block (a count, or a fraction of the ``ceil(N / block_n)`` key
# blocks). 100 is what MInference's kernel uses.
DEFAULTS = {"top_k": 100}
BUDGETS = {"top_k": 1}
# top_k counts key blocks, not tokens: the database says so
PARAM_SCHEMA = {"top_k": {"description": "a block count (integer >= 1), {\"frac\": x} with 0 < x <= 1 (a "
                          "fraction of the causal key blocks) or {\"scale\": a, \"power\": b} (a * B^b "
                          "blocks of the B key blocks, a > 0, 0 <= b <= 1)"}}


def validate(params: dict | None) -> dict:
    return with_budgets(params, DEFAULTS, BUDGETS, NAME)


def _top_k(n: int, p: dict, block_n: int) -> int:
    return min(cdiv(n, block_n), max(2, resolve_budget(p["top_k"], n, unit=block_n)))


def head_top_k(n: int, params, block_n: int = 64) -> list[int]:
    """The ``top_k`` of each head of a group: ``params`` one dict for every head (a list of
    one count) or a list with one dict per head."""
    if not isinstance(params, list):
        return [_top_k(n, validate(params), block_n)]
    return [_top_k(n, validate(p), block_n) for p in params]


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    return _top_k(n, validate(params), block_n), 0


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    """Exact: ``min(top_k, eligible key blocks)`` per query block."""
    kk = _top_k(n, validate(params), block_n)
    return sum(min(kk, (min(n, (m + 1) * block_m) - 1) // block_n + 1)
               for m in range(num_q_blocks(n, block_m))), 0


def _pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, H, ceil(N / block), D) float32 mean over each block's real tokens
    (views and float32-accumulating sums: no copy of x). The last, partial block is pooled
    over its real tokens, where MInference pads with zeros and divides by 64, which shrinks
    that block's score."""
    B, H, N, D = x.shape
    nfull, rem = divmod(N, block)
    parts = []
    if nfull:
        full = x[:, :, :nfull * block].reshape(B, H, nfull, block, D)
        parts.append(full.sum(3, dtype=torch.float32) / block)
    if rem:
        parts.append(x[:, :, nfull * block:].sum(2, keepdim=True, dtype=torch.float32) / rem)
    return torch.cat(parts, 2) if len(parts) > 1 else parts[0]


def select_blocks(q: torch.Tensor, k: torch.Tensor, params: dict | list | None = None, *, heads=None,
                  block_m: int = 64, block_n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(count int32 (B, Hg, NQB), key-block ids ascending int64 (B, Hg, NQB, top_k); entries
    past the count are INT32_BIG). ``params`` one dict, or one per head (their own ``top_k``
    each, the lists as wide as the largest).

    Selection (MInference's ``_build_block_index`` in
    minference/ops/block_sparse_flash_attention.py): query rows and keys are mean-pooled over
    their ``block_m`` / ``block_n`` blocks (:func:`_pool`), block scores are
    ``pooled_q . pooled_k`` (no scale, no softmax: top-k does not need them), causal (a key block
    is eligible when its first key is at or before the query block's last row), and each query
    block keeps its ``min(top_k, eligible)`` best key blocks, in ascending order.

    Deviations from MInference, and why:
      * the first key block and the diagonal key block (the last eligible one) are always kept,
        so every row sees the attention sink and its own neighbourhood (MInference does not
        force them); they count inside the ``top_k`` budget, so ``top_k`` is at least 2 (1 when
        only one block is eligible);
      * the last, partial block is pooled over its real tokens (see :func:`_pool`);
      * when the (B, H, NQB, NKB) float32 score tensor would exceed ``SCORE_BUDGET_BYTES`` it is
        computed in chunks of query blocks (at 1M tokens a whole layer's scores are 34 GB)."""
    B, Hq, N, D = q.shape
    hm = HeadMap(range(Hq) if heads is None else heads, Hq, k.shape[1])
    kks = head_top_k(N, params, block_n)
    kk = max(kks)
    nqb, nkb = num_q_blocks(N, block_m), cdiv(N, block_n)
    dev = q.device
    pq = hm.select_q(_pool(q, block_m))                                      # (B, Hg, NQB, D)
    pk = hm.select_kv(_pool(k, block_n))                                     # (B, U, NKB, D)
    Hg = pq.shape[1]
    head_kk = device_index(kks, dev).view(-1, 1)                             # (Hg | 1, 1)
    _, last = q_blocks(N, block_m, dev)
    diag = last // block_n                                                   # last eligible block
    kb = torch.arange(nkb, device=dev)
    ids_parts, cnt_parts = [], []
    for a, b in row_chunks(nqb, B * Hg * nkb * 4 * 3):
        s = hm.scores(pq[:, :, a:b].to(pk.dtype), pk)                        # (B, Hg, c, NKB)
        eligible = kb.view(1, -1) <= diag[a:b].view(-1, 1)
        forced = (kb.view(1, -1) == 0) | (kb.view(1, -1) == diag[a:b].view(-1, 1))
        s = torch.where(forced, torch.full_like(s, float("inf")), s)
        s = s.masked_fill(~eligible, float("-inf"))
        top = torch.topk(s, kk, -1)                                          # by score, descending
        count = torch.minimum(diag[a:b] + 1, head_kk).to(torch.int32)       # (Hg | 1, c)
        ok = torch.arange(kk, device=dev) < count.unsqueeze(-1).long()
        # eligible scores are > -inf, so the first `count` of the top-k are the eligible ones
        ids = torch.where(ok, top.indices, INT32_BIG).sort(-1).values
        ids_parts.append(ids)
        cnt_parts.append(count.expand(B, Hg, b - a))
    return torch.cat(cnt_parts, -1), torch.cat(ids_parts, 2)


def _build_triton(q: torch.Tensor, k: torch.Tensor, params, heads, block_m: int, block_n: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(count (B, Hg, NQB), block starts (B, Hg, NQB, top_k)) int32: the pooled scores by a
    matmul per chunk of query blocks, the top-k by one Triton program per row (``_triton_bs``);
    entries past the count are unwritten."""
    from . import _triton_bs   # imports triton: only where its kernel launches
    B, Hq, N, D = q.shape
    hm = HeadMap(range(Hq) if heads is None else heads, Hq, k.shape[1])
    kks = head_top_k(N, params, block_n)
    kk = max(kks)
    head_kk = device_index(kks, q.device, torch.int32)
    nqb, nkb = num_q_blocks(N, block_m), cdiv(N, block_n)
    pq = hm.select_q(_pool(q, block_m))                                      # (B, Hg, NQB, D)
    pk = hm.select_kv(_pool(k, block_n))                                     # (B, U, NKB, D)
    Hg = pq.shape[1]
    out = torch.empty(B * Hg, nqb, kk, dtype=torch.int32, device=q.device)
    cnt = torch.empty(B * Hg, nqb, dtype=torch.int32, device=q.device)
    for a, b in row_chunks(nqb, B * Hg * nkb * 4):
        s = hm.scores(pq[:, :, a:b].to(pk.dtype), pk)                        # (B, Hg, c, NKB)
        _triton_bs.select(s.view(B * Hg, b - a, nkb), out, cnt, a, head_kk, N, block_m, block_n)
    return cnt.view(B, Hg, nqb), out.view(B, Hg, nqb, kk)


def _use_kernel(device, nkb: int) -> bool:
    """Whether the build takes the Triton path: asked for, and a row of ``nkb`` key blocks fits
    the kernel."""
    if not use_triton(device):
        return False
    from . import _triton_bs   # imports triton: only where its kernel launches
    return _triton_bs.max_row(nkb)


def build(q: torch.Tensor, k: torch.Tensor, params: dict | list | None = None, *, heads=None,
          block_m: int = 64, block_n: int = 64, scale: float | None = None) -> SparseIndex:
    """The block-sparse index of ``heads``. On CUDA (``use_triton``) the top-k, forcing, causal
    cut and ascending order are one Triton program per query block (``_triton_bs.py``: an exact
    radix select in registers; among exactly equal scores the lowest block ids win) instead of
    ``topk`` + ``sort`` + masks over the score tensor; elsewhere torch ops
    (:func:`select_blocks`). Same selection."""
    if _use_kernel(q.device, cdiv(q.shape[2], block_n)):
        count, offs = _build_triton(q, k, params, heads, block_m, block_n)
    else:
        count, ids = select_blocks(q, k, params, heads=heads, block_m=block_m, block_n=block_n)
        offs = torch.where(ids < INT32_BIG, ids * block_n, 0).to(torch.int32)
    B, Hg, nqb = count.shape
    # no columns: their counts a broadcast cached zero (a fresh tensor would be a fill launch)
    no_columns = device_index([0], q.device, torch.int32).view(1, 1, 1).expand(B, Hg, nqb)
    return SparseIndex(count.contiguous(), offs, no_columns, count.new_empty(B, Hg, nqb, 0), block_m, block_n)


def reference_mask(q: torch.Tensor, k: torch.Tensor, params: dict | None = None, *, heads=None,
                   block_m: int = 64, block_n: int = 64, scale: float | None = None) -> torch.Tensor:
    """Float64, per query block in Python loops: pool, score every eligible key block, force
    the first and diagonal ones, keep the best ``top_k``, paint the mask."""
    p = validate(params)
    B, Hq, N, D = q.shape
    g = Hq // k.shape[1]
    hs = list(range(Hq)) if heads is None else list(heads)
    kk = _top_k(N, p, block_n)
    nqb, nkb = num_q_blocks(N, block_m), cdiv(N, block_n)
    mask = torch.zeros(B, len(hs), N, N, dtype=torch.bool)
    for b in range(B):
        for i, h in enumerate(hs):
            qh, kh = q[b, h].double().cpu(), k[b, h // g].double().cpu()
            pk = [kh[j * block_n:min(N, (j + 1) * block_n)].mean(0) for j in range(nkb)]
            for m in range(nqb):
                r0, r1 = m * block_m, min(N, (m + 1) * block_m)
                pq = qh[r0:r1].mean(0)
                diag = (r1 - 1) // block_n
                sc = {j: (float("inf") if j in (0, diag) else float(pq @ pk[j])) for j in range(diag + 1)}
                keep = sorted(sc, key=lambda j: -sc[j])[:kk]
                for j in keep:
                    mask[b, i, r0:r1, j * block_n:min(N, (j + 1) * block_n)] = True
    return mask & torch.ones(N, N, dtype=torch.bool).tril()


def demo(path: str = "block_sparse.png", n: int = 1024, **params) -> str:
    p = validate(params or {"top_k": 4})
    nb = max(1, n // 64)
    hot = sorted({(min(nb - 1, a * nb // 16), b * nb // 16) for a, b in [(10, 3), (12, 5), (15, 8), (6, 2)]})
    q, k = planted_qk(n, hot_blocks=hot, seed=2)
    return plot_selection(path, f"{NAME} top_k={p['top_k']}", build, q, k, p,
                          planted=f"planted (query block, key block): {hot}")


PATTERN = register_or_demo(Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, colour="#2ca02c",
                                   dynamic=True, per_head=tuple(BUDGETS), defaults=DEFAULTS, budgets=BUDGETS,
                                   param_schema=PARAM_SCHEMA, doc=__doc__), __name__)
