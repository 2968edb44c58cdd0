"""A plan calibrated at short lengths against one calibrated at the target length, at the same
predicted GPU time there: does the short calibration lose accuracy?

    python benchmarks/laws_same_time.py --model smollm2 --details FILE --short 2048,4096 \\
        --target 8192 --budget 0.59 --windows 2 --device cpu

``FILE`` is one search's details (``mcompile search --lengths 2048,4096,8192 --details FILE``),
so both plans come from the same scores without running the model again. Steps:

1. the short plan: ``mcompile search --from-details FILE --lengths SHORT --budget BUDGET``,
   priced at the target (``--price-length TARGET``), with ``--refuse-rising-families`` unless
   ``--keep-rising-families``;
2. its predicted time at the target, of dense attention's (``mcompile db cost``);
3. the target plan: ``--lengths TARGET`` at the largest budget whose predicted time at the
   target does not exceed the short plan's (bisection);
4. both on the same held-out windows at the target (``mcompile eval``): perplexity change and
   top-1 agreement against dense.

Output: JSON (``--out``, default ``benchmarks/results/laws_same_time_<model>_<target>.json``)
with both plans' databases, predicted times and densities (at the shortest calibration length
and the target) and evaluations, and a printed table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from mcompile.cli import main as mcompile_main
from mcompile.pattern_db import load_db
from mcompile.pattern_db.cost import plan_cost
from mcompile.pattern_db.search.cli import main as search_main
from mcompile.reporting import text_table

BISECTION_STEPS = 12


def reselect(args, lengths: list[int], budget: float, out: Path) -> Path:
    argv = ["--model", args.model, "--from-details", str(args.details), "--lengths", ",".join(map(str, lengths)),
            "--price-length", str(args.target), "--budget", f"{budget:.6g}", "--out", str(out), "--overwrite"]
    if len(lengths) > 1 and not args.keep_rising_families:
        argv.append("--refuse-rising-families")
    if search_main(argv) != 0:
        raise SystemExit(f"mcompile search {' '.join(argv)} failed")
    return out


def costs(path: Path, lengths: list[int]) -> dict[int, dict]:
    return {c.n: c.to_obj() for c in plan_cost(load_db(path), lengths)}


def matched_budget(args, work: Path, goal: float) -> tuple[float, Path]:
    """The largest budget whose target plan's predicted time at the target is <= goal."""
    lo, hi, best = 0.01, 1.0, None
    for step in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        path = reselect(args, [args.target], mid, work / f"target_{step}.json")
        if costs(path, [args.target])[args.target]["time_vs_dense"] <= goal:
            lo, best = mid, (mid, path)
        else:
            hi = mid
    if best is None:
        raise SystemExit(f"no target-length plan is as cheap as {goal:.4f} of dense at {args.target}")
    return best


def evaluate(args, db: Path, out: Path) -> dict:
    """``mcompile eval``'s JSON for the plan in ``db`` at the target length."""
    argv = ["eval", "--model", args.model, "--length", str(args.target), "--windows", str(args.windows),
            "--db", str(db), "--device", args.device, "--out", str(out)]
    if mcompile_main(argv) != 0:
        raise SystemExit(f"mcompile {' '.join(argv)} failed")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--details", type=Path, required=True, help="a search's --details file with every length")
    p.add_argument("--short", default="2048,4096", help="the short calibration lengths (comma list)")
    p.add_argument("--target", type=int, default=8192, help="the length both plans are priced and checked at")
    p.add_argument("--budget", type=float, required=True, help="the short plan's budget (time at the target)")
    p.add_argument("--keep-rising-families", action="store_true")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=Path("/tmp/laws_same_time"), help="scratch databases")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    short = sorted(int(x) for x in args.short.split(","))
    out = args.out or Path(f"benchmarks/results/laws_same_time_{args.model}_{args.target}.json")
    args.work.mkdir(parents=True, exist_ok=True)

    short_db = reselect(args, short, args.budget, args.work / "short.json")
    goal = costs(short_db, [args.target])[args.target]["time_vs_dense"]
    target_budget, target_db = matched_budget(args, args.work, goal)
    plans = {"short": (args.budget, short_db), "target": (target_budget, target_db)}
    rows, evaluated = {}, {}
    for name, (budget, db) in plans.items():
        evaluated = evaluate(args, db, args.work / f"eval_{name}.json")
        rows[name] = {"calibration": short if name == "short" else [args.target], "budget": round(budget, 4),
                      "cost": costs(db, [short[0], args.target]), "db": json.loads(db.read_text()),
                      "eval": evaluated["perplexity"]}
    result = {"benchmark": "laws_same_time", "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/laws_same_time.py", *(argv or sys.argv[1:])]),
              "model": args.model, "target": args.target, "device": evaluated.get("device", args.device),
              "torch": evaluated.get("torch"), "transformers": evaluated.get("transformers"), "plans": rows}
    out.write_text(json.dumps(result, indent=1) + "\n")
    table = [(name, ",".join(map(str, r["calibration"])), f"{r['budget']:.3f}",
              f"{r['eval']['top1_agreement']:.2%}", f"{r['eval']['perplexity_change']:+.2%}",
              f"{r['cost'][args.target]['time_vs_dense']:.3f}",
              f"{r['cost'][short[0]]['density']:.3f} / {r['cost'][args.target]['density']:.3f}")
             for name, r in rows.items()]
    print("\n".join(text_table(("plan", "calibrated at", "budget", "top-1", "perplexity",
                                f"time at {args.target}", f"density {short[0]} / {args.target}"), table)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
