"""Time to first token of a real model's whole prefill: dense, the model's database, the default plan.

    python benchmarks/ttft.py --model smollm2 --lengths 8K,32K,128K            # GPU
    python benchmarks/ttft.py --model gemma3-270m --lengths 8K,32K
    python benchmarks/ttft.py --model smollm2 --lengths 2K --device cpu --repeats 1   # smoke test

One process, one model, real text (``--text``, default the KJV bible), bf16 on the GPU, batch 1,
``use_cache=False``, ``logits_to_keep=1``. Each variant (``VARIANTS``) is the same model
compiled with ``backend="minference"``. Per row: ``ms`` is the median of ``--repeats`` prefills
(CUDA events, after two warm-up calls: one compiles and measures, one settles the routes or,
under CUDA graphs, records); the per-layer host / GPU / index times and
launches come from one profiled call (:func:`per_layer_profile`); the other fields are
described where :func:`run_variant` records them.

Output: ``benchmarks/results/ttft_<model>_<device>.json`` (``--out``) with ``rows`` and the
environment, and a printed table.
"""
from __future__ import annotations

import argparse
import gc
import datetime
import json
import logging
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from mcompile.cli_types import lengths, names
from timing import time_ms  # benchmarks/timing.py

ATTENTION_OP = "mcompile::attention"
SPARSE_KERNEL = "_sparse_attn_fwd"
TOP_KERNELS = 12        # the GPU kernels of the whole prefill kept in each row, by total time
# The variants, as options of backend="minference":
#   * dense: every attention runs SDPA with is_causal (the backend recognises transformers'
#     mask), sliding layers SDPA with their window mask;
#   * database: the model's shipped database (db="auto") or --db FILE;
#   * default: db=None, MInference's default (vertical-slash 1000/6096 on every head);
#   * database-ungated, default-ungated: the same with cost_model=False: the plan runs sparse
#     wherever it applies, even where the cost model would choose dense.
# Sliding-window layers (Gemma 3) run their exact window in both sparse variants.
VARIANTS = {"dense": {"plan": "dense"}, "database": {"db": "auto"}, "default": {"db": None},
            # the same plans without the cost model's dense fallback (what the plan alone costs)
            "database-ungated": {"db": "auto", "cost_model": False}, "default-ungated": {"db": None, "cost_model": False}}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().replace("NVIDIA ", "").split()[0].lower()
    return "cpu"


class Timer:
    """Wall time of one call: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn) -> float:
        return time_ms(fn, self.cuda, sync_first=True)


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def per_layer_profile(fn, device: str) -> dict:
    """Host time, GPU time, index time and kernel launches per ``mcompile::attention`` call.

    ``host_ms_per_layer``: CPU time inside the op; ``gpu_ms_per_layer``: GPU time of the kernels
    it launched; ``index_ms_per_layer``: per call that ran sparse, the part of its GPU time not
    spent in the sparse kernel ``_sparse_attn_fwd`` (estimation, index building and the dense
    tail's own kernels); ``kernel_ms``: the GPU kernels of the whole
    profiled call that took longest, by name; ``gpu_kernels``: the GPU kernels the whole call
    ran (inside CUDA graphs too), whose excess over dense's, per layer, is what the sparse path
    launches per layer.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    top = Counter()
    for e in events:
        for kernel in e.kernels:
            top[kernel.name[:80]] += kernel.duration / 1e3
    whole = {"kernel_ms": {name: round(ms, 3) for name, ms in top.most_common(TOP_KERNELS)},
             "graph_launches": sum(1 for e in events if e.name == "cudaGraphLaunch"),
             "gpu_kernels": sum(len(e.kernels) for e in events)}
    calls = [e for e in events if e.name == ATTENTION_OP and not any(
        p.name == ATTENTION_OP for p in _ancestors(e))]
    if not calls:
        return {"calls": 0, **whole}
    host = gpu = attention = index = launches = 0.0
    sparse_calls = 0
    for call in calls:
        host += call.cpu_time_total
        events = [call, *_descendants(call)]
        launches += sum(1 for e in events if "LaunchKernel" in e.name)
        kernels = [kernel for e in events for kernel in e.kernels]
        call_gpu = sum(k.duration for k in kernels)
        call_attention = sum(k.duration for k in kernels if SPARSE_KERNEL in k.name)
        gpu, attention = gpu + call_gpu, attention + call_attention
        if call_attention:          # a sparse call: the rest of its GPU time built the index
            index += call_gpu - call_attention
            sparse_calls += 1
    n = len(calls)
    return {"calls": n, "sparse_calls": sparse_calls, "host_ms_per_layer": host / n / 1e3,
            "gpu_ms_per_layer": gpu / n / 1e3,
            "index_ms_per_layer": index / sparse_calls / 1e3 if sparse_calls else 0.0,
            "attention_kernel_ms_per_layer": attention / sparse_calls / 1e3 if sparse_calls else 0.0,
            "launches_per_layer": launches / n, **whole}


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _work(report) -> list[int]:
    """Computed blocks, columns and dense causal blocks the stats=True calls recorded so far."""
    return [sum(r.work[i] for r in report.rows) for i in range(3)]


def run_variant(model, name: str, options: dict, prompts: dict[int, torch.Tensor], args,
                cuda_graphs: bool = False) -> list[dict]:
    """One row per length for one variant.

    ``density`` comes from one more call with ``stats=True`` in a fresh compile: the blocks the
    plan computes when it runs sparse, of dense causal (that call measures, so it runs sparse even
    where the cost model then chooses dense; 1.0 for dense). ``peak_gib`` is
    the weights plus the most the timed calls hold above what was allocated when the variant
    started (``torch.cuda.max_memory_allocated`` minus that), so caches an earlier variant left
    (static indexes, sampled rows kept per length) are not counted against this one. ``decisions``
    counts the op's decisions over the timed calls (from ``mcompile.report()``). Under
    ``cuda_graphs`` a replayed call runs none of the op's Python, so ``host_ms_per_layer`` is the
    host submit time per layer and ``launches_per_layer`` the graph launches per layer.
    """
    import mcompile
    from mcompile import reporting

    torch._dynamo.reset()
    gc.collect()                    # the previous variant's graphs and caches, so its memory is not counted here
    if args.device == "cuda":
        torch.cuda.empty_cache()
        held_before = torch.cuda.memory_allocated()
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if t.is_cuda)
    reporting.reset()
    messages = _LogKeeper()         # what mcompile logs (e.g. a signature not replayed as a graph)
    logging.getLogger("mcompile").addHandler(messages)
    base = {"min_len": args.min_len, "log": "info", **options, "cuda_graphs": cuda_graphs}
    # dynamic=True: one compile per variant for every length
    compiled = torch.compile(model, backend="minference", options=base, dynamic=True)
    with_stats = torch.compile(model, backend="minference", options={**base, "stats": True, "cuda_graphs": False},
                               dynamic=True)
    timer = Timer(args.device)
    rows = []
    for n, ids in prompts.items():
        def prefill(m=compiled):
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                return m(ids, use_cache=False, logits_to_keep=1).logits
        start = time.perf_counter()
        prefill()                                 # warm-up (compiles at the first lengths)
        # CUDA graphs: the second call records. Eagerly: the first call measured each site's
        # index (mcompile.cost_gate), the second settles its route, timing it against dense
        # where the prediction is close, which a timed call must not include
        prefill()
        warm_s = time.perf_counter() - start
        before = Counter({(r.key, d): c for r in mcompile.report().rows for d, c in r.calls.items()})
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [timer(prefill) for _ in range(args.repeats)]
        peak = (weights + torch.cuda.max_memory_allocated() - held_before) / 2**30 if args.device == "cuda" else None
        after = Counter({(r.key, d): c for r in mcompile.report().rows for d, c in r.calls.items()})
        decisions = Counter()
        for (_, decision), count in (after - before).items():
            decisions[decision] += count
        submit_ms = host_submit_ms(prefill, args.device)
        profile = per_layer_profile(prefill, args.device)
        density = 1.0
        if name != "dense":
            work_before = _work(mcompile.report())
            prefill(with_stats)
            blocks, columns, dense_blocks = (a - b for a, b in zip(_work(mcompile.report()), work_before))
            density = (blocks + columns / 64) / dense_blocks if dense_blocks else 1.0
        if cuda_graphs and profile["calls"] == 0:
            # replayed: the op's Python does not run; the host's whole share is submitting the graph
            layers = model.config.num_hidden_layers
            profile.update(host_ms_per_layer=submit_ms / layers,
                           launches_per_layer=profile["graph_launches"] / layers)
        row = {"model": args.model, "n": n, "variant": name, "cuda_graphs": cuda_graphs, "ms": statistics.median(times),
               "times_ms": times, "first_call_s": warm_s, "host_submit_ms": submit_ms,
               **{k: v for k, v in profile.items() if k != "calls"},
               "attention_calls": profile["calls"], "density": density, "peak_gib": peak,
               "decisions": dict(decisions), "log": messages.take()}
        rows.append(row)
        for line in row["log"]:
            print(f"    log: {line}", flush=True)
        print(f"  {label(row):16s} {n:>8d}: {row['ms']:9.1f} ms  density {density:.3f}  host submit {submit_ms:.1f} ms  "
              f"host/layer {row.get('host_ms_per_layer', 0):.2f} ms  gpu/layer {row.get('gpu_ms_per_layer', 0):.2f} ms  "
              f"launches/layer {row.get('launches_per_layer', 0):.0f}", flush=True)
    logging.getLogger("mcompile").removeHandler(messages)
    return rows


class _LogKeeper(logging.Handler):
    """The distinct messages mcompile logs at INFO and above, in order, until taken."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        line = record.getMessage()[:200]
        if line not in self.lines and len(self.lines) < 20:
            self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def host_submit_ms(fn, device: str) -> float:
    """Host time until ``fn`` returns, the GPU idle at the start: where it is close to the
    whole prefill's time, the host, not the GPU, sets the pace."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    submitted = (time.perf_counter() - start) * 1e3
    if device == "cuda":
        torch.cuda.synchronize()
    return submitted


def label(row: dict) -> str:
    return row["variant"] + (" +graphs" if row.get("cuda_graphs") else "")


def table(rows: list[dict]) -> str:
    # each row against dense compiled the same way (with or without CUDA graphs)
    dense = {(r["n"], bool(r.get("cuda_graphs"))): r["ms"] for r in rows if r["variant"] == "dense"}
    head = ("n", "variant", "ms", "vs dense", "host submit", "host/layer", "gpu/layer", "index/layer", "launches", "density", "peak GiB")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in sorted(rows, key=lambda r: (r["n"], bool(r.get("cuda_graphs")), list(VARIANTS).index(r["variant"]))):
        same = (r["n"], bool(r.get("cuda_graphs")))
        speed = f"{dense[same] / r['ms']:.2f}x" if same in dense else "-"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        lines.append(" | ".join([str(r["n"]), label(r), f"{r['ms']:.1f}", speed, f"{r.get('host_submit_ms', 0):.1f}",
                                 f"{r.get('host_ms_per_layer', 0):.2f}", f"{r.get('gpu_ms_per_layer', 0):.2f}",
                                 f"{r.get('index_ms_per_layer', 0):.2f}", f"{r.get('launches_per_layer', 0):.0f}",
                                 f"{r['density']:.3f}", peak]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, a checkpoint directory or a .gguf file")
    parser.add_argument("--lengths", type=lengths, default="8K,32K,128K")
    parser.add_argument("--variants", type=names, default="dense,database,default", help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--db", default=None, help="database JSON for the 'database' variant (default: shipped)")
    parser.add_argument("--text", default="bible-kjv", help="a text source name or a text file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cuda-graphs", choices=("off", "on", "both"), default="off",
                        help="compile with the backend's cuda_graphs option (mode='reduce-overhead'); "
                             "'both' runs every variant each way")
    parser.add_argument("--min-len", type=int, default=8192)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on the GPU, float32 on the CPU")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/ttft_<model>_<device>.json")
    args = parser.parse_args(argv)
    variants = args.variants
    bad = sorted(set(variants) - set(VARIANTS))
    if bad:
        parser.error(f"unknown variant(s) {bad}; accepted: {list(VARIANTS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    from mcompile.eval.models import load_model
    from mcompile.eval.text import load_text, token_prompt

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
    text = load_text(args.text)
    prompts = {n: token_prompt(tokenizer, text, n).to(args.device) for n in args.lengths}
    options = dict(VARIANTS)
    if args.db:
        options["database"] = {"db": args.db}
        options["database-ungated"] = {"db": args.db, "cost_model": False}
    graph_modes = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graphs]
    import transformers
    model_tag = Path(args.model).stem if Path(args.model).exists() else args.model
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"ttft_{model_tag}_{device_name(args.device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "ttft", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype),
        "text": args.text, "repeats": args.repeats, "min_len": args.min_len, "rows": [],
    }
    for graphs in graph_modes:
        for name in variants:
            print(f"variant {name}: options {options[name]}, cuda_graphs {graphs}", flush=True)
            result["rows"] += run_variant(model, name, options[name], prompts, args, cuda_graphs=graphs)
            out.write_text(json.dumps(result, indent=1) + "\n")     # kept when a later variant is cut off
    rows = result["rows"]
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
