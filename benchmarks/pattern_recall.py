"""Attention-mass recall of each registered pattern, per head, at equal cost.

Reads the per-candidate scores a search wrote (``mcompile search --details FILE``): every
candidate of every registered pattern scored on the captured q/k/v of every searched
(full-attention) layer and query head, averaged over the calibration prompts, with its
measured cost (kernel tiles of the built index plus the index builder's own work, as a
fraction of dense causal attention). So no model runs here: this is a view of the search.

For each pattern, each head and each cost target ``c``: the best recall among that pattern's
candidates whose measured cost on that head is at most ``c`` (``-`` when even its cheapest
candidate costs more; the means are over the heads where one fits). Output: a JSON file and two tables (markdown): the mean (and minimum)
over heads per pattern and cost target, and per head at one cost target.

    python benchmarks/pattern_recall.py benchmarks/results/search_gemma3-270m_32768.details.json \\
        --costs 0.1,0.2,0.35 --per-head 0.2 --out benchmarks/results/pattern_recall_gemma3-270m_32768.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mcompile, if not installed

from mcompile.cli_types import floats  # noqa: E402
from mcompile.eval.pattern_recall import analyse, head_table, summary_table  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("details", help="JSON written by mcompile search --details")
    p.add_argument("--costs", type=floats, default="0.1,0.2,0.35", help="cost targets (fractions of dense causal attention)")
    p.add_argument("--per-head", type=float, default=0.2, help="the cost target of the per-head table")
    p.add_argument("--out", default=None, help="JSON to write")
    args = p.parse_args()
    costs = args.costs
    if args.per_head not in costs:
        costs.append(args.per_head)
    details = json.loads(Path(args.details).read_text())
    res = analyse(details, costs)
    res["source"] = str(args.details)
    res["command"] = "python " + " ".join(sys.argv)
    for k in ("config", "timings"):
        if k in details:
            res["search_" + k] = details[k]
    print(f"attention-mass recall at equal cost, {len(res['layers'])} full-attention layers x {res['num_heads']} "
          f"heads, {res['length']} tokens, mean of {res['samples']} calibration prompts "
          "(cost = kernel tiles + index building, of dense causal attention)\n")
    print(summary_table(res))
    print(f"\nper head, cost <= {args.per_head:g} (bold: the best pattern for that head)\n")
    print(head_table(res, args.per_head))
    if args.out:
        res["tables"] = {"summary": summary_table(res), "per_head": head_table(res, args.per_head)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
