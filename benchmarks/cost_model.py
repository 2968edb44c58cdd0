"""Measure the cost model the runtime uses to choose dense or sparse (``kernels/cost_model.py``).

    python benchmarks/cost_model.py                      # GPU: writes kernels/cost_model.json
    python benchmarks/cost_model.py --head-dims 64 --lengths 4096,8192 --out /tmp/cm.json

For each head dim and length, on one layer of ``--heads`` query / ``--kv-heads`` KV heads (bf16,
batch 1, medians), ``measure`` times dense SDPA, the sparse kernel per block and per column,
and each pattern's index builder, as GPU time (``gpu_us``) and host time (``host_us``).
Inputs are ``benchmarks/patterns.py``'s structured q/k (a sink and locality).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patterns import make_inputs  # noqa: E402  (benchmarks/patterns.py)

from mcompile.cli_types import ints  # noqa: E402
from mcompile.kernels.cost_model import DATA  # noqa: E402
from mcompile.kernels.index import SparseIndex, causal_blocks, dense_causal_index, num_q_blocks  # noqa: E402
from mcompile.kernels.patterns import PATTERNS, build_head_group  # noqa: E402

# Index builders run with their defaults except these (sliding_window and a_shape: 4096 keys).
BUILD_PARAMS = {"sliding_window": {"window": 4096}, "a_shape": {"n_init": 128, "n_local": 4096}}


def gpu_us(fn) -> float:
    """GPU time of ``fn`` with no host work in it: replayed as a CUDA graph
    (``triton.testing.do_bench_cudagraph``), or, where a capture fails, the kernels' own
    durations under torch.profiler."""
    import triton.testing
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median") * 1e3
    except Exception as err:  # noqa: BLE001 (a capture can fail in many ways; the fallback is exact)
        print(f"  (CUDA graph capture failed: {type(err).__name__}; timing kernels with the profiler)")
    repeats = 5
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages()) / repeats


def host_us(fn, repeats: int = 15) -> float:
    """Host time of one call issued to an idle GPU (``perf_counter``, median of ``repeats``)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def column_index(n: int, heads: int, columns: int, device) -> SparseIndex:
    """One diagonal block per query block plus up to ``columns`` columns before it."""
    nqb = num_q_blocks(n, 64)
    start = torch.arange(nqb, device=device, dtype=torch.int32) * 64
    bc = torch.ones(1, heads, nqb, dtype=torch.int32, device=device)
    bo = start.view(1, 1, nqb, 1).expand(1, heads, nqb, 1).contiguous()
    cols = torch.arange(columns, device=device, dtype=torch.int32) * 7          # spread, sorted, distinct
    ci = cols.view(1, 1, 1, columns).expand(1, heads, nqb, columns).contiguous()
    cc = torch.clamp((start.view(1, 1, nqb) + 6) // 7, max=columns).expand(1, heads, nqb).contiguous()
    return SparseIndex(bc, bo, cc.to(torch.int32), ci, 64, 64)


def measure(head_dim: int, n: int, heads: int, kv_heads: int, columns: int) -> dict:
    """One row of the cost model:
      * ``dense_us_per_block``: SDPA with ``is_causal=True`` (the dense path), per head and causal
        64 x 64 block; ``dense_host_us``: its launch on the host;
      * ``kernel_us_per_block``: the sparse kernel over the full causal index, per head and block;
      * ``kernel_us_per_column``: the sparse kernel over an index of one diagonal block plus
        ``columns`` columns per query block, less its block part, per column;
        ``kernel_host_us``: one launch on the host;
      * ``build`` per pattern (``BUILD_PARAMS``): the index builder for a group of one head and
        of all heads, as GPU time (``group_gpu_us`` whatever the group's size, ``head_gpu_us``
        per further head) and host time (``group_host_us``, ``head_host_us``)."""
    from mcompile.kernels.sparse_attention import sparse_attention

    q, k, v = make_inputs(n, heads, kv_heads, head_dim, torch.bfloat16, torch.device("cuda"), "structured")
    blocks = heads * causal_blocks(n)
    dense = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    full = dense_causal_index(1, heads, n, device=q.device)
    cix = column_index(n, heads, columns, q.device)
    diag = SparseIndex(cix.block_count, cix.block_offset, torch.zeros_like(cix.column_count),
                       cix.column_index, 64, 64)
    n_columns = int(cix.column_count.sum())
    with_columns = gpu_us(lambda: sparse_attention(q, k, v, cix))
    row = {"dense_us_per_block": gpu_us(dense) / blocks, "dense_host_us": host_us(dense),
           "kernel_us_per_block": gpu_us(lambda: sparse_attention(q, k, v, full)) / blocks,
           "kernel_us_per_column": max(with_columns - gpu_us(lambda: sparse_attention(q, k, v, diag)), 0.0)
           / max(n_columns, 1),
           "kernel_host_us": host_us(lambda: sparse_attention(q, k, v, full)), "build": {}}
    for name in sorted(PATTERNS):
        if name == "dense":
            continue
        params = BUILD_PARAMS.get(name, {})
        one = lambda: build_head_group(q, k, name, params, [0])                     # noqa: E731
        every = lambda: build_head_group(q, k, name, params, list(range(heads)))    # noqa: E731
        one(), every()                    # compile the Triton kernels outside any timing
        entry = {}
        for kind, timer in (("gpu", gpu_us), ("host", host_us)):
            t1, th = timer(one), timer(every)
            per_head = max(th - t1, 0.0) / (heads - 1)
            entry[f"group_{kind}_us"], entry[f"head_{kind}_us"] = max(t1 - per_head, 0.0), per_head
        row["build"][name] = entry
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dims", type=ints, default="64,128,256")
    parser.add_argument("--lengths", type=ints, default="4096,8192,32768,131072")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--columns", type=int, default=1024)
    parser.add_argument("--out", default=str(DATA))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the cost model is measured on a CUDA GPU")
    lengths = sorted(args.lengths)
    head_dims = args.head_dims
    tables = {}
    for d in head_dims:
        rows = []
        for n in lengths:
            rows.append(measure(d, n, args.heads, args.kv_heads, args.columns))
            r = rows[-1]
            print(f"d {d} n {n}: dense {r['dense_us_per_block'] * 1e3:.2f} ns/block, kernel "
                  f"{r['kernel_us_per_block'] * 1e3:.2f} ns/block, {r['kernel_us_per_column'] * 1e3:.3f} ns/column; "
                  "build GPU+host us (group + per head): "
                  + ", ".join(f"{p} {b['group_gpu_us']:.0f}+{b['head_gpu_us']:.0f} / {b['group_host_us']:.0f}"
                              f"+{b['head_host_us']:.0f}" for p, b in r["build"].items()), flush=True)
        per_n = ("dense_us_per_block", "kernel_us_per_block", "kernel_us_per_column")
        build_keys = ("group_gpu_us", "head_gpu_us", "group_host_us", "head_host_us")
        tables[str(d)] = {
            "n": lengths, **{key: [r[key] for r in rows] for key in per_n},
            "dense_host_us": statistics.median(r["dense_host_us"] for r in rows),
            "kernel_host_us": statistics.median(r["kernel_host_us"] for r in rows),
            "build": {p: {key: [r["build"][p][key] for r in rows] for key in build_keys} for p in rows[0]["build"]},
        }
    import triton
    result = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join(["benchmarks/cost_model.py", *(argv or sys.argv[1:])]),
              "shape": {"heads": args.heads, "kv_heads": args.kv_heads, "dtype": "bfloat16", "batch": 1},
              "head_dims": tables}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
