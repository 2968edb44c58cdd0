"""The sparse attention kernel, its index and its reference.

The kernel is the pipeline's last step (find sites -> resolve plan -> build index -> one
kernel); these tests hold it to the pure-torch reference, the reference to
``F.scaled_dot_product_attention(is_causal=True)`` for the full index, and the index to its
invariants.

CPU (always): the Triton kernel under Triton's interpreter vs the reference, over a grid of
shapes, index kinds and tilings (``_grid``) and on structured inputs (attention sinks,
diagonals, heavy columns, large logits). GPU (``-m gpu``; skipped without CUDA): the same grid
compiled, plus 256K- and 1M-token cases checked against the reference on sampled query blocks.
``REL_TOL`` and ``LSE_TOL`` state the error bounds and why.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from mcompile.kernels import ops
from mcompile.kernels.index import (BlockRanges, SparseIndex, check_index, dense_causal_index, dense_causal_pairs,
                                    empty_index, index_memory_bytes, index_pairs, num_q_blocks)
from mcompile.kernels.reference import (index_to_mask, sparse_attention_reference,
                                        sparse_attention_reference_blocks)
from mcompile.kernels.sparse_attention import sparse_attention

HAS_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]

# Error bounds, relative Frobenius error |out - ref| / |ref| against a float32 reference
# (float64 for float32 inputs) computed from the same (rounded) inputs: float32 1e-5 (products
# in fp32: "ieee" on CPU, 3xTF32 on the GPU), float16 3e-3, bfloat16 2e-2 (P is rounded to the
# input dtype before P @ V, as in every flash kernel); LSE absolute error <= 1e-3 (5e-5 for
# float32); rows with no key: output exactly 0 and LSE -inf in both.
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LSE_TOL = {torch.float32: 5e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


# ----------------------------------------------------------------------------- helpers
def _random_index(B, H, N, bm, bn, *, max_blocks, max_columns, gen, p_block=0.5, p_col=0.1,
                  device="cpu") -> SparseIndex:
    """Irregular valid index: block starts anywhere (not multiples of bn), some crossing the
    diagonal or the end of the sequence, columns between and after blocks."""
    nqb = num_q_blocks(N, bm)
    bc = torch.zeros(B, H, nqb, dtype=torch.int32)
    bo = torch.full((B, H, nqb, max_blocks), -7, dtype=torch.int32)     # junk past the count
    cc = torch.zeros(B, H, nqb, dtype=torch.int32)
    ci = torch.full((B, H, nqb, max_columns), 10**6, dtype=torch.int32)
    for b in range(B):
        for h in range(H):
            for qb in range(nqb):
                last = min((qb + 1) * bm, N) - 1
                starts, pos = [], gen.randrange(0, bn)
                while pos <= last and len(starts) < max_blocks:
                    if gen.random() < p_block:
                        starts.append(pos)
                        pos += bn + gen.randrange(0, bn // 2 + 1)
                    else:
                        pos += gen.randrange(1, bn + 1)
                covered = set()
                for s in starts:
                    covered.update(range(s, s + bn))
                free = [c for c in range(last + 1) if c not in covered]
                cols = sorted(c for c in free if gen.random() < p_col)
                if free and gen.random() < 0.5 and last not in covered and last not in cols:
                    cols = sorted(cols + [last])                              # on the diagonal
                cols = cols[:max_columns]
                bc[b, h, qb] = len(starts)
                bo[b, h, qb, :len(starts)] = torch.tensor(starts, dtype=torch.int32)
                cc[b, h, qb] = len(cols)
                ci[b, h, qb, :len(cols)] = torch.tensor(cols, dtype=torch.int32)
    return SparseIndex(bc.to(device), bo.to(device), cc.to(device), ci.to(device), bm, bn)


def _sink_local_columns_index(B, H, N, bm, bn, *, sink, window, columns=None, device="cpu"):
    """Structured index (vectorised, any N): sink blocks over [0, sink), a local range
    [s - window, last row] chunked into blocks starting at arbitrary offsets, and the given
    sorted columns (B, H, C) that fall outside the blocks and at or before the last row."""
    nqb = num_q_blocks(N, bm)
    qs = torch.arange(nqb, device=device, dtype=torch.int64) * bm
    last = torch.clamp(qs + bm, max=N) - 1
    n_sink = (sink + bn - 1) // bn
    sink_end = n_sink * bn
    lo = torch.clamp(qs - window, min=0)
    merged = lo <= sink_end                      # local range reaches the sink: one range from 0
    lo = torch.where(merged, torch.zeros_like(lo), lo)
    n_loc = (last - lo) // bn + 1
    max_loc = (window + bm) // bn + 2
    loc = lo[:, None] + torch.arange(max_loc, device=device) * bn
    loc_ok = torch.arange(max_loc, device=device)[None, :] < n_loc[:, None]
    snk = torch.arange(n_sink, device=device) * bn
    snk = snk[None, :].expand(nqb, n_sink)
    snk_ok = (~merged)[:, None] & (snk <= last[:, None])
    big = 1 << 40
    starts = torch.cat([torch.where(snk_ok, snk, big), torch.where(loc_ok, loc, big)], 1)
    starts, _ = starts.sort(1)
    count = (starts < big).sum(1)
    maxb = int(count.max()) if nqb else 0
    starts = torch.where(starts[:, :maxb] < big, starts[:, :maxb], 0)
    bc = count.to(torch.int32).view(1, 1, nqb).expand(B, H, nqb)
    bo = starts.to(torch.int32).view(1, 1, nqb, maxb).expand(B, H, nqb, maxb)
    if columns is None:
        cc = torch.zeros(1, 1, nqb, dtype=torch.int32, device=device).expand(B, H, nqb)
        ci = torch.zeros(1, 1, nqb, 0, dtype=torch.int32, device=device).expand(B, H, nqb, 0)
        return SparseIndex(bc, bo, cc, ci, bm, bn)
    cols = columns.to(device).long()                                    # (B, H, C)
    c = cols[:, :, None, :]                                             # (B, H, 1, C)
    in_sink = (c < sink_end) & (~merged).view(1, 1, nqb, 1)
    in_loc = (c >= lo.view(1, 1, nqb, 1)) & (c < (lo + n_loc * bn).view(1, 1, nqb, 1))
    ok = (c <= last.view(1, 1, nqb, 1)) & ~in_sink & ~in_loc
    keyed = torch.where(ok, c, big)
    keyed, _ = keyed.sort(-1)
    ccount = ok.sum(-1)
    maxc = max(1, int(ccount.max()))
    ci = torch.where(keyed[..., :maxc] < big, keyed[..., :maxc], 0).to(torch.int32)
    return SparseIndex(bc, bo, ccount.to(torch.int32), ci, bm, bn)


def _qkv(B, Hq, Hkv, N, D, dtype, device, gen=None, structure=None, layout="bhnd"):
    g = torch.Generator().manual_seed(gen if gen is not None else 0)

    def rnd(h):
        return torch.randn(B, h, N, D, generator=g)
    q, k, v = rnd(Hq), rnd(Hkv), rnd(Hkv)
    if structure == "sinks":        # every query attends strongly to the first 4 keys
        k[:, :, :4] += 6.0 * q.view(B, Hkv, -1, N, D).mean((2, 3)).sign().unsqueeze(2)
        q = q + 0.5 * q.mean(2, keepdim=True).sign()
    elif structure == "diagonal":   # query i ~ key i (slash lines)
        G = Hq // Hkv
        k = k + 3.0 * q.view(B, Hkv, G, N, D).mean(2)
    elif structure == "columns":    # a few heavy keys, large logits
        idx = torch.randint(0, N, (max(1, N // 50),), generator=g)
        k[:, :, idx] *= 8.0
    elif structure == "large":      # logits in the hundreds: online softmax stability
        q, k = q * 4.0, k * 4.0
    if layout == "bnhd":            # HF layout: (B, N, H, D) storage viewed as (B, H, N, D)
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


def _ref(q, k, v, index):
    cd = torch.float64 if q.dtype == torch.float32 else torch.float32
    return sparse_attention_reference(q.to(cd), k.to(cd), v.to(cd), index, return_lse=True)


def _check(out, lse, ref_out, ref_lse, dtype, what=""):
    assert torch.isfinite(out).all(), f"{what}: non-finite output (unwritten or NaN)"
    assert not torch.isnan(lse).any(), f"{what}: NaN (or unwritten) LSE"
    o, r = out.double(), ref_out.double()
    rn = r.norm().item()
    err = (o - r).norm().item() / max(rn, 1e-30) if rn > 0 else o.abs().max().item()
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3e} > {REL_TOL[dtype]:.0e}"
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty), f"{what}: empty rows differ"
    assert (out[empty.unsqueeze(-1).expand_as(out)] == 0).all(), f"{what}: empty rows not zero"
    if (~empty).any():
        lerr = (lse[~empty].double() - ref_lse[~empty].double()).abs().max().item()
        assert lerr <= LSE_TOL[dtype], f"{what}: LSE error {lerr:.3e}"


def _run(q, k, v, index, config=None):
    """The kernel with its outputs and LSE poisoned with NaN before the run, so an unwritten
    element fails the check."""
    out = torch.full_like(q, float("nan"))                      # poisoned
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=q.device)
    res = sparse_attention(q, k, v, index, return_lse=True, out=out, lse=lse, config=config,
                           debug=True)
    assert res[0] is out and res[1] is lse
    return out, lse


def _make_index(kind, B, Hq, N, bm, bn, seed, device):
    gen = random.Random(seed)
    if kind == "full":
        return dense_causal_index(B, Hq, N, bm, bn, device=device)
    if kind == "empty":
        return empty_index(B, Hq, N, bm, bn, max_blocks=3, max_columns=5, device=device)
    if kind == "random":
        return _random_index(B, Hq, N, bm, bn, max_blocks=8, max_columns=40, gen=gen, device=device)
    if kind == "blocks":
        return _random_index(B, Hq, N, bm, bn, max_blocks=8, max_columns=4, gen=gen, p_col=0.0,
                             device=device)
    if kind == "columns":
        return _random_index(B, Hq, N, bm, bn, max_blocks=2, max_columns=150, gen=gen,
                             p_block=0.0, p_col=0.3, device=device)
    raise ValueError(kind)


# --------------------------------------------------------------- the grid (CPU and GPU)
# Fresh random inputs: head dims 64/128/256, GQA ratios 1/4/7/8, batch 1-2, lengths 1, 63, 64,
# 65, 200, 1000, full / empty / random / blocks-only / columns-only indexes, several index
# block shapes; other tests add kernel tilings and pointer and TMA loads.
_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_HEAD_DIMS = [64, 128, 256]
_GQA = [1, 4, 7, 8]
_BLOCKS = [(64, 64), (128, 64), (64, 128)]


def _grid():
    """Lengths x index kinds, with head dim / GQA ratio / batch / dtype / block shape
    cycled so that every value meets every length; the cost of the interpreter keeps the
    1000-token cases to few heads."""
    cases, i = [], 0
    for N in (1, 63, 64, 65, 200, 1000):
        for kind in ("full", "empty", "random", "blocks", "columns"):
            D = _HEAD_DIMS[i % 3]
            G = _GQA[i % 4]
            B = 1 + (i // 2) % 2
            dtype = _DTYPES[(i // 3) % 3]
            bm, bn = _BLOCKS[(i // 5) % 3]
            Hkv = 2 if G == 1 else 1
            if N == 1000:                  # interpreter budget
                B, G, Hkv = 1, (1, 4)[i % 2], 1
                if dtype == torch.bfloat16 and D == 256:
                    D = 64
            cases.append(pytest.param(N, kind, D, G, Hkv, B, dtype, bm, bn,
                                      id=f"N{N}-{kind}-d{D}-g{G}-b{B}-{str(dtype)[6:]}-{bm}x{bn}"))
            i += 1
    return cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,kind,D,G,Hkv,B,dtype,bm,bn", _grid())
def test_kernel_grid(device, N, kind, D, G, Hkv, B, dtype, bm, bn):
    Hq = G * Hkv
    q, k, v = _qkv(B, Hq, Hkv, N, D, dtype, device, gen=N * 31 + D)
    index = _make_index(kind, B, Hq, N, bm, bn, seed=N + D + G, device=device)
    check_index(index, N, B, Hq)
    out, lse = _run(q, k, v, index)
    ro, rl = _ref(q, k, v, index)
    _check(out, lse, ro, rl, dtype, f"{device} N={N} {kind}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("D", _HEAD_DIMS)
@pytest.mark.parametrize("G", _GQA)
def test_kernel_gqa_head_dims(device, D, G):
    """Every head dim with every GQA ratio (batch 2, 2 KV heads, ragged length)."""
    B, Hkv, N = 2, 2, 97
    dtype = _DTYPES[(D // 64 + G) % 3]
    q, k, v = _qkv(B, G * Hkv, Hkv, N, D, dtype, device, gen=D * G)
    index = _make_index("random", B, G * Hkv, N, 64, 64, seed=D * 10 + G, device=device)
    out, lse = _run(q, k, v, index)
    _check(out, lse, *_ref(q, k, v, index), dtype, f"D={D} G={G}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bm,bn,cfg", [
    (64, 64, (64, 64, 4, 2, False)),
    (64, 64, (64, 64, 4, 2, True)),             # TMA descriptors (interpreted on CPU)
    (128, 64, (128, 64, 8, 2, False)),
    (128, 64, (64, 32, 4, 2, True)),            # split rows and keys of the index blocks
    (64, 128, (32, 64, 4, 2, False)),
    (128, 128, (128, 128, 8, 2, True)),
    (32, 32, (16, 16, 4, 1, False)),
    (16, 64, (16, 32, 4, 2, False)),
])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_kernel_tilings_and_layouts(device, bm, bn, cfg, layout):
    B, Hkv, G, N, D = 2, 1, 4, 333, 64
    dtype = torch.float16
    q, k, v = _qkv(B, G * Hkv, Hkv, N, D, dtype, device, gen=bm + bn, layout=layout)
    index = _make_index("random", B, G * Hkv, N, bm, bn, seed=bm * bn, device=device)
    out, lse = _run(q, k, v, index, config=cfg)
    _check(out, lse, *_ref(q, k, v, index), dtype, f"{bm}x{bn} {cfg} {layout}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("structure,dtype", [
    ("sinks", torch.bfloat16), ("diagonal", torch.float16), ("columns", torch.bfloat16),
    ("large", torch.float16), ("large", torch.float32)])
def test_kernel_structured(device, structure, dtype):
    """Inputs with real structure, on the index shapes the patterns build: A-shape
    (sink + local window) and vertical-slash-like (ranges at arbitrary starts + columns)."""
    B, Hkv, G, N, D = 1, 1, 4, 400, 128
    q, k, v = _qkv(B, G * Hkv, Hkv, N, D, dtype, device, gen=7, structure=structure)
    gcols = torch.Generator().manual_seed(3)
    cols = torch.cat([torch.arange(8).expand(B, G * Hkv, 8),
                      torch.randint(8, N, (B, G * Hkv, 40), generator=gcols).sort(-1)[0]], -1)
    cols = torch.stack([torch.stack([torch.unique(cols[b, h])[:40] for h in range(G * Hkv)])
                        for b in range(B)])
    for index in (_sink_local_columns_index(B, G * Hkv, N, 64, 64, sink=128, window=100,
                                            device=device),
                  _sink_local_columns_index(B, G * Hkv, N, 64, 64, sink=30, window=90,
                                            columns=cols, device=device)):
        check_index(index, N, B, G * Hkv)
        out, lse = _run(q, k, v, index)
        _check(out, lse, *_ref(q, k, v, index), dtype, structure)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("structure,dtype", [(None, torch.float16), ("sinks", torch.bfloat16)])
def test_kernel_writes_an_index_over_some_heads(device, structure, dtype):
    """An index over some query heads (``heads``, in any order; one pattern's part of a layer)
    writes exactly those heads of the given output and LSE, each as the reference over its
    own KV head (GQA 3:1), and leaves every other head as it was (poisoned here); a window
    per index head is read at the index's head."""
    B, Hkv, G, N, D, bm, bn = 2, 2, 3, 200, 64, 64, 64
    q, k, v = _qkv(B, G * Hkv, Hkv, N, D, dtype, device, gen=11, structure=structure)
    heads = [4, 0, 2]
    index = _random_index(B, len(heads), N, bm, bn, max_blocks=4, max_columns=30, gen=random.Random(5),
                          device=device)
    index = index.with_window(torch.tensor([70, 1 << 30, 33], dtype=torch.int32, device=device))
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=device)
    rows = torch.tensor(heads, dtype=torch.int32, device=device)
    sparse_attention(q, k, v, index, return_lse=True, out=out, lse=lse, heads=rows, debug=True)
    kv = [h // G for h in heads]
    ref_out, ref_lse = _ref(q[:, heads], k[:, kv], v[:, kv], index)
    _check(out[:, heads], lse[:, heads], ref_out, ref_lse, dtype, "heads 4, 0, 2")
    others = [h for h in range(G * Hkv) if h not in heads]
    assert torch.isnan(out[:, others]).all() and torch.isnan(lse[:, others]).all()
    with pytest.raises(ValueError, match="given out"):
        sparse_attention(q, k, v, index, heads=rows)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("structure,dtype,bm,bn,cfg", [
    (None, torch.float16, 64, 64, None), ("sinks", torch.bfloat16, 64, 64, None),
    ("diagonal", torch.float32, 128, 64, None), ("sinks", torch.float16, 64, 64, (64, 64, 4, 2, True)),
    (None, torch.bfloat16, 64, 128, (32, 64, 4, 2, False))])
def test_kernel_computes_block_ranges(device, structure, dtype, bm, bn, cfg):
    """A BlockRanges index (the kernel computes each head's blocks from two numbers) gives the
    reference over the same blocks listed (``to_index``), with unlike spans per head (sinks
    and a window, one aligned range where they meet, dense, a window alone with its per-row
    bound), over some heads of the output (GQA 3:1) and over all of them."""
    B, Hkv, G, N, D = 2, 2, 3, 333, 64
    q, k, v = _qkv(B, G * Hkv, Hkv, N, D, dtype, device, gen=bm + bn, structure=structure)
    heads = [5, 0, 3, 1]
    ranges = BlockRanges.make([(bn, 70), (0, N), (2 * bn, 200), (0, 90)], N, bm, bn,
                              [None, None, None, 90], device=device)
    listed = ranges.to_index()
    check_index(listed.expand(B, len(heads)), N)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=device)
    rows = torch.tensor(heads, dtype=torch.int32, device=device)
    sparse_attention(q, k, v, ranges, return_lse=True, out=out, lse=lse, heads=rows, config=cfg, debug=True)
    kv = [h // G for h in heads]
    _check(out[:, heads], lse[:, heads], *_ref(q[:, heads], k[:, kv], v[:, kv], listed), dtype, "ranges")
    others = [h for h in range(G * Hkv) if h not in heads]
    assert torch.isnan(out[:, others]).all()
    every = BlockRanges.make([(bn, 1 + 40 * h) for h in range(G * Hkv)], N, bm, bn, device=device)
    out, lse = _run(q, k, v, every, config=cfg)
    _check(out, lse, *_ref(q, k, v, every.to_index()), dtype, "ranges, every head")
    with pytest.raises(ValueError, match="BlockRanges over 4 heads"):
        sparse_attention(q, k, v, ranges, out=out, heads=rows[:3])


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_empty_rows_inside_blocks(device):
    """Rows before a lone diagonal column select nothing: 0 output, LSE -inf, no NaN."""
    B, H, N, D, bm = 1, 2, 130, 64, 64
    nqb = num_q_blocks(N, bm)
    bc = torch.zeros(B, H, nqb, dtype=torch.int32)
    bo = torch.zeros(B, H, nqb, 1, dtype=torch.int32)
    cc = torch.ones(B, H, nqb, dtype=torch.int32)
    ci = torch.tensor([40, 100, 129], dtype=torch.int32).view(1, 1, nqb, 1).repeat(B, H, 1, 1)
    index = SparseIndex(bc, bo, cc, ci, bm, 64)
    index = SparseIndex(*(t.to(device) for t in index.tensors()), bm, 64)
    q, k, v = _qkv(B, H, H, N, D, torch.float16, device)
    out, lse = _run(q, k, v, index)
    ro, rl = _ref(q, k, v, index)
    _check(out, lse, ro, rl, torch.float16, "lone columns")
    assert torch.isinf(lse[0, 0, :40]).all() and torch.isfinite(lse[0, 0, 40:64]).all()
    assert (out[0, 0, :40] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_rejects_bad_inputs(device):
    q, k, v = _qkv(1, 4, 2, 64, 64, torch.float16, device)
    idx = dense_causal_index(1, 4, 64, device=device)
    with pytest.raises(ValueError, match="head dim"):
        sparse_attention(q[..., :48], k[..., :48], v[..., :48], idx)
    with pytest.raises(ValueError, match="multiple"):
        sparse_attention(q[:, :3], k, v, dense_causal_index(1, 3, 64, device=device))
    with pytest.raises(ValueError, match="query blocks"):
        sparse_attention(q, k, v, dense_causal_index(1, 4, 200, device=device))
    with pytest.raises(ValueError, match="q_len == kv_len"):
        sparse_attention(q, k[:, :, :32], v[:, :, :32], idx)
    bad = dense_causal_index(1, 4, 64, device=device)
    bad = SparseIndex(bad.block_count + 1, bad.block_offset, bad.column_count,
                      bad.column_index, 64, 64)
    with pytest.raises(ValueError, match="count out of"):
        sparse_attention(q, k, v, bad, debug=True)


# ------------------------------------------------------------------- the reference
@pytest.mark.parametrize("N", [1, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("G,Hkv,B,D,bm,bn", [(1, 2, 2, 64, 64, 64), (4, 1, 1, 128, 128, 64),
                                             (7, 1, 2, 32, 64, 128), (8, 1, 1, 256, 32, 32)])
def test_reference_matches_sdpa_full_index(N, G, Hkv, B, D, bm, bn):
    g = torch.Generator().manual_seed(N)
    q = torch.randn(B, G * Hkv, N, D, dtype=torch.float64, generator=g)
    k = torch.randn(B, Hkv, N, D, dtype=torch.float64, generator=g)
    v = torch.randn(B, Hkv, N, D, dtype=torch.float64, generator=g)
    idx = dense_causal_index(B, G * Hkv, N, bm, bn)
    out, lse = sparse_attention_reference(q, k, v, idx, return_lse=True, budget=40_000)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (out - ref).abs().max() < 1e-10
    kk = k.repeat_interleave(G, 1)
    s = (q @ kk.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    assert (lse.double() - torch.logsumexp(s, -1)).abs().max() < 1e-5
    # and on the same inputs in float32, with the default chunking
    out32 = sparse_attention_reference(q.float(), k.float(), v.float(), idx)
    assert (out32.double() - ref).abs().max() < 1e-5


def test_reference_random_mask_matches_dense_masked_sdpa():
    B, Hq, Hkv, N, D = 2, 4, 2, 150, 32
    idx = _random_index(B, Hq, N, 32, 32, max_blocks=5, max_columns=20, gen=random.Random(1))
    mask = index_to_mask(idx, N)
    q = torch.randn(B, Hq, N, D, dtype=torch.float64)
    k = torch.randn(B, Hkv, N, D, dtype=torch.float64)
    v = torch.randn(B, Hkv, N, D, dtype=torch.float64)
    out = sparse_attention_reference(q, k, v, idx, budget=3000)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    assert (out - p @ vv).abs().max() < 1e-10
    # sampled blocks agree with the full reference
    ob, lb, rows = sparse_attention_reference_blocks(q, k, v, idx, [0, 4],
                                                     compute_dtype=torch.float64)
    assert torch.equal(rows, torch.cat([torch.arange(0, 32), torch.arange(128, 150)]))
    assert (ob - out[:, :, rows]).abs().max() < 1e-12


def test_index_to_mask_brute_force():
    B, H, N, bm, bn = 1, 3, 90, 32, 16
    idx = _random_index(B, H, N, bm, bn, max_blocks=6, max_columns=10, gen=random.Random(5))
    mask = index_to_mask(idx, N)
    want = torch.zeros(B, H, N, N, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for r in range(N):
                qb = r // bm
                keys = set()
                for i in range(int(idx.block_count[b, h, qb])):
                    s = int(idx.block_offset[b, h, qb, i])
                    keys.update(range(s, s + bn))
                for i in range(int(idx.column_count[b, h, qb])):
                    keys.add(int(idx.column_index[b, h, qb, i]))
                for c in keys:
                    if c <= r:
                        want[b, h, r, c] = True
    assert torch.equal(mask, want)
    assert index_pairs(idx, N) == int(mask.sum())
    assert torch.equal(index_to_mask(dense_causal_index(2, 2, N, bm, bn), N),
                       torch.ones(N, N, dtype=torch.bool).tril().expand(2, 2, N, N))


def test_reference_empty_index():
    q = torch.randn(1, 2, 100, 64)
    out, lse = sparse_attention_reference(q, q[:, :1], q[:, :1], empty_index(1, 2, 100),
                                          return_lse=True)
    assert (out == 0).all() and torch.isinf(lse).all() and (lse < 0).all()


def test_reference_16k_runs_chunked():
    """16K tokens on CPU without an N x N matrix (the chunking keeps memory bounded)."""
    N = 16384
    q = torch.randn(1, 1, N, 32)
    idx = _sink_local_columns_index(1, 1, N, 64, 64, sink=64, window=256)
    out = sparse_attention_reference(q, q, q, idx, budget=1 << 22)
    assert out.shape == q.shape and torch.isfinite(out).all()


# ------------------------------------------------------------------------ the index
def test_check_index_accepts_valid():
    for idx, N in ((dense_causal_index(2, 3, 200, 64, 64), 200),
                   (dense_causal_index(1, 1, 1, 128, 64), 1),
                   (empty_index(1, 2, 65), 65),
                   (_random_index(2, 2, 300, 64, 32, max_blocks=9, max_columns=30,
                                  gen=random.Random(0)), 300),
                   (_sink_local_columns_index(1, 2, 1000, 64, 64, sink=100, window=300,
                                              columns=torch.arange(0, 1000, 7).expand(1, 2, -1)),
                    1000)):
        check_index(idx, N)


def _valid():
    bc = torch.tensor([[[1, 2]]], dtype=torch.int32)
    bo = torch.tensor([[[[0, 99], [10, 80]]]], dtype=torch.int32)
    cc = torch.tensor([[[1, 2]]], dtype=torch.int32)
    ci = torch.tensor([[[[40, 0], [5, 75]]]], dtype=torch.int32)
    return SparseIndex(bc, bo, cc, ci, 64, 32)


@pytest.mark.parametrize("edit,match", [
    (lambda i: i.block_count.__setitem__((0, 0, 0), 3), "count out of"),
    (lambda i: i.column_count.__setitem__((0, 0, 1), -1), "count out of"),
    (lambda i: i.block_offset.__setitem__((0, 0, 1, 0), -2), "negative"),
    (lambda i: i.block_offset.__setitem__((0, 0, 0, 0), 64), "not causal"),
    (lambda i: i.column_index.__setitem__((0, 0, 1, 1), 100), "not causal"),
    (lambda i: i.block_offset.__setitem__((0, 0, 1, 1), 30), "overlapping or unsorted"),
    (lambda i: i.column_index.__setitem__((0, 0, 1, 1), 5), "not sorted"),
    (lambda i: i.column_index.__setitem__((0, 0, 1, 0), 41), "inside the listed block"),
])
def test_check_index_rejects(edit, match):
    idx = _valid()
    check_index(idx, 100)
    edit(idx)
    with pytest.raises(ValueError, match=match):
        check_index(idx, 100)


def test_check_index_shapes_and_dtypes():
    idx = _valid()
    with pytest.raises(ValueError, match="num_q_blocks"):
        check_index(idx, 200)
    with pytest.raises(ValueError, match="int32"):
        check_index(SparseIndex(idx.block_count.long(), *idx.tensors()[1:], 64, 32), 100)
    with pytest.raises(ValueError, match="heads"):
        check_index(idx, 100, heads=4)


def test_index_pairs_and_memory():
    assert index_pairs(dense_causal_index(2, 3, 1000, 128, 64), 1000) == 6 * dense_causal_pairs(1000)
    # the full causal index at 1M tokens stores one row of starts, broadcast everywhere
    d = dense_causal_index(1, 32, 1 << 16, 64, 64)
    assert d.memory_bytes() < 64 * 1024
    assert index_memory_bytes(1, 32, 1 << 20, 128, 1024, 64) == 4 * 32 * 16384 * 1154


# ------------------------------------------------------------- the custom op
def test_op_opcheck_and_compile_fullgraph():
    q, k, v = _qkv(1, 4, 2, 100, 64, torch.float32, "cpu")
    idx = _make_index("random", 1, 4, 100, 64, 64, seed=3, device="cpu")
    args = (q, k, v, *idx.tensors(), 64, 64, 0.125)
    torch.library.opcheck(torch.ops.mcompile.sparse_attention.default, args)

    def f(q, k, v, bc, bo, cc, ci):
        o = ops.sparse_attention(q * 1.0, k, v, SparseIndex(bc, bo, cc, ci, 64, 64))
        return o.sum(-1)

    eager = f(q, k, v, *idx.tensors())
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(q, k, v, *idx.tensors()), eager)
    ro = _ref(q, k, v, idx)[0].float().sum(-1)
    torch.testing.assert_close(eager, ro, atol=1e-5, rtol=1e-5)


def test_op_cpu_triton_backend_under_compile():
    q, k, v = _qkv(1, 4, 1, 130, 64, torch.float16, "cpu")
    idx = dense_causal_index(1, 4, 130)
    ops.set_cpu_backend("triton")
    try:
        f = torch.compile(lambda q, k, v, *t: ops.sparse_attention(
            q, k, v, SparseIndex(*t, 64, 64), return_lse=True), fullgraph=True)
        out, lse = f(q, k, v, *idx.tensors())
    finally:
        ops.set_cpu_backend(None)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                         enable_gqa=True)
    assert (out.float() - ref).norm() / ref.norm() < REL_TOL[torch.float16]
    assert out.shape == q.shape and lse.shape == (1, 4, 130)


@pytest.mark.parametrize("device", DEVICES)
def test_op_dispatch_matches_sdpa(device):
    q, k, v = _qkv(2, 8, 2, 257, 128, torch.float16, device)
    out = ops.sparse_attention(q, k, v, dense_causal_index(2, 8, 257, 64, 64, device=device))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                         enable_gqa=True)
    assert (out.float() - ref).norm() / ref.norm() < REL_TOL[torch.float16]


# --------------------------------------------------------------- long sequences (GPU)
def _sampled_check(q, k, v, index, blocks, dtype, what):
    out, lse = _run(q, k, v, index)
    heads = sorted({0, q.shape[1] - 1})
    for h in heads:
        sub = SparseIndex(*(t[:, h:h + 1] for t in index.tensors()), index.block_m, index.block_n)
        kvh = h // (q.shape[1] // k.shape[1])
        ro, rl, rows = sparse_attention_reference_blocks(
            q[:, h:h + 1], k[:, kvh:kvh + 1], v[:, kvh:kvh + 1], sub, blocks)
        _check(out[:, h:h + 1, rows], lse[:, h:h + 1, rows], ro, rl, dtype, f"{what} head {h}")
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_256k_dense_one_group():
    N, D, dtype = 1 << 18, 128, torch.bfloat16
    q, k, v = _qkv(1, 4, 1, N, D, dtype, "cuda")
    index = dense_causal_index(1, 4, N, 128, 64, device="cuda")
    nqb = index.num_q_blocks
    _sampled_check(q, k, v, index, [0, 1, nqb // 2, nqb - 2, nqb - 1], dtype, "256K dense")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_1m_sparse_llama_shape():
    """1M tokens, 32 query / 8 KV heads (offsets past 2^31 elements), sinks + a local
    window at unaligned starts + columns; sampled blocks of the first and last head."""
    N, D, Hq, Hkv, dtype = 1 << 20, 128, 32, 8, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, Hq, N, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(1, Hkv, N, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(1, Hkv, N, D, device="cuda", dtype=dtype, generator=g)
    cols = torch.cat([torch.arange(30, device="cuda").expand(1, Hq, 30),
                      torch.randint(30, N, (1, Hq, 200), device="cuda", generator=g).sort(-1)[0]], -1)
    cols = torch.stack([torch.unique(cols[0, h])[:200] for h in range(Hq)]).unsqueeze(0)
    index = _sink_local_columns_index(1, Hq, N, 64, 64, sink=128, window=1000, columns=cols,
                                      device="cuda")
    nqb = index.num_q_blocks
    _sampled_check(q, k, v, index, [0, 17, nqb // 2, nqb - 1], dtype, "1M sparse")
    # one head group, dense, 1M: the longest rows
    q1, k1, v1 = q[:, :4].contiguous(), k[:, :1].contiguous(), v[:, :1].contiguous()
    del q, k, v
    dense = dense_causal_index(1, 4, N, 128, 64, device="cuda")
    _sampled_check(q1, k1, v1, dense, [dense.num_q_blocks - 1], dtype, "1M dense")
