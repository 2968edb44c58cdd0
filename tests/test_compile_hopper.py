"""The Triton kernels compile for Hopper (sm_90), checked on the CPU.

Triton's interpreter runs a kernel's Python, not its compiler: a kernel the CPU tests run
interpreted can still fail to compile (a loop that rebinds a scalar's name to a tensor did).
Every kernel one sparse call launches, with the argument types and constexprs it was launched
with under the interpreter (fresh_checks.record_kernel_launches), is compiled down to PTX and a
cubin, with no GPU; so is the TMA variant, which only a GPU launches
(fresh_checks.compile_for_hopper). Both run in fresh interpreters: the interpreter patches
``triton.language`` in the processes it runs in, and the compiler must not see that."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")

from fresh_checks import run_fresh  # noqa: E402


def test_every_kernel_of_a_sparse_call_compiles(tmp_path):
    launches = str(tmp_path / "launches.json")
    run_fresh("record_kernel_launches", env=dict(os.environ, TRITON_INTERPRET="1", MCOMPILE_PATTERNS_TRITON="1",
                                                 MCOMPILE_LAUNCHES_OUT=launches), timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MCOMPILE_PATTERNS_TRITON")}
    run_fresh("compile_for_hopper", env=dict(env, MCOMPILE_LAUNCHES_OUT=launches), timeout=600)
