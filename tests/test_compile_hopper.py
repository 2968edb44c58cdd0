"""The Triton kernels compile for Hopper (sm_90), checked on the CPU.

Triton's interpreter runs a kernel's Python, not its compiler: a kernel the CPU tests run
interpreted can still fail to compile (a loop that rebinds a scalar's name to a tensor did).
Each case compiles one variant the runtime launches down to PTX and a cubin, with no GPU."""
from __future__ import annotations

import inspect

import pytest

triton = pytest.importorskip("triton")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:     # a Triton whose ahead-of-time entry points moved
    pytest.skip("this Triton has no triton.compiler.ASTSource / GPUTarget", allow_module_level=True)

from mcompile.kernels import sparse_attention as SPARSE  # noqa: E402
from mcompile.kernels.patterns import _triton_sa  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)


def _compile(kernel, types: dict, constexprs: dict, **options):
    """Every parameter typed: ``types`` by name (pointers, floats), constexprs as given, the
    rest 32-bit ints (strides, sizes)."""
    names = inspect.signature(kernel.fn).parameters
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=HOPPER, options=options)
    assert compiled.asm["ptx"] and compiled.asm["cubin"]


ATTENTION_TYPES = {**{n: "*bf16" for n in ("Q", "K", "V", "Out")}, "Lse": "*fp32", "qk_scale": "fp32",
                   **{n: "*i32" for n in ("BlockCount", "BlockOffset", "ColumnCount", "ColumnIndex", "Spans",
                                          "Window", "Heads")}}


@pytest.mark.parametrize("ranges,heads,window,head_dim,tma", [
    (False, False, False, 64, False),       # an online pattern's index over every head
    (False, True, True, 64, False),         # over some heads, with windows
    (True, True, True, 64, False),          # a layer's static heads: BlockRanges
    (True, True, False, 128, True),         # BlockRanges through TMA descriptors
])
def test_sparse_attention_kernel_compiles(ranges, heads, window, head_dim, tma):
    types = dict(ATTENTION_TYPES)
    constexprs = dict(HEAD_DIM=head_dim, INDEX_BLOCK_M=64, BLOCK_M=64, INDEX_BLOCK_N=64, BLOCK_N=64, NUM_DIAG=2,
                      RETURN_LSE=False, HAS_WINDOW=window, HAS_HEADS=heads, RANGES=ranges, USE_TMA=tma,
                      WARP_SPEC=False, DOT_PRECISION="tf32", DOT_FP32=False)
    if tma:
        types.update(K_desc=f"tensordesc<bf16[1,1,64,{head_dim}]>", V_desc=f"tensordesc<bf16[1,1,64,{head_dim}]>")
    else:
        constexprs.update(K_desc=None, V_desc=None)
    _compile(SPARSE._sparse_attn_fwd, types, constexprs, num_warps=4, num_stages=3)


def test_sample_attention_selection_compiles():
    types = {**{n: "*fp32" for n in ("COL", "WIN", "TOT", "HEAD_ALPHA", "VALS")},
             **{n: "*i32" for n in ("HEAD_CAP", "COLS", "COUNT")}}
    _compile(_triton_sa._sa_select, types, {"CHUNK": _triton_sa.SELECT_CHUNK, "CUT_CHUNK": _triton_sa.CUT_CHUNK},
             num_warps=_triton_sa.SELECT_WARPS, enable_fp_fusion=False)


def test_vertical_slash_sums_compile():
    from mcompile.kernels.patterns import _triton_vs
    types = {"Q": "*bf16", "K": "*bf16", "QH": "*i32", "KVH": "*i32", "qk_scale": "fp32",
             **{n: "*fp32" for n in ("MOUT", "LOUT", "VERT", "PART")}}
    _compile(_triton_vs._vs_sums, types, dict(BLOCK_M=64, BLOCK_N=64, HEAD_DIM=64, TILES=_triton_vs.SUMS_TILES,
                                              SPLITS=_triton_vs.ROW_SPLITS, ROUND_SCORES=True, DOT_IEEE=False),
             num_warps=4)
