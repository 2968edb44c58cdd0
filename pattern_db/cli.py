"""``mcompile db ...``: show, validate, import and diff pattern databases.

``add_db_parser(subparsers)`` adds the ``db`` group to the top-level ``mcompile`` parser;
each leaf parser sets ``func`` (``args.func(args) -> int`` exit status). User errors are
printed as one clear message on stderr (no traceback) with exit status 1 (``diff``: 0 same,
1 different, 2 error, like diff(1)).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable, Sequence

from mcompile.cli_types import lengths

from .errors import PatternDBError
from .identity import ModelIdentity, parse_model_shape
from .io import load_db, read_json_file, save_db
from .lookup import _check_fingerprint
from .minference_import import import_minference, import_sglang_config
from .summary import diff_dbs, plot_db, summary_text


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _guard(fn: Callable[[argparse.Namespace], int], fail: int = 1
           ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (PatternDBError, ValueError, RuntimeError, OSError) as e:
            _err(str(e))
            return fail
    run.__name__ = fn.__name__
    return run


def _model_from_args(args: argparse.Namespace) -> ModelIdentity | None:
    if getattr(args, "config", None):
        cfg = read_json_file(args.config)
        if not isinstance(cfg, dict):
            raise ValueError(f"{args.config}: not a model config.json object")
        return ModelIdentity.from_hf_config(cfg, name=getattr(args, "name", None))
    if getattr(args, "model_shape", None):
        L, H, KV, D = parse_model_shape(args.model_shape)
        return ModelIdentity(L, H, KV, D, name=getattr(args, "name", None))
    return None


def cmd_show(args: argparse.Namespace) -> int:
    db = load_db(args.file)
    print(summary_text(db, args.file))
    if args.plot:
        plot_db(db, args.plot, args.length)
        print(f"\nwrote {args.plot}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    db = load_db(args.file)
    model = _model_from_args(args)
    if model is not None:
        _check_fingerprint(db, args.file, model, force=False)
    kinds = [l.kind for l in db.layers]
    print(f"OK: {args.file}: {db.model.describe()}; {kinds.count('searched')} searched, "
          f"{kinds.count('sliding')} sliding, {kinds.count('not_searched')} not searched layers"
          + (" (matches the given model)" if model is not None else ""))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    command = " ".join(shlex.quote(a) for a in args._argv) if getattr(args, "_argv", None) \
        else f"mcompile db import --from {args.source} {args.input} {args.output}"
    if args.source == "minference":
        model = _model_from_args(args)
        if model is None:
            raise ValueError(
                f"{args.input}: a MInference file gives layers and query heads but not kv heads "
                "or head dim: pass --model-shape LAYERS,HEADS,KV_HEADS,HEAD_DIM or --config "
                "config.json")
        db = import_minference(args.input, model, command=command)
    else:
        db = import_sglang_config(args.input, name=args.name, command=command)
    save_db(db, out)
    counts = db.pattern_counts()
    print(f"wrote {out}: {db.model.describe()}; heads: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    a, b = load_db(args.a), load_db(args.b)
    lines = diff_dbs(a, b)
    if not lines:
        print(f"same plan: {args.a} and {args.b}")
        return 0
    print(f"--- {args.a}\n+++ {args.b}")
    for line in lines:
        print(line)
    return 1


def _db_or_default(args: argparse.Namespace):
    """The database FILE names (a path or a shipped key), or with ``default`` the default plan
    for ``--model-shape``/``--config``."""
    from .database import HeadEntry, LayerEntry, PatternDB, Provenance
    from .lookup import DEFAULT_PARAMS, DEFAULT_PATTERN, shipped_databases
    if args.file == "default":
        model = _model_from_args(args)
        if model is None:
            raise ValueError("the default plan needs the model's shape: pass --model-shape L,H,KV,D or --config")
        head = HeadEntry(DEFAULT_PATTERN, dict(DEFAULT_PARAMS))
        layers = [LayerEntry.sliding(model.sliding_window) if i in model.sliding_layers
                  else LayerEntry.searched([head] * model.num_heads) for i in range(model.num_layers)]
        return PatternDB.build(model, layers, Provenance(source="the default plan"))
    shipped = shipped_databases()
    if not Path(args.file).exists() and args.file in shipped:
        return load_db(shipped[args.file])
    return load_db(args.file)


def cmd_cost(args: argparse.Namespace) -> int:
    import json

    from .cost import cost_table, plan_cost
    from mcompile.kernels.cost_model import shipped
    rows = plan_cost(_db_or_default(args), args.lengths)
    if args.json:
        print(json.dumps([r.to_obj() for r in rows]))
    else:
        print(cost_table(rows, shipped().device))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-shape", metavar="L,H,KV,D",
                   help="model shape: layers, query heads, kv heads, head dim (e.g. 30,9,3,64)")
    g.add_argument("--config", metavar="CONFIG.json",
                   help="the model's transformers config.json (read locally, nothing fetched)")


def add_db_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``db {show,validate,import,cost,diff}`` to a top-level subparsers object."""
    db = subparsers.add_parser("db", help="inspect, validate, import and diff pattern databases",
                               description="Pattern database tools.")
    sub = db.add_subparsers(dest="db_command", metavar="{show,validate,import,cost,diff}")
    sub.required = True

    p = sub.add_parser("show", help="per-layer summary table (and --plot a PNG heat map)")
    p.add_argument("file", help="pattern database JSON file")
    p.add_argument("--plot", metavar="OUT.png", help="write a heat map of patterns and budgets")
    p.add_argument("--length", type=int, default=None,
                   help="sequence length for the estimated density (default: calibration "
                        "length, else 32768)")
    p.set_defaults(func=_guard(cmd_show))

    p = sub.add_parser("validate", help="validate a database (optionally against a model)")
    p.add_argument("file", help="pattern database JSON file")
    _add_model_args(p)
    p.set_defaults(func=_guard(cmd_validate))

    p = sub.add_parser("import", help="convert a MInference / SGLang pattern file",
                       description="MInference 1.0: IN is the *_best_pattern*.json list "
                                   "(needs --model-shape or --config). SGLang: IN is a model "
                                   "config.json with dual_chunk_attention_config."
                                   "sparse_attention_config.")
    p.add_argument("--from", dest="source", required=True, choices=("minference", "sglang"))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    _add_model_args(p)
    p.add_argument("--name", help="model name to record")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_guard(cmd_import))

    p = sub.add_parser("cost", help="density and predicted GPU time against dense, per length",
                       description="Per length: the plan's density (computed blocks and columns of dense causal "
                                   "attention) and its predicted GPU time against dense from the measured cost "
                                   "model, over the full-attention (searched) layers.")
    p.add_argument("file", help="pattern database JSON file, a shipped database's key, or 'default' (the default "
                                "plan; needs --model-shape or --config)")
    p.add_argument("--lengths", type=lengths, default=[8192, 32768, 131072, 1048576],
                   help="comma-separated token counts (default 8192,32768,131072,1048576; K and M suffixes)")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"n", "density", "time_vs_dense"}')
    _add_model_args(p)
    p.set_defaults(func=_guard(cmd_cost))

    p = sub.add_parser("diff", help="differences in plan between two databases "
                                    "(exit 0 same, 1 different, 2 error)")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.set_defaults(func=_guard(cmd_diff, fail=2))
    return db


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcompile")
    add_db_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m mcompile.pattern_db.cli db ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = ["mcompile"] + argv
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
