"""Measure the cost model the runtime uses to choose dense or sparse (``kernels/cost_model.py``).

    python benchmarks/cost_model.py                      # GPU: writes kernels/cost_model.json
    python benchmarks/cost_model.py --head-dims 64 --lengths 4096,8192 --out /tmp/cm.json

For each head dim and length, on one layer of ``--heads`` query / ``--kv-heads`` KV heads (bf16,
batch 1, ``triton.testing.do_bench`` medians):
  * ``dense_us_per_block``: SDPA with ``is_causal=True`` (the dense path), per head and causal
    64 x 64 block;
  * ``kernel_us_per_block``: the sparse kernel over the full causal index, per head and block;
  * ``kernel_us_per_column``: the sparse kernel over an index of one diagonal block plus
    ``--columns`` columns per query block, less its block part, per column;
  * ``build`` per pattern (defaults; sliding_window and a_shape 4096 keys): the index builder
    for a group of one head and of all heads: ``group_us`` (what a group costs whatever its
    size: launches and host work when they dominate) and ``head_us`` (each further head).
do_bench times back-to-back calls, so a builder whose host work outruns the GPU is timed at
its host rate: what it costs inside a prefill. Inputs are ``benchmarks/patterns.py``'s
structured q/k (a sink and locality).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patterns import make_inputs  # noqa: E402  (benchmarks/patterns.py)

from mcompile.kernels.cost_model import DATA, causal_blocks  # noqa: E402
from mcompile.kernels.index import SparseIndex, dense_causal_index, num_q_blocks  # noqa: E402
from mcompile.kernels.patterns import PATTERNS, build_head_group  # noqa: E402

BUILD_PARAMS = {"sliding_window": {"window": 4096}, "a_shape": {"n_init": 128, "n_local": 4096}}


def bench_us(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3


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
    from mcompile.kernels.sparse_attention import sparse_attention

    q, k, v = make_inputs(n, heads, kv_heads, head_dim, torch.bfloat16, torch.device("cuda"), "structured")
    blocks = heads * causal_blocks(n)
    dense = bench_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    full = dense_causal_index(1, heads, n, device=q.device)
    kernel = bench_us(lambda: sparse_attention(q, k, v, full))
    cix = column_index(n, heads, columns, q.device)
    with_columns = bench_us(lambda: sparse_attention(q, k, v, cix))
    diag = SparseIndex(cix.block_count, cix.block_offset, torch.zeros_like(cix.column_count),
                       cix.column_index, 64, 64)
    diag_only = bench_us(lambda: sparse_attention(q, k, v, diag))
    n_columns = int(cix.column_count.sum())
    row = {"dense_us_per_block": dense / blocks, "kernel_us_per_block": kernel / blocks,
           "kernel_us_per_column": max(with_columns - diag_only, 0.0) / max(n_columns, 1), "build": {}}
    for name in sorted(PATTERNS):
        if name == "dense":
            continue
        params = BUILD_PARAMS.get(name, {})
        one = bench_us(lambda: build_head_group(q, k, name, params, [0]))
        every = bench_us(lambda: build_head_group(q, k, name, params, list(range(heads))))
        per_head = max(every - one, 0.0) / (heads - 1)
        row["build"][name] = {"group_us": max(one - per_head, 0.0), "head_us": per_head}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--columns", type=int, default=1024)
    parser.add_argument("--out", default=str(DATA))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the cost model is measured on a CUDA GPU")
    lengths = sorted(int(x) for x in args.lengths.split(","))
    head_dims = [int(x) for x in args.head_dims.split(",")]
    tables = {}
    for d in head_dims:
        rows = []
        for n in lengths:
            rows.append(measure(d, n, args.heads, args.kv_heads, args.columns))
            r = rows[-1]
            print(f"d {d} n {n}: dense {r['dense_us_per_block'] * 1e3:.2f} ns/block, kernel "
                  f"{r['kernel_us_per_block'] * 1e3:.2f} ns/block, {r['kernel_us_per_column'] * 1e3:.3f} ns/column; "
                  + ", ".join(f"{p} {b['group_us']:.0f}+{b['head_us']:.0f}/head us" for p, b in r["build"].items()),
                  flush=True)
        tables[str(d)] = {
            "n": lengths, "dense_fixed_us": 0.0, "kernel_fixed_us": 0.0,
            **{key: [r[key] for r in rows] for key in ("dense_us_per_block", "kernel_us_per_block",
                                                        "kernel_us_per_column")},
            "build": {p: {"group_us": [r["build"][p]["group_us"] for r in rows],
                          "head_us": [r["build"][p]["head_us"] for r in rows]} for p in rows[0]["build"]},
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
