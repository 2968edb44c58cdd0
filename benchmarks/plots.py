"""Plots of the benchmark results JSONs in benchmarks/results/ (PNG, for the README); which
plots and from which JSONs: mcompile/eval/plots.py. Missing inputs are skipped with a message.

    python benchmarks/plots.py                                   # every prefill_*.json / eval*.json in results/
    python benchmarks/plots.py --prefill a.json b.json --eval e.json --out-dir /tmp/plots
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mcompile, if not installed

from mcompile.eval.plots import main  # noqa: E402

if __name__ == "__main__":
    main(results_dir=Path(__file__).resolve().parent / "results")
