"""Sparse attention kernel benchmark: LLaMA-3-8B attention shape on one GPU.

Shape: batch 1, 32 query heads, 8 KV heads, head dim 128, bf16, causal prefill. For each
length, each pattern runs through our kernel against a baseline on the same work:
  dense    the full causal index vs SDPA (cuDNN and flash backends);
  ashape   sink + local blocks (``ashape_blocks``) vs compiled FlexAttention;
  topk     block-sparse top-k blocks (``topk_blocks``) vs compiled FlexAttention;
  vs       vertical-slash (``vertical_slash_index``) vs dense cuDNN.
``bench`` and ``tflops`` say what ms and TFLOP/s mean. Nothing of size N^2 is materialised.

  python benchmarks/attention.py                       # all lengths, all patterns
  python benchmarks/attention.py --lengths 32K,128K --patterns dense,vs
  python benchmarks/attention.py --sweep               # tune kernel configs first

Writes benchmarks/results/attention_<device>.json (device, versions, date, every number).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mcompile.cli_types import length, lengths, names
from mcompile.kernels import sparse_attention as sa
from mcompile.kernels.index import SparseIndex, dense_causal_index, dense_causal_pairs, index_pairs
from mcompile.kernels.patterns.vertical_slash import MINFERENCE_COUNTS as VS_DEFAULTS
from mcompile.kernels.sparse_attention import KernelConfig, sparse_attention
from timing import time_ms  # benchmarks/timing.py

B, HQ, HKV, D = 1, 32, 8, 128
DTYPE = torch.bfloat16


# ------------------------------------------------------------------------------ timing
def bench(fn, budget_s: float = 1.5, max_reps: int = 20, min_reps: int = 3) -> dict:
    """Warm up once (compiles), then repeat to fill about budget_s; median of CUDA-event
    timings of single calls (the ``ms`` of every result)."""
    fn()
    torch.cuda.synchronize()
    first = time_ms(fn, cuda=True)
    reps = int(max(1, min(max_reps, budget_s * 1e3 / max(first, 1e-3))))
    reps = max(reps, min_reps) if first * min_reps < 4 * budget_s * 1e3 else reps
    times = [first]
    for _ in range(reps - 1):
        times.append(time_ms(fn, cuda=True))
    return {"ms": statistics.median(times), "reps": len(times), "min_ms": min(times),
            "max_ms": max(times)}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """|out - ref| / |ref| (Frobenius), one head at a time (no fp32 copy of the whole
    output: at 1M tokens that is 16 GiB)."""
    num = den = 0.0
    for h in range(out.shape[1]):
        o, r = out[:, h].float(), ref[:, h].float()
        num += float((o - r).pow(2).sum())
        den += float(r.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def tflops(pairs: int, ms: float) -> float:
    """4 * head_dim * pairs / time, pairs being the (query, key) pairs the kernel actually
    computes after causal masking (dense SDPA counts the causal half)."""
    return 4.0 * D * pairs / (ms * 1e-3) / 1e12


# ----------------------------------------------------------------------- index builders
def ashape_blocks(N: int, device, sink_blocks: int = 2, local_blocks: int = 62, bs: int = 64):
    """Per query block: key blocks {0..sink_blocks-1} + the local_blocks ending at the
    diagonal; the defaults are 128 sink + 3968 local tokens in 64x64 blocks. Returns
    (count (NQB,), blocks (NQB, MAX) block ids sorted, valid mask)."""
    nqb = (N + bs - 1) // bs
    qb = torch.arange(nqb, device=device)
    local = qb[:, None] - (local_blocks - 1) + torch.arange(local_blocks, device=device)[None, :]
    local_ok = local >= sink_blocks
    sink = torch.arange(sink_blocks, device=device)[None, :].expand(nqb, sink_blocks)
    sink_ok = sink <= qb[:, None]
    ids = torch.cat([torch.where(sink_ok, sink, 1 << 40), torch.where(local_ok, local, 1 << 40)], 1)
    ids, _ = ids.sort(1)
    ok = ids < (1 << 40)
    return ok.sum(1), torch.where(ok, ids, 0), ok


def topk_blocks(N: int, device, k: int = 100, heads: int = HQ, bs: int = 64, seed: int = 0):
    """Per head and query block: the diagonal block + (k-1) distinct earlier blocks, one
    drawn per stratum of the past (all earlier blocks when fewer than k); by default 100
    key blocks of 64x64 per query block."""
    nqb = (N + bs - 1) // bs
    g = torch.Generator(device=device).manual_seed(seed)
    qb = torch.arange(nqb, device=device).view(1, nqb, 1)
    j = torch.arange(k - 1, device=device).view(1, 1, k - 1)
    lo = (j * qb) // (k - 1)
    hi = ((j + 1) * qb) // (k - 1)
    r = torch.rand(heads, nqb, k - 1, device=device, generator=g)
    pick = lo + (r * (hi - lo).clamp(min=1)).long().clamp(max=(hi - lo - 1).clamp(min=0))
    few = qb < k                                                   # all blocks 0..qb
    pick = torch.where(few, j.expand_as(pick), pick)
    ids = torch.cat([pick, qb.expand(heads, nqb, 1)], 2)
    ok = torch.cat([torch.where(few, j < qb, torch.ones_like(j, dtype=torch.bool)).expand(heads, nqb, k - 1),
                    torch.ones(heads, nqb, 1, dtype=torch.bool, device=device)], 2)
    ids = torch.where(ok, ids, 1 << 40)
    ids, _ = ids.sort(2)
    ok = ids < (1 << 40)
    return ok.sum(2), torch.where(ok, ids, 0), ok


def blocks_to_index(count, ids, bs: int = 64) -> SparseIndex:
    """Block ids (H or 1, NQB, MAX) -> SparseIndex (1, H, NQB, MAX) of 64-token blocks."""
    if count.dim() == 1:
        count, ids = count[None], ids[None]
    H, nqb, mx = ids.shape
    bc = count.to(torch.int32).view(1, H, nqb)
    bo = (ids * bs).to(torch.int32).view(1, H, nqb, mx)
    cc = torch.zeros(1, H, nqb, dtype=torch.int32, device=ids.device)
    ci = torch.zeros(1, H, nqb, 0, dtype=torch.int32, device=ids.device)
    return SparseIndex(bc, bo, cc, ci, bs, bs)


def flex_block_mask(count, ids, N: int, bs: int = 64):
    """FlexAttention BlockMask on the same blocks: the diagonal block partial (causal
    mask_mod), every other listed block full."""
    from torch.nn.attention.flex_attention import BlockMask
    if count.dim() == 1:
        count, ids = count[None], ids[None]
    H, nqb, mx = ids.shape
    qb = torch.arange(nqb, device=ids.device).view(1, nqb, 1)
    valid = torch.arange(mx, device=ids.device).view(1, 1, mx) < count.view(H, nqb, 1)
    diag = (ids == qb) & valid
    full = valid & ~diag
    big = 1 << 40
    full_ids, _ = torch.where(full, ids, big).sort(2)
    full_cnt = full.sum(2)
    full_ids = torch.where(full_ids < big, full_ids, 0)
    part_cnt = diag.sum(2)
    # FlexAttention requires index rows as wide as the number of KV blocks (it asserts
    # KV_LEN <= width * block): 4 bytes x H x NQB x NKVB per list, its own index cost.
    nkvb = (N + bs - 1) // bs
    wide_full = torch.zeros(H, nqb, nkvb, dtype=torch.int32, device=ids.device)
    m = min(mx, nkvb)
    wide_full[..., :m] = full_ids[..., :m].to(torch.int32)
    del full_ids
    full_ids = wide_full
    part_ids = torch.zeros(H, nqb, nkvb, dtype=torch.int32, device=ids.device)
    part_ids[..., :1] = qb.expand(H, nqb, 1).to(torch.int32)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    kw = dict(BLOCK_SIZE=(bs, bs), mask_mod=causal, seq_lengths=(N, N))
    import inspect
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kw["compute_q_blocks"] = False           # forward only: skip the transposed lists
    i32 = torch.int32
    return BlockMask.from_kv_blocks(part_cnt.to(i32)[None], part_ids.to(i32)[None],
                                    full_cnt.to(i32)[None], full_ids.to(i32)[None], **kw)


def vertical_slash_index(N: int, device, heads: int = HQ, bm: int = 64, bn: int = 64,
                         n_cols: int = VS_DEFAULTS["vertical_size"], n_first_cols: int = 30,
                         n_slash: int = VS_DEFAULTS["slash_size"],
                         slash_dense: int = 100, slash_max: int = 8192, seed: int = 0) -> SparseIndex:
    """A realistic vertical-slash index (MInference's default sizes), built per head without N^2 memory.

    Diagonal d covers, for query block rows [s, s + bm), keys [s - d, s - d + bm). The union
    over the head's diagonals is, relative to s, the same set of ranges for every query
    block (clipped at 0 and at the block's last row); ranges closer than bn are merged (so
    their blocks cannot overlap) and cut into blocks of bn from their start (any offset).
    Columns inside those blocks or after the last row are dropped.

    By default, per head: 1000 columns (the first 30 + 970 spread over the sequence) and
    6096 diagonals (0-99 + 5996 drawn from [100, 8192)). The benchmark times this build
    separately (``build_ms``), outside the kernel's ``ms``."""
    g = torch.Generator(device=device).manual_seed(seed)
    nqb = (N + bm - 1) // bm
    qs = torch.arange(nqb, device=device, dtype=torch.int64) * bm
    last = torch.clamp(qs + bm, max=N) - 1
    big = 1 << 40
    per_head = []
    for h in range(heads):
        d = torch.cat([torch.arange(slash_dense, device=device),
                       slash_dense + torch.randperm(slash_max - slash_dense, device=device,
                                                    generator=g)[:n_slash - slash_dense]])
        st = (-d).sort()[0]                                          # relative starts, ascending
        en = st + bm - 1
        runmax = torch.cummax(en, 0)[0]
        brk = torch.ones_like(st, dtype=torch.bool)
        brk[1:] = st[1:] >= runmax[:-1] + bn
        gid = torch.cumsum(brk.long(), 0) - 1
        R = int(gid[-1]) + 1
        r_lo = torch.full((R,), big, device=device, dtype=torch.int64).scatter_reduce(0, gid, st, "amin")
        r_hi = torch.full((R,), -big, device=device, dtype=torch.int64).scatter_reduce(0, gid, en, "amax")
        lo = torch.clamp(qs[:, None] + r_lo[None, :], min=0)             # (NQB, R)
        hi = torch.minimum(qs[:, None] + r_hi[None, :], last[:, None])
        cnt = torch.where(hi >= lo, (hi - lo) // bn + 1, torch.zeros_like(lo))
        maxc = int(((r_hi - r_lo) // bn + 1).max())
        starts = lo[:, :, None] + torch.arange(maxc, device=device)[None, None, :] * bn
        ok = torch.arange(maxc, device=device)[None, None, :] < cnt[:, :, None]
        starts = torch.where(ok, starts, big).view(nqb, -1).sort(1)[0]
        bcount = (starts < big).sum(1)
        cover_hi = lo + cnt * bn                                          # exclusive
        cols = torch.cat([torch.arange(n_first_cols, device=device),
                          n_first_cols + torch.randperm(N - n_first_cols, device=device,
                                                        generator=g)[:n_cols - n_first_cols]]).sort()[0]
        c = cols[None, :, None]                                           # (1, C, 1)
        inside = ((c >= lo[:, None, :]) & (c < cover_hi[:, None, :])).any(2)   # (NQB, C)
        cok = (cols[None, :] <= last[:, None]) & ~inside
        ckeyed = torch.where(cok, cols[None, :], big).sort(1)[0]
        ccount = cok.sum(1)
        per_head.append((bcount, starts, ccount, ckeyed))
    mb = max(int(x[0].max()) for x in per_head)
    mc = max(1, max(int(x[2].max()) for x in per_head))
    bc = torch.stack([x[0] for x in per_head]).to(torch.int32)
    bo = torch.stack([torch.where(x[1][:, :mb] < big, x[1][:, :mb], 0) for x in per_head]).to(torch.int32)
    cc = torch.stack([x[2] for x in per_head]).to(torch.int32)
    ci = torch.stack([torch.where(x[3][:, :mc] < big, x[3][:, :mc], 0) for x in per_head]).to(torch.int32)
    return SparseIndex(bc[None], bo[None], cc[None], ci[None], bm, bn)


# --------------------------------------------------------------------------- baselines
def sdpa_fn(q, k, v, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    state = {}

    def run():
        with sdpa_kernel([be]):
            if state.get("gqa", True):
                try:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                except RuntimeError:
                    state["gqa"] = False
            if "kr" not in state:          # backend without GQA: repeat K/V once, outside timing
                state["kr"] = k.repeat_interleave(HQ // HKV, 1)
                state["vr"] = v.repeat_interleave(HQ // HKV, 1)
            return F.scaled_dot_product_attention(q, state["kr"], state["vr"], is_causal=True)
    return run, state


_FLEX = None


def flex_fn(q, k, v, block_mask):
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        import torch._dynamo
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    # the mask's 64x64 blocks need 64-row/64-key tiles (flex's default BLOCK_M is 128 and
    # must divide the sparse block size); warps/stages left to flex
    opts = {"BLOCK_M": 64, "BLOCK_N": 64}
    return lambda: _FLEX(q, k, v, block_mask=block_mask, enable_gqa=True, kernel_options=opts)


# ------------------------------------------------------------------------------ sweep
def _cfgs(*rows):
    return [KernelConfig(*r) for r in rows]


# (name, Hq, Hkv, head_dim, length divisor, index kind, (block_m, block_n), configs)
SWEEP = [
    ("d128", HQ, HKV, 128, 1, "dense", (128, 128), _cfgs(
        (128, 128, 8, 2, True), (128, 128, 8, 2, True, True), (128, 128, 8, 2, False),
        (128, 64, 8, 3, True), (128, 64, 8, 3, True, True), (128, 128, 4, 2, True),
        (64, 128, 4, 2, True), (64, 64, 4, 3, True))),
    ("d128", HQ, HKV, 128, 1, "dense", (128, 64), _cfgs(
        (128, 64, 8, 3, True), (128, 64, 8, 3, True, True), (64, 64, 4, 3, True))),
    ("d128", HQ, HKV, 128, 1, "topk", (64, 64), _cfgs(
        (64, 64, 4, 3, False), (64, 64, 4, 3, True), (64, 64, 4, 2, True))),
    ("d128", HQ, HKV, 128, 1, "vs", (64, 64), _cfgs(
        (64, 64, 4, 3, False), (64, 64, 4, 3, True))),
    ("d128", HQ, HKV, 128, 1, "vs", (128, 64), _cfgs(
        (128, 64, 8, 3, True), (128, 64, 8, 3, True, True), (64, 64, 4, 3, True))),
    ("d64", 9, 3, 64, 2, "dense", (128, 64), _cfgs(
        (64, 64, 4, 3, False), (64, 64, 4, 3, True), (128, 64, 4, 3, True), (128, 64, 8, 2, True))),
    ("d64", 9, 3, 64, 2, "dense", (64, 64), _cfgs(
        (64, 64, 4, 3, False), (64, 64, 4, 3, True))),
    ("d256", 4, 1, 256, 2, "dense", (128, 64), _cfgs(
        (64, 64, 4, 2, True), (64, 64, 4, 2, False), (64, 32, 4, 3, True))),
    ("d256", 4, 1, 256, 2, "dense", (64, 64), _cfgs(
        (64, 64, 4, 2, True), (64, 64, 4, 2, False), (64, 32, 4, 3, True))),
]


def run_sweep(N: int, device, log) -> dict:
    """Tune (tiles, warps, stages, TMA) per (head_dim, index block shape, columns or not) by
    measurement; installs the winners in sa.TUNED_CONFIGS for the rest of the run."""
    res = {}
    for name, hq, hkv, d, div, kind, (bm, bn), cfgs in SWEEP:
        n = N // div
        q = torch.randn(1, hq, n, d, device=device, dtype=DTYPE)
        k = torch.randn(1, hkv, n, d, device=device, dtype=DTYPE)
        v = torch.randn(1, hkv, n, d, device=device, dtype=DTYPE)
        if kind == "dense":
            idx = dense_causal_index(1, hq, n, bm, bn, device=device)
            pairs = hq * dense_causal_pairs(n)
        elif kind == "topk":
            cnt, ids, _ = topk_blocks(n, device, heads=hq)
            idx = blocks_to_index(cnt, ids)
            pairs = index_pairs(idx, n)
        else:
            idx = vertical_slash_index(n, device, heads=hq, bm=bm, bn=bn)
            pairs = index_pairs(idx, n)
        rows = []
        for cfg in cfgs:
            try:
                t = bench(lambda: sparse_attention(q, k, v, idx, config=cfg), budget_s=0.3,
                          max_reps=10)
                rows.append((t["ms"], cfg))
                log(f"  sweep {name} {kind} {bm}x{bn} N={n} {tuple(cfg)}: {t['ms']:.3f} ms "
                    f"{4 * d * pairs / t['ms'] / 1e9:.0f} TFLOP/s")
            except Exception as e:  # out of resources etc.
                log(f"  sweep {name} {kind} {bm}x{bn} {tuple(cfg)}: failed {type(e).__name__}: "
                    f"{str(e)[:120]}")
        rows.sort(key=lambda r: r[0])
        if rows:
            best = rows[0][1]
            cols = kind == "vs"
            key = f"{d},{bm},{bn},{cols}"
            if key in res and res[key]["ms"] <= rows[0][0]:
                continue
            res[key] = {"config": list(best), "ms": rows[0][0], "N": n, "kind": kind,
                        "tflops": 4 * d * pairs / rows[0][0] / 1e9,
                        "all": [[list(c), ms] for ms, c in rows]}
            sa.TUNED_CONFIGS[(d, bm, bn, cols)] = best
            log(f"BEST {name} {kind} {bm}x{bn}: {tuple(best)} {rows[0][0]:.3f} ms "
                f"{res[key]['tflops']:.0f} TFLOP/s")
        del q, k, v, idx
        torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------- main
def versions() -> dict:
    v = {"torch": torch.__version__, "python": platform.python_version(),
         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    try:
        import triton
        v["triton"] = triton.__version__
    except Exception:
        pass
    try:
        v["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        pass
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=lengths, default="32K,64K,128K,256K,512K,1M")
    ap.add_argument("--patterns", type=names, default="dense,ashape,topk,vs")
    ap.add_argument("--baselines", type=names, default="cudnn,flash,flex")
    ap.add_argument("--ours-dense-max", default="1M", help="longest length for dense through our kernel")
    ap.add_argument("--flash-max", default="128K", help="longest length for the SDPA flash backend")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of repeats per measurement")
    ap.add_argument("--sweep", action="store_true", help="tune kernel configs first")
    ap.add_argument("--sweep-len", default="32K")
    ap.add_argument("--vs-bm", type=int, default=64, help="query block rows of the vertical-slash index")
    ap.add_argument("--dense-block", default="128x128", help="block_m x block_n of the full causal index")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)   # smoke tests
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name()
    tag = name.lower().replace("nvidia", "").strip().split()[0]
    out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        f"attention_{tag}.json")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    result = {"device": name, "versions": versions(),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "shape": {"batch": B, "q_heads": HQ, "kv_heads": HKV, "head_dim": D, "dtype": "bfloat16"},
              "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
              "notes": "ms = median of CUDA-event timings after warm-up; tflops = 4*D*pairs/time, "
                       "pairs = (query,key) pairs computed after causal masking",
              "sweep": {}, "results": []}

    def save():
        result["tuned_configs"] = {",".join(map(str, k)): list(v) for k, v in sa.TUNED_CONFIGS.items()}
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)

    if args.sweep:
        t0 = time.time()
        result["sweep"] = run_sweep(length(args.sweep_len), dev, log)
        log(f"sweep took {time.time() - t0:.0f} s")
        save()

    patterns = args.patterns
    dbm, dbn = (int(x) for x in args.dense_block.lower().split("x"))
    baselines = args.baselines
    ours_dense_max = length(args.ours_dense_max)
    flash_max = length(args.flash_max)
    for N in args.lengths:
        torch.cuda.empty_cache()
        g = torch.Generator(device=dev).manual_seed(N)
        q = torch.randn(B, HQ, N, D, device=dev, dtype=DTYPE, generator=g)
        k = torch.randn(B, HKV, N, D, device=dev, dtype=DTYPE, generator=g)
        v = torch.randn(B, HKV, N, D, device=dev, dtype=DTYPE, generator=g)
        dense_pairs = B * HQ * dense_causal_pairs(N)
        rec = {"N": N}

        def add(pattern, impl, t, pairs, **extra):
            r = {"N": N, "pattern": pattern, "impl": impl, "ms": t["ms"], "reps": t["reps"],
                 "tflops": tflops(pairs, t["ms"]), "pairs": pairs, **extra}
            result["results"].append(r)
            log(f"N={N:>8} {pattern:7s} {impl:22s} {t['ms']:10.3f} ms {r['tflops']:7.1f} TFLOP/s"
                + "".join(f" {k}={v}" for k, v in extra.items() if k in ("density", "build_ms", "rel_err")))
            save()
            return r

        def safe(label, fn):
            try:
                return fn()
            except Exception as e:
                log(f"N={N} {label}: FAILED {type(e).__name__}: {str(e)[:300]}")
                result["results"].append({"N": N, "label": label, "error": f"{type(e).__name__}: {str(e)[:500]}"})
                save()
                torch.cuda.empty_cache()
                return None

        ref_out = None
        if "dense" in patterns:
            if "cudnn" in baselines:
                def _cudnn():
                    fn, st = sdpa_fn(q, k, v, "cudnn")
                    t = bench(fn, args.budget)
                    rec["cudnn_ms"] = t["ms"]
                    st.clear()
                    return add("dense", "sdpa_cudnn", t, dense_pairs)
                safe("sdpa_cudnn", _cudnn)
            if "flash" in baselines and N <= flash_max:
                def _flash():
                    fn, st = sdpa_fn(q, k, v, "flash")
                    t = bench(fn, args.budget)
                    st.clear()
                    return add("dense", "sdpa_flash", t, dense_pairs)
                safe("sdpa_flash", _flash)
            if N <= ours_dense_max:
                def _ours():
                    idx = dense_causal_index(B, HQ, N, dbm, dbn, device=dev)
                    t = bench(lambda: sparse_attention(q, k, v, idx), args.budget)
                    extra = {"config": list(sa.get_config(D, dbm, dbn, DTYPE)),
                             "index_block": f"{dbm}x{dbn}"}
                    if N <= 65536:      # accuracy against cuDNN on the same inputs
                        from torch.nn.attention import SDPBackend, sdpa_kernel
                        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
                            ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        o = sparse_attention(q, k, v, idx)
                        extra["rel_err"] = rel_err(o, ref)
                        del o, ref
                    r = add("dense", "ours", t, dense_pairs, **extra)
                    if rec.get("cudnn_ms"):
                        r["vs_cudnn_tflops_ratio"] = rec["cudnn_ms"] / t["ms"]
                    return r
                safe("ours_dense", _ours)
        torch.cuda.empty_cache()

        for pat in ("ashape", "topk"):
            if pat not in patterns:
                continue

            def _blocks(pat=pat):
                extra = {}
                if pat == "ashape":
                    cnt, ids, ok = ashape_blocks(N, dev)
                else:
                    # per-head masks unless FlexAttention's two (H, NQB, NKVB) int32 index
                    # lists would not fit (1M: 64 GiB): then one mask shared by all heads
                    nq = (N + 63) // 64
                    heads = HQ if 2 * HQ * nq * nq * 4 <= 24 * 2**30 else 1
                    cnt, ids, ok = topk_blocks(N, dev, heads=heads)
                    extra["mask_heads"] = heads
                idx = blocks_to_index(cnt, ids)
                pairs = index_pairs(idx, N) * (HQ if idx.block_count.shape[1] == 1 else 1)
                if idx.block_count.shape[1] == 1:
                    idx = idx.expand(B, HQ)
                density = pairs / dense_pairs
                t = bench(lambda: sparse_attention(q, k, v, idx), args.budget)
                r = add(pat, "ours", t, pairs, density=round(density, 5),
                        config=list(sa.get_config(D, 64, 64, DTYPE)), **extra)
                if "flex" in baselines:
                    def _flex():
                        bmask = flex_block_mask(cnt, ids, N)
                        fn = flex_fn(q, k, v, bmask)
                        t0 = time.time()
                        o_flex = fn()
                        torch.cuda.synchronize()
                        compile_s = time.time() - t0
                        o = sparse_attention(q, k, v, idx)
                        err = rel_err(o, o_flex)
                        del o, o_flex
                        tf = bench(fn, args.budget)
                        rf = add(pat, "flex_attention", tf, pairs, rel_err=round(err, 6),
                                 compile_s=round(compile_s, 1))
                        r["time_ratio_vs_flex"] = t["ms"] / tf["ms"]
                        log(f"N={N:>8} {pat:7s} ours/flex time ratio {r['time_ratio_vs_flex']:.3f} "
                            f"(rel diff {err:.2e})")
                        save()
                        return rf
                    safe(f"flex_{pat}", _flex)
                return r
            safe(f"ours_{pat}", _blocks)
            torch.cuda.empty_cache()

        if "vs" in patterns:
            def _vs():
                torch.cuda.synchronize()
                t0 = time.time()
                idx = vertical_slash_index(N, dev, heads=HQ, bm=args.vs_bm)
                torch.cuda.synchronize()
                build_ms = (time.time() - t0) * 1e3
                pairs = index_pairs(idx, N)
                cfg = sa.get_config(D, args.vs_bm, 64, DTYPE, True)
                t = bench(lambda: sparse_attention(q, k, v, idx), args.budget)
                r = add("vs", "ours", t, pairs, density=round(pairs / dense_pairs, 5),
                        build_ms=round(build_ms, 1), config=list(cfg),
                        max_blocks=idx.max_blocks, max_columns=idx.max_columns,
                        index_mib=round(idx.memory_bytes() / 2**20, 1))
                if rec.get("cudnn_ms"):
                    r["speedup_vs_cudnn_dense"] = rec["cudnn_ms"] / t["ms"]
                    log(f"N={N:>8} vs      speedup vs dense cuDNN: {r['speedup_vs_cudnn_dense']:.1f}x")
                save()
                return r
            safe("ours_vs", _vs)
        del q, k, v
        torch.cuda.empty_cache()

    # ------------------------------------------------------------------------- table
    log("")
    log(f"{'N':>8} {'pattern':8} {'impl':16} {'ms':>10} {'TFLOP/s':>8}  notes")
    for r in result["results"]:
        if "error" in r:
            log(f"{r['N']:>8} {r['label']:26} ERROR {r['error'][:80]}")
            continue
        notes = []
        for key in ("vs_cudnn_tflops_ratio", "time_ratio_vs_flex", "speedup_vs_cudnn_dense",
                    "density", "rel_err", "build_ms"):
            if key in r:
                val = r[key]
                notes.append(f"{key}={val:.3g}" if isinstance(val, float) else f"{key}={val}")
        log(f"{r['N']:>8} {r['pattern']:8} {r['impl']:16} {r['ms']:10.3f} {r['tflops']:8.1f}  "
            + " ".join(notes))
    save()
    log(f"wrote {out_path}")


if __name__ == "__main__":
    main()
