"""Each pattern on a real model and real text: next-token top-1 agreement and perplexity
against dense, through the compiled backend (``plan=<pattern>`` on every head).

    python benchmarks/pattern_accuracy.py --model smollm2 --length 4096          # CPU, ~10 min

Two budgets per pattern: its default (which at a few thousand tokens covers nearly every
key) and a scaled one that keeps about a quarter of the causal blocks at this length, so the
agreement says something. Results: benchmarks/results/pattern_accuracy_<model>_<length>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch

from mcompile.eval.evaluate import compare, scaled_budgets, score_pass
from mcompile.eval.models import load_model
from mcompile.eval.text import load_text, token_prompt
from mcompile.kernels.patterns import PATTERNS


def density(pattern: str, params: dict, n: int) -> float:
    """Computed blocks (columns counted as 1/64 of a block) over dense causal blocks; an upper
    bound for the patterns whose index depends on the input."""
    p = PATTERNS[pattern]
    blocks, cols = p.cost(n, p.validate(params), 64, 64)
    dense_blocks, _ = PATTERNS["dense"].cost(n, {}, 64, 64)
    return (blocks + cols / 64) / dense_blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--text", default="bible-kjv")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--offset", type=int, default=20000, help="tokens into the text (held-out from calibration)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, tok = load_model(args.model, device=args.device)
    ids = token_prompt(tok, load_text(args.text), args.length, args.offset).to(args.device)
    dense = score_pass(model, ids, {"plan": "dense", "min_len": 1})
    rows = []
    for budget_name, budgets in (("default", {p: {} for p in scaled_budgets(args.length)}),
                                 ("scaled", scaled_budgets(args.length))):
        for pattern, params in budgets.items():
            cmp = compare(model, ids, {"plan": {"pattern": pattern, **params}, "min_len": 1}, dense=dense)
            row = {"pattern": pattern, "budget": budget_name, "params": params,
                   "density_bound": density(pattern, params, args.length), **cmp.to_dict()}
            rows.append(row)
            print(f"{pattern:<17} {budget_name:<8} density<={row['density_bound']:.2f} "
                  f"measured {cmp.density if cmp.density is not None else float('nan'):.2f} top1 {cmp.top1_agreement:.2%}  ppl {cmp.dense_perplexity:.3f} -> {cmp.sparse_perplexity:.3f} "
                  f"({cmp.perplexity_change:+.2%})", flush=True)
    out = Path(args.out or Path(__file__).parent / f"results/pattern_accuracy_{args.model}_{args.length}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "text": args.text, "length": args.length, "offset": args.offset,
                               "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                               "cpu": platform.processor(), "torch": torch.__version__,
                               "date": datetime.date.today().isoformat(), "rows": rows}, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
