"""GPU time of the online builders' score passes under each tiling, against the shipped one:
the vertical-slash row statistics' key splits (``_triton_vs.ROW_SPLITS``) and the key tiles one
``_vs_sums`` program scores (``SUMS_TILES``); SampleAttention's row-statistics and column-sum
tiles and warps (``sample_attention.CONFIG``). How the shipped tilings were chosen; rerun it on
another GPU before changing them.

    python benchmarks/score_tilings.py                          # SmolLM2's and LLaMA-3-8B's shapes, 32K and 128K
    python benchmarks/score_tilings.py --shapes 9/3/64 --lengths 32768

Each tiling is timed as a CUDA graph replay (``triton.testing.do_bench_cudagraph``, median) of
``_triton_vs._score_passes`` or ``sample_attention.column_scores`` on ``benchmarks/patterns.py``'s
structured inputs (bf16, batch 1), and checked against the shipped tiling's scores (``rel_err``:
the largest difference relative to the output's largest magnitude, float rounding only). The module constants are set for the
timing and put back. SampleAttention's tilings are timed at head dim <= 128 (at 256 the builder
overrides them to fit shared memory).

Results: a printed table and JSON.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_stages import cuda_graph_us  # noqa: E402  (benchmarks/build_stages.py)
from patterns import make_inputs  # noqa: E402  (benchmarks/patterns.py)

from mcompile.cli_types import ints  # noqa: E402
from mcompile.kernels.patterns import sample_attention as SA  # noqa: E402
from mcompile.kernels.patterns import vertical_slash as VS  # noqa: E402

VS_ROW_SPLITS = (8, 16, 32, 64)
VS_SUMS_TILES = (4, 8, 16)
# (row statistics BLOCK_M, BLOCK_N, warps), (column sums BLOCK_M, BLOCK_N, warps)
SA_TILINGS = (((64, 64, 4), (64, 128, 4)), ((64, 128, 4), (64, 128, 4)), ((64, 64, 8), (64, 128, 8)),
              ((128, 64, 8), (64, 128, 4)), ((64, 128, 4), (128, 128, 8)), ((64, 128, 4), (64, 64, 4)),
              ((64, 128, 4), (128, 64, 4)), ((128, 128, 8), (128, 128, 8)))


def _rel_err(got, want) -> float:
    """The largest difference of any output, relative to that output's largest magnitude."""
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
               for a, b in zip(got, want) if isinstance(a, torch.Tensor))


def vertical_slash_tilings(q, k, *, bench=cuda_graph_us) -> list[dict]:
    """Every (row splits, sums tiles) of the vertical-slash score passes, the shipped one first."""
    from mcompile.kernels.patterns import _triton_vs as TV
    hm, ql, scale = VS._last_queries(q, k, None, None)
    kv_heads = [h // hm.group for h in hm.heads]
    shipped = (TV.ROW_SPLITS, TV.SUMS_TILES)
    tilings = [shipped] + [t for t in itertools.product(VS_ROW_SPLITS, VS_SUMS_TILES) if t != shipped]
    rows, want = [], None
    try:
        for row_splits, sums_tiles in tilings:
            TV.ROW_SPLITS, TV.SUMS_TILES = row_splits, sums_tiles

            def passes():
                return TV._score_passes(ql, k, hm.heads, kv_heads, scale, 64)
            got = passes()
            want = got if want is None else want
            rows.append({"pattern": VS.NAME, "tiling": {"row_splits": row_splits, "sums_tiles": sums_tiles},
                         "us": bench(passes), "rel_err": _rel_err(got, want)})
    finally:
        TV.ROW_SPLITS, TV.SUMS_TILES = shipped
    return rows


def sample_attention_tilings(q, k, *, bench=cuda_graph_us) -> list[dict]:
    """Every row-statistics and column-sums tiling of SampleAttention's column scores at its
    defaults, the shipped one first."""
    p = SA.validate(None)
    shipped = {name: dict(c) for name, c in SA.CONFIG.items()}

    def key(c):
        return c["BLOCK_M"], c["BLOCK_N"], c["num_warps"]
    tilings = [(key(shipped["row_stats"]), key(shipped["col_sums"]))]
    tilings += [t for t in SA_TILINGS if t != tilings[0]]
    rows, want = [], None
    try:
        for row_stats, col_sums in tilings:
            for name, (bm, bn, warps) in (("row_stats", row_stats), ("col_sums", col_sums)):
                SA.CONFIG[name].update(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)

            def scores():
                return SA.column_scores(q, k, p)
            got = scores()
            want = got if want is None else want
            rows.append({"pattern": SA.NAME, "tiling": {"row_stats": list(row_stats), "col_sums": list(col_sums)},
                         "us": bench(scores), "rel_err": _rel_err(got, want)})
    finally:
        for name, c in shipped.items():
            SA.CONFIG[name].clear()
            SA.CONFIG[name].update(c)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=ints, default="32768,131072")
    parser.add_argument("--shapes", default="9/3/64,32/8/128",
                        help="comma list of query heads/KV heads/head dim (default: SmolLM2's, LLaMA-3-8B's)")
    parser.add_argument("--out", default="benchmarks/results/score_tilings.json")
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(x) for x in s.split("/")) for s in args.shapes.split(",")]
        assert all(len(s) == 3 for s in shapes)
    except (ValueError, AssertionError):
        parser.error(f"--shapes: {args.shapes!r}; accepted: a comma list of HEADS/KV_HEADS/HEAD_DIM, e.g. 9/3/64")
    if not torch.cuda.is_available():
        parser.error("the score passes' tilings are timed on a CUDA GPU")
    rows = []
    for (heads, kv_heads, d), n in itertools.product(shapes, args.lengths):
        q, k, _ = make_inputs(n, heads, kv_heads, d, torch.bfloat16, torch.device("cuda"), "structured")
        found = vertical_slash_tilings(q, k) + (sample_attention_tilings(q, k) if d <= 128 else [])
        rows += [{"heads": heads, "kv_heads": kv_heads, "head_dim": d, "n": n, **r} for r in found]
        del q, k
    print(f"{'pattern':<17} {'shape':<9} {'N':>7}  {'tiling':<44} {'us':>9} {'vs shipped':>10} {'rel err':>8}")
    shipped_us = {}
    for r in rows:
        case = (r["pattern"], r["heads"], r["head_dim"], r["n"])
        shipped_us.setdefault(case, r["us"])
        r["vs_shipped"] = r["us"] / shipped_us[case]
        print(f"{r['pattern']:<17} {r['heads']}/{r['kv_heads']}/{r['head_dim']:<5} {r['n']:>7}  "
              f"{json.dumps(r['tiling']):<44} {r['us']:>9.1f} {r['vs_shipped']:>9.2f}x {r['rel_err']:>8.1e}")
    import triton
    result = {"benchmark": "score_tilings", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.date.today().isoformat(),
              "command": " ".join(["benchmarks/score_tilings.py", *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
