"""The dense tail (kernels/tail.py): the last query rows of a sparse call recomputed over every
causal key, in place, by its split-key Triton kernels (CPU interpreter here, compiled on the GPU) or by
plain torch; and the runtime option ``dense_tail`` that applies it.

Checked against ``F.scaled_dot_product_attention(is_causal=True)`` on fresh random inputs and
on a planted needle (a far key that only the last rows look for, which a sink + local pattern
drops). The rows before the tail are poisoned with NaN and must come back untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mcompile import runtime
from mcompile.kernels import ops
from mcompile.kernels.tail import dense_tail_, tail_blocks, tail_work
from mcompile.options import OptionError, Options
from mcompile.plan import LayerPlan

HAS_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


def _qkv(B, Hq, Hkv, n, D, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(device, dtype) for h in (Hq, Hkv, Hkv))
    return q, k, v


def _dense(q, k, v, scale=None):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def test_tail_blocks_and_work():
    assert tail_blocks(1000, 0) == 0 and tail_blocks(0, 64) == 0
    assert tail_blocks(1024, 64) == 1            # one whole block
    assert tail_blocks(1000, 64) == 2            # the last block holds 40 rows: one more
    assert tail_blocks(100, 10_000) == 2         # never more than the sequence
    # per head: the last block of 1024 tokens sees 16 key blocks, the two last of 1000 see 15 + 16
    assert tail_work(1024, 64) == 16 and tail_work(1000, 64) == 15 + 16


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("n,rows,Hq,Hkv,D", [(256, 64, 4, 1, 64), (200, 64, 2, 2, 32), (130, 100, 6, 2, 64),
                                          (3000, 64, 4, 2, 64), (1000, 300, 2, 1, 16)])
def test_dense_tail_matches_sdpa_and_leaves_other_rows(backend, n, rows, Hq, Hkv, D):
    ops.set_cpu_backend(backend)
    try:
        q, k, v = _qkv(1, Hq, Hkv, n, D, seed=n + rows)
        out = torch.full_like(q, float("nan"))
        dense_tail_(q, k, v, out, rows, D ** -0.5)
    finally:
        ops.set_cpu_backend(None)
    start = (n - rows) // 64 * 64
    ref = _dense(q, k, v)
    torch.testing.assert_close(out[:, :, start:], ref[:, :, start:], atol=2e-5, rtol=1e-4)
    assert torch.isnan(out[:, :, :start]).all()


@pytest.mark.parametrize("n,rows,Hq,Hkv,D", [(3000, 64, 4, 2, 64), (1000, 300, 2, 1, 16)])
def test_dense_tail_combines_many_splits_a_few_at_a_time(monkeypatch, n, rows, Hq, Hkv, D):
    """A row whose splits take several combine steps (4 splits a step here, of 47 and 16)
    comes out as SDPA's: the running max carries across the steps."""
    from mcompile.kernels import _triton_tail
    monkeypatch.setattr(_triton_tail, "COMBINE_ELEMENTS", 5 * D - 1)   # rounds down to 4 splits
    ops.set_cpu_backend("triton")
    try:
        q, k, v = _qkv(1, Hq, Hkv, n, D, seed=n + rows + 1)
        k[:, :, n // 3] += 4 * q[:, :1, -1]        # one far key the last rows like: a large max mid-row
        out = torch.full_like(q, float("nan"))
        dense_tail_(q, k, v, out, rows, D ** -0.5)
    finally:
        ops.set_cpu_backend(None)
    start = (n - rows) // 64 * 64
    torch.testing.assert_close(out[:, :, start:], _dense(q, k, v)[:, :, start:], atol=2e-5, rtol=1e-4)
    assert torch.isnan(out[:, :, :start]).all()


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("n,rows", [(5000, 64), (40000, 130)])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_dense_tail_kernels_match_sdpa_on_gpu(n, rows, D):
    """The split-key tail kernels in bf16 on the GPU, every head dim the sparse path takes (256:
    Gemma 3, where the kernel's shared memory is tightest), against float32 SDPA."""
    q, k, v = (t.bfloat16() for t in _qkv(1, 8, 2, n, D, seed=D + rows))
    q, k, v = (t.cuda() for t in (q, k, v))
    out = torch.full_like(q, float("nan"))
    dense_tail_(q, k, v, out, rows, D ** -0.5)
    start = (n - rows) // 64 * 64
    # the tail rows' causal attention in float32, K and V repeated per query head
    kr, vr = (t.float().repeat_interleave(4, dim=1) for t in (k, v))
    s = (q[:, :, start:].float() @ kr.transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(torch.arange(n, device="cuda") > torch.arange(start, n, device="cuda")[:, None], float("-inf"))
    ref = s.softmax(-1) @ vr
    torch.testing.assert_close(out[:, :, start:].float(), ref, atol=2e-2, rtol=2e-2)
    assert torch.isnan(out[:, :, :start]).all()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_sparse_call_tail_finds_a_needle_the_pattern_drops(device):
    """a_shape (one sink block + one local block) cannot see key 300 from row 1000; the question
    rows at the end look for it. With the dense tail their output is dense attention's."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    B, Hq, Hkv, n, D = 1, 4, 2, 1024, 64
    q, k, v = _qkv(B, Hq, Hkv, n, D, seed=7)
    q, k, v = q * 0.3, k * 0.3, v
    needle = k[:, :, 300].clone()
    k[:, :, 300] = needle * 8
    q[:, :, n - 20:] = needle.repeat_interleave(Hq // Hkv, dim=1)[:, :, None] * 2
    q, k, v = (t.to(device, dtype) for t in (q, k, v))
    plan = LayerPlan.uniform("a_shape", Hq, n_init=64, n_local=64)
    cfg = runtime.SiteConfig("tail-test", 0, plan, min_len=1)
    ref = _dense(q, k, v)
    without = runtime.sparse_call(cfg, plan, q, k, v, None, tail_rows=0).float()
    with_tail = runtime.sparse_call(cfg, plan, q, k, v, None, tail_rows=64).float()
    err = lambda o: ((o[:, :, -20:] - ref[:, :, -20:]).norm() / ref[:, :, -20:].norm()).item()
    assert err(without) > 0.5                       # the pattern misses the needle
    assert err(with_tail) < (1e-5 if dtype == torch.float32 else 2e-2)
    torch.testing.assert_close(with_tail[:, :, :n - 64], without[:, :, :n - 64])   # rows before: as sparse


def test_dense_tail_option_is_checked():
    assert Options.from_dict({}).dense_tail == 64
    assert Options.from_dict({"dense_tail": 0}).dense_tail == 0
    for bad in (-1, 1.5, True, "64"):
        with pytest.raises(OptionError, match="dense_tail"):
            Options.from_dict({"dense_tail": bad})
