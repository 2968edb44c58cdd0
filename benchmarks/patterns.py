"""Index-building time of each sparse pattern, as a fraction of the sparse kernel's time.

LLaMA-3-8B attention shape by default (32 query heads, 8 KV heads, head dim 128, bf16, batch 1),
every head of the layer on the same pattern (``LayerPlan.uniform``), lengths 32K to 1M::

    python benchmarks/patterns.py                       # CUDA, 32K..1M, all patterns
    python benchmarks/patterns.py --device cpu --lengths 2048 --heads 4 --kv-heads 2
    python benchmarks/patterns.py --patterns vertical_slash,block_sparse --lengths 131072

For each (length, pattern) ``main`` records the build and kernel times, their ratio, and what
the index lists; inputs come from ``make_inputs``. On CPU the kernel is the custom op's
pure-torch reference (a smoke test of the script, not a number to quote). Results: a printed
table and JSON in ``benchmarks/results/patterns_<device>.json`` with device, versions and date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

from mcompile.cli_types import ints
from mcompile.cli_types import names as name_list
from mcompile.kernels.index import BlockRanges
from mcompile.kernels.patterns import PATTERNS, build_part, index_cost, index_parts
from mcompile.plan import LayerPlan
from timing import time_ms  # benchmarks/timing.py

_KERNEL_ERR = None


def _kernel_for(device):
    """The sparse kernel: on CUDA the Triton launcher
    ``mcompile.kernels.sparse_attention.sparse_attention``; elsewhere the custom op
    ``mcompile.kernels.ops.sparse_attention`` (its pure-torch reference on CPU; the Triton
    launcher would run interpreted). None when neither can be imported."""
    global _KERNEL_ERR
    try:
        if device.type == "cuda":
            from mcompile.kernels.sparse_attention import sparse_attention
        else:
            from mcompile.kernels.ops import sparse_attention
        return sparse_attention
    except Exception as e:  # e.g. triton is missing: time the index builders alone
        _KERNEL_ERR = repr(e)
        return None

try:
    from mcompile.kernels.index import index_pairs, dense_causal_pairs
except Exception:
    index_pairs = dense_causal_pairs = None

DEFAULT_PARAMS = {name: dict(pattern.defaults) for name, pattern in PATTERNS.items()}
DEFAULT_LENGTHS = [32768, 65536, 131072, 262144, 524288, 1048576]


def make_inputs(n, heads, kv_heads, d, dtype, device, kind, seed=0):
    """q, k, v for one layer. ``structured`` (the default of ``--inputs``) has what real heads
    have, an attention sink at key 0 and locality (a content vector that drifts slowly along
    the sequence), so the online patterns find structure; ``random`` is i.i.d. normal (the
    worst case for the adaptive patterns: SampleAttention then fills its column cap)."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape_q, shape_k = (1, heads, n, d), (1, kv_heads, n, d)
    q = torch.randn(shape_q, generator=g, device=device, dtype=torch.float32)
    k = torch.randn(shape_k, generator=g, device=device, dtype=torch.float32)
    v = torch.randn(shape_k, generator=g, device=device, dtype=torch.float32).to(dtype)
    if kind == "structured":
        # locality: a content vector interpolated between random anchors every 256 tokens
        anchors = torch.randn(1, d, n // 256 + 2, generator=g, device=device)
        c = torch.nn.functional.interpolate(anchors, size=n, mode="linear", align_corners=True)
        c = c.transpose(1, 2).unsqueeze(1)                                   # (1, 1, n, d)
        q = 0.5 * q + 1.5 * c
        k = 0.5 * k + 1.5 * c
        # a sink: every query likes key 0
        u = torch.randn(d, generator=g, device=device)
        u = u / u.norm() * math.sqrt(6.0) * d ** 0.25
        q = q + u
        k[:, :, 0] += u
    return q.to(dtype), k.to(dtype), v


def timer(device):
    if device.type == "cuda":
        def run(fn):
            return time_ms(fn, cuda=True) / 1e3
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
    return run


def measure(fn, device, warmup, reps, budget_s):
    """Median time of ``fn`` after warm-up (CUDA events on CUDA, ``time.perf_counter`` on CPU)."""
    run = timer(device)
    first = None
    for _ in range(max(1, warmup)):
        first = run(fn)
    reps = max(1, min(reps, int(budget_s / max(first, 1e-6))))
    times = [run(fn) for _ in range(reps)]
    return statistics.median(times), reps


def fmt_t(t):
    if t is None:
        return "-"
    return f"{t * 1e3:.2f} ms" if t < 10 else f"{t:.1f} s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lengths", type=ints, default=",".join(map(str, DEFAULT_LENGTHS)))
    ap.add_argument("--patterns", type=name_list, default=",".join(DEFAULT_PARAMS))
    ap.add_argument("--params", default="{}", help='JSON {pattern: {param: value}} overriding defaults')
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32 (CPU default)")
    ap.add_argument("--inputs", choices=("structured", "random"), default="structured")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=20.0, help="max seconds of repetitions per measurement")
    ap.add_argument("--dense-max", type=int, default=262144,
                    help="time dense SDPA, and the kernel on the dense pattern, up to this length")
    ap.add_argument("--no-kernel", action="store_true", help="time index building only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    lengths = args.lengths
    names = args.patterns
    overrides = json.loads(args.params)
    for nm in names:
        if nm not in PATTERNS:
            sys.exit(f"unknown pattern {nm!r}; registered: {sorted(PATTERNS)}")
    kernel = None if args.no_kernel else _kernel_for(device)
    if kernel is None and not args.no_kernel:
        print(f"note: sparse kernel unavailable ({_KERNEL_ERR}); timing index building only")

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    results = {
        "benchmark": "patterns: index-building time vs sparse kernel time",
        "device": dev_name, "device_type": device.type,
        "torch": torch.__version__, "triton": _triton_version(), "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": {"batch": 1, "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                  "dtype": str(dtype).replace("torch.", "")},
        "inputs": args.inputs, "warmup": args.warmup, "reps": args.reps, "rows": [],
    }
    header = f"{'N':>8} {'pattern':<17} {'build':>10} {'kernel':>10} {'build/kernel':>12} " \
             f"{'blocks/qblk':>11} {'cols/qblk':>9} {'density':>8} {'index MB':>9}"
    print(header)
    print("-" * len(header))
    # Per (length, pattern): the median time of the index the runtime builds (``build_part`` over
    # the layer's one part: a static pattern's BlockRanges, kept, builds nothing) and of the
    # sparse kernel with that index, their ratio (the target: <= 10% at 128K), the blocks and
    # columns the index lists, the fraction of causal (row, key) pairs computed, and the
    # index's memory.
    # Dense causal SDPA is timed for reference up to ``--dense-max``.
    for n in lengths:
        q, k, v = make_inputs(n, args.heads, args.kv_heads, args.head_dim, dtype, device, args.inputs)
        dense_t = None
        if n <= args.dense_max:
            try:
                dense_t, _ = measure(lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True), device, args.warmup, args.reps, args.budget_s)
            except Exception as e:  # noqa: BLE001
                dense_t = None
                print(f"dense SDPA failed at {n}: {e!r}")
        for nm in names:
            params = {**DEFAULT_PARAMS.get(nm, {}), **overrides.get(nm, {})}
            plan = LayerPlan.uniform(nm, args.heads, **params)
            row = {"n": n, "pattern": nm, "params": params, "dense_sdpa_s": dense_t}
            try:
                (heads,) = index_parts(plan, n)           # every head on one pattern: one part
                build_t, build_reps = measure(lambda: build_part(q, k, plan, heads), device,
                                              args.warmup, args.reps, args.budget_s)
                index = build_part(q, k, plan, heads)
                ranges = isinstance(index, BlockRanges)
                listed = index.to_index().expand(1, args.heads) if ranges else index
                row.update(build_s=build_t, build_reps=build_reps)
                nqb = listed.num_q_blocks
                blocks, cols = index_cost(listed)
                row.update(blocks_per_qblock=blocks / (args.heads * nqb), columns_per_qblock=cols / (args.heads * nqb),
                           max_blocks=listed.max_blocks, max_columns=listed.max_columns,
                           index_bytes=index.spans.nbytes if ranges else index.memory_bytes())
                if index_pairs is not None:
                    row["density"] = index_pairs(listed, n) / (args.heads * dense_causal_pairs(n))
                run_index = index if device.type == "cuda" else listed     # the CPU op takes lists
                if kernel is not None and not (nm == "dense" and n > args.dense_max):
                    kt, kreps = measure(lambda: kernel(q, k, v, run_index), device, args.warmup, args.reps,
                                        args.budget_s)
                    row.update(kernel_s=kt, kernel_reps=kreps, build_over_kernel=build_t / kt)
                del index, listed, run_index
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"OOM: {str(e).splitlines()[0]}"
            except Exception as e:  # noqa: BLE001 - record and continue
                row["error"] = repr(e)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results["rows"].append(row)
            if "error" in row:
                print(f"{n:>8} {nm:<17} error: {row['error'][:80]}")
                continue
            ratio = row.get("build_over_kernel")
            ratio_s = f"{ratio:.1%}" if ratio is not None else "-"
            dens_s = f"{row['density']:.1%}" if "density" in row else "-"
            print(f"{n:>8} {nm:<17} {fmt_t(row['build_s']):>10} {fmt_t(row.get('kernel_s')):>10} "
                  f"{ratio_s:>12} {row['blocks_per_qblock']:>11.1f} {row['columns_per_qblock']:>9.1f} "
                  f"{dens_s:>8} {row['index_bytes'] / 2**20:>9.1f}")
        if dense_t is not None:
            print(f"{n:>8} {'(dense SDPA)':<17} {'':>10} {fmt_t(dense_t):>10}")
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"patterns_{_slug(dev_name if device.type == 'cuda' else 'cpu')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")
    return results


def _slug(s):
    return "".join(ch.lower() if ch.isalnum() else "_" for ch in s).strip("_")


def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()
