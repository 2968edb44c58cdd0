"""Scoring candidates on captured q/k/v with the exact softmax, computed in chunks of query rows.

Step 3 of the offline search that writes the plans the backend resolves (find sites -> resolve
plan -> build index -> one kernel). For one layer of one calibration sample and a list of
candidate indexes (one :class:`~mcompile.kernels.index.SparseIndex` over all query heads per
candidate, built by the pattern's own index builder on the captured q/k), :func:`score_layer`
returns per candidate and per query head a ``cost``, a ``recall`` and an ``error``
(:class:`LayerScore` says what each measures).

The dense probabilities of a chunk of query rows are computed once (float32, GQA without
repeating k/v) and every candidate is scored against them, so the dense work is shared. On
long sequences on a CPU the rows can be sampled by query block (:func:`scored_query_blocks`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from mcompile.kernels.index import SparseIndex, causal_blocks, num_q_blocks
from mcompile.kernels.reference import key_cover

BLOCK = 64


# --- the index as keys ----------------------------------------------------------------------------------
def index_tiles(index: SparseIndex) -> torch.Tensor:
    """(B * H,) float64: kernel tiles per head, summed over query blocks (blocks plus
    ceil(columns / block_n))."""
    bc, _, cc, _ = index.tensors()
    bn = index.block_n
    tiles = bc.long() + (cc.long() + bn - 1) // bn
    return tiles.sum(-1).reshape(-1).double().cpu()


# --- which rows are scored -----------------------------------------------------------------------------------
def scored_query_blocks(n: int, max_query_blocks: int | None = None) -> list[int]:
    """Query blocks to score: all, or every s-th counted back from the last one so that at
    most ``max_query_blocks`` are scored (deterministic). Sampling by query block (every s-th,
    always including the last) keeps long sequences affordable on a CPU; the per-row measures
    are exact for the rows scored."""
    nqb = num_q_blocks(n, BLOCK)
    if not max_query_blocks or max_query_blocks >= nqb:
        return list(range(nqb))
    stride = math.ceil(nqb / max_query_blocks)
    return sorted(range(nqb - 1, -1, -stride))


# --- scoring ----------------------------------------------------------------------------------------------------
@dataclass
class LayerScore:
    """One layer of one sample: (C candidates, H query heads) each.

      * ``cost``: the kernel cost the index really asks for, relative to dense causal attention:
        per query block one tile per listed key block plus ``ceil(columns / 64)`` tiles of
        gathered columns, summed over all query blocks, over the dense causal tile count;
      * ``recall``: the attention mass the selection keeps, averaged over query rows (each row's
        exact causal softmax restricted to the selected keys, MInference's measure);
      * ``error``: the relative error of the head's output ``||O_sparse - O||_F / ||O||_F`` over
        the scored rows, where ``O_sparse`` is what the sparse kernel computes (softmax
        renormalised over the selected keys, times v) and ``O`` the dense output. Unlike recall
        it sees v: mass dropped on keys whose values are close to the kept ones costs little."""

    cost: torch.Tensor      # relative kernel cost
    recall: torch.Tensor    # mean attention mass kept per row
    error: torch.Tensor     # relative output error over the scored rows
    rows: int               # rows scored


def _gathered_output(p4: torch.Tensor, v_flat: torch.Tensor, cover: torch.Tensor, G: int, K: int) -> torch.Tensor:
    """(Hq, nq, 64, D + 1): ``(P * cover) @ [v, 1]`` computed on the covered keys only
    (``v_flat``: ``[v, 1]`` of the chunk's first K keys as (Hkv * K, D + 1)).

    The cover is per query block, so each (head, query block) gathers its covered keys
    (compacted in key order, padded to the widest) from the probabilities and from v, and
    multiplies just those: the work follows the candidate's cost instead of the dense size."""
    Hq, nq, bm, _ = p4.shape
    dev = p4.device
    cnt = cover.sum(-1)                                                              # (Hq, nq)
    width = max(1, int(cnt.max()))
    pos = torch.cumsum(cover, -1, dtype=torch.int32) - 1
    slot = torch.where(cover, pos.long(), torch.full_like(pos, width, dtype=torch.long))
    keys = torch.zeros(Hq, nq, width + 1, dtype=torch.long, device=dev)
    keys.scatter_(-1, slot, torch.arange(K, device=dev).expand(Hq, nq, K))
    keys = keys[..., :width]                                                         # (Hq, nq, W)
    valid = torch.arange(width, device=dev) < cnt.unsqueeze(-1)
    pg = torch.gather(p4, 3, keys.unsqueeze(2).expand(Hq, nq, bm, width))
    pg = pg * valid.unsqueeze(2)
    kv = (torch.arange(Hq, device=dev) // G).view(Hq, 1, 1)
    vg = v_flat[(kv * K + keys).reshape(-1)].view(Hq, nq, width, -1)
    return torch.matmul(pg, vg)


def score_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indexes: Sequence[SparseIndex],
                scale: float | None = None, query_blocks: Sequence[int] | None = None,
                chunk_bytes: int | None = None, method: str = "gather") -> LayerScore:
    """Score candidate indexes on one layer's q (1, Hq, N, D), k/v (1, Hkv, N, D) (any dtype;
    computed in float32 on q's device). :class:`LayerScore` says what the measures are.

    ``method``: "gather" multiplies only the covered keys of each query block (work follows
    the candidate's cost), "mask" multiplies the masked dense probabilities (the plain way;
    the tests check that both agree)."""
    if q.dim() != 4 or q.shape[0] != 1:
        raise ValueError(f"score_layer expects one sample, q of shape (1, H, N, D); got {tuple(q.shape)}")
    _, Hq, N, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    dev = q.device
    scale = D ** -0.5 if scale is None else float(scale)
    nqb = num_q_blocks(N, BLOCK)
    qbs_all = list(range(nqb)) if query_blocks is None else sorted(set(int(b) for b in query_blocks))
    if chunk_bytes is None:
        chunk_bytes = (1 << 30) if dev.type == "cuda" else (1 << 27)
    C = len(indexes)
    qf = q[0].float()
    kf = k[0].float()
    v1 = torch.cat([v[0].float(), torch.ones(Hkv, N, 1, device=dev)], -1)       # (Hkv, N, D + 1)
    rec = torch.zeros(C, Hq, dtype=torch.float64, device=dev)
    err2 = torch.zeros(C, Hq, dtype=torch.float64, device=dev)
    o2 = torch.zeros(Hq, dtype=torch.float64, device=dev)
    rows_scored = 0
    # chunks of query blocks whose (Hq, rows, keys) float32 probabilities fit chunk_bytes
    i = 0
    while i < len(qbs_all):
        j = i + 1
        while j < len(qbs_all) and Hq * (j + 1 - i) * BLOCK * min(N, (qbs_all[j] + 1) * BLOCK) * 4 * 2 <= chunk_bytes:
            j += 1
        chunk = qbs_all[i:j]
        i = j
        nq = len(chunk)
        qb_t = torch.tensor(chunk, device=dev)
        rows = (qb_t.view(-1, 1) * BLOCK + torch.arange(BLOCK, device=dev).view(1, -1)).view(-1)  # (R,)
        valid = rows < N
        rows_c = rows.clamp(max=N - 1)
        K = int(min(N, (chunk[-1] + 1) * BLOCK))
        R = rows.numel()
        qr = qf[:, rows_c].view(Hkv, G * R, D)
        s = torch.matmul(qr, kf[:, :K].transpose(-1, -2)).mul_(scale).view(Hq, R, K)
        keys = torch.arange(K, device=dev)
        s.masked_fill_(keys.view(1, 1, K) > rows_c.view(1, R, 1), float("-inf"))
        p = torch.softmax(s, -1)
        del s
        w = valid.to(torch.float64)
        rows_scored += int(valid.sum())
        vk = v1[:, :K]
        o = torch.matmul(p.view(Hkv, G * R, K), vk).view(Hq, R, D + 1)[..., :D]
        o2 += ((o.double() ** 2).sum(-1) * w).sum(-1)
        p4 = p.view(Hq, nq, BLOCK, K)
        v_flat = vk.reshape(-1, D + 1) if method == "gather" else None
        for c, index in enumerate(indexes):
            cover = key_cover(index, qb_t, K).flatten(0, 1)                        # (Hq, nq, K)
            if method == "gather":
                om = _gathered_output(p4, v_flat, cover, G, K)
            else:
                pm = p4 * cover.unsqueeze(2)
                om = torch.matmul(pm.view(Hkv, G * R, K), vk).view(Hq, R, D + 1)
                del pm
            om = om.reshape(Hq, R, D + 1)
            r = om[..., D]
            om = om[..., :D] / r.clamp_min(1e-30).unsqueeze(-1)
            rec[c] += (r.double() * w).sum(-1)
            err2[c] += (((om - o).double() ** 2).sum(-1) * w).sum(-1)
        del p, p4
    cost = torch.stack([index_tiles(ix) for ix in indexes]) / causal_blocks(N) if C else torch.zeros(0, Hq)
    return LayerScore(cost=cost.double().cpu(),
                      recall=(rec / max(rows_scored, 1)).cpu(),
                      error=torch.sqrt(err2 / o2.clamp_min(1e-300)).cpu(),
                      rows=rows_scored)
