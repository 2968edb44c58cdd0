"""Where the peak GPU memory of a long prefill comes from: the minference model of
benchmarks/prefill.py (LLaMA-3-8B shape, locality init, chunked MLPs) run once per length,
with the CUDA allocator's peak taken per stage.

Stages, in call order: ``graph`` (the compiled code between two attention calls: projections,
RoPE, MLP, ...), ``index`` (building the sparse index of one part of a layer), ``kernel`` (the sparse
attention kernel of one part), ``dense`` (a dense SDPA fallback). For each stage: memory
allocated when it starts, its peak, and the peak minus the allocation at its start (what the
stage itself adds). The overall peak is the largest stage peak.

    python benchmarks/memory_stages.py --layers 4 --lengths 524288,1048576 --mlp-chunks 8
    python benchmarks/memory_stages.py ... --variants flat,layerwise   # also layer-wise compilation
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import prefill  # noqa: E402
from mcompile.cli_types import ints, names  # noqa: E402

GIB = 2 ** 30


class Stages:
    def __init__(self):
        self.rows: list[dict] = []
        self.stage = "graph"
        self.start = 0

    def begin(self, stage: str) -> None:
        torch.cuda.synchronize()
        self._close()
        self.stage, self.start = stage, torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    def _close(self) -> None:
        peak = torch.cuda.max_memory_allocated()
        self.rows.append({"stage": self.stage, "start_gib": round(self.start / GIB, 3), "peak_gib": round(peak / GIB, 3),
                          "added_gib": round((peak - self.start) / GIB, 3)})

    def finish(self) -> list[dict]:
        torch.cuda.synchronize()
        self._close()
        return self.rows


STAGES: Stages | None = None


def _wrap(fn, stage: str):
    def inner(*args, **kwargs):
        if STAGES is None:
            return fn(*args, **kwargs)
        STAGES.begin(stage)
        try:
            return fn(*args, **kwargs)
        finally:
            STAGES.begin("graph")
    return inner


def instrument() -> None:
    from mcompile import runtime

    backend = runtime._sparse_backend()
    if backend is None:
        raise SystemExit("sparse kernels not available")
    build, sparse = backend
    runtime._sparse_backend.cache_clear()
    runtime._sparse_backend = lambda: (_wrap(build, "index"), _wrap(sparse, "kernel"))
    runtime.dense_attention = _wrap(runtime.dense_attention, "dense")


def summarise(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        s = out.setdefault(r["stage"], {"count": 0, "max_peak_gib": 0.0, "max_added_gib": 0.0, "max_start_gib": 0.0})
        s["count"] += 1
        s["max_peak_gib"] = max(s["max_peak_gib"], r["peak_gib"])
        s["max_added_gib"] = max(s["max_added_gib"], r["added_gib"])
        s["max_start_gib"] = max(s["max_start_gib"], r["start_gib"])
    return out


def main() -> None:
    global STAGES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lengths", type=ints, default="524288,1048576")
    ap.add_argument("--mlp-chunks", type=int, default=8)
    ap.add_argument("--variants", type=names, default="flat", help="comma list of flat | layerwise (passes/layerwise.py)")
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(prefill.SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--min-len", type=int, default=8192)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import mcompile.backend

    model = prefill.build_model(args.layers, args.shape, args.device,
                                torch.bfloat16 if args.device == "cuda" else torch.float32)
    if args.mlp_chunks > 1:
        prefill.chunk_mlps(model, args.mlp_chunks)
    prefill.apply_init(model, "locality", prefill.parse_locality(""))
    weights = torch.cuda.memory_allocated() / GIB
    instrument()
    results = []
    for variant in args.variants:
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="minference", options={"min_len": args.min_len, "layerwise": variant == "layerwise"},
                                 dynamic=True)
        for n in args.lengths:
            ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)).to(args.device)
            with torch.no_grad():
                compiled(ids, use_cache=False, logits_to_keep=1)  # compile / warm-up
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                STAGES = Stages()
                STAGES.begin("graph")
                compiled(ids, use_cache=False, logits_to_keep=1)
                rows = STAGES.finish()
                STAGES = None
            peak = max(r["peak_gib"] for r in rows)
            row = {"variant": variant, "length": n, "peak_gib": peak, "weights_gib": round(weights, 3),
                   "by_stage": summarise(rows), "stages": rows}
            results.append(row)
            print(f"{variant:<10} {n:>8}  peak {peak:6.2f} GiB (weights {weights:.2f})  "
                  + "  ".join(f"{k}: peak {v['max_peak_gib']:.2f} +{v['max_added_gib']:.2f} from {v['max_start_gib']:.2f}"
                              for k, v in row["by_stage"].items()), flush=True)
            del ids
            torch.cuda.empty_cache()
        del compiled
    out = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__,
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "layers": args.layers, "mlp_chunks": args.mlp_chunks, "rows": results}
    path = Path(args.out or Path(__file__).parent / "results" / "memory_stages_h100.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
