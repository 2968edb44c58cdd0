"""Scoring candidates on captured q/k/v with the exact softmax, computed in chunks of query rows.

Step 3 of the offline search that writes the plans the backend resolves (find sites -> resolve
plan -> build index -> one kernel). For one layer of one calibration sample and a list of
candidate indexes (one :class:`~mcompile.kernels.index.SparseIndex` over all query heads per
candidate, built by the pattern's own index builder on the captured q/k), :func:`score_layer`
returns per candidate and per query head a ``cost``, a ``recall`` and an ``error``
(:class:`LayerScore` says what each measures).

The dense probabilities of a chunk of query rows are computed once (float32, GQA without
repeating k/v) and every candidate is scored against them, so the dense work is shared; so are
their products with v over each aligned block of 64 keys, of which a candidate's output over
the whole blocks it lists is a sum: only its other keys are gathered one by one. On long
sequences on a CPU the rows can be sampled by query block (:func:`scored_query_blocks`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from mcompile.kernels.index import SparseIndex, causal_blocks, num_q_blocks
from mcompile.kernels.reference import key_cover

BLOCK = 64

Intervals = tuple[torch.Tensor, torch.Tensor]     # (start, end) key positions, int64, same shape


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


# --- a candidate's keys as whole aligned blocks and the rest -------------------------------------------------
def _listed_intervals(index: SparseIndex, qb_t: torch.Tensor, limit: torch.Tensor) -> tuple[Intervals, Intervals]:
    """The keys each of the query blocks ``qb_t`` lists, as intervals: its blocks (Hq, nq,
    blocks) and its columns (Hq, nq, columns), each list cut to the most that one of these
    query blocks uses; an unused entry is empty (end = start). Ends are cut at ``limit`` (nq,),
    the query block's last row + 1: keys after it have zero probability in all its rows.
    SparseIndex's invariants make the intervals of a query block disjoint."""
    bc, bo, cc, ci = (t.index_select(2, qb_t).flatten(0, 1) for t in index.tensors())
    lim = limit.view(1, -1, 1)

    def intervals(count: torch.Tensor, starts: torch.Tensor, width: int):
        starts = starts[..., :int(count.max()) if count.numel() else 0].long()
        used = torch.arange(starts.shape[-1], device=starts.device) < count.unsqueeze(-1)
        starts = torch.minimum(starts, lim)
        return starts, torch.where(used, torch.minimum(starts + width, lim), starts)

    return intervals(bc, bo, index.block_n), intervals(cc, ci, 1)


def _blocks_touched(width: int) -> int:
    """The most aligned 64-key blocks that an interval of ``width`` keys touches."""
    return -(-(width - 1) // BLOCK) + 1


def _add_overlaps(count: torch.Tensor, start: torch.Tensor, end: torch.Tensor, width: int) -> None:
    """Add to ``count`` (Hq, nq, nkb + 1) each interval's overlap with each aligned 64-key block
    it touches (intervals of at most ``width`` keys); the last slot takes what falls past the
    blocks."""
    first = torch.div(start, BLOCK, rounding_mode="floor")
    for step in range(_blocks_touched(width)):
        kb = first + step
        overlap = (torch.minimum(end, (kb + 1) * BLOCK) - torch.maximum(start, kb * BLOCK)).clamp_min_(0)
        count.scatter_add_(-1, kb.clamp_(max=count.shape[-1] - 1), overlap)


def _whole_blocks(blocks: Intervals, columns: Intervals, limit: torch.Tensor, nkb: int, block_n: int) -> torch.Tensor:
    """(Hq, nq, nkb) bool: the aligned 64-key blocks whose keys before ``limit`` the listed
    intervals (:func:`_listed_intervals`) cover entirely: disjoint intervals do when their
    overlaps with the block add up to its size before the limit."""
    Hq, nq = blocks[0].shape[:2]
    count = torch.zeros(Hq, nq, nkb + 1, dtype=torch.long, device=limit.device)
    _add_overlaps(count, *blocks, block_n)
    _add_overlaps(count, *columns, 1)
    size = (limit.view(-1, 1) - torch.arange(nkb, device=limit.device) * BLOCK).clamp(0, BLOCK)  # (nq, nkb)
    return (count[..., :nkb] == size) & (size > 0)


def _keys_outside(blocks: Intervals, columns: Intervals, block_n: int, whole: torch.Tensor) -> torch.Tensor:
    """(Hq, nq, W) int64: the listed keys that lie outside the whole blocks, compacted per query
    block and padded with -1 to the widest (W may be 0). Only the block intervals that reach
    outside the whole blocks (moved to the front, the others dropped) are spelt out key by key:
    most lie inside them."""
    (bs, be), (cs, ce) = blocks, columns
    nkb = whole.shape[-1]

    def outside(keys: torch.Tensor) -> torch.Tensor:      # keys past the blocks are never listed
        kb = torch.div(keys, BLOCK, rounding_mode="floor").clamp_(max=nkb - 1)
        return ~torch.gather(whole, -1, kb)

    first = bs.div(BLOCK, rounding_mode="floor") * BLOCK
    reach = torch.zeros_like(bs, dtype=torch.bool)
    for step in range(_blocks_touched(block_n)):
        at = first + step * BLOCK
        reach |= (at < be) & outside(at)
    reach &= be > bs
    kept = int(reach.sum(-1).max()) if reach.numel() else 0
    order = torch.argsort((~reach).to(torch.uint8), dim=-1, stable=True)[..., :kept]
    bs, be = bs.gather(-1, order), torch.where(reach.gather(-1, order), be.gather(-1, order), 0)
    keys = torch.cat([(bs.unsqueeze(-1) + torch.arange(block_n, device=bs.device)).flatten(2), cs], -1)
    ends = torch.cat([be.repeat_interleave(block_n, -1), ce], -1)
    listed = (keys < ends) & outside(keys)
    width = int(listed.sum(-1).max()) if listed.numel() else 0
    out = torch.full((*whole.shape[:2], width + 1), -1, dtype=torch.long, device=whole.device)
    if width:
        slot = torch.where(listed, torch.cumsum(listed, -1) - 1, width)
        out.scatter_(-1, slot, torch.where(listed, keys, -1))
    return out[..., :width]


# --- the candidates' outputs -------------------------------------------------------------------------------
def _block_products(p: torch.Tensor, v1k: torch.Tensor, Hkv: int) -> torch.Tensor:
    """(Hkv, nkb, G * R, D + 1): every row's probabilities over each aligned 64-key block times
    that block of ``[v, 1]`` (p: (Hq, R, nkb * 64), v1k: (Hkv, nkb * 64, D + 1)). The dense
    work, done once per chunk: a candidate's output over its whole blocks is a sum of these."""
    Hq, R, Kp = p.shape
    nkb = Kp // BLOCK
    pb = p.view(Hkv, Hq // Hkv * R, nkb, BLOCK)
    vb = v1k.view(Hkv, nkb, BLOCK, -1)
    out = torch.empty(Hkv, nkb, pb.shape[1], vb.shape[-1], device=p.device)
    for h in range(Hkv):
        torch.bmm(pb[h].transpose(0, 1), vb[h], out=out[h])
    return out


# A matrix product's rounding can depend on its shape (with MKL, past about 128 terms per sum,
# on their count and on the other rows). Every sum of a candidate's products below is taken
# over slices of at most SLICE terms, added in order (pads add exact zeros), so that a head's
# scores depend only on its own keys: candidates that list the same keys for a head score it
# exactly alike and tie there, as in exact arithmetic (the allocation keeps the first).
SLICE = 64


def _whole_block_outputs(products: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """(C, Hq, nq, 64, D + 1): for each of C candidates, ``P @ [v, 1]`` over its whole blocks
    (``whole``: (C, Hq, nq, nkb) bool), the sum of their block products: per KV head one
    batched product of the candidates' 0/1 block choices with the products, so every
    candidate reads them at once instead of gathering its keys."""
    Hkv, nkb, GR, D1 = products.shape
    C, Hq, nq, _ = whole.shape
    G = Hq // Hkv
    out = torch.empty(Hkv, G * nq, C, BLOCK * D1, device=products.device)
    for h in range(Hkv):
        choice = whole[:, h * G:(h + 1) * G].reshape(C, G * nq, nkb).transpose(0, 1).to(products.dtype)
        blocks = products[h].view(nkb, G * nq, BLOCK * D1).transpose(0, 1)
        torch.bmm(choice[..., :SLICE], blocks[:, :SLICE], out=out[h])
        for s in range(SLICE, nkb, SLICE):
            out[h].baddbmm_(choice[..., s:s + SLICE], blocks[:, s:s + SLICE])
    return out.view(Hkv, G, nq, C, BLOCK, D1).permute(3, 0, 1, 2, 4, 5).reshape(C, Hq, nq, BLOCK, D1)


def _add_outside_output(om: torch.Tensor, pt: torch.Tensor, v_flat: torch.Tensor, keys: torch.Tensor,
                        G: int) -> None:
    """Add to ``om`` (Hq, nq, 64, D + 1) ``P @ [v, 1]`` over the keys outside whole blocks
    (``keys`` from :func:`_keys_outside`), gathered key by key from ``pt`` (each query block's
    probabilities transposed, (Hq * nq * Kp, 64)) and from ``v_flat`` (``[v, 1]`` as
    (Hkv * Kp + 1, D + 1), its last row zero: what a pad gathers): gathering rows of 64 is far
    faster than gathering single probabilities."""
    Hq, nq, W = keys.shape
    slices = -(-W // SLICE)
    if not slices:
        return
    keys = torch.nn.functional.pad(keys, (0, slices * SLICE - W), value=-1)
    Kp = pt.shape[0] // (Hq * nq)
    first = (torch.arange(Hq * nq, device=keys.device) * Kp).view(Hq, nq, 1)
    pg = pt.index_select(0, (first + keys.clamp_min(0)).flatten()).view(Hq, nq, slices, SLICE, BLOCK)
    kv = (torch.arange(Hq, device=keys.device) // G).view(Hq, 1, 1)
    rows = torch.where(keys >= 0, kv * Kp + keys, v_flat.shape[0] - 1)
    vg = v_flat.index_select(0, rows.flatten()).view(Hq, nq, slices, SLICE, v_flat.shape[1])
    parts = torch.matmul(pg.transpose(-1, -2), vg)                                 # (Hq, nq, slices, 64, D + 1)
    for s in range(slices):
        om += parts[:, :, s]


def _candidate_outputs(p: torch.Tensor, vk: torch.Tensor, indexes: Sequence[SparseIndex], qb_t: torch.Tensor,
                       n: int, group_bytes: int):
    """Yield (first candidate, (C, Hq, R, D + 1) ``(P * cover) @ [v, 1]``) for groups of the
    candidates, on the chunk's probabilities p (Hq, R, K) and ``[v, 1]`` vk (Hkv, K, D + 1).

    Whole aligned 64-key blocks come from the block products, shared by all candidates; only
    the listed keys outside them (block edges that do not fall on 64, columns) are gathered
    and multiplied per candidate, so the per-candidate work is mostly a sum of products."""
    Hq, R, K = p.shape
    Hkv, _, D1 = vk.shape
    nq = qb_t.numel()
    nkb = -(-K // BLOCK)
    if nkb * BLOCK != K:                                  # zero keys up to a whole block
        p = torch.nn.functional.pad(p, (0, nkb * BLOCK - K))
        vk = torch.nn.functional.pad(vk, (0, 0, 0, nkb * BLOCK - K))
    products = _block_products(p, vk, Hkv)
    pt = p.view(Hq, nq, BLOCK, nkb * BLOCK).transpose(2, 3).reshape(-1, BLOCK)
    v_flat = torch.cat([vk.reshape(-1, D1), vk.new_zeros(1, D1)])
    limit = ((qb_t + 1) * BLOCK).clamp(max=n)
    group = max(1, group_bytes // (Hq * R * D1 * 4))
    for first in range(0, len(indexes), group):
        chosen = indexes[first:first + group]
        listed = [_listed_intervals(ix, qb_t, limit) for ix in chosen]
        whole = torch.stack([_whole_blocks(*lists, limit, nkb, ix.block_n) for ix, lists in zip(chosen, listed)])
        om = _whole_block_outputs(products, whole)
        for c, (ix, lists) in enumerate(zip(chosen, listed)):
            _add_outside_output(om[c], pt, v_flat, _keys_outside(*lists, ix.block_n, whole[c]), Hq // Hkv)
        yield first, om.reshape(len(chosen), Hq, R, D1)


def _masked_outputs(p: torch.Tensor, vk: torch.Tensor, indexes: Sequence[SparseIndex], qb_t: torch.Tensor):
    """Yield (c, (1, Hq, R, D + 1) ``(P * cover) @ [v, 1]``) per candidate, multiplying the
    masked dense probabilities (the plain way, which the tests compare with)."""
    Hq, R, K = p.shape
    Hkv = vk.shape[0]
    p4 = p.view(Hq, qb_t.numel(), BLOCK, K)
    for c, index in enumerate(indexes):
        cover = key_cover(index, qb_t, K).flatten(0, 1)                                # (Hq, nq, K)
        pm = p4 * cover.unsqueeze(2)
        yield c, torch.matmul(pm.view(Hkv, -1, K), vk).view(1, Hq, R, -1)


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


def score_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indexes: Sequence[SparseIndex],
                scale: float | None = None, query_blocks: Sequence[int] | None = None,
                chunk_bytes: int | None = None, method: str = "blocks") -> LayerScore:
    """Score candidate indexes on one layer's q (1, Hq, N, D), k/v (1, Hkv, N, D) (any dtype;
    computed in float32 on q's device). :class:`LayerScore` says what the measures are.

    ``method``: "blocks" shares the products of whole 64-key blocks between the candidates
    and gathers only the other keys (:func:`_candidate_outputs`), "mask" multiplies the
    masked dense probabilities per candidate (the plain way; the tests check that both
    agree)."""
    if method not in ("blocks", "mask"):
        raise ValueError(f"method must be 'blocks' or 'mask', got {method!r}")
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
        # the block path holds p, its block products and a transposed copy (about p each) and
        # twice the outputs of a group of candidates: about twice chunk_bytes in all
        outputs = (_candidate_outputs(p, vk, indexes, qb_t, N, chunk_bytes // 4) if method == "blocks"
                   else _masked_outputs(p, vk, indexes, qb_t))
        for c, om in outputs:                                                       # (C', Hq, R, D + 1)
            r = om[..., D]
            diff = om[..., :D].div_(r.clamp_min(1e-30).unsqueeze(-1)).sub_(o)         # O_sparse - O
            rec[c:c + len(om)] += (r.double() * w).sum(-1)
            # float32 sums of 64 squares: per row within 3e-7 of float64's, far less over the rows
            err2[c:c + len(om)] += (torch.linalg.vector_norm(diff, dim=-1).double() ** 2 * w).sum(-1)
        del p
    cost = torch.stack([index_tiles(ix) for ix in indexes]) / causal_blocks(N) if C else torch.zeros(0, Hq)
    return LayerScore(cost=cost.double().cpu(),
                      recall=(rec / max(rows_scored, 1)).cpu(),
                      error=torch.sqrt(err2 / o2.clamp_min(1e-300)).cpu(),
                      rows=rows_scored)
