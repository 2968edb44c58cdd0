"""Exact sliding windows: ``SparseIndex.window`` makes the kernel drop keys
``<= row - window`` per row, so Gemma 3's local layers run their true window sparsely.

The Triton kernel (interpreter on the CPU, compiled with ``-m gpu``) is compared with the
pure-torch reference, and the reference with dense SDPA under transformers' sliding mask, on
random inputs and on inputs whose attention sits right at the window's edge (a key just
outside each row's window with a large logit: any leak shows). Outputs are poisoned first.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mcompile.kernels import ops
from mcompile.kernels.index import SparseIndex, check_index, dense_causal_index
from mcompile.kernels.patterns import NO_WINDOW, build_layer_index
from mcompile.kernels.patterns import sliding_window as SW
from mcompile.kernels.reference import index_to_mask, sparse_attention_reference
from mcompile.kernels.sparse_attention import sparse_attention
from mcompile.plan import HeadPlan, LayerPlan

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA,
                                                                                   reason="needs CUDA")])]
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _window_mask(n: int, windows: list[int]) -> torch.Tensor:
    """(1, H, N, N) transformers' causal sliding-window mask, one window per head."""
    return torch.stack([SW.exact_mask(n, w) for w in windows])[None]


def _qkv(B, Hq, Hkv, N, D, dtype, device, seed, edge_windows=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g)
    v = torch.randn(B, Hkv, N, D, generator=g)
    if edge_windows is not None:
        # structure at the window's edge: key r - w (just outside row r's window) is aligned
        # with q_r, so a kernel that leaks it puts most of the row's mass there
        w = edge_windows[0]
        for r in range(w, N):
            q[:, :, r] += 4.0 * k[:, 0, r - w] / k[:, 0, r - w].norm()
    return (t.to(dtype).to(device) for t in (q, k, v))


def _run_kernel(q, k, v, index):
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=q.device)
    sparse_attention(q, k, v, index, return_lse=True, out=out, lse=lse, debug=True)
    return out, lse


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,windows,G,Hkv,D,dtype,bm", [
    (200, [37], 1, 2, 64, torch.float32, 64),           # window inside one block
    (333, [100, 1, 64, 333], 2, 2, 64, torch.float16, 64),   # per-head windows, 1 and N
    (257, [129], 4, 1, 128, torch.bfloat16, 128),       # block_m 128, partial last block
    (520, [256], 4, 1, 256, torch.bfloat16, 64),        # Gemma 3's head dim
])
def test_kernel_window_matches_reference_and_sdpa(device, N, windows, G, Hkv, D, dtype, bm):
    Hq = G * Hkv
    if len(windows) not in (1, Hq):
        pytest.skip("windows per head must match the heads")
    for seed, edge in ((0, None), (1, windows)):
        q, k, v = _qkv(1, Hq, Hkv, N, D, dtype, device, seed, edge)
        wt = torch.tensor(windows, dtype=torch.int32, device=device)
        index = dense_causal_index(1, Hq, N, bm, 64, device=device).with_window(wt)
        check_index(index, N)
        out, lse = _run_kernel(q, k, v, index)
        ref, ref_lse = sparse_attention_reference(q, k, v, index, return_lse=True)
        assert _rel(out, ref) < REL_TOL[dtype], (seed, _rel(out, ref))
        assert (lse - ref_lse).abs().max().item() < (1e-4 if dtype == torch.float32 else 1e-3)
        per_head = windows if len(windows) == Hq else windows * Hq
        mask = _window_mask(N, per_head).to(device)
        sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                              enable_gqa=True)
        assert _rel(ref, sdpa) < REL_TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_sliding_window_pattern_is_exact_per_row(device):
    """The pattern's blocks are the per-block union; with the window the kernel computes the
    true per-row window (what the old block-only index over-selected by up to 63 keys)."""
    n, w = 500, 100
    q, k, v = _qkv(1, 2, 1, n, 64, torch.float16, device, 3, [w])
    ix = SW.build(q, k, {"window": w})
    assert torch.equal(index_to_mask(ix, n)[0, 0].cpu(), SW.exact_mask(n, w))
    out, _ = _run_kernel(q, k, v, ix)
    sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                          attn_mask=SW.exact_mask(n, w).to(device), enable_gqa=True)
    assert _rel(out, sdpa) < REL_TOL[torch.float16]
    blocks, _ = SW.cost(n, {"window": w})          # cost stays O(N x window)
    assert blocks == int(ix.block_count[0, 0].sum())
    assert int(ix.block_count.max()) <= -(-(w - 1 + 64) // 64)


def test_layer_index_mixes_windowed_and_unbounded_heads():
    n = 300
    q, k, _ = _qkv(1, 4, 2, n, 64, torch.float32, "cpu", 4)
    plan = LayerPlan((HeadPlan("sliding_window", {"window": 50}), HeadPlan("dense"),
                      HeadPlan("sliding_window", {"window": 50}), HeadPlan("a_shape", {"n_init": 64, "n_local": 128})))
    ix = build_layer_index(q, k, plan)
    check_index(ix, n)
    assert ix.window.tolist() == [50, NO_WINDOW, 50, NO_WINDOW]
    m = index_to_mask(ix, n)[0]
    assert torch.equal(m[0], SW.exact_mask(n, 50)) and torch.equal(m[2], m[0])
    assert torch.equal(m[1], torch.ones(n, n, dtype=torch.bool).tril())


def test_op_carries_the_window_through_compile():
    n, w = 150, 40
    q, k, v = _qkv(1, 2, 1, n, 64, torch.float32, "cpu", 5, [w])
    idx = dense_causal_index(1, 2, n).with_window(w)
    args = (q, k, v, *idx.tensors(), 64, 64, 0.125, idx.window)
    torch.library.opcheck(torch.ops.mcompile.sparse_attention.default, args)
    f = torch.compile(lambda q, k, v, win: ops.sparse_attention(q, k, v, SparseIndex(*idx.tensors(), 64, 64, win)),
                      fullgraph=True)
    out = f(q, k, v, idx.window)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=SW.exact_mask(n, w), enable_gqa=True)
    torch.testing.assert_close(out, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([0], dtype=torch.int32), ">= 1"),
    (torch.tensor([5], dtype=torch.int64), "int32"),
    (torch.tensor([5, 5, 5], dtype=torch.int32), r"shape \(1,\) or \(2,\)"),
])
def test_check_index_rejects_bad_windows(bad, match):
    idx = dense_causal_index(1, 2, 100)
    with pytest.raises(ValueError, match=match):
        check_index(SparseIndex(*idx.tensors(), 64, 64, bad), 100)
