"""Tensor-parallel prefill: dense against the default sparse plan, one process per GPU.

The LLaMA-3-8B-shaped model of ``benchmarks/prefill.py`` (random weights, ``--init locality``
by default), sharded over the processes with ``mcompile.shard_heads`` (attention q/k/v colwise and
o rowwise: whole heads per rank, no collective inside attention; the MLP likewise), compiled with
``backend="minference"``; ``logits_to_keep=1``, ``use_cache=False``, bf16 on the GPU::

    torchrun --nproc-per-node 2 benchmarks/prefill_tp.py --lengths 131072,524288,1048576 --layers 4
    torchrun --nproc-per-node 1 benchmarks/prefill_tp.py --lengths 131072,524288,1048576 --layers 4
    torchrun --nproc-per-node 2 benchmarks/prefill_tp.py --device cpu --shape tiny --layers 2 \\
        --lengths 512 --min-len 256                                   # smoke test (gloo)

Variants: ``dense`` (``plan="dense"``: SDPA with ``is_causal=True`` through the same backend) and
``default`` (the default plan, no database). Per length: a compiling warm-up, then ``--repeats``
timed prefills, each between barriers and timed on every rank (CUDA events); the slowest rank's
time counts and the median over repeats is reported. Beside it each rank's peak memory and
whether every rank's logits are finite. With one process a length that runs out of GPU memory
is recorded (``"oom": true``) and the next tried, so the 1-GPU run says whether 1M fits; with
several, an out-of-memory error on one rank would leave the others waiting in a collective, so
the run stops there.

A slice of ``--layers`` layers stands for the whole model: ``ms_extrapolated = ms * 32 /
layers`` (``--extrapolate-to``), since every decoder layer does the same work and at
``logits_to_keep=1`` the embedding and the head are negligible beside 128K+ tokens of attention.

Results (rank 0): ``benchmarks/results/prefill_tp_<device>_<world>x.json`` (``--out``) with
``rows`` of ``variant, n, world, ms, ms_extrapolated, ms_per_rank, peak_gib_per_rank, finite,
oom``, rank 0's ``decisions`` and ``shard`` (from ``mcompile.report()``), and a printed table;
``--baseline`` (a 1-process result) adds ``speedup_vs_baseline``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mcompile, if not installed

from mcompile.cli_types import lengths as length_list, names  # noqa: E402
from mcompile.eval.synthetic import LOCALITY_DEFAULTS, SHAPES, apply_init, build_model, chunk_mlps  # noqa: E402
from timing import time_ms  # noqa: E402  (benchmarks/timing.py)

VARIANTS = {"dense": {"plan": "dense"}, "default": {"db": None}}


def gather(value: float | None, device: str) -> list[float | None]:
    """``value`` of every rank, in rank order (None travels as NaN)."""
    t = torch.tensor([float("nan") if value is None else float(value)], dtype=torch.float64, device=device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [None if v.isnan() else float(v) for v in out]


def decisions() -> Counter:
    """This rank's attention calls so far, by decision (``mcompile.report()``)."""
    import mcompile
    return sum((r.calls for r in mcompile.report().rows), Counter())


def shard() -> str | None:
    """Which heads this rank's attention sites hold, as the report says (None: unsharded)."""
    import mcompile
    return next((r.shard for r in mcompile.report().rows if getattr(r, "shard", None)), None)


def prefill_once(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False, logits_to_keep=1).logits


def run_length(model, ids, args, device: str) -> dict:
    """One length of one variant: warm-up, timed repeats, peak memory, finiteness."""
    cuda = device.startswith("cuda")
    before = decisions()
    try:
        logits = prefill_once(model, ids)                               # compiles at the first length
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, mine = [], []            # the slowest rank's, this rank's
        for _ in range(args.repeats):
            dist.barrier()
            mine.append(time_ms(lambda: prefill_once(model, ids), cuda, sync_first=True))
            times.append(max(t for t in gather(mine[-1], device) if t is not None))
        oom = False
    except torch.cuda.OutOfMemoryError:
        if dist.get_world_size() > 1:
            raise
        logits, times, mine, oom = None, [], [], True
        torch.cuda.empty_cache()
    finite = bool(torch.isfinite(logits).all()) if logits is not None else None
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda and not oom else None
    ms = statistics.median(times) if times else None
    return {"n": ids.shape[1], "world": dist.get_world_size(), "ms": ms,
            "ms_extrapolated": ms * args.extrapolate_to / args.layers if ms is not None else None,
            "times_ms": times, "ms_per_rank": None if oom else gather(statistics.median(mine), device),
            "peak_gib_per_rank": gather(peak, device), "finite": finite if oom else all(
                v == 1.0 for v in gather(float(finite), device)),
            "oom": oom, "decisions": dict(decisions() - before), "shard": shard()}


def table(rows: list[dict], baseline: dict | None) -> str:
    lines = ["variant | tokens | GPUs | ms | ms x32 layers | vs 1 GPU | peak GiB per rank | finite",
             "--- | --- | --- | --- | --- | --- | --- | ---"]
    for r in rows:
        base = (baseline or {}).get((r["variant"], r["n"]))
        speed = f"{base / r['ms']:.2f}x" if base and r["ms"] else ""
        ms = "OOM" if r["oom"] else f"{r['ms']:.1f}"
        ext = "" if r["oom"] else f"{r['ms_extrapolated']:.0f}"
        peak = " / ".join("-" if p is None else f"{p:.1f}" for p in r["peak_gib_per_rank"])
        lines.append(f"{r['variant']} | {r['n']} | {r['world']} | {ms} | {ext} | {speed} | {peak} | {r['finite']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=length_list, default="128K,512K,1M")
    ap.add_argument("--variants", type=names, default="dense,default", help=f"comma list of {list(VARIANTS)}")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--extrapolate-to", type=int, default=32)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--init", choices=("random", "locality"), default="locality")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-len", type=int, default=8192, help="minference option min_len")
    ap.add_argument("--dense-max-len", type=int, default=1 << 62, help="time dense only up to this length")
    ap.add_argument("--mlp-chunks", type=int, default=0, help="run each MLP on this many sequence slices (memory)")
    ap.add_argument("--baseline", default=None, help="a 1-process result JSON: adds the speedup against it")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")

    import mcompile
    from mcompile import reporting
    cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")   # torchrun's environment (a lone process: world 1)
    world, rank = dist.get_world_size(), dist.get_rank()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    mesh = dist.device_mesh.init_device_mesh(args.device, (world,))
    dtype = torch.bfloat16 if cuda else torch.float32
    vocab = SHAPES[args.shape]["vocab_size"]
    rows = []
    try:
        for variant in args.variants:
            model = build_model(args.layers, args.shape, device, dtype)
            apply_init(model, args.init, dict(LOCALITY_DEFAULTS))
            if args.mlp_chunks:
                chunk_mlps(model, args.mlp_chunks)
            if world > 1:
                mcompile.shard_heads(model, mesh)
            torch._dynamo.reset()
            reporting.reset()
            model.compile(backend="minference", options={**VARIANTS[variant], "min_len": args.min_len}, dynamic=True)
            for n in args.lengths:
                if variant == "dense" and n > args.dense_max_len:
                    continue
                ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
                row = {"variant": variant, **run_length(model, ids, args, device)}
                rows.append(row)
                if rank == 0:
                    print(table([row], None), flush=True)
            del model
            if cuda:
                torch.cuda.empty_cache()
        if rank == 0:
            baseline = None
            if args.baseline:
                baseline = {(r["variant"], r["n"]): r["ms"] for r in json.loads(Path(args.baseline).read_text())["rows"]}
                for r in rows:
                    base = baseline.get((r["variant"], r["n"]))
                    r["speedup_vs_baseline"] = base / r["ms"] if base and r["ms"] else None
            print(table(rows, baseline))
            name = torch.cuda.get_device_name().split()[1].lower() if cuda else "cpu"
            out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"prefill_tp_{name}_{world}x.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({
                "benchmark": "prefill_tp", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                "device": torch.cuda.get_device_name() if cuda else "cpu", "world": world, "shape": args.shape,
                "layers": args.layers, "init": args.init, "dtype": str(dtype), "torch": torch.__version__,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "extrapolation": f"ms * {args.extrapolate_to} / {args.layers}", "rows": rows}, indent=1))
            print(f"wrote {out}")
        # every rank leaves together: a rank that tears its process group down while another
        # still writes can abort the other's gloo threads ("terminate called without an active
        # exception", seen once in the CPU test)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
