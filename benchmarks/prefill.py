"""Time-to-first-token of a whole-model prefill: dense SDPA vs sparse attention, both through Inductor.

Model: LLaMA-3-8B-shaped (``--shape``), random weights built on the device (no download); a
slice of a few layers (``--layers 4``) reaches 256K-1M tokens and is extrapolated to the full
depth. Variants: ``dense`` (``DENSE_NOTE`` says why it is the baseline) and ``minference``
(``default_layer_plan``), each compiled once and timed per length by ``run_variant``;
``main``'s docstring gives the commands behind the shipped results.

    python benchmarks/prefill.py --layers 32 --lengths 32768,65536,131072 --stats
    python benchmarks/prefill.py --shape tiny --lengths 512,1024 --min-len 256 --device cpu   # smoke test

Results: benchmarks/results/prefill_<gpu>_<layers>L.json (``--out``) and a printed table;
benchmarks/plots.py draws them; README.md ("Whole-model prefill") discusses them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mcompile, if not installed

from mcompile.cli_types import INTS_SYNTAX, comma_list  # noqa: E402
from mcompile.eval.synthetic import LOCALITY_DEFAULTS, SHAPES, apply_init, build_model, chunk_mlps  # noqa: E402
from mcompile.pattern_db.lookup import DEFAULT_PARAMS as DEFAULT_PLAN  # noqa: E402 (the backend's default plan, db=None)
from timing import time_ms  # noqa: E402  (benchmarks/timing.py)

# The dense baseline: ``torch.compile(model, backend="minference", options={"plan": "dense"})``,
# where each attention is SDPA with ``is_causal=True`` (the backend drops transformers' causal
# mask). Plain ``torch.compile(model)`` is not the baseline because its graph calls SDPA with a
# materialised (1, 1, N, N) mask; ``--inductor-plain-lengths`` times it anyway where it fits.
DENSE_NOTE = ("dense = torch.compile(model, backend='minference', options={'plan': 'dense'}): Inductor compiles the "
              "model; each attention runs PyTorch SDPA with is_causal=True (transformers' causal mask recognised and "
              "dropped). Plain torch.compile(model) builds a (1,1,N,N) mask in the graph (torch 2.13, transformers "
              "5.x) and runs SDPA with it; see rows 'inductor-plain' if any.")


# --- timing helpers -----------------------------------------------------------------------------
def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    if _cuda(device):
        torch.cuda.synchronize()


def time_once(fn, device: str) -> float:
    """Milliseconds of one call: CUDA events on the GPU, perf_counter on the CPU."""
    return time_ms(fn, _cuda(device))


def reset_peak(device: str) -> None:
    if _cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if _cuda(device) else None


def measure(fn, repeats: int, device: str, single_s: float, compile_call: bool) -> dict:
    """First call (warm-up, or the compile), then ``repeats`` timed calls; a first call longer than
    ``single_s`` that is not a compile is kept as the only sample. A first call that compiled a
    new graph (a recompile: e.g. Inductor's 32-bit indexing guard fails once N x hidden >= 2^31)
    counts as a compile call, never as a sample. Times are CUDA events on a GPU; the result
    is the median of the samples."""
    reset_peak(device)
    _sync(device)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    t = time.perf_counter()
    first_ms = time_once(fn, device)
    first_s = time.perf_counter() - t
    if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
        compile_call = True
    if not compile_call and first_s > single_s:
        return {"first_call_s": round(first_s, 2), "ms": first_ms, "all_ms": [first_ms], "samples": "first call only",
                "peak_gib": peak_gib(device)}
    reset_peak(device)
    times = [time_once(fn, device) for _ in range(repeats)]
    ms = statistics.median(times)
    out = {"first_call_s": round(first_s, 2), "ms": ms, "all_ms": times, "samples": f"median of {repeats} after warm-up",
           "peak_gib": peak_gib(device)}
    if compile_call:
        out["compile_s"] = round(first_s - ms / 1e3, 2)
    return out


def sdpa_choice(q, k, v, attn_mask=None, is_causal=True) -> str:
    """The backend PyTorch's SDPA dispatcher picks for these tensors (its own selection function)."""
    try:
        idx = torch._fused_sdp_choice(q, k, v, attn_mask, 0.0, is_causal, enable_gqa=q.shape[1] != k.shape[1])
    except Exception as exc:  # noqa: BLE001 (private API: report rather than fail)
        return f"unknown ({type(exc).__name__})"
    return _backend_name(idx)


def _backend_name(idx) -> str:
    from torch.nn.attention import SDPBackend

    names = {int(b.value): b.name for b in SDPBackend.__members__.values()}
    return names.get(int(idx), str(idx))


def sdpa_info(model, n: int, device: str, dtype) -> dict:
    cfg = model.config
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = torch.empty(1, hq, n, d, device=device, dtype=dtype)
    k = torch.empty(1, hkv, n, d, device=device, dtype=dtype)
    out = {"length": n, "causal": sdpa_choice(q, k, k)}
    m = min(n, 2048)  # the plain-Inductor case, (1, 1, N, N) bool mask, at a small proxy length
    mask = torch.ones(1, 1, m, m, device=device, dtype=torch.bool).tril()
    out["with_mask_proxy_2048"] = sdpa_choice(q[:, :, :m], k[:, :, :m], k[:, :, :m], mask, False)
    return out


# --- probe: layer 0's attention structure and its default-plan index -------------------------------
@torch.no_grad()
def layer0_qkv(model, ids):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    m, n = model.model, ids.shape[1]
    d = model.config.head_dim
    h = m.embed_tokens(ids)
    cos, sin = m.rotary_emb(h, torch.arange(n, device=ids.device)[None])
    at = m.layers[0].self_attn
    x = m.layers[0].input_layernorm(h)
    del h
    q, k, v = (lin(x).view(1, n, -1, d).transpose(1, 2) for lin in (at.q_proj, at.k_proj, at.v_proj))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q.contiguous(), k.contiguous(), v.contiguous()


@torch.no_grad()
def attention_profile(q, k, last: int = 64) -> dict:
    """Where the last ``last`` queries' causal attention mass lies, by distance |i-j| (mean over heads)."""
    _, hq, n, d = q.shape
    group = hq // k.shape[1]
    bins = [("diagonal", 0, 1), ("1-63", 1, 64), ("64-1K", 64, 1024), ("1K-8K", 1024, 8192), ("8K+", 8192, 1 << 62)]
    rows = torch.arange(n - last, n, device=q.device).view(-1, 1)
    dist = rows - torch.arange(n, device=q.device).view(1, -1)
    mass = {name: 0.0 for name, _, _ in bins}
    eff, first = [], 0.0
    for h in range(hq):
        s = (q[0, h, -last:].float() @ k[0, h // group].float().T) * d ** -0.5
        p = s.masked_fill(dist < 0, float("-inf")).softmax(-1)
        for name, lo, hi in bins:
            mass[name] += float((p * ((dist >= lo) & (dist < hi))).sum(-1).mean()) / hq
        first += float(p[:, :4].sum(-1).mean()) / hq
        eff.append(float((-(p * p.clamp_min(1e-30).log()).sum(-1)).exp().median()))
        del s, p
    return {"mass_by_distance": {k_: round(v_, 4) for k_, v_ in mass.items()}, "mass_first_4_keys": round(first, 4),
            "effective_keys_median": round(statistics.median(eff), 1), "queries": last}


def default_layer_plan(model):
    """The plan of the ``minference`` variant: the backend's default plan (``db=None``),
    vertical-slash 1000/6096 for every head."""
    from mcompile.plan import LayerPlan

    return LayerPlan.uniform("vertical_slash", model.config.num_attention_heads, **DEFAULT_PLAN)


def index_density(q, k, plan) -> float:
    from mcompile.kernels.patterns import build_layer_index
    from mcompile.runtime import index_work

    ix = build_layer_index(q, k, plan)
    blocks, cols, dense = index_work(ix, q.shape[0], q.shape[1], q.shape[2])
    return (blocks + cols / 64) / dense


def bench_attention(q, k, v, plan, sparse: bool, repeats: int, device: str, single_s: float) -> dict:
    """One layer's attention alone: dense SDPA (causal) or index build + sparse kernel."""
    if sparse:
        from mcompile.kernels.ops import sparse_attention
        from mcompile.kernels.patterns import build_layer_index

        def fn():
            return sparse_attention(q, k, v, build_layer_index(q, k, plan))
    else:
        def fn():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                    enable_gqa=q.shape[1] != k.shape[1])
    with torch.no_grad():
        r = measure(fn, repeats, device, single_s, compile_call=False)
    return {"ms": r["ms"], "all_ms": r["all_ms"], "samples": r["samples"]}


@torch.no_grad()
def head_ms(model, ids, repeats: int, device: str) -> float:
    """Embedding + RoPE tables + final norm + LM head on the last token, eagerly."""
    m = model.model
    n = ids.shape[1]

    def fn():
        h = m.embed_tokens(ids)
        m.rotary_emb(h, torch.arange(n, device=ids.device)[None])
        return model.lm_head(m.norm(h[:, -1:]))
    fn()
    return statistics.median(time_once(fn, device) for _ in range(repeats))


# --- the compiled variants ----------------------------------------------------------------------
def report_snapshot() -> dict:
    """Per attention site: (row object id, work, calls) of mcompile's report (rows are replaced on recompile)."""
    import mcompile

    return {r.key: (id(r), list(r.work), dict(r.calls)) for r in mcompile.report().rows}


def report_delta(before: dict) -> tuple[list[int], dict]:
    """Work [blocks, columns, dense blocks] and decisions recorded since ``before``."""
    work, calls = [0, 0, 0], {}
    for key, (rid, w, c) in report_snapshot().items():
        old = before.get(key)
        w0, c0 = (old[1], old[2]) if old is not None and old[0] == rid else ([0, 0, 0], {})
        work = [a + b - z for a, b, z in zip(work, w, w0)]
        for dec, n in c.items():
            if n - c0.get(dec, 0):
                calls[dec] = calls.get(dec, 0) + n - c0.get(dec, 0)
    return work, calls


def run_variant(model, name: str, backend: str, options: dict | None, lengths: list[int], inits_at: dict,
                init_params: dict, use_cache: bool, with_mask: bool, args) -> list[dict]:
    """Compile once (dynamic shapes), then time every (length, init); the first call is the compile."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, options=options, dynamic=True)
    rows, first = [], True
    for n in lengths:
        gen = torch.Generator(device="cpu").manual_seed(n)
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(args.device)
        # only the last position's logits, as a prefill before generation computes them
        kwargs = {"use_cache": use_cache, "logits_to_keep": 1}
        if with_mask:
            kwargs["attention_mask"] = torch.ones_like(ids)

        def call():
            with torch.no_grad():
                return compiled(ids, **kwargs).logits

        for init in inits_at[n]:
            apply_init(model, init, init_params)
            before = report_snapshot()
            try:
                r = measure(call, args.repeats, args.device, args.single_s, compile_call=first)
            except torch.OutOfMemoryError as exc:
                r = {"error": f"out of memory: {str(exc).splitlines()[0]}", "ms": None, "peak_gib": None}
                torch.cuda.empty_cache()
            first = False
            dw, calls = report_delta(before)
            row = {"variant": name, "length": n, "init": init, "use_cache": use_cache, "mask": with_mask, **r,
                   "decisions": calls}
            if dw[2]:
                row["density"] = (dw[0] + dw[1] / 64) / dw[2]
            rows.append(row)
            ms = f"{r['ms']:>10.1f} ms" if r.get("ms") is not None else f"{'--':>10}   "
            print(f"{n:>8} {name:<15} {init:<9} cache={use_cache!s:<5} mask={with_mask!s:<5} {ms}  "
                  f"first call {r.get('first_call_s', 0):>6.1f} s  peak {r.get('peak_gib') or 0:.1f} GiB  "
                  f"density {row.get('density', float('nan')):.3f} {r.get('error', '')}", flush=True)
    del compiled
    torch._dynamo.reset()
    return rows


# lengths as whole numbers, also written as floats (1e5)
ints = comma_list(lambda x: int(float(x)), "length", INTS_SYNTAX)


def parse_locality(text: str) -> dict:
    p = dict(LOCALITY_DEFAULTS)
    for item in filter(None, text.split(",")):
        key, _, val = item.partition("=")
        if key not in p:
            raise SystemExit(f"--locality: unknown key {key!r}; keys: {list(p)}")
        p[key] = float(val)
    return p


def main() -> None:
    """Parse the options, build the model, time the variants, write the JSON.

    The shipped results come from (32 layers, then the 4-layer slice)::

        python benchmarks/prefill.py --layers 32 --lengths 32768,65536,131072 --inits random,locality \\
            --random-lengths 131072 --cases nocache --repeats 2 --stats --attn-bench \\
            --out benchmarks/results/prefill_h100_32L.json
        python benchmarks/prefill.py --layers 4 --lengths 262144,524288,1048576 --inits random,locality \\
            --random-lengths 262144 --cases nocache,cache+mask --dense-max-len 524288 --mlp-chunks 8 \\
            --repeats 2 --single-s 4 --stats --attn-bench --out benchmarks/results/prefill_h100_4L.json
        python benchmarks/plots.py

    ``--cases`` are the minference cases: ``nocache``, ``cache``, ``+mask`` (an all-ones
    ``attention_mask`` passed). Random weights have no attention structure, so ``--init
    locality`` adds a disclosed local attention profile (see
    ``mcompile.eval.synthetic.locality_bias``); ``--stats`` records the sparse index density
    per row."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--tiny", action="store_true", help="same as --shape tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median reported)")
    ap.add_argument("--single-s", type=float, default=8.0,
                    help="a first call (not the compile) longer than this is the only sample")
    ap.add_argument("--inits", default="random,locality", help="comma list of random | locality")
    ap.add_argument("--random-lengths", default=None,
                    help="lengths at which minference also runs with --init random (default: all); random weights "
                         "make the estimate keep ~98%% of blocks, so this costs about a dense run")
    ap.add_argument("--locality", default="", help=f"k=v,... overriding {LOCALITY_DEFAULTS}")
    ap.add_argument("--min-len", type=int, default=8192, help="minference option min_len")
    ap.add_argument("--cases", default="nocache,cache+mask",
                    help="minference cases: comma list of nocache | cache | nocache+mask | cache+mask; the first "
                         "runs every init, the others only the last init of --inits")
    ap.add_argument("--dense", choices=["yes", "no"], default="yes", help="also time the dense model")
    ap.add_argument("--dense-max-len", type=int, default=1 << 62,
                    help="run the dense model only up to this length; beyond, compose it from measured parts")
    ap.add_argument("--inductor-plain-lengths", default=None,
                    help="also time plain torch.compile(model) (Inductor; builds an N^2 mask) at these lengths")
    ap.add_argument("--mlp-chunks", type=int, default=0, help="run each MLP on this many sequence slices (memory)")
    ap.add_argument("--attn-bench", action="store_true",
                    help="time one layer's attention alone (dense SDPA, sparse index+kernel) for the per-layer split")
    ap.add_argument("--probe-only", action="store_true",
                    help="only the layer-0 attention profile and default-plan index density per length and init")
    ap.add_argument("--no-probe", action="store_true", help="skip the layer-0 attention profile / index density")
    ap.add_argument("--stats", action="store_true", help="record the sparse index density per row (host syncs)")
    ap.add_argument("--extrapolate-to", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.shape = "tiny"

    dtype = torch.bfloat16 if _cuda(args.device) else torch.float32
    # random weights from a LlamaConfig with attention_bias=True, so that --init locality can
    # set the q/k biases
    model = build_model(args.layers, args.shape, args.device, dtype)
    # --mlp-chunks K runs each MLP on K sequence slices so that 1M tokens fit
    if args.mlp_chunks > 1:
        chunk_mlps(model, args.mlp_chunks)
    gpu = torch.cuda.get_device_name() if _cuda(args.device) else "cpu"
    lengths = ints(args.lengths)
    inits = [x for x in args.inits.split(",") if x]
    rand_lengths = set(ints(args.random_lengths)) if args.random_lengths else set(lengths)
    init_params = parse_locality(args.locality)
    inits_first = {n: [i for i in inits if i != "random" or n in rand_lengths] for n in lengths}
    inits_last = {n: inits[-1:] for n in lengths}
    init_desc = {i: apply_init(model, i, init_params) for i in inits}
    plan = default_layer_plan(model)
    t_start = time.perf_counter()

    # per length: the SDPA backend, the layer-0 profile and index density, one layer's attention, the head
    sdpa, probes, attn, heads = [], [], [], {}
    for n in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
        ids = ids.to(args.device)
        sdpa.append(sdpa_info(model, n, args.device, dtype))
        heads[n] = head_ms(model, ids, 3, args.device)
        dense_done = False
        for init in inits:
            if args.no_probe and not args.attn_bench:
                break
            apply_init(model, init, init_params)
            q, k, v = layer0_qkv(model, ids)
            if not args.no_probe:
                p = {"length": n, "init": init, "layer": 0, **attention_profile(q, k),
                     "density_default_plan": index_density(q, k, plan)}
                probes.append(p)
                print(f"probe {n:>8} {init:<9} layer-0 density {p['density_default_plan']:.3f} "
                      f"mass {p['mass_by_distance']} eff keys {p['effective_keys_median']}", flush=True)
            if args.attn_bench:
                if not dense_done:
                    attn.append({"length": n, "variant": "dense-sdpa", "init": "any", "sdpa_backend": sdpa[-1]["causal"],
                                 **bench_attention(q, k, v, plan, False, args.repeats, args.device, args.single_s)})
                    dense_done = True
                    print(f"attention {n:>8} dense-sdpa   {attn[-1]['ms']:>9.1f} ms per layer", flush=True)
                if n in rand_lengths or init != "random":
                    attn.append({"length": n, "variant": "minference", "init": init,
                                 **bench_attention(q, k, v, plan, True, args.repeats, args.device, args.single_s)})
                    print(f"attention {n:>8} minference {init:<9} {attn[-1]['ms']:>9.1f} ms per layer", flush=True)
            del q, k, v
        del ids
    prep_s = time.perf_counter() - t_start
    if args.probe_only:
        out = Path(args.out or Path(__file__).parent / f"results/prefill_probe_{gpu.replace(' ', '_')}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                                   "date": datetime.datetime.now().isoformat(timespec="seconds"),
                                   "command": "python " + " ".join(sys.argv), "model": args.shape,
                                   "config": SHAPES[args.shape], "sparse_plan": {"pattern": "vertical_slash", **DEFAULT_PLAN},
                                   "inits": init_desc, "probe": probes}, indent=1) + "\n")
        print(f"-> {out}")
        return

    rows = []
    cases = [(c.startswith("cache"), c.endswith("mask")) for c in args.cases.split(",") if c]
    dense_lengths = [n for n in lengths if n <= args.dense_max_len]
    if args.dense == "yes" and dense_lengths:
        dense_init = {n: inits[:1] for n in dense_lengths}   # the dense time does not depend on the weights
        rows += run_variant(model, "dense-sdpa", "minference", {"plan": "dense"}, dense_lengths, dense_init,
                            init_params, False, False, args)
    plain = [n for n in ints(args.inductor_plain_lengths or "") if n in lengths]
    if plain:
        rows += run_variant(model, "inductor-plain", "inductor", None, plain, {n: inits[:1] for n in plain},
                            init_params, False, False, args)
    for i, (use_cache, with_mask) in enumerate(cases):
        opts = {"min_len": args.min_len, "db": None, "stats": args.stats}
        rows += run_variant(model, "minference", "minference", opts, lengths, inits_first if i == 0 else inits_last,
                            init_params, use_cache, with_mask, args)

    # speedups, per-layer split, extrapolation: a slice run is extrapolated to
    # --extrapolate-to layers from a per-layer time (head = embedding + final norm + LM head,
    # timed eagerly by head_ms; per_layer = (model - head) / layers)
    dense_ms = {r["length"]: r["ms"] for r in rows if r["variant"] == "dense-sdpa" and r.get("ms")}
    attn_ms = {(a["length"], a["variant"], a["init"]): a["ms"] for a in attn}
    L = args.layers
    for r in rows:
        if not r.get("ms"):
            continue
        r["per_layer_ms"] = (r["ms"] - heads[r["length"]]) / L
        a = attn_ms.get((r["length"], r["variant"], "any" if r["variant"] == "dense-sdpa" else r["init"]))
        if a is not None:
            r["attention_ms_per_layer"] = a
            r["rest_ms_per_layer"] = r["per_layer_ms"] - a
        if r["variant"] == "minference" and r["length"] in dense_ms:
            r["speedup"] = dense_ms[r["length"]] / r["ms"]
    # dense beyond --dense-max-len: its per-layer time is composed from measured dense attention
    # plus the measured non-attention rest (from the minference nocache row there), marked composed
    for n in lengths:
        if n in dense_ms or (n, "dense-sdpa", "any") not in attn_ms:
            continue
        rest = [r["rest_ms_per_layer"] for r in rows if r["variant"] == "minference" and r["length"] == n
                and not r["use_cache"] and "rest_ms_per_layer" in r]
        if not rest:
            continue
        per_layer = attn_ms[(n, "dense-sdpa", "any")] + statistics.median(rest)
        rows.append({"variant": "dense-sdpa", "length": n, "init": "any", "use_cache": False, "mask": False,
                     "composed": "attention alone (measured) + rest per layer from the minference run, no model run",
                     "ms": heads[n] + L * per_layer, "per_layer_ms": per_layer, "peak_gib": None,
                     "attention_ms_per_layer": attn_ms[(n, "dense-sdpa", "any")], "rest_ms_per_layer": statistics.median(rest)})
        dense_ms[n] = rows[-1]["ms"]
        for r in rows:
            if r["variant"] == "minference" and r["length"] == n and r.get("ms"):
                r["speedup"] = dense_ms[n] / r["ms"]
                r["speedup_vs_composed_dense"] = True
    extrap = []
    if L != args.extrapolate_to:
        to = args.extrapolate_to
        for r in rows:
            if not r.get("ms") or r["variant"] == "inductor-plain":
                continue
            est = heads[r["length"]] + to * r["per_layer_ms"]
            e = {"length": r["length"], "variant": r["variant"], "init": r["init"], "use_cache": r["use_cache"],
                 "mask": r["mask"], "layers": to, "ms": est, "head_ms": heads[r["length"]],
                 "per_layer_ms": r["per_layer_ms"], "attention_ms_per_layer": r.get("attention_ms_per_layer"),
                 "rest_ms_per_layer": r.get("rest_ms_per_layer")}
            extrap.append(e)
        dense_est = {e["length"]: e["ms"] for e in extrap if e["variant"] == "dense-sdpa"}
        for e in extrap:
            if e["variant"] == "minference" and e["length"] in dense_est:
                e["speedup"] = dense_est[e["length"]] / e["ms"]

    import mcompile

    result = {
        "device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "dtype": str(dtype),
        "command": "python " + " ".join(sys.argv),
        "model": args.shape, "layers": L, "config": {k: v for k, v in SHAPES[args.shape].items()},
        "attention_bias": True, "mlp_chunks": args.mlp_chunks,
        "sparse_plan": {"pattern": "vertical_slash", **DEFAULT_PLAN, "min_len": args.min_len},
        "dense_baseline": DENSE_NOTE,
        "dense_sdpa_backend": sdpa[-1]["causal"] if sdpa else None,
        "sdpa": {"choice_by_length": sdpa,
                 "priority_order": [_backend_name(x) for x in torch._C._get_sdp_priority_order()]
                 if hasattr(torch._C, "_get_sdp_priority_order") else None,
                 "enabled": {"flash": torch.backends.cuda.flash_sdp_enabled(),
                             "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                             "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                             "math": torch.backends.cuda.math_sdp_enabled()}},
        "inits": init_desc,
        "timing": ("CUDA events" if _cuda(args.device) else "perf_counter") + f"; repeats {args.repeats} after a warm-up; "
                  f"a non-compile first call > {args.single_s} s is the only sample; per_layer_ms = (ms - head_ms) / layers",
        "stats": args.stats, "head_ms": {str(n): v for n, v in heads.items()},
        "probe": probes, "attention_alone": attn, "rows": rows,
        "extrapolation": ({"to_layers": args.extrapolate_to,
                           "formula": "head_ms + to_layers * per_layer_ms, per_layer_ms = (model ms - head_ms) / layers "
                                      "measured (= attention alone + rest)", "rows": extrap} if extrap else None),
        "prep_s": round(prep_s, 1), "total_s": round(time.perf_counter() - t_start, 1),
        "sparse_decisions": sorted({r.decision for r in mcompile.report().rows}),
        "sparse_density_all_rows": mcompile.report().density(),
    }
    out = Path(args.out or Path(__file__).parent / f"results/prefill_{gpu.replace(' ', '_')}_{L}L.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{'length':>8} {'case':<13} {'variant':<15} {'init':<9} {'ms':>10} {'per layer':>10} {'attn/layer':>10} "
          f"{'speedup':>8} {'GiB':>6} {'density':>8}")
    for r in sorted(rows, key=lambda r: (r["length"], r["variant"], r["mask"], r["init"])):
        case = ("cache" if r["use_cache"] else "nocache") + ("+mask" if r["mask"] else "")
        f = lambda x, w, p: f"{x:>{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"  # noqa: E731
        print(f"{r['length']:>8} {case:<13} {r['variant']:<15} {r['init']:<9} {f(r.get('ms'), 10, 1)} "
              f"{f(r.get('per_layer_ms'), 10, 2)} {f(r.get('attention_ms_per_layer'), 10, 2)} "
              f"{f(r.get('speedup'), 8, 2)} {f(r.get('peak_gib'), 6, 1)} {f(r.get('density'), 8, 3)}"
              + ("  (composed)" if r.get("composed") else "") + (f"  {r['error']}" if r.get("error") else ""))
    if extrap:
        print(f"\nextrapolated to {args.extrapolate_to} layers: head_ms + {args.extrapolate_to} x per-layer "
              f"(per layer = attention alone + rest)")
        for e in extrap:
            print(f"{e['length']:>8} {e['variant']:<15} {e['init']:<9} cache={e['use_cache']!s:<5} mask={e['mask']!s:<5} "
                  f"{e['ms']:>10.1f} ms" + (f"  speedup {e['speedup']:.2f}" if "speedup" in e else ""))
    print(f"dense SDPA backend: {result['dense_sdpa_backend']}; decisions: {result['sparse_decisions']}; "
          f"{time.perf_counter() - t_start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
