"""Gemma 3 270M prefill end to end: dense SDPA vs minference with the shipped database.

The model is Gemma 3 270M's architecture (``GEMMA3_270M``) with random weights built from its
config (no download, no GGUF needed), bf16, ``logits_to_keep=1``, no cache. Speed does not
depend on the weights except through the adaptive patterns of the full-attention layers (their
density, recorded with ``--stats``, is that of random weights; the accuracy of the shipped plan
on the real weights is ``mcompile eval``'s job, see ``benchmarks/gemma_gpu.sh``). ``main``
says what the two variants run; ``run_variant`` how each is timed.

    python benchmarks/prefill_gemma.py --lengths 8192,16384,32768            # GPU
    python benchmarks/prefill_gemma.py --lengths 1024 --device cpu --dtype float32 --min-len 256  # smoke
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the checkout's mcompile
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mcompile  # noqa: E402
from mcompile.cli_types import ints  # noqa: E402
from prefill import time_once  # noqa: E402  (CUDA events on the GPU)

# 18 layers: sliding-window layers of 512 tokens, every 6th layer full attention; 4 q / 1 kv
# heads, head dim 256.
LAYER_TYPES = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
GEMMA3_270M = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                   query_pre_attn_scalar=256, max_position_embeddings=32768, layer_types=LAYER_TYPES)


def build_model(device: str, dtype: torch.dtype):
    cfg = transformers.Gemma3TextConfig(**GEMMA3_270M)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Gemma3ForCausalLM(cfg).to(dtype)
    return model.eval()


def run_variant(model, name: str, options: dict, lengths: list[int], args) -> list[dict]:
    """Compile once, then per length: CUDA events, median of ``--repeats`` calls after a
    warm-up; compile time and peak memory per row."""
    torch._dynamo.reset()
    mcompile.reporting.reset()
    compiled = torch.compile(model, backend="minference", options=options)
    rows = []
    for n in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)).to(args.device)

        def call():
            with torch.no_grad():
                compiled(ids, use_cache=False, logits_to_keep=1)

        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        first_ms = time_once(call, args.device)               # warm-up (or the compile)
        first_s = time.perf_counter() - t
        times = [time_once(call, args.device) for _ in range(args.repeats)]
        ms = statistics.median(times)
        report = mcompile.report()
        decisions = sorted({r.decision for r in report.rows})
        row = {"variant": name, "length": n, "ms": ms, "all_ms": times, "first_call_s": round(first_s, 2),
               "compile_s": round(first_s - ms / 1e3, 2), "decisions": decisions,
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device.startswith("cuda") else None}
        if options.get("stats"):   # work of the sparse calls / dense causal blocks, all calls so far
            for kind in ("full_attention", "sliding_attention"):
                w = [sum(r.work[i] for r in report.rows if LAYER_TYPES[r.layer] == kind) for i in range(3)]
                row[f"density_{kind}"] = round((w[0] + w[1] / 64) / w[2], 4) if w[2] else None
        rows.append(row)
        print(f"{name:<11} {n:>7}  {ms:9.1f} ms  first call {first_s:6.1f} s  peak {row['peak_gib']} GiB  "
              f"{'; '.join(decisions)}", flush=True)
    return rows


def main(argv=None):
    """Time the two variants and print the speedup.

    * dense: ``torch.compile(model, backend="minference", options={"plan": "dense"})``: Inductor,
      and SDPA for every layer: plain causal on the full layers (cuDNN / flash), and on the
      sliding layers SDPA with transformers' (1, 1, N, N) sliding-window mask (what stock
      torch.compile runs too: SDPA has no window argument, so no flash kernel takes it).
    * minference: ``backend="minference"`` with the default ``db="auto"``: the shipped
      ``gemma3-270m.json`` (found by fingerprint): the full layers run the searched per-head
      plan, the sliding layers their exact per-row window through the sparse kernel
      (O(N x window))."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=ints, default="8192,16384,32768")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--min-len", type=int, default=8192, help="shorter prompts run dense (the backend's min_len)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lengths = args.lengths
    model = build_model(args.device, getattr(torch, args.dtype))
    rows = run_variant(model, "dense-sdpa", {"plan": "dense"}, lengths, args)
    rows += run_variant(model, "minference", {"min_len": args.min_len, "stats": True}, lengths, args)
    dense = {r["length"]: r["ms"] for r in rows if r["variant"] == "dense-sdpa"}
    print(f"\n{'length':>7} {'dense ms':>10} {'minference ms':>14} {'speedup':>8}")
    for r in rows:
        if r["variant"] == "minference":
            r["speedup"] = dense[r["length"]] / r["ms"]
            print(f"{r['length']:>7} {dense[r['length']]:>10.1f} {r['ms']:>14.1f} {r['speedup']:>7.2f}x")
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = Path(args.out or Path(__file__).parent / f"results/prefill_gemma3-270m_{'h100' if 'H100' in dev else args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": dev, "torch": torch.__version__, "transformers": transformers.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": "python " + " ".join(sys.argv),
        "model": "Gemma 3 270M architecture, random weights", "config": GEMMA3_270M, "dtype": args.dtype,
        "dense_baseline": "backend minference with plan='dense': SDPA causal on full layers, SDPA + (1,1,N,N) "
                          "sliding mask on sliding layers", "rows": rows}, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
