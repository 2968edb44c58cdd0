"""GPU time of each stage of SampleAttention's index build.

    python benchmarks/sa_build.py                                  # SmolLM2's shape, 32K and 128K
    python benchmarks/sa_build.py --heads 32 --kv-heads 8 --head-dim 128 --lengths 131072

One group of every head (bf16, batch 1) at the pattern's defaults, on ``benchmarks/patterns.py``'s
structured and random inputs. Stages, each timed as a CUDA graph replay of the build up to it
(``vs_build.cuda_graph_us``), so a stage's time is the difference to the row before: ``scores``
(the sampled rows' statistics and the column sums, ``column_scores``), ``+select`` (the fewest
columns reaching alpha, at most the cap: ``filter_columns``), ``+index`` (the window blocks and
the columns before each window). ``columns`` is the mean number selected per head against the
cap. Results: a printed table and JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patterns import make_inputs  # noqa: E402  (benchmarks/patterns.py)
from vs_build import cuda_graph_us  # noqa: E402  (benchmarks/vs_build.py)

from mcompile.cli_types import ints  # noqa: E402
from mcompile.kernels.patterns import sample_attention as SA  # noqa: E402


def measure(n: int, heads: int, kv_heads: int, d: int, kind: str, *, device: str = "cuda",
            bench=cuda_graph_us) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, _ = make_inputs(n, heads, kv_heads, d, dtype, torch.device(device), kind)
    p = SA.validate(None)
    cap = SA.column_cap(n, p)

    def scores():
        return SA.column_scores(q, k, p)

    def select():
        return SA.filter_columns(*scores(), p["alpha"], cap)

    def build():
        return SA.build(q, k, p)

    build()                                 # compile every kernel outside the timing
    times = {name: bench(fn) for name, fn in (("scores", scores), ("+select", select), ("+index", build))}
    count, _ = select()
    return {"n": n, "inputs": kind, "us": times, "columns": count.float().mean().item(), "cap": cap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=ints, default="32768,131072")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/sa_build.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the build's stages are timed on a CUDA GPU")
    rows = [measure(n, args.heads, args.kv_heads, args.head_dim, kind)
            for n in args.lengths for kind in ("structured", "random")]
    print(f"{'N':>8} {'inputs':<11} {'scores':>9} {'select':>9} {'index':>9} {'total':>9}  columns / cap")
    for r in rows:
        t = r["us"]
        print(f"{r['n']:>8} {r['inputs']:<11} {t['scores']:>7.1f}us {t['+select'] - t['scores']:>7.1f}us "
              f"{t['+index'] - t['+select']:>7.1f}us {t['+index']:>7.1f}us  {r['columns']:.0f} / {r['cap']}")
    import triton
    result = {"benchmark": "sa_build", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.date.today().isoformat(),
              "command": " ".join(["benchmarks/sa_build.py", *(argv if argv is not None else sys.argv[1:])]),
              "shape": {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": "bfloat16"},
              "params": SA.validate(None), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
