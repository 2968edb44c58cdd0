"""GPU time of each stage of the online patterns' index builds: vertical-slash and
SampleAttention.

    python benchmarks/build_stages.py                              # SmolLM2's shape, 32K and 128K
    python benchmarks/build_stages.py --heads 32 --kv-heads 8 --head-dim 128 --lengths 131072

One group of every head (bf16, batch 1), on ``benchmarks/patterns.py``'s structured and random
inputs. Stages, each timed as a CUDA graph replay (``triton.testing.do_bench_cudagraph``,
median) of the build up to it, so a stage's time is the difference to the row before:
``scores``, ``+select``, ``+index``.

* vertical-slash at ``--vertical`` / ``--slash``: the row statistics and the column and
  diagonal sums; the three selection launches; the range merge and the verticals.
  ``candidates`` is, per row and direction, the number of keys sharing the top 8 bits of the
  k-th largest key (the keys ``_vs_select_split``'s last program selects among; mean and max
  over the heads), counted from the scores with torch.
* SampleAttention at its defaults: the sampled rows' statistics and the column sums
  (``column_scores``); the fewest columns reaching alpha, at most the cap
  (``filter_columns``); the window blocks and the columns before each window. ``columns`` is
  the mean number selected per head (random inputs fill the cap).

Results: a printed table and JSON.
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

from mcompile.cli_types import ints  # noqa: E402
from mcompile.kernels.patterns import sample_attention as SA  # noqa: E402
from mcompile.kernels.patterns import vertical_slash as VS  # noqa: E402


def candidates(scores: torch.Tensor, k: int, forced: int) -> torch.Tensor:
    """Per row of ``scores`` (rows, N): how many keys share the k-th largest key's top 8 bits
    (the selection's keys: the forced first ``forced`` raised by ``VS._FORCE``)."""
    s = scores.clone()
    s[:, :forced] += VS._FORCE
    kth = s.topk(min(k, s.shape[1]), dim=1).values[:, -1:]
    top = lambda x: x.view(torch.int32) >> 24      # noqa: E731  (non-negative scores: the sign bit is 0)
    return (top(s) == top(kth)).sum(1)


def cuda_graph_us(fn) -> float:
    import triton.testing
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3


def measure_vs(n: int, heads: int, kv_heads: int, d: int, kind: str, vertical: int, slash: int, *,
            device: str = "cuda", bench=cuda_graph_us) -> dict:
    from mcompile.kernels.patterns import _triton_vs as TV
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, _ = make_inputs(n, heads, kv_heads, d, dtype, torch.device(device), kind)
    hm, ql, scale = VS._last_queries(q, k, None, None)
    group, kvh = hm.heads, [h // hm.group for h in hm.heads]
    head_kv = torch.full((heads,), vertical, dtype=torch.int32, device=device)
    head_ks = torch.full((heads,), slash, dtype=torch.int32, device=device)
    forced = dict(force=VS._FORCE, forced_columns=VS.FORCED_COLUMNS, forced_diagonals=VS.FORCED_DIAGONALS)

    def scores():
        return TV._score_passes(ql, k, group, kvh, scale, 64)

    def select():
        return TV.select(*scores(), head_kv, head_ks, vertical, **forced)

    def build():
        return TV.build(ql, k, group, kvh, scale, head_kv, head_ks, vertical, slash, 64, **forced)

    build()                                 # compile every kernel outside the timing
    times = {name: bench(fn) for name, fn in (("scores", scores), ("+select", select), ("+index", build))}
    vert, slash_scores = TV.scores(ql, k, group, kvh, scale)
    cv = candidates(vert.flatten(0, 1), vertical, VS.FORCED_COLUMNS).float()
    cs = candidates(slash_scores.flatten(0, 1), slash, VS.FORCED_DIAGONALS).float()
    return {"pattern": VS.NAME, "n": n, "inputs": kind, "us": times,
            "candidates": {"vertical": {"mean": cv.mean().item(), "max": cv.max().item()},
                           "slash": {"mean": cs.mean().item(), "max": cs.max().item()}}}


def measure_sa(n: int, heads: int, kv_heads: int, d: int, kind: str, *, device: str = "cuda",
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
    return {"pattern": SA.NAME, "n": n, "inputs": kind, "us": times, "columns": count.float().mean().item(),
            "cap": cap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=ints, default="32768,131072")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--vertical", type=int, default=1000)
    parser.add_argument("--slash", type=int, default=6096)
    parser.add_argument("--patterns", default="vertical_slash,sample_attention",
                        help="comma list of vertical_slash, sample_attention")
    parser.add_argument("--out", default="benchmarks/results/build_stages.json")
    args = parser.parse_args(argv)
    patterns = args.patterns.split(",")
    if not set(patterns) <= {VS.NAME, SA.NAME}:
        parser.error(f"--patterns: {args.patterns!r}; accepted: vertical_slash, sample_attention")
    if not torch.cuda.is_available():
        parser.error("the build's stages are timed on a CUDA GPU")
    shape = (args.heads, args.kv_heads, args.head_dim)
    rows = [measure_vs(n, *shape, kind, args.vertical, args.slash) if name == VS.NAME else measure_sa(n, *shape, kind)
            for name in patterns for n in args.lengths for kind in ("structured", "random")]
    print(f"{'pattern':<17} {'N':>8} {'inputs':<11} {'scores':>9} {'select':>9} {'index':>9} {'total':>9}  "
          "candidates v / s (mean, max) | columns / cap")
    for r in rows:
        t = r["us"]
        if r["pattern"] == VS.NAME:
            c = r["candidates"]
            what = (f"{c['vertical']['mean']:.0f}, {c['vertical']['max']:.0f} / "
                    f"{c['slash']['mean']:.0f}, {c['slash']['max']:.0f}")
        else:
            what = f"{r['columns']:.0f} / {r['cap']}"
        print(f"{r['pattern']:<17} {r['n']:>8} {r['inputs']:<11} {t['scores']:>7.1f}us "
              f"{t['+select'] - t['scores']:>7.1f}us {t['+index'] - t['+select']:>7.1f}us {t['+index']:>7.1f}us  {what}")
    import triton
    result = {"benchmark": "build_stages", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.date.today().isoformat(),
              "command": " ".join(["benchmarks/build_stages.py", *(argv if argv is not None else sys.argv[1:])]),
              "shape": {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": "bfloat16"},
              "vertical_slash": {"vertical": args.vertical, "slash": args.slash},
              "sample_attention": SA.validate(None), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
