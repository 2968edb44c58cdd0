"""The ``mcompile`` console script: ``report``, ``db``, ``eval`` (and ``search``)."""
from __future__ import annotations

import argparse
import sys

from .reporting import Report


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        saved = Report.load(args.file)
        print(saved.format_heads() if args.heads else saved)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"mcompile report: cannot read {args.file}: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcompile", description="Sparse-attention torch.compile backend tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("report", help="print a report saved with options={'report': FILE}")
    p.add_argument("file")
    p.add_argument("--heads", action="store_true", help="print the full plan of every query head")
    p.set_defaults(func=_cmd_report)
    from .eval.cli import add_eval_parser
    from .pattern_db.cli import add_db_parser
    from .pattern_db.search.cli import add_search_parser

    add_db_parser(sub)
    add_search_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
