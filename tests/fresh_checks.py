"""Checks that need a fresh Python interpreter: what was imported first, which directory
comes first on ``sys.path``, or an environment variable read when Triton's kernels are
defined. :func:`run_fresh` runs one of the functions below as ``python -m fresh_checks NAME``.
:func:`random_selection` is shared with test_patterns.py.

Only the standard library is imported at the top: a check's imports are part of what it
checks (``entry_point_loads_mcompile`` asserts that nothing imported mcompile before it)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def run_fresh(check: str, *, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> None:
    """Run ``check`` in a new interpreter started in ``cwd``, this folder importable after
    ``cwd`` and whatever PYTHONPATH holds; fail with its stderr unless it finishes."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-m", "fresh_checks", check], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0 and out.stdout.endswith(f"{check}: ok\n"), out.stderr[-3000:]


# --- the backend's entry point ------------------------------------------------------------------------
def entry_point_loads_mcompile():
    """torch.compile(backend="minference") finds the backend through its entry point."""
    import torch
    from tiny_models import tiny_inputs, tiny_model
    model = tiny_model("llama")
    ids, mask = tiny_inputs(1, 20)
    assert "mcompile" not in sys.modules
    with torch.no_grad():
        out = torch.compile(model, backend="minference")(ids, attention_mask=mask).logits
        ref = model(ids, attention_mask=mask).logits
    assert "mcompile" in sys.modules  # loaded by the entry point
    import mcompile
    assert len(mcompile.report().rows) == 2, mcompile.report()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# --- Hugging Face's kernels package from the checkout root --------------------------------------------
def hub_kernels_from_the_root():
    """Started in the checkout root (first on sys.path): transformers' hub-kernel integration
    imports the real ``kernels`` package, and a compiled tiny model runs its sparse path."""
    import pathlib

    import torch
    assert pathlib.Path(sys.path[0] or ".").resolve() == ROOT, sys.path[:3]
    import kernels
    # not our top-level kernels/ folder (a virtual environment inside the checkout is fine)
    assert not pathlib.Path(kernels.__file__).resolve().is_relative_to(ROOT / "kernels"), kernels.__file__
    from kernels import get_kernel  # noqa: F401  (what transformers' integration imports)
    from transformers.integrations import hub_kernels  # noqa: F401

    import mcompile
    import mcompile.kernels.sparse_attention  # noqa: F401  (ours, as a subpackage of mcompile)
    from tiny_models import tiny_inputs, tiny_model
    model = tiny_model("llama")
    ids, mask = tiny_inputs(1, 48)
    compiled = torch.compile(model, backend="minference", options={"min_len": 16, "plan": "vertical_slash"})
    with torch.no_grad():
        out = compiled(ids, attention_mask=mask, use_cache=False).logits
        ref = model(ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    rows = mcompile.report().rows
    assert rows and all(r.decision == "sparse" for r in rows), mcompile.report()


# --- Triton paths under the CPU interpreter (TRITON_INTERPRET=1 before triton is imported) ----------
def _both(fn):
    """fn() with the builders' Triton paths, then with the torch paths."""
    os.environ["MCOMPILE_PATTERNS_TRITON"] = "1"
    a = fn()
    os.environ["MCOMPILE_PATTERNS_TRITON"] = "0"
    b = fn()
    os.environ["MCOMPILE_PATTERNS_TRITON"] = "1"
    return a, b


def _same_index(a, b):
    """The same counts, and the same entries up to the counts."""
    import torch
    assert torch.equal(a.block_count, b.block_count)
    assert torch.equal(a.column_count, b.column_count)
    for cnt, x, y in ((a.block_count, a.block_offset, b.block_offset),
                      (a.column_count, a.column_index, b.column_index)):
        ok = torch.arange(x.shape[-1], device=x.device) < cnt.unsqueeze(-1)
        assert torch.equal(torch.where(ok, x, 0), torch.where(ok, y, 0))


def same_vs_selection(q, k, params, heads=None):
    """The vertical-slash Triton selection takes what torch's stable top-k takes from the same
    scores: the same columns, the diagonals' ``pred`` table entry by entry, and the same index."""
    import torch
    from mcompile.kernels.patterns import _triton_vs
    from mcompile.kernels.patterns import vertical_slash as VS
    n = q.shape[2]
    kv, ks = VS.head_budgets(n, params)
    cols, dists = VS.select(*VS.scores(q, k, heads), kv, ks)
    _same_index(VS.build(q, k, params, heads=heads), VS.index_from_selection(cols, dists, n))
    hm, ql, scale = VS._last_queries(q, k, heads, None)
    head_kv, head_ks, kv_width, _ = VS.head_count_tables(kv, ks, q.device)
    got_cols, got_pred = _triton_vs.select(
        *_triton_vs._score_passes(ql, k, hm.heads, [h // hm.group for h in hm.heads], scale),
        head_kv, head_ks, kv_width, force=VS._FORCE, forced_columns=VS.FORCED_COLUMNS,
        forced_diagonals=VS.FORCED_DIAGONALS)
    assert torch.equal(got_cols.view_as(cols), cols.to(torch.int32))
    assert torch.equal(got_pred, _triton_vs.pred_table(dists, n))


@contextlib.contextmanager
def _poisoned_empty():
    """torch.empty fills what it returns (NaN, or -7), so an entry a kernel should write and
    does not shows."""
    import torch
    real = torch.empty

    def poisoned(*size, **kw):
        t = real(*size, **kw)
        return t.fill_(float("nan") if t.is_floating_point() else -7)
    torch.empty = poisoned
    try:
        yield
    finally:
        torch.empty = real


def random_selection(gen, B, H, n, ks, kv, forced_diagonal=True):
    """Random vertical-slash selections: (columns (B, H, kv) ascending, distances (B, H, ks));
    with ``forced_diagonal`` the distances hold 0 (the main diagonal) and descend, otherwise
    they come in any order."""
    import torch
    d = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:ks] for _ in range(H)]) for _ in range(B)])
    if forced_diagonal:
        zero = (d == 0).any(-1, keepdim=True)        # put the main diagonal in, keep distinct
        d[..., :1] = torch.where(zero, d[..., :1], torch.zeros_like(d[..., :1]))
        d = d.sort(-1, descending=True).values
    cols = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:kv] for _ in range(H)])
                        for _ in range(B)]).sort(-1).values
    return cols, d


def _same_column_scores(q, k, params, heads):
    import torch
    from mcompile.kernels.patterns import sample_attention as SA
    got, want = _both(lambda: SA.column_scores(q, k, params, heads=heads))
    for x, y in zip(got, want):
        assert torch.allclose(x, y, atol=1e-4), (q.shape[2], float((x - y).abs().max()))


def triton_kernels_interpreted():
    """The vertical-slash range merge and SampleAttention's fused sampling agree with the torch
    paths (the range merge with the reference mask of its selection)."""
    import torch
    from mcompile.kernels.patterns import _common as C
    from mcompile.kernels.patterns import vertical_slash as VS
    from mcompile.kernels.reference import index_to_mask
    g = torch.Generator().manual_seed(1)
    for n, ks in [(150, 40), (333, 333), (64, 7)]:
        c, d = random_selection(g, 1, 3, n, ks, 30)
        ix = VS.index_from_selection(c, d, n)
        assert torch.equal(index_to_mask(ix, n), VS.reference_index_mask(c, d, n)), n
    for n, heads, params in [(300, None, {}), (700, [3, 1], {"count_window": False, "sample_frac": 0.1})]:
        q, k = C.planted_qk(n, heads=4, kv_heads=2, batch=2, d=64, hot_columns=[3, 100], local=4.0)
        _same_column_scores(q, k, params, heads)


def triton_builders_interpreted():
    """Vertical-slash scores and index, block-sparse top-k and SampleAttention's split loops
    (several tile shapes) give the torch paths' index."""
    import torch
    from mcompile.kernels.patterns import _common as C
    from mcompile.kernels.patterns import block_sparse as BS
    from mcompile.kernels.patterns import sample_attention as SA
    from mcompile.kernels.patterns import vertical_slash as VS
    # vertical-slash: scores (fused passes + diagonal skew) and the whole build
    for n, params, heads in [(300, {"vertical_size": 40, "slash_size": 120}, None),
                             (777, {"vertical_size": 0.05, "slash_size": 0.2}, [1, 2]),
                             (40, {}, None), (129, {"vertical_size": 30, "slash_size": 1.0}, [3]),
                             # counts per (batch, head) from the scores' mass, under per-head caps
                             (300, {"vertical_size": 100, "slash_size": 200, "coverage": 0.9}, None),
                             (777, [{"vertical_size": 60, "slash_size": 150, "coverage": 0.6},
                                    {"vertical_size": 400, "slash_size": 500, "coverage": 0.6}], [1, 2])]:
        q, k = C.planted_qk(n, heads=4, kv_heads=2, batch=2, d=128, hot_columns=[3, 30],
                            diagonals=[20, 90], local=2.0)
        (v1, s1), (v2, s2) = _both(lambda: VS.scores(q, k, heads))
        assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(s1, s2, atol=1e-5), n
        # the row statistics over several key splits (at most ROW_SPLITS: longer splits past it)
        from mcompile.kernels.patterns import _triton_vs
        hm, ql, scale = VS._last_queries(q, k, heads, None)
        for split, most in ((128, 32), (64, 4)):
            _triton_vs.ROW_SPLITS, shipped = most, _triton_vs.ROW_SPLITS
            v3, s3 = _triton_vs.scores(ql, k, hm.heads, [h // hm.group for h in hm.heads], scale, split=split)
            _triton_vs.ROW_SPLITS = shipped
            assert torch.allclose(v1, v3.view_as(v1), atol=1e-5) and torch.allclose(s1, s3.view_as(s1), atol=1e-5), n
        a, b = _both(lambda: VS.build(q, k, params, heads=heads))
        C.index_cost(a)
        _same_index(a, b)
    # vertical-slash: the split selection (both top-k's, outputs and workspaces poisoned) takes
    # what torch's stable top-k takes from the same scores, ties included: all-equal inputs
    # tie almost every score; 256 scores a chunk and at most 4 segments a row, so segments of
    # one chunk and of several, ties and candidates spanning several
    from mcompile.kernels.patterns import _triton_vs
    g = torch.Generator().manual_seed(2)
    shipped = _triton_vs.SELECT_CHUNK, _triton_vs.SELECT_SEGMENTS
    _triton_vs.SELECT_CHUNK, _triton_vs.SELECT_SEGMENTS = 256, 4
    with _poisoned_empty():
        for q, k, params, heads in [
                (*C.planted_qk(500, heads=4, kv_heads=2, batch=1, d=128, hot_columns=[3, 30], diagonals=[20, 90]),
                 {"vertical_size": 60, "slash_size": 150}, None),
                (torch.ones(2, 4, 1000, 64), torch.ones(2, 2, 1000, 64),
                 [{"vertical_size": 30, "slash_size": 100}, {"vertical_size": 300, "slash_size": 400}], [0, 3]),
                (torch.randn(1, 3, 2000, 32, generator=g), torch.randn(1, 1, 2000, 32, generator=g),
                 {"vertical_size": 100, "slash_size": 500}, None),
                (torch.randn(1, 3, 900, 32, generator=g), torch.randn(1, 1, 900, 32, generator=g),  # one shared count
                 [{"vertical_size": 100, "slash_size": 100}, {"vertical_size": 100, "slash_size": 600}], [2, 0])]:
            same_vs_selection(q, k, params, heads)
    _triton_vs.SELECT_CHUNK, _triton_vs.SELECT_SEGMENTS = shipped
    # vertical-slash: the index of random selections (distances in any order), the verticals
    # in one chunk per program and in several
    g = torch.Generator().manual_seed(3)
    for (n, ks, kv), chunk in zip([(150, 40, 30), (333, 333, 30), (64, 7, 5), (1, 1, 1), (700, 200, 100)],
                                  [1024, 16, 1024, 16, 32]):
        _triton_vs.COLUMNS_CHUNK = chunk
        c, d = random_selection(g, 2, 3, n, ks, kv, forced_diagonal=False)
        a = VS.index_from_selection(c, d, n)
        os.environ["MCOMPILE_PATTERNS_TRITON"] = "0"
        b = VS.index_from_selection(c, d.sort(-1, descending=True).values, n)
        os.environ["MCOMPILE_PATTERNS_TRITON"] = "1"
        _same_index(a, b)
    # block-sparse: the radix-select top-k
    for n, top_k in [(65, 3), (640, 4), (1000, 0.3), (777, 100), (1, 5), (2000, 7)]:
        q = torch.randn(2, 4, n, 32, generator=g)
        k = torch.randn(2, 2, n, 32, generator=g)
        for heads in (None, [3, 0]):
            _same_index(*_both(lambda: BS.build(q, k, {"top_k": top_k}, heads=heads)))
    # equal scores: the lowest block ids win
    ix = BS.build(torch.ones(1, 1, 640, 16), torch.ones(1, 1, 640, 16), {"top_k": 4})
    assert ix.block_offset[0, 0, 9, :4].tolist() == [0, 64, 128, 576]
    # SampleAttention's stage 2 in one kernel (outputs poisoned) takes what torch's stable sort
    # takes from the same scores: random scores, per-head alpha and caps (some binding), all
    # scores equal (ties everywhere, alpha reached exactly), a window that reaches alpha alone,
    # skewed scores; 128 scores a pass, so the passes span several chunks
    from mcompile.kernels.patterns import _triton_sa
    _triton_sa.SELECT_CHUNK = 128
    rand = torch.rand(2, 3, 700, generator=g)
    cases = [(rand, torch.full((2, 3), 50.0), 10 * torch.rand(2, 3, generator=g), 0.9, 100),
             (rand, torch.full((2, 3), 50.0), 10 * torch.rand(2, 3, generator=g), [0.5, 0.99, 0.2], [30, 200, 5]),
             (torch.full((1, 2, 300), 0.25), torch.full((1, 2), 10.0), torch.tensor([[1.0, 0.9]]), 0.6, 40),
             (torch.rand(1, 3, 3000, generator=g) ** 4, torch.full((1, 3), 400.0), torch.full((1, 3), 5.0),
              [0.5, 0.9, 0.99], [2000, 1500, 2500]),      # skewed, hundreds kept: the cut spans its chunks
             (rand, torch.full((2, 3), 50.0), torch.full((2, 3), 49.0), 0.9, 64)]
    with _poisoned_empty():
        for col, tot, win, alpha, cap in cases:
            (count, cols), (want_count, want_cols) = _both(lambda: SA.filter_columns(col, win, tot, alpha, cap))
            assert torch.equal(count, want_count) and torch.equal(cols, want_cols), (count, want_count)
    assert count.tolist() == [[0, 0, 0], [0, 0, 0]]      # the last case: the window alone reaches alpha
    _triton_sa.SELECT_CHUNK = 8192
    # SampleAttention: unmasked/masked loop split, several tile shapes, the row statistics' keys
    # whole or in 256-key splits (4 and 10 of them here; a split's partials poisoned first)
    for cfg, split_keys in (({"BLOCK_M": 64, "BLOCK_N": 64}, 4096), ({"BLOCK_M": 32, "BLOCK_N": 128}, 4096),
                            ({"BLOCK_M": 64, "BLOCK_N": 128}, 256), ({"BLOCK_M": 32, "BLOCK_N": 64}, 256)):
        SA.CONFIG["row_stats"].update(cfg)
        SA.CONFIG["col_sums"].update(cfg)
        SA.ROW_SPLIT_KEYS = split_keys
        for n, heads, params in [(1000, None, {"window_frac": 0.1, "sample_frac": 0.1}),
                                 (2500, [1], {"sample_frac": 0.25, "count_window": False}),
                                 (2500, None, {"sample_frac": 0.25, "max_samples": 9})]:
            q, k = C.planted_qk(n, heads=4, kv_heads=2, batch=1, d=64, hot_columns=[3, 100], local=4.0)
            with _poisoned_empty():
                _same_column_scores(q, k, params, heads)


def score_tilings_interpreted():
    """Every tiling benchmarks/score_tilings.py times computes the shipped tiling's scores
    (vertical-slash's 12, SampleAttention's 8), the shipped one timed first, and the module
    constants are put back."""
    import torch
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import score_tilings
    from patterns import make_inputs
    from mcompile.kernels.patterns import _triton_vs
    from mcompile.kernels.patterns import sample_attention as SA
    shipped = (_triton_vs.ROW_SPLITS, _triton_vs.SUMS_TILES, repr(SA.CONFIG))
    q, k, _ = make_inputs(1500, 4, 2, 32, torch.float32, torch.device("cpu"), "structured")
    timed = []

    def bench(fn):
        timed.append(fn())
        return float(len(timed))
    vs = score_tilings.vertical_slash_tilings(q, k, bench=bench)
    sa = score_tilings.sample_attention_tilings(q, k, bench=bench)
    assert len(vs) == 12 and len(sa) == 8 and len(timed) == 20, (len(vs), len(sa))
    assert vs[0]["tiling"] == {"row_splits": shipped[0], "sums_tiles": shipped[1]}
    assert sa[0]["tiling"] == {name: [SA.CONFIG[name][x] for x in ("BLOCK_M", "BLOCK_N", "num_warps")]
                               for name in ("row_stats", "col_sums")}
    assert all(r["rel_err"] <= 1e-5 for r in vs + sa), [(r["tiling"], r["rel_err"]) for r in vs + sa]
    assert (_triton_vs.ROW_SPLITS, _triton_vs.SUMS_TILES, repr(SA.CONFIG)) == shipped


def mixed_budgets_interpreted():
    """Heads of one pattern with different budgets, built in one call on the Triton paths,
    give each head's index built alone, and the torch path's index."""
    import torch
    from mcompile.kernels import patterns as P
    from mcompile.kernels.index import check_index
    from mcompile.kernels.patterns import _common as C
    from mcompile.kernels.reference import index_to_mask
    from mcompile.plan import HeadPlan, LayerPlan
    mixed = {"vertical_slash": [{"vertical_size": 30, "slash_size": 100}, {"vertical_size": 90, "slash_size": 0.5},
                                {"vertical_size": C.Law(2.0, 0.5), "slash_size": 150}, {"vertical_size": 0.2}],
             "block_sparse": [{"top_k": 2}, {"top_k": 5}, {"top_k": 0.5}, {"top_k": C.Law(1.0, 0.5)}],
             "sample_attention": [{"alpha": 0.9, "window_frac": 0.05}, {"alpha": 0.97, "window_frac": 0.125},
                                  {"alpha": 0.8, "window_frac": 0.3, "max_columns": 20},
                                  {"alpha": 0.95, "window_frac": 0.08, "max_columns": 0}]}
    from mcompile.kernels.patterns import _triton_vs
    for n, chunk in ((300, 1024), (777, 16)):     # 16: the verticals in several chunks per program
        _triton_vs.COLUMNS_CHUNK = chunk
        q, k = C.planted_qk(n, heads=4, kv_heads=2, batch=2, d=128, hot_columns=[3, n // 3], diagonals=[40, 170],
                            local=3.0, seed=n)
        for pattern, params in mixed.items():
            plan = LayerPlan(tuple(HeadPlan(pattern, p) for p in params))
            a, b = _both(lambda: P.build_layer_index(q, k, plan))
            check_index(a, n, 2, 4)
            alone = torch.cat([index_to_mask(P.build_head_group(q, k, pattern, p, [h]), n)
                               for h, p in enumerate(params)], 1)
            assert torch.equal(index_to_mask(a, n), alone), (pattern, n)
            assert torch.equal(index_to_mask(b, n), alone), (pattern, n)
    # a layer of several patterns: each group's index written into its heads (on the Triton
    # path one launch a group), windows per head, outputs poisoned; the parts' lists up to
    # their counts, the static heads' broadcast rows included
    layer = [("vertical_slash", {"vertical_size": 30, "slash_size": 100}), ("sliding_window", {"window": 70}),
             ("sample_attention", {"alpha": 0.9, "window_frac": 0.05}), ("block_sparse", {"top_k": 3}),
             ("vertical_slash", {"vertical_size": 90, "slash_size": 0.5}), ("a_shape", {"n_init": 64, "n_local": 128}),
             ("dense", {}), ("sample_attention", {"alpha": 0.8, "window_frac": 0.2, "max_columns": 0})]
    plan = LayerPlan(tuple(HeadPlan(p, params) for p, params in layer))
    for n in (300, 777):
        q, k = C.planted_qk(n, heads=8, kv_heads=2, batch=2, d=128, hot_columns=[3, n // 3], diagonals=[40, 170],
                            local=3.0, seed=n + 1)
        with _poisoned_empty():
            a, b = _both(lambda: P.build_layer_index(q, k, plan))
        check_index(a, n, 2, 8)
        _same_index(a, b)
        assert torch.equal(a.window, b.window) and a.window.tolist() == [P.NO_WINDOW, 70] + [P.NO_WINDOW] * 6
        alone = torch.cat([index_to_mask(P.build_head_group(q, k, p, params, [h]), n)
                           for h, (p, params) in enumerate(layer)], 1)
        assert torch.equal(index_to_mask(a, n), alone), n


# --- what the Triton kernels are launched with ---------------------------------------------------------
def record_kernel_launches():
    """Under Triton's interpreter, one sparse call of a layer that mixes every pattern (bf16, GQA
    3:1, the builders' Triton paths): each kernel launch's name and argument types, written as
    JSON to $MCOMPILE_LAUNCHES_OUT for test_compile_hopper.py to compile for the GPU."""
    import inspect
    import json

    import torch
    from triton.runtime.interpreter import InterpretedFunction
    from triton.tools.tensor_descriptor import TensorDescriptor
    from mcompile import runtime
    from mcompile.kernels import ops
    from mcompile.kernels.patterns import _common as C
    from mcompile.plan import HeadPlan, LayerPlan

    launches = []
    run = InterpretedFunction.run

    def typed(value):
        if isinstance(value, torch.Tensor):
            return "*" + {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
                          torch.int32: "i32", torch.int64: "i64", torch.bool: "i1", torch.uint8: "u8"}[value.dtype]
        if isinstance(value, TensorDescriptor):
            return f"tensordesc<{typed(value.base)[1:]}{list(value.block_shape)}>"
        if isinstance(value, bool):
            return "i1"
        if isinstance(value, int):
            return "i32" if -2**31 <= value < 2**31 else "i64"
        if isinstance(value, float):
            return "fp32"
        return None

    def recording(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        params = list(inspect.signature(fn).parameters.values())
        constexpr = {p.name for p in params if "constexpr" in str(p.annotation)}
        values = dict(zip((p.name for p in params), args)) | {k: v for k, v in kwargs.items() if k in {p.name for p in params}}
        launches.append({"module": fn.__module__, "name": fn.__name__,
                         "signature": {k: "constexpr" if k in constexpr or v is None else typed(v) for k, v in values.items()},
                         "constexprs": {k: v for k, v in values.items() if k in constexpr or v is None},
                         "options": {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages", "enable_fp_fusion")}})
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    ops.set_cpu_backend("triton")
    plan = LayerPlan((HeadPlan("vertical_slash", {"vertical_size": 30, "slash_size": 100}), HeadPlan("dense"),
                      HeadPlan("a_shape", {"n_init": 64, "n_local": 128}), HeadPlan("block_sparse", {"top_k": 3}),
                      HeadPlan("sample_attention"), HeadPlan("sliding_window", {"window": 100})))
    q, k = C.planted_qk(700, heads=6, kv_heads=2, d=64, hot_columns=[3, 100], diagonals=[40], dtype=torch.bfloat16)
    cfg = runtime.SiteConfig(key="launches", layer=0, plan=plan, min_len=16)
    runtime.sparse_call(cfg, plan, q, k, k, None, tail_rows=64)
    kinds = {(launch["name"], json.dumps(launch["constexprs"], sort_keys=True, default=str)): launch for launch in launches}
    Path(os.environ["MCOMPILE_LAUNCHES_OUT"]).write_text(json.dumps(list(kinds.values()), default=str))


def compile_for_hopper():
    """Every launch $MCOMPILE_LAUNCHES_OUT lists (record_kernel_launches), and the sparse kernel
    over BlockRanges through TMA descriptors (d128), compiled for sm_90 down to a cubin with
    Triton's compiler and the ptxas it ships: no GPU. Skipped (passes) on a Triton whose
    ahead-of-time entry points moved."""
    import importlib
    import inspect
    import json

    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        return
    hopper = GPUTarget("cuda", 90, 32)
    # what the interpreter launches with and the GPU does not: bf16 dots in fp32, IEEE precision
    on_the_gpu = {"DOT_FP32": False, "DOT_PRECISION": "tf32", "DOT_IEEE": False}

    def compile_(kernel, signature, constexprs, **options):
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=hopper,
                                      options=options)
        except Exception as e:
            raise AssertionError(f"{kernel.fn.__name__} {constexprs}: {e}") from e
        assert compiled.asm["ptx"] and compiled.asm["cubin"], kernel.fn.__name__

    launches = json.loads(Path(os.environ["MCOMPILE_LAUNCHES_OUT"]).read_text())
    names = {launch["name"] for launch in launches}
    assert {"_sparse_attn_fwd", "_vs_sums", "_vs_columns", "_bs_select", "_sa_select", "_tail_partial"} <= names
    assert {launch["constexprs"]["RANGES"] for launch in launches if launch["name"] == "_sparse_attn_fwd"} == {True, False}
    for launch in launches:
        kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
        compile_(kernel, launch["signature"], {k: on_the_gpu.get(k, v) for k, v in launch["constexprs"].items()},
                 **launch["options"])
    from mcompile.kernels import sparse_attention as sparse
    pointers = {**{n: "*bf16" for n in ("Q", "K", "V", "Out")}, "Lse": "*fp32", "qk_scale": "fp32",
                **{n: "*i32" for n in ("BlockCount", "BlockOffset", "ColumnCount", "ColumnIndex", "Spans", "Window",
                                       "Heads")},
                "K_desc": "tensordesc<bf16[1,1,64,128]>", "V_desc": "tensordesc<bf16[1,1,64,128]>"}
    constexprs = dict(HEAD_DIM=128, INDEX_BLOCK_M=64, BLOCK_M=64, INDEX_BLOCK_N=64, BLOCK_N=64, NUM_DIAG=2,
                      RETURN_LSE=False, HAS_WINDOW=False, HAS_HEADS=True, RANGES=True, USE_TMA=True, WARP_SPEC=False,
                      DOT_PRECISION="tf32", DOT_FP32=False)
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32")
                 for n in inspect.signature(sparse._sparse_attn_fwd.fn).parameters}
    compile_(sparse._sparse_attn_fwd, signature, constexprs, num_warps=4, num_stages=3)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
    print(f"{sys.argv[1]}: ok")
