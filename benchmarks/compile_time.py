"""Compile time of a whole decoder through torch.compile: minference with layer-wise compilation
(the default: each distinct layer compiled once, passes/layerwise.py), on the flat graph, and
plain Inductor. Each row also has Dynamo's per-phase times (``phases_s``: cumulative, phases nest).

Each measurement runs in a fresh process with an empty Inductor cache (cold): the first call
(Dynamo + our passes + Inductor + one run) minus a warm call is the compile time. The output
of the compiled model is checked against eager.

    python benchmarks/compile_time.py --shape small --layers 8,32 --device cpu
    python benchmarks/compile_time.py --shape llama3-8b --layers 32 --length 4096    # GPU
    python benchmarks/compile_time.py --shape llama3-8b --layers 32 --length 4096 --variants minference-layerwise

Results: benchmarks/results/compile_time_<device>.json and a printed table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mcompile, if not installed
from mcompile.cli_types import ints, names  # noqa: E402

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             vocab_size=1000)
VARIANTS = {  # name -> (backend, options)
    "minference-layerwise": ("minference", {"layerwise": True}),  # passes/layerwise.py
    "minference-flat": ("minference", {"layerwise": False}),      # one flat graph
    "inductor": ("inductor", None),
}


def build(shape: str, layers: int, device: str, dtype: torch.dtype):
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mcompile, if not installed
    from mcompile.eval.synthetic import LLAMA3_8B  # the same LLaMA-3-8B shape as the prefill benchmark

    cfg = transformers.LlamaConfig(num_hidden_layers=layers, **(LLAMA3_8B if shape == "llama3-8b" else SMALL))
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _breakdown() -> dict:
    """Seconds per compile phase from torch._dynamo.utils.compile_times (cumulative; phases nest)."""
    try:
        times = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
        names, values = times
        return {str(k): round(float(v), 2) for k, v in zip(names, values)}
    except Exception as exc:  # noqa: BLE001  (the format differs between torch versions)
        try:
            return {"text": torch._dynamo.utils.compile_times(repr="str", aggregate=True)}
        except Exception:
            return {"error": repr(exc)}


def measure(args) -> dict:
    """One variant in this process (a child): compile time, warm time, max difference to eager."""
    dtype = getattr(torch, args.dtype)
    model = build(args.shape, args.layer, args.device, dtype)
    backend, options = VARIANTS[args.variant]
    layerwise_info = []
    if backend == "minference":  # what layer-wise compilation made, if it ran
        import mcompile.backend as mb

        real = mb.compile_layerwise

        def spy(*a, **k):
            made = real(*a, **k)
            layerwise_info.append(made.info if made is not None else None)
            return made
        mb.compile_layerwise = spy
    compiled = torch.compile(model, backend=backend, options=options, dynamic=True)
    ids = torch.randint(0, model.config.vocab_size, (1, args.length), device=args.device)

    def call(m):
        with torch.no_grad():
            return m(ids, use_cache=False, logits_to_keep=1).logits

    times = []
    for _ in range(2):
        _sync(args.device)
        t = time.perf_counter()
        out = call(compiled)
        _sync(args.device)
        times.append(time.perf_counter() - t)
    expected = call(model)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {"variant": args.variant, "layers": args.layer, "compile_s": round(times[0] - times[1], 2),
            "first_call_s": round(times[0], 2), "warm_call_s": round(times[1], 3), "graphs": frames,
            "max_abs_diff": (out.float() - expected.float()).abs().max().item(), "phases_s": _breakdown(),
            **({"layerwise": layerwise_info} if layerwise_info else {})}


def run_child(args, variant: str, layers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--layer", str(layers), "--shape", args.shape,
           "--device", args.device, "--dtype", args.dtype, "--length", str(args.length)]
    with tempfile.TemporaryDirectory(prefix="inductor_cold_") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {layers}L failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["small", "llama3-8b"], default=None,
                    help="model shape (default: llama3-8b on CUDA, small on the CPU)")
    ap.add_argument("--layers", type=ints, default="8,32", help="comma-separated layer counts")
    ap.add_argument("--variants", type=names, default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/compile_time_<device>.json)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--layer", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.shape = args.shape or ("llama3-8b" if args.device.startswith("cuda") else "small")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.child:
        print(json.dumps(measure(args)))
        return

    rows = []
    print(f"{'layers':>6} {'variant':<16} {'compile s':>10} {'first call s':>13} {'warm s':>8} {'max |diff|':>11}")
    for layers in args.layers:
        for variant in args.variants:
            row = run_child(args, variant, layers)
            rows.append(row)
            print(f"{layers:>6} {variant:<16} {row['compile_s']:>10.1f} {row['first_call_s']:>13.1f} "
                  f"{row['warm_call_s']:>8.3f} {row['max_abs_diff']:>11.2e}", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {"device": device, "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "shape": args.shape, "dtype": args.dtype, "length": args.length, "dynamic": True, "cold_cache": True,
              "cpu_count": os.cpu_count(), "rows": rows}
    tag = "h100" if "H100" in device else device.split()[-1].lower() if args.device.startswith("cuda") else "cpu"
    out = Path(args.out or Path(__file__).parent / "results" / f"compile_time_{tag}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
