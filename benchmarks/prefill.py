"""Time-to-first-token of a whole-model prefill: dense SDPA vs sparse attention, both through Inductor.

A LLaMA-3-8B-shaped model with random weights (32 layers, hidden 4096, 32 q / 8 kv heads, d 128,
MLP 14336, bf16), built from a config on the GPU. Both variants run in one process with CUDA
events after a warm-up (the median of repeats); compile time and peak memory are reported
separately. Only the last position's logits are computed (``logits_to_keep=1``).

    python benchmarks/prefill.py --layers 32 --lengths 32768,65536,131072
    python benchmarks/prefill.py --layers 4 --lengths 262144,524288,1048576 --repeats 1
    python benchmarks/prefill.py --tiny --lengths 512 --device cpu      # a smoke test

Results: benchmarks/results/prefill_<gpu>_<layers>L.json and a printed table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
import transformers

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=128, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=1 << 21)
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            vocab_size=256, max_position_embeddings=1 << 16)


def build_model(layers: int, tiny: bool, device: str, dtype: torch.dtype):
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, **(TINY if tiny else LLAMA3_8B))
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, repeats: int, device: str) -> list[float]:
    """Milliseconds per call: CUDA events on the GPU, perf_counter on the CPU."""
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def sdpa_backend_name(device: str) -> str:
    """Which SDPA backend dense attention takes at this shape (bf16, d 128, causal)."""
    if not device.startswith("cuda"):
        return "cpu (math/flash-cpu)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 32, 256, 128, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, 8, 256, 128, device=device, dtype=torch.bfloat16)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            return backend.name  # the first in PyTorch's priority order that accepts the shape
        except RuntimeError:
            continue
    return "MATH"


def run_variant(model, name: str, backend: str, options: dict | None, lengths: list[int], use_cache: bool,
                with_mask: bool, repeats: int, device: str) -> list[dict]:
    """Compile once (dynamic shapes), then time every length; the first call's time is the compile."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, options=options, dynamic=True)
    rows = []
    for n in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
        kwargs = {"use_cache": use_cache, "logits_to_keep": 1}
        if with_mask:
            kwargs["attention_mask"] = torch.ones_like(ids)

        def call():
            with torch.no_grad():
                return compiled(ids, **kwargs).logits

        _sync(device)
        t = time.perf_counter()
        call()  # compiles at the first length; a warm-up after that
        _sync(device)
        first_s = time.perf_counter() - t
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = time_call(call, repeats, device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        rows.append({"variant": name, "length": n, "use_cache": use_cache, "mask": with_mask,
                     "first_call_s": round(first_s, 2), "ms": statistics.median(times), "all_ms": times,
                     "peak_gib": peak})
        print(f"{n:>8} {name:<15} cache={use_cache!s:<5} mask={with_mask!s:<5} {rows[-1]['ms']:>10.1f} ms  "
              f"first call {first_s:>6.1f} s  peak {peak or 0:.1f} GiB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-len", type=int, default=8192)
    ap.add_argument("--cases", default="nocache,cache+mask",
                    help="minference cases, comma list of cache | cache+mask | nocache | nocache+mask")
    ap.add_argument("--dense", choices=["yes", "no"], default="yes", help="also time dense SDPA")
    ap.add_argument("--inductor-plain", action="store_true",
                    help="also time plain torch.compile(model) at the first length if <= 32K (it builds an N^2 mask)")
    ap.add_argument("--stats", action="store_true", help="record the sparse index density (one sync per layer)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build_model(args.layers, args.tiny, args.device, dtype)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    cases = [(c.startswith("cache"), c.endswith("mask")) for c in args.cases.split(",")]
    if args.dense == "yes":
        for use_cache in sorted({c for c, m in cases if not m}):
            # Dense SDPA through the same backend (plan "dense"): the recognised causal mask becomes SDPA's
            # is_causal, so flash / cuDNN run. Plain torch.compile(model) is not a fair baseline here: with
            # torch < 2.14, transformers 5 builds a (1, 1, N, N) mask under compile (32 GiB at 128K in bf16).
            rows += run_variant(model, "dense-sdpa", "minference", {"plan": "dense"}, lengths, use_cache, False,
                                args.repeats, args.device)
            if args.inductor_plain and lengths[0] <= 32768:
                rows += run_variant(model, "inductor-plain", "inductor", None, lengths[:1], use_cache, False,
                                    args.repeats, args.device)
    for use_cache, with_mask in cases:
        rows += run_variant(model, "minference", "minference", {"min_len": args.min_len, "db": None, "stats": args.stats}, lengths,
                            use_cache, with_mask, args.repeats, args.device)
    dense_ms = {r["length"]: r["ms"] for r in rows if r["variant"] == "dense-sdpa"}  # the best dense case
    for r in rows:
        r["per_layer_ms"] = r["ms"] / args.layers
        if r["variant"] == "minference" and r["length"] in dense_ms:
            r["speedup"] = dense_ms[r["length"]] / r["ms"]
    import mcompile

    result = {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "dtype": str(dtype),
              "model": "tiny" if args.tiny else "llama3-8b-shape", "layers": args.layers,
              "dense_sdpa_backend": sdpa_backend_name(args.device), "rows": rows,
              "sparse_decisions": sorted({r.decision for r in mcompile.report().rows}),
              "sparse_density": mcompile.report().density()}
    out = Path(args.out or Path(__file__).parent / f"results/prefill_{gpu.replace(' ', '_')}_{args.layers}L.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'length':>8} {'case':<12} {'variant':<15} {'ms':>10} {'per layer':>10} {'speedup':>8} {'GiB':>6}")
    for r in sorted(rows, key=lambda r: (r["length"], r["variant"], r["mask"])):
        print(f"{r['length']:>8} {('cache' if r['use_cache'] else 'nocache') + ('+mask' if r['mask'] else ''):<12} "
              f"{r['variant']:<15} {r['ms']:>10.1f} {r['per_layer_ms']:>10.2f} {r.get('speedup', float('nan')):>8.2f} "
              f"{r['peak_gib'] or 0:>6.1f}")
    print(f"dense SDPA backend: {result['dense_sdpa_backend']}; decisions: {result['sparse_decisions']}; "
          f"sparse density (with --stats): {result['sparse_density']}; -> {out}")


if __name__ == "__main__":
    main()
