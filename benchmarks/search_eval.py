"""Evidence for the offline pattern search, on a real model and public-domain text.

Two experiments, both ending in a JSON file under benchmarks/results/ and a printed table:
``scoring`` asks which scoring (output error or attention-mass recall) predicts perplexity
(``plans_for_scoring``); ``plans`` sets the searched plan against MInference's default plan and
the best single pattern at equal cost (``plans_for_evidence``). Every plan runs through the
compiled backend on held-out text (``evaluate_plans``).

    python benchmarks/search_eval.py scoring --model smollm2 --length 2048 --calib 4 --heldout 3
    python benchmarks/search_eval.py plans --model smollm2 --length 8192 --heldout 2 \\
        --details smollm2-8k.details.json --budget 0.2
    python benchmarks/search_eval.py plans --model gemma3-270m --length 32768 --device cuda ...

``--details`` reuses the per-candidate scores a search wrote (``mcompile search --details``);
without it the calibration prompts are captured and scored here (``calibration_scores``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcompile.cli_types import floats
from mcompile.eval.models import load_model
from mcompile.eval.text import adds_bos, load_text, prompt_windows, text_tokens
from mcompile.kernels.patterns import build_layer_index
from mcompile.pattern_db import Provenance, save_db
from mcompile.pattern_db.lookup import DEFAULT_PARAMS, DEFAULT_PATTERN
from mcompile.pattern_db.search import (KNOWN_NAMES, SearchScores, attention_scale, build_database, capture_prompts,
                                        choose, model_identity, plan_metrics, score_capture, uniform_choice)
from mcompile.pattern_db.search.allocation import best_uniform
from mcompile.pattern_db.search.candidates import (MINFERENCE_DEFAULT_LABEL, build_overhead, make_candidates,
                                                   minference_default_index)
from mcompile.capture import capture_samples, load_layer
from mcompile.pattern_db.search.scoring import score_layer, scored_query_blocks
from mcompile.plan import LayerPlan

RESULTS = Path(__file__).parent / "results"


# --- held-out passes through the compiled backend ------------------------------------------------------
def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def passes(model, windows: list[torch.Tensor], options: dict, chunk: int = 1024) -> list[dict]:
    """One compile of the decoder with ``options``, then every window: summed NLL, top-1
    predictions (positions 0..N-2) and the seconds of the forward."""
    torch._dynamo.reset()
    decoder = torch.compile(model.get_decoder(), backend="minference", dynamic=False, options=options)
    out = []
    for ids in windows:
        t = time.perf_counter()
        hidden = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
        sec = time.perf_counter() - t
        n = ids.shape[1]
        nll, top1 = [], []
        for s in range(0, n - 1, chunk):
            e = min(s + chunk, n - 1)
            lg = _logits(model, hidden[:, s:e])
            nll.append(F.cross_entropy(lg[0], ids[0, s + 1:e + 1], reduction="none").double().cpu())
            top1.append(lg[0].argmax(-1).cpu())
        out.append({"nll": torch.cat(nll), "top1": torch.cat(top1), "seconds": sec})
    torch._dynamo.reset()
    return out


def compare(dense: list[dict], sparse: list[dict]) -> dict:
    """Perplexity of dense and sparse over all held-out tokens, its relative change, and top-1
    agreement; also over the second half of each window (where sparsity bites most)."""
    def ppl(rs, half=False):
        x = torch.cat([r["nll"][len(r["nll"]) // 2:] if half else r["nll"] for r in rs])
        return math.exp(float(x.mean()))
    agree = torch.cat([(d["top1"] == s["top1"]).float() for d, s in zip(dense, sparse)])
    agree2 = torch.cat([(d["top1"] == s["top1"])[len(d["top1"]) // 2:].float() for d, s in zip(dense, sparse)])
    pd, ps = ppl(dense), ppl(sparse)
    pd2, ps2 = ppl(dense, True), ppl(sparse, True)
    return {"dense_ppl": pd, "sparse_ppl": ps, "ppl_change": ps / pd - 1, "top1_agreement": float(agree.mean()),
            "ppl_change_second_half": ps2 / pd2 - 1, "top1_agreement_second_half": float(agree2.mean()),
            "sparse_seconds": [round(r["seconds"], 2) for r in sparse]}


# --- held-out q/k/v: what a plan recalls on text it was not searched on ---------------------------
def heldout_metrics(capture_dir: Path, layers: list[int], layer_plan, scale, device: str,
                    max_query_blocks: int | None) -> dict:
    """Mean over searched heads and held-out samples of recall, output error and cost (kernel
    tiles plus index building) of the index ``build_layer_index`` makes from the plan."""
    rec, err, cost = [], [], []
    for sdir in capture_samples(capture_dir):
        for layer in layers:
            d = load_layer(sdir, layer)
            q, k, v = (d[x].to(device).float() for x in ("q", "k", "v"))
            plan = layer_plan(layer)
            n = q.shape[2]
            ix = build_layer_index(q, k, plan, scale=scale)
            ls = score_layer(q, k, v, [ix], scale=scale, query_blocks=scored_query_blocks(n, max_query_blocks))
            over = np.array([build_overhead(h.pattern, h.params, n) for h in plan.heads])
            rec.append(ls.recall[0].numpy()), err.append(ls.error[0].numpy()), cost.append(ls.cost[0].numpy() + over)
    return {"recall": float(np.mean(rec)), "error": float(np.mean(err)), "cost": float(np.mean(cost))}


# --- plans ----------------------------------------------------------------------------------------------
class Plan:
    def __init__(self, name: str, kind: str, choice: np.ndarray | None = None, budget: float | None = None,
                 scoring: str | None = None):
        self.name, self.kind, self.choice, self.budget, self.scoring = name, kind, choice, budget, scoring


def plan_layer_fn(plan: Plan, scores: SearchScores, num_heads: int):
    if plan.choice is None:       # MInference's default
        return lambda layer: LayerPlan.uniform(DEFAULT_PATTERN, num_heads, **DEFAULT_PARAMS)
    by_layer = {l: i for i, l in enumerate(scores.layers)}
    db = build_database_for(plan, scores)
    return lambda layer: db.layers[layer].layer_plan() if layer in by_layer else None


_DB_CACHE: dict[int, object] = {}
IDENTITY = {}


def build_database_for(plan: Plan, scores: SearchScores):
    key = id(plan)
    if key not in _DB_CACHE:
        _DB_CACHE[key] = build_database(IDENTITY["id"], scores, plan.choice,
                                        Provenance(command=" ".join(sys.argv), notes=f"benchmark plan {plan.name}"))
    return _DB_CACHE[key]


def plan_options(plan: Plan, scores: SearchScores, tmp: Path, min_len: int) -> dict:
    if plan.choice is None:
        return {"db": None, "min_len": min_len}
    path = tmp / f"{plan.name.replace(' ', '_').replace('/', '_')}.json"
    save_db(build_database_for(plan, scores), path)
    return {"db": str(path), "min_len": min_len}


# --- helpers -----------------------------------------------------------------------------------------
def spearman(x, y) -> float:
    def ranks(a):
        a = np.asarray(a, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for v in np.unique(a):               # average ranks for ties
            m = a == v
            r[m] = r[m].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def environment(device: str) -> dict:
    import transformers
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = None
    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else
            f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "git_commit": commit}


def windows_for(tokenizer, tokens, length, count, seed, region):
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    return prompt_windows(tokens, length, count, seed, region, bos)


def calibration_scores(args, model, tokenizer, tokens, layers, scale, work: Path) -> SearchScores:
    if args.details:
        obj = json.loads(Path(args.details).read_text())
        return SearchScores.from_obj(obj["scores"] if "scores" in obj else obj)
    cap = work / "calib"
    if not (args.reuse and (cap / "meta.json").exists()):
        wins = windows_for(tokenizer, tokens, args.length, args.calib, args.seed, "calibration")
        t = time.perf_counter()
        capture_prompts(model, [w.to(args.device) for _, w in wins], cap, args.device)
        print(f"captured {args.calib} calibration windows in {time.perf_counter() - t:.0f} s", flush=True)
    scores = score_capture(cap, layers, make_candidates(args.length), scale=scale, device=args.device,
                           max_query_blocks=args.max_query_blocks)
    (work / "calib_scores.json").write_text(json.dumps({"scores": scores.to_obj()}))
    return scores


def evaluate_plans(args, model, tokenizer, tokens, plans: list[Plan], scores: SearchScores, layers, scale,
                   work: Path) -> tuple[list[dict], dict]:
    """Run every plan through the compiled backend (``options={"db": path, "min_len": ...}``)
    on held-out windows (the second half of the text): perplexity change and top-1 agreement
    with dense."""
    heldout = windows_for(tokenizer, tokens, args.length, args.heldout, args.seed, "heldout")
    wins = [w.to(args.device).contiguous() for _, w in heldout]
    cap = work / "heldout"
    if not (args.reuse and (cap / "meta.json").exists()):
        capture_prompts(model, wins, cap, args.device)
    t = time.perf_counter()
    dense = passes(model, wins, {"plan": "dense", "min_len": args.min_len})
    print(f"dense passes: {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    tmp = work / "dbs"
    tmp.mkdir(exist_ok=True)
    H = scores.num_heads
    for plan in plans:
        t = time.perf_counter()
        row = {"plan": plan.name, "kind": plan.kind, "budget": plan.budget, "scoring": plan.scoring}
        if plan.choice is not None:
            row["calibration"] = plan_metrics(scores, plan.choice)
            row["patterns"] = dict(sorted(_counts(scores, plan.choice).items()))
        else:
            d = minference_default_index(scores.candidates)
            if d is not None:
                row["calibration"] = plan_metrics(scores, uniform_choice(scores, d))
        row["heldout"] = heldout_metrics(cap, layers, plan_layer_fn(plan, scores, H), scale, args.device,
                                         args.max_query_blocks)
        row.update(compare(dense, passes(model, wins, plan_options(plan, scores, tmp, args.min_len))))
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(f"  {plan.name:40s} cost {row['heldout']['cost']:.3f} recall {row['heldout']['recall']:.4f} "
              f"err {row['heldout']['error']:.4f}  ppl {row['ppl_change']:+.3%}  top-1 {row['top1_agreement']:.2%}"
              f"  ({row['seconds']:.0f} s)", flush=True)
    return rows, {"offsets": [o for o, _ in heldout], "dense_seconds": [round(r["seconds"], 2) for r in dense]}


def _counts(scores, choice):
    out = {}
    for c in choice.reshape(-1):
        p = scores.candidates[int(c)].pattern
        out[p] = out.get(p, 0) + 1
    return out


def table(rows: list[dict]) -> str:
    head = (f"{'plan':40s} {'cost':>6} {'recall':>7} {'out.err':>7} {'ppl':>9} {'top-1':>7}   "
            f"(cost/recall/error on held-out q/k/v; ppl change and top-1 agreement vs dense on held-out text)")
    lines = [head]
    for r in rows:
        h = r["heldout"]
        lines.append(f"{r['plan']:40s} {h['cost']:6.3f} {h['recall']:7.4f} {h['error']:7.4f} "
                     f"{r['ppl_change']:+9.3%} {r['top1_agreement']:7.2%}")
    return "\n".join(lines)


# --- experiments -----------------------------------------------------------------------------------
def plans_for_scoring(scores: SearchScores, budgets: list[float], variety_budget: float) -> list[Plan]:
    """The ``scoring`` experiment's plans. Candidates are scored once on calibration prompts
    (both measures), then plans are built at the same cost budgets by each scoring (relative
    output error vs attention-mass recall), plus single-pattern plans for variety. Reported:
    the perplexity of the two scorings' plans at each budget, and across all plans the rank
    correlation (Spearman) of each measure with the perplexity change."""
    plans = []
    for b in budgets:
        for sc in ("output", "recall"):
            plans.append(Plan(f"searched {sc} @{b:g}", "searched", choose(scores, b, sc), b, sc))
    for name in dict.fromkeys(c.pattern for c in scores.candidates):
        if name == "dense":
            continue
        ch = choose(scores, variety_budget, "output", [name])
        if plan_metrics(scores, ch)["cost"] <= variety_budget * 1.05:
            plans.append(Plan(f"{name} only @{variety_budget:g}", "pattern_only", ch, variety_budget, "output"))
    return plans


def plans_for_evidence(scores: SearchScores, budget: float, scoring: str,
                       extra_budgets: list[float] = ()) -> list[Plan]:
    """The ``plans`` experiment's plans: the searched plan against MInference's default plan
    (vertical-slash 1000/6096 on every head) and the best single pattern for all
    heads at equal cost. Reported: recall, output error and cost on held-out q/k/v, perplexity
    change and top-1 agreement on held-out text."""
    searched = choose(scores, budget, scoring)
    spent = plan_metrics(scores, searched)["cost"]
    plans = [Plan(f"searched ({scoring}) @{budget:g}", "searched", searched, budget, scoring),
             Plan(MINFERENCE_DEFAULT_LABEL, "minference_default")]
    for b in extra_budgets:
        plans.append(Plan(f"searched ({scoring}) @{b:g}", "searched_other_budget", choose(scores, b, scoring), b,
                          scoring))
    d = minference_default_index(scores.candidates)
    if d is not None:
        dc = plan_metrics(scores, uniform_choice(scores, d))["cost"]
        if dc < 0.999 and abs(dc - budget) > 0.01:
            plans.append(Plan(f"searched ({scoring}) @default cost {dc:.3f}", "searched_at_default_cost",
                              choose(scores, dc, scoring), dc, scoring))
    best, best_err = None, None
    for name in dict.fromkeys(c.pattern for c in scores.candidates):
        if name == "dense":
            continue
        ch = choose(scores, spent, scoring, [name])
        m = plan_metrics(scores, ch)
        if m["cost"] <= spent * 1.05 and (best is None or m["error" if scoring == "output" else "recall"] *
                                          (1 if scoring == "output" else -1) < best_err):
            best, best_err = (name, ch), m["error"] if scoring == "output" else -m["recall"]
    if best is not None:
        plans.append(Plan(f"best single pattern: {best[0]} (per-head budgets)", "best_single_pattern", best[1],
                          spent, scoring))
    flat_cost, flat_loss = scores.flat(scores.cost), scores.flat(scores.loss(scoring))
    u = best_uniform(flat_cost, flat_loss, spent, ~np.array([c.pattern == "dense" for c in scores.candidates]))
    if u is not None:
        plans.append(Plan(f"best uniform {scores.candidates[u].label}", "best_uniform", uniform_choice(scores, u),
                          spent, scoring))
    return plans


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=["scoring", "plans"])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--text", default="bible-kjv")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--calib", type=int, default=4, help="calibration windows (without --details)")
    p.add_argument("--heldout", type=int, default=3, help="held-out windows")
    p.add_argument("--budgets", type=floats, default="0.15,0.25,0.35", help="scoring: the budgets compared")
    p.add_argument("--budget", type=float, default=0.2, help="plans: the searched plan's budget")
    p.add_argument("--extra-budgets", type=floats, default="", help="plans: searched plans at these budgets too")
    p.add_argument("--scoring", default="output", choices=["output", "recall"], help="plans: scoring")
    p.add_argument("--details", default=None, help="per-candidate scores from mcompile search --details")
    p.add_argument("--min-len", type=int, default=None, help="backend min_len (default: the length)")
    p.add_argument("--max-query-blocks", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--work", default=None, help="keep captures and plans here (default: a temporary dir)")
    p.add_argument("--reuse", action="store_true", help="reuse captures already in --work")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.min_len = args.min_len or args.length
    if args.max_query_blocks is None and args.device == "cpu" and args.length > 4096:
        args.max_query_blocks = 48
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=getattr(torch, dtype), device=args.device)
    identity = model_identity(model, KNOWN_NAMES.get(args.model, args.model))
    IDENTITY["id"] = identity
    layers = [l for l in range(identity.num_layers) if l not in identity.sliding_layers]
    scale = attention_scale(model.config)
    tokens = text_tokens(tokenizer, load_text(args.text))
    tmpdir = None
    if args.work is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="search-eval-")
        work = Path(tmpdir.name)
    else:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    scores = calibration_scores(args, model, tokenizer, tokens, layers, scale, work)
    if scores.length != args.length:
        raise SystemExit(f"the scores are for length {scores.length}, not {args.length}")
    result = {"experiment": args.experiment, "model": args.model, "model_identity": identity.describe(),
              "text": args.text, "length": args.length, "dtype": dtype, "calibration_samples": scores.samples,
              "candidates": len(scores.candidates), **environment(args.device)}
    if args.experiment == "scoring":
        budgets = args.budgets
        plans = plans_for_scoring(scores, budgets, budgets[len(budgets) // 2])
    else:
        plans = plans_for_evidence(scores, args.budget, args.scoring,
                                   args.extra_budgets)
    rows, info = evaluate_plans(args, model, tokenizer, tokens, plans, scores, layers, scale, work)
    result.update(info)
    result["plans"] = rows
    print()
    print(table(rows))
    if args.experiment == "scoring":
        y = [r["ppl_change"] for r in rows]
        corr = {}
        for where in ("calibration", "heldout"):
            xs = [r.get(where) for r in rows]
            if all(x is not None for x in xs):
                corr[where] = {"error_vs_ppl_change": spearman([x["error"] for x in xs], y),
                               "one_minus_recall_vs_ppl_change": spearman([1 - x["recall"] for x in xs], y)}
        head2head = []
        for b in budgets:
            o = next(r for r in rows if r["plan"] == f"searched output @{b:g}")
            r_ = next(r for r in rows if r["plan"] == f"searched recall @{b:g}")
            head2head.append({"budget": b, "output_ppl_change": o["ppl_change"], "recall_ppl_change": r_["ppl_change"],
                              "output_top1": o["top1_agreement"], "recall_top1": r_["top1_agreement"],
                              "output_cost": o["heldout"]["cost"], "recall_cost": r_["heldout"]["cost"]})
        result["spearman"] = corr
        result["head_to_head"] = head2head
        print("\nSpearman rank correlation with the perplexity change, across the plans above:")
        for where, c in corr.items():
            print(f"  {where:12s} output error {c['error_vs_ppl_change']:+.3f}   "
                  f"1 - recall {c['one_minus_recall_vs_ppl_change']:+.3f}")
        print("\nsame budget, plans chosen by each scoring (perplexity change on held-out text):")
        for h in head2head:
            print(f"  budget {h['budget']:g}: by output error {h['output_ppl_change']:+.3%} "
                  f"(cost {h['output_cost']:.3f}), by recall {h['recall_ppl_change']:+.3%} "
                  f"(cost {h['recall_cost']:.3f})")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out) if args.out else RESULTS / f"search_{args.experiment}_{args.model}_{args.length}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    if tmpdir is not None:
        tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
