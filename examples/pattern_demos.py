"""Write a PNG per sparse pattern (the selected blocks/columns of one head, attention-gym
style) on small synthetic inputs with planted structure.

    python examples/pattern_demos.py [out_dir] [--n 1024]

One pattern alone: ``python -m mcompile.kernels.patterns.vertical_slash out.png``.
"""
from __future__ import annotations

import argparse
import os

from mcompile.kernels.patterns import PATTERNS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", default="pattern_demos")
    ap.add_argument("--n", type=int, default=1024, help="sequence length (default 1024)")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, pattern in sorted(PATTERNS.items()):
        print(pattern.demo(os.path.join(args.out_dir, f"{name}.png"), n=args.n))


if __name__ == "__main__":
    main()
