"""The Triton kernels compile for Hopper (sm_90), checked on the CPU.

Triton's interpreter runs a kernel's Python, not its compiler: a kernel the CPU tests run
interpreted can still fail to compile (a loop that rebinds a scalar's name to a tensor did).
Every kernel one sparse call launches, with the argument types and constexprs it was launched
with under the interpreter (fresh_checks.record_kernel_launches), is compiled down to PTX and a
cubin here, with no GPU; so is the TMA variant, which only a GPU launches."""
from __future__ import annotations

import importlib
import inspect
import json
import os

import pytest

triton = pytest.importorskip("triton")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:     # a Triton whose ahead-of-time entry points moved
    pytest.skip("this Triton has no triton.compiler.ASTSource / GPUTarget", allow_module_level=True)

from fresh_checks import run_fresh  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
# what the interpreter launches with and the GPU does not: bf16 dots in fp32, IEEE precision
ON_THE_GPU = {"DOT_FP32": False, "DOT_PRECISION": "tf32", "DOT_IEEE": False}


def _compile(kernel, signature: dict, constexprs: dict, **options):
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=HOPPER, options=options)
    assert compiled.asm["ptx"] and compiled.asm["cubin"]


def test_every_kernel_of_a_sparse_call_compiles(tmp_path):
    out = tmp_path / "launches.json"
    run_fresh("record_kernel_launches", env=dict(os.environ, TRITON_INTERPRET="1", MCOMPILE_PATTERNS_TRITON="1",
                                                 MCOMPILE_LAUNCHES_OUT=str(out)), timeout=600)
    launches = json.loads(out.read_text())
    names = {launch["name"] for launch in launches}
    assert {"_sparse_attn_fwd", "_vs_sums", "_vs_columns", "_bs_select", "_sa_select", "_tail_partial"} <= names
    assert {launch["constexprs"]["RANGES"] for launch in launches if launch["name"] == "_sparse_attn_fwd"} == {True, False}
    for launch in launches:
        kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
        constexprs = {k: ON_THE_GPU.get(k, v) for k, v in launch["constexprs"].items()}
        try:
            _compile(kernel, launch["signature"], constexprs, **launch["options"])
        except Exception as e:
            raise AssertionError(f"{launch['name']} {constexprs}: {e}") from e


def test_block_ranges_through_tma_compile():
    from mcompile.kernels import sparse_attention as SPARSE
    pointers = {**{n: "*bf16" for n in ("Q", "K", "V", "Out")}, "Lse": "*fp32", "qk_scale": "fp32",
                **{n: "*i32" for n in ("BlockCount", "BlockOffset", "ColumnCount", "ColumnIndex", "Spans", "Window",
                                       "Heads")},
                "K_desc": "tensordesc<bf16[1,1,64,128]>", "V_desc": "tensordesc<bf16[1,1,64,128]>"}
    constexprs = dict(HEAD_DIM=128, INDEX_BLOCK_M=64, BLOCK_M=64, INDEX_BLOCK_N=64, BLOCK_N=64, NUM_DIAG=2,
                      RETURN_LSE=False, HAS_WINDOW=False, HAS_HEADS=True, RANGES=True, USE_TMA=True, WARP_SPEC=False,
                      DOT_PRECISION="tf32", DOT_FP32=False)
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32")
                 for n in inspect.signature(SPARSE._sparse_attn_fwd.fn).parameters}
    _compile(SPARSE._sparse_attn_fwd, signature, constexprs, num_warps=4, num_stages=3)
