"""Speed and peak memory of the sparse prefill against the index head-chunk budget
(``mcompile.runtime.INDEX_BYTES_PER_CHUNK``): the minference model of benchmarks/prefill.py
(LLaMA-3-8B shape, locality init, chunked MLPs), one compile, then each budget in turn.

    python benchmarks/index_chunks.py --layers 4 --lengths 524288,1048576 --budgets-gib 1,2,4,1024
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import prefill  # noqa: E402
from mcompile.cli_types import floats, ints  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lengths", type=ints, default="524288,1048576")
    ap.add_argument("--budgets-gib", type=floats, default="1,2,4,1024")
    ap.add_argument("--mlp-chunks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from mcompile import runtime
    from mcompile.kernels.patterns import index_parts

    model = prefill.build_model(args.layers, "llama3-8b", "cuda", torch.bfloat16)
    if args.mlp_chunks > 1:
        prefill.chunk_mlps(model, args.mlp_chunks)
    prefill.apply_init(model, "locality", prefill.parse_locality(""))
    compiled = torch.compile(model, backend="minference", dynamic=True)
    rows = []
    for n in args.lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)).cuda()

        def call():
            with torch.no_grad():
                return compiled(ids, use_cache=False, logits_to_keep=1)
        for gib in args.budgets_gib:
            runtime.INDEX_BYTES_PER_CHUNK = runtime.INDEX_BYTES_FLOOR = int(gib * 2 ** 30)   # the budget, whatever q, k, v hold
            call()  # compile / warm-up
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            times = [prefill.time_once(call, "cuda") for _ in range(args.repeats)]
            try:
                plan = next(c.plan for c in runtime._SITES.values() if c.plan is not None)
                chunks = len(index_parts(plan, n, 1, runtime.INDEX_BYTES_PER_CHUNK))
            except Exception as exc:  # noqa: BLE001
                chunks = repr(exc)
            row = {"length": n, "budget_gib": gib, "chunks": chunks, "ms": statistics.median(times), "all_ms": times,
                   "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
            rows.append(row)
            print(f"{n:>8} budget {gib:>7.1f} GiB  chunks {chunks}  {row['ms']:9.1f} ms  peak {row['peak_gib']:.2f} GiB",
                  flush=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "layers": args.layers,
           "mlp_chunks": args.mlp_chunks, "rows": rows}
    path = Path(args.out or Path(__file__).parent / "results" / "index_chunks_h100.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
