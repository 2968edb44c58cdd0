"""The sparse patterns' online index builders: each builder against its slow
reference, planted structure found, index invariants, full budgets equal dense causal, and
``build_layer_index`` mixing patterns across heads. CPU; a GPU test checks for host syncs."""
from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

from mcompile.kernels.index import NO_WINDOW, BlockRanges, check_index, span_blocks, span_width
from mcompile.kernels import patterns as P
from mcompile.kernels.patterns import _common as C
from mcompile.kernels.patterns import block_sparse as BS
from mcompile.kernels.patterns import sample_attention as SA
from mcompile.kernels.patterns import sliding_window as SW
from mcompile.kernels.patterns import vertical_slash as VS
from mcompile.options import OptionError, Options
from mcompile.plan import HeadPlan, LayerPlan
from fresh_checks import random_selection, run_fresh

try:
    from mcompile.kernels.index import check_index
except ImportError:  # pragma: no cover - kernel package not importable
    check_index = None
try:
    from mcompile.kernels.reference import index_to_mask, sparse_attention_reference
except ImportError:  # pragma: no cover
    index_to_mask = sparse_attention_reference = None


def _mask(index, n):
    if index_to_mask is not None:
        return index_to_mask(index, n)
    B, H, nqb = index.block_count.shape          # tiny private fallback
    m = torch.zeros(B, H, n, n, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for q in range(nqb):
                rows = slice(q * index.block_m, min(n, (q + 1) * index.block_m))
                for s in index.block_offset[b, h, q, :int(index.block_count[b, h, q])].tolist():
                    m[b, h, rows, s:s + index.block_n] = True
                for c in index.column_index[b, h, q, :int(index.column_count[b, h, q])].tolist():
                    m[b, h, rows, c] = True
    return m & torch.ones(n, n, dtype=torch.bool).tril()


def _check(index, n, batch=None, heads=None):
    if check_index is not None:
        check_index(index, n, batch, heads)
    assert index.block_count.dtype == torch.int32 and index.column_index.dtype == torch.int32


def _random_qk(n):
    """Random (q, k) of length n seeded by n: 2 batches, 4 query heads on 2 KV heads, d 32."""
    g = torch.Generator().manual_seed(n)
    return torch.randn(2, 4, n, 32, generator=g), torch.randn(2, 2, n, 32, generator=g)


def _run_interpreted(check, timeout):
    """Run fresh_checks.``check`` in a fresh Python under Triton's CPU interpreter (read when the
    kernels are defined), with the builders' Triton paths forced."""
    run_fresh(check, env=dict(os.environ, TRITON_INTERPRET="1", MCOMPILE_PATTERNS_TRITON="1"), timeout=timeout)


def _tril(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


LENGTHS = [1, 63, 64, 65, 200, 777]
STATIC_CASES = [
    ("dense", {}),
    ("sliding_window", {"window": 1}),
    ("sliding_window", {"window": 100}),
    ("sliding_window", {"window": 64}),
    ("sliding_window", {"window": 0.25}),
    ("a_shape", {"n_init": 0, "n_local": 100}),
    ("a_shape", {"n_init": 4, "n_local": 1}),
    ("a_shape", {"n_init": 64, "n_local": 128}),
    ("a_shape", {"n_init": 130, "n_local": 70}),
    ("a_shape", {"n_init": {"frac": 0.1}, "n_local": 0.2}),
]


# --- registry and parameters ---------------------------------------------------------------------
def test_registry():
    assert set(P.PATTERNS) >= {"dense", "sliding_window", "a_shape", "vertical_slash",
                               "block_sparse", "sample_attention"}
    for name, pat in P.PATTERNS.items():
        assert pat.name == name and callable(pat.build) and callable(pat.reference_mask)
        # an optional parameter whose default is None (off) is left out
        assert pat.validate({}) == {k: v for k, v in pat.defaults.items() if v is not None or k not in pat.optional}
    with pytest.raises(KeyError, match="unknown sparse pattern"):
        P.get_pattern("nope")
    with pytest.raises(ValueError, match="already registered"):
        P.register_pattern(dataclasses.replace(P.get_pattern("dense")))
    P.register_pattern(P.get_pattern("dense"))          # the same object again is fine


def test_register_new_pattern(monkeypatch):
    """A new pattern is one Pattern + one registration, and build_layer_index uses it."""
    dense = P.get_pattern("dense")
    mine = dataclasses.replace(dense, name="my_dense")
    monkeypatch.setitem(P.PATTERNS, "my_dense", mine)
    q = torch.randn(1, 2, 100, 16)
    ix = P.build_layer_index(q, q, LayerPlan((HeadPlan("my_dense"), HeadPlan("a_shape", {"n_init": 0, "n_local": 1}))))
    m = _mask(ix, 100)
    assert torch.equal(m[0, 0], _tril(100))
    assert Options.from_dict({"plan": "my_dense"}).forced_plan() == ("my_dense", {})


def test_plan_option_takes_the_registered_names():
    for name in P.PATTERNS:
        assert Options.from_dict({"plan": {"pattern": name}}).forced_plan() == (name, {})
    for bad in ("diagonal", ["dense"], {"pattern": ["dense"]}, {"window": 3}):
        with pytest.raises(OptionError, match="'plan'") as err:
            Options.from_dict({"plan": bad})
        assert str(list(P.PATTERNS)) in str(err.value)


def test_validation_names_the_parameter():
    with pytest.raises(ValueError, match="window"):
        P.validate_params("sliding_window", {"window": 0})
    with pytest.raises(ValueError, match="unknown parameter"):
        P.validate_params("a_shape", {"n_init": 4, "local": 3})
    with pytest.raises(ValueError, match="alpha"):
        P.validate_params("sample_attention", {"alpha": 1.5})
    with pytest.raises(ValueError, match="top_k"):
        P.validate_params("block_sparse", {"top_k": -1})
    with pytest.raises(ValueError, match="vertical_size"):
        P.validate_params("vertical_slash", {"vertical_size": True})
    assert P.validate_params("vertical_slash", {}) == {"vertical_size": 1000, "slash_size": 6096}
    assert P.validate_params("vertical_slash", {"vertical_size": 1000.0})["vertical_size"] == 1000


def test_resolve_budget():
    class Frac:                      # duck-types pattern_db.schema.Frac
        def __init__(self, v):
            self.value = v
    assert P.resolve_budget(100, 1000) == 100
    assert P.resolve_budget(5000, 1000) == 1000
    assert P.resolve_budget(0.1, 1000) == 100
    assert P.resolve_budget(1.0, 1000) == 1000
    assert P.resolve_budget({"frac": 0.25}, 1000) == 250
    assert P.resolve_budget(Frac(0.001), 1000) == 1
    assert P.resolve_budget(0.5, 1000, unit=64) == 8        # half of 16 key blocks
    assert P.resolve_budget(2000.0, 1000) == 1000
    with pytest.raises(ValueError):
        P.resolve_budget(-1, 10)


# --- static patterns ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", STATIC_CASES)
def test_static_patterns_equal_reference(name, params):
    pat = P.get_pattern(name)
    for n in LENGTHS:
        q = torch.zeros(2, 3, n, 16)
        ix = pat.build(q, q, params)
        _check(ix, n, 2, 3)
        m = _mask(ix, n)
        ref = pat.reference_mask(q, q, params)
        assert torch.equal(m, ref), (name, params, n)
        blocks, cols = pat.cost(n, params)
        assert blocks == int(ix.block_count[0, 0].sum()) and cols == 0
        assert pat.sizes(n, params) == (ix.max_blocks, ix.max_columns)


def test_sliding_window_granularity():
    """The index is the per-block union of the windows: contains the exact window, and is
    exact for each query block's first row."""
    n, w = 500, 100
    ix = SW.build(torch.zeros(1, 1, n, 8), torch.zeros(1, 1, n, 8), {"window": w})
    m = _mask(ix, n)[0, 0]
    exact = SW.exact_mask(n, w)
    assert bool((exact & ~m).sum() == 0)
    first = torch.arange(0, n, 64)
    assert torch.equal(m[first], exact[first])
    assert int((m & ~exact).sum(-1).max()) <= 63


def test_a_shape_sinks_and_window():
    n = 1000
    ix = P.get_pattern("a_shape").build(torch.zeros(1, 1, n, 8), None, {"n_init": 64, "n_local": 128})
    m = _mask(ix, n)[0, 0]
    r = torch.arange(n)
    assert bool(m[r >= 0][:, :64][_tril(n)[:, :64]].all())                 # sinks for every row
    exact_local = SW.exact_mask(n, 128)
    assert bool((exact_local & ~m).sum() == 0)
    assert int(m[999].sum()) == 64 + 128 + (999 - 960)                     # block 15: [833, 999]


# --- vertical_slash ---------------------------------------------------------------------------------
def test_vertical_slash_merge_matches_minference_port():
    """The vectorised range merge equals a literal port of convert_vertical_slash_indexes on
    random selections (distinct distances, main diagonal included)."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(12):
        n = int(torch.randint(2, 600, (1,), generator=gen))
        ks = int(torch.randint(1, n + 1, (1,), generator=gen))
        kv = int(torch.randint(1, n + 1, (1,), generator=gen))
        cols, dists = random_selection(gen, 2, 2, n, ks, kv)
        ix = VS.index_from_selection(cols, dists, n)
        _check(ix, n, 2, 2)
        m = _mask(ix, n)
        assert torch.equal(m, VS.reference_index_mask(cols, dists, n)), (trial, n, ks, kv)
        thin = VS.selection_mask(cols, dists, n)
        assert not bool((thin & ~m).any())                                   # selection covered


def _topk_optimal(scores, chosen, k):
    """The chosen set's total score equals the best possible (ties may pick other members)."""
    best = torch.topk(scores, k, -1).values.sum(-1)
    got = torch.gather(scores, -1, chosen).sum(-1)
    return torch.allclose(got, best, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,params", [(300, {"vertical_size": 40, "slash_size": 120}),
                                      (777, {"vertical_size": 0.05, "slash_size": 0.2}),
                                      (1000, {"vertical_size": 100, "slash_size": 300})])
def test_vertical_slash_random(n, params):
    q, k = _random_qk(n)
    ix = VS.build(q, k, params)
    _check(ix, n, 2, 4)
    cols, dists = VS.selection(q, k, params)
    assert torch.equal(_mask(ix, n), VS.reference_index_mask(cols, dists, n))
    # the selection against the float64 reference scores (forced entries included)
    v, s = VS.reference_scores(q, k)
    v[..., :VS.FORCED_COLUMNS] += VS._FORCE
    s[..., :VS.FORCED_DIAGONALS] += VS._FORCE
    kv, ks = VS.budgets(n, params)
    assert _topk_optimal(v, cols, kv) and _topk_optimal(s, dists, ks)
    blocks, columns = VS.cost(n, params)
    assert int(ix.block_count.sum()) <= 8 * blocks and int(ix.column_count.sum()) <= 8 * columns


def test_vertical_slash_scores_chunked(monkeypatch):
    q, k = C.planted_qk(500, heads=4, kv_heads=2, hot_columns=[7], diagonals=[120], seed=4)
    v1, s1 = VS.scores(q, k, heads=[3, 1])
    vr, sr = VS.reference_scores(q, k, heads=[3, 1])
    assert torch.allclose(v1.double(), vr, atol=1e-5) and torch.allclose(s1.double(), sr, atol=1e-5)
    monkeypatch.setattr(C, "SCORE_BUDGET_BYTES", 100_000)        # many key chunks, two passes
    v2, s2 = VS.scores(q, k, heads=[3, 1])
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(s1, s2, atol=1e-5)


def test_vertical_slash_planted():
    n = 1024
    hot, diags = [300, 700], [150, 400]
    q, k = C.planted_qk(n, heads=2, hot_columns=[5] + hot, diagonals=diags, seed=1)
    params = {"vertical_size": 40, "slash_size": 140}
    ix = VS.build(q, k, params)
    _check(ix, n)
    cols, dists = VS.selection(q, k, params)
    for h in range(2):
        assert set(hot) <= set(cols[0, h].tolist())
        assert set(diags) <= set(dists[0, h].tolist())
    m = _mask(ix, n)
    r = torch.arange(n)
    for c in hot:
        assert bool(m[:, :, c:, c].all())
    for d in diags:
        assert bool(m[:, :, r[d:], r[d:] - d].all())
    assert torch.equal(m, VS.reference_mask(q, k, params))
    # diagonals merge into ranges: the 100 forced ones alone cost 3 blocks per query block
    only_forced = VS.build(q, k, {"vertical_size": 30, "slash_size": 100})
    assert int(only_forced.block_count.max()) == 3


def _fewest_holding(scores, forced, coverage, floor, cap):
    """coverage_counts the obvious way, one (batch, head) at a time in float64: the forced
    entries, then the others by score, until their sum reaches the fraction of the total."""
    B, H, n = scores.shape
    out = torch.zeros(B, H, dtype=torch.long)
    for b in range(B):
        for h in range(H):
            row = scores[b, h].double()
            need = coverage * float(row.sum())
            held, count = float(row[:forced].sum()), min(forced, n)
            for x in sorted(row[forced:].tolist(), reverse=True):
                if held >= need:
                    break
                held, count = held + x, count + 1
            head_cap = cap if isinstance(cap, int) else cap[h]
            out[b, h] = min(max(count, floor), head_cap, n)
    return out


@pytest.mark.parametrize("coverage", [0.3, 0.9, 0.999, 1.0])
def test_vertical_slash_coverage_counts_are_the_fewest_entries_holding_the_mass(coverage):
    planted = C.planted_qk(1000, heads=2, batch=2, hot_columns=[5, 300, 700], diagonals=[150, 400], seed=3)
    for q, k in (_random_qk(700), planted):
        v, s = VS.reference_scores(q, k)
        heads = v.shape[1]
        for scores, forced, floor in ((v, VS.FORCED_COLUMNS, VS.MIN_VERTICAL), (s, VS.FORCED_DIAGONALS, VS.MIN_SLASH)):
            for cap in (5000, [400, 120, 90, 700][:heads]):
                got = VS.coverage_counts(scores, forced, coverage, floor, cap)
                assert got.dtype == torch.int32
                assert torch.equal(got.long(), _fewest_holding(scores, forced, coverage, floor, cap)), (coverage, cap)


def test_vertical_slash_coverage_keeps_what_holds_the_mass_and_drops_the_rest():
    """With ``coverage`` each (batch, head) takes the top of its own selection: fewer entries
    where the mass is concentrated (planted heads), the caps where it is spread (random
    heads). The index is the reference's (float64 scores, MInference's merge)."""
    n = 4096
    hot, diags = [300, 2700], [150, 1400]
    q, k = C.planted_qk(n, heads=2, hot_columns=[5] + hot, diagonals=diags, seed=1)
    capped = {"vertical_size": 600, "slash_size": 300}
    params = {**capped, "coverage": 0.5}
    ix, full = VS.build(q, k, params), VS.build(q, k, capped)
    _check(ix, n)
    assert torch.equal(_mask(ix, n), VS.reference_mask(q, k, params))
    cols, dists = VS.selection(q, k, params)
    full_dists = VS.selection(q, k, capped)[1]
    v, s = VS.scores(q, k)
    kv = VS.coverage_counts(v, VS.FORCED_COLUMNS, 0.5, VS.MIN_VERTICAL, 600)
    ks = VS.coverage_counts(s, VS.FORCED_DIAGONALS, 0.5, VS.MIN_SLASH, 300)
    assert bool((kv < 600).all()) and bool((ks < 300).all())              # concentrated: under the caps
    for h in range(2):
        assert set(hot) <= set(cols[0, h].tolist()) and set(diags) <= set(dists[0, h].tolist())
        # the first counts of the capped selection, the rest dropped (INT32_BIG / the main diagonal)
        top_cols = set(VS._top_per_head(v[:, h:h + 1] + (torch.arange(n) < VS.FORCED_COLUMNS) * VS._FORCE,
                                        600, 600, 0)[0, 0, :int(kv[0, h])].tolist())
        assert set(cols[0, h].tolist()) - {C.INT32_BIG} == top_cols
        assert set(dists[0, h].tolist()) <= set(full_dists[0, h].tolist())
        assert len(set(dists[0, h].tolist())) == int(ks[0, h])
    # fewer keys computed (a column is one key, a block 64; fewer diagonals leave more columns outside blocks)
    keys = [int(x.block_count.sum()) * 64 + int(x.column_count.sum()) for x in (ix, full)]
    assert keys[0] < 0.7 * keys[1], keys
    # spread mass (random q, k): every head takes its caps, the index is the capped one
    q, k = _random_qk(640)
    assert torch.equal(_mask(VS.build(q, k, {"vertical_size": 60, "slash_size": 150, "coverage": 0.9}), 640),
                       _mask(VS.build(q, k, {"vertical_size": 60, "slash_size": 150}), 640))


def test_vertical_slash_coverage_is_checked():
    for bad in (0, 1.5, -0.1, True, "0.9", {"frac": 0.5}):
        with pytest.raises(ValueError, match="coverage"):
            P.validate_params("vertical_slash", {"coverage": bad})
    with pytest.raises(ValueError, match="coverage"):      # the unknown-parameter error lists it
        P.validate_params("vertical_slash", {"cover": 0.9})
    assert P.validate_params("vertical_slash", {"coverage": 1})["coverage"] == 1.0


def test_triton_kernels_interpreted():
    """The CUDA paths (vertical-slash range merge, SampleAttention's fused sampling) run
    under Triton's interpreter and agree with the torch paths."""
    pytest.importorskip("triton")
    _run_interpreted("triton_kernels_interpreted", timeout=600)


def test_triton_builders_interpreted():
    """The Triton builders (vertical-slash scores and index, block-sparse top-k, SampleAttention's
    split loops under several tile shapes) run under Triton's interpreter and give the torch
    paths' index: the same counts and the same entries up to the counts."""
    pytest.importorskip("triton")
    _run_interpreted("triton_builders_interpreted", timeout=900)


# --- block_sparse ------------------------------------------------------------------------------------
def _block_scores64(q, k, bm=64):
    """float64 pooled block scores (B, H, NQB, NKB), GQA by repeat."""
    g = q.shape[1] // k.shape[1]
    pq = BS._pool(q.double(), bm).double()
    pk = BS._pool(k.double(), bm).double().repeat_interleave(g, 1)
    return pq @ pk.transpose(-1, -2)


@pytest.mark.parametrize("n,top_k", [(65, 3), (640, 4), (1000, 0.3), (777, 100)])
def test_block_sparse_random(n, top_k):
    q, k = _random_qk(n)
    params = {"top_k": top_k}
    ix = BS.build(q, k, params)
    _check(ix, n, 2, 4)
    m = _mask(ix, n)
    ref = BS.reference_mask(q, k, params)
    if not torch.equal(m, ref):            # only near-ties may differ: compare chosen score sums
        s = _block_scores64(q, k)
        for qb in range(ix.num_q_blocks):
            cnt = ix.block_count[..., qb].long()
            for b in range(2):
                for h in range(4):
                    ids = (ix.block_offset[b, h, qb, :cnt[b, h]] // 64).long()
                    rows = slice(qb * 64, min(n, qb * 64 + 64))
                    ref_ids = ref[b, h, rows.start, ::64].nonzero().flatten()[:cnt[b, h]]
                    assert abs(float(s[b, h, qb, ids].sum() - s[b, h, qb, ref_ids].sum())) < 1e-4
    assert BS.cost(n, params) == (int(ix.block_count[0, 0].sum()), 0)


def test_block_sparse_planted():
    n = 1024
    hot = [(10, 3), (12, 5), (15, 8), (6, 2)]
    q, k = C.planted_qk(n, heads=2, hot_blocks=hot, seed=2)
    ix = BS.build(q, k, {"top_k": 4})
    _check(ix, n)
    for qb, kb in hot:
        for h in range(2):
            got = set((ix.block_offset[0, h, qb, :ix.block_count[0, h, qb]] // 64).tolist())
            assert {0, qb, kb} <= got, (qb, kb, got)
    assert torch.equal(_mask(ix, n), BS.reference_mask(q, k, {"top_k": 4}))


# --- sample_attention ----------------------------------------------------------------------------
@pytest.mark.parametrize("n,params", [(300, {}), (777, {"alpha": 0.8, "window_frac": 0.05, "sample_frac": 0.1}),
                                      (640, {"alpha": 0.99, "max_columns": 64, "count_window": False}),
                                      (1000, {"alpha": 0.9, "sample_frac": 0.1, "max_samples": 5})])
def test_sample_attention_random(n, params):
    q, k = _random_qk(n)
    ix = SA.build(q, k, params)
    _check(ix, n, 2, 4)
    count, cols = SA.selection(q, k, params)
    sel = [[cols[b, h, :count[b, h]].tolist() for h in range(4)] for b in range(2)]
    p = SA.validate(params)
    m = _mask(ix, n)
    assert torch.equal(m, SA.mask_from_columns(sel, n, SA._window(n, p)))
    ref_sel, col, need = SA.reference_selection(q, k, params)
    cap = SA.column_cap(n, p)
    for b in range(2):
        for h in range(4):
            mine, ref = sel[b][h], ref_sel[b][h]
            assert abs(len(mine) - len(ref)) <= 1
            if len(mine) < cap:        # alpha reached (in float64 terms, up to rounding)
                assert float(col[b, h, mine].sum()) >= float(need[b, h]) - 1e-4
    blocks, columns = SA.cost(n, params)
    assert int(ix.block_count[0, 0].sum()) == blocks and int(ix.column_count[0, 0].sum()) <= columns


def test_sample_attention_samples_at_most_max_samples_rows():
    """A fraction of the rows below the last 64 until that passes ``max_samples``, then
    ``max_samples`` rows spread over them; bad counts are refused by name."""
    for n, params, below in [(4096, {}, 4032 // 20 + 1), (40960, {}, 2045), (131072, {}, 2047),
                             (1000, {"sample_frac": 0.1, "max_samples": 5}, 5), (50, {"max_samples": 1}, 0)]:
        rows = SA.sample_rows(n, SA.validate(params))
        assert len(rows) == below + min(64, n) and rows[-min(64, n):] == list(range(n - min(64, n), n)), n
        assert rows == sorted(set(rows)) and rows[0] == 0 and len({b - a for a, b in zip(rows, rows[1:-64])}) <= 1
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="max_samples"):
            SA.validate({"max_samples": bad})


def test_sample_attention_planted():
    n = 1024
    hot = [3, 200, 450, 777]
    q, k = C.planted_qk(n, heads=2, hot_columns=hot, local=6.0, seed=3)
    params = {"alpha": 0.9, "window_frac": 0.1}
    ix = SA.build(q, k, params)
    _check(ix, n)
    count, cols = SA.selection(q, k, params)
    for h in range(2):
        assert set(hot) <= set(cols[0, h, :count[0, h]].tolist())
    m = _mask(ix, n)
    for c in hot:
        assert bool(m[:, :, c:, c].all())
    # a purely local head needs (almost) no columns: the window already holds alpha
    q2, k2 = C.planted_qk(n, local=12.0, seed=5)
    c2, _ = SA.selection(q2, k2, {"alpha": 0.9, "window_frac": 0.1})
    assert int(c2.max()) <= 8


@pytest.mark.parametrize("count_window", [True, False])
def test_sample_attention_column_scores_by_window_equal_one_call_each(count_window):
    q, k = _random_qk(777)
    params = {"sample_frac": 0.1, "count_window": count_window}
    fracs = [0.01, 0.1, 0.35]
    for frac, got in zip(fracs, SA.column_scores_by_window(q, k, params, fracs, heads=[1, 3])):
        want = SA.column_scores(q, k, {**params, "window_frac": frac}, heads=[1, 3])
        for a, b in zip(got, want):
            assert torch.equal(a, b)


# --- everything selected = dense causal --------------------------------------------------------------
FULL = [("dense", {}), ("sliding_window", {"window": 1.0}), ("a_shape", {"n_init": 0, "n_local": 1.0}),
        ("vertical_slash", {"vertical_size": 1.0, "slash_size": 1.0}), ("block_sparse", {"top_k": 1.0}),
        ("sample_attention", {"window_frac": 1.0})]


@pytest.mark.parametrize("name,params", FULL)
def test_full_budget_is_dense(name, params):
    n = 333
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, n, 32, generator=g)
    k = torch.randn(1, 2, n, 32, generator=g)
    v = torch.randn(1, 2, n, 32, generator=g)
    ix = P.get_pattern(name).build(q, k, params)
    _check(ix, n, 1, 4)
    assert torch.equal(_mask(ix, n), _tril(n).expand(1, 4, n, n))
    if sparse_attention_reference is not None:
        out = sparse_attention_reference(q, k, v, ix)
        dense = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1),
                                                                 v.repeat_interleave(2, 1), is_causal=True)
        assert torch.allclose(out, dense, atol=1e-5)


# --- the layer index ----------------------------------------------------------------------------------
MIXED = [HeadPlan("vertical_slash", {"vertical_size": 40, "slash_size": 120}), HeadPlan("dense"),
         HeadPlan("a_shape", {"n_init": 64, "n_local": 128}), HeadPlan("block_sparse", {"top_k": 3}),
         HeadPlan("sample_attention", {"alpha": 0.9, "window_frac": 0.1}),
         HeadPlan("sliding_window", {"window": 200}),
         HeadPlan("vertical_slash", {"vertical_size": 40, "slash_size": 120}),
         HeadPlan("a_shape", {"n_init": 64, "n_local": 128})]


def test_build_layer_index_mixed(monkeypatch):
    n = 700
    q, k = C.planted_qk(n, heads=8, kv_heads=2, batch=2, hot_columns=[0, 300], diagonals=[150], seed=0)
    calls = []
    for name in {h.pattern for h in MIXED}:
        pat = P.get_pattern(name)

        def counted(*a, _b=pat.build, _n=name, **kw):
            calls.append((_n, tuple(kw["heads"])))
            return _b(*a, **kw)
        monkeypatch.setitem(P.PATTERNS, name, dataclasses.replace(pat, build=counted))
    monkeypatch.setattr(P, "_block_ranges", C.StaticCache())
    plan = LayerPlan(tuple(MIXED))
    ix = P.build_layer_index(q, k, plan)
    _check(ix, n, 2, 8)
    # one batched call per (pattern, params) group, never per head; the static heads (dense,
    # a_shape, sliding_window) are one part of spans, built by no pattern's build
    online = [("vertical_slash", (0, 6)), ("block_sparse", (3,)), ("sample_attention", (4,))]
    assert sorted(calls) == sorted(online)
    assert P.index_parts(plan, n) == [(0, 6), (3,), (4,), (1, 2, 5, 7)]
    # the static heads' spans are kept: a second call makes none
    calls.clear()
    again = P.build_layer_index(q, k, plan)
    assert sorted(calls) == sorted(online) and P._block_ranges.made == 1
    assert torch.equal(_mask(again, n), _mask(ix, n))
    assert (ix.max_blocks, ix.max_columns) == P.layer_sizes(n, plan)
    m = _mask(ix, n)
    for h, hp in enumerate(MIXED):
        ref = P.get_pattern(hp.pattern).reference_mask(q, k, hp.params, heads=[h])
        assert torch.equal(m[:, h:h + 1], ref), (h, hp.pattern)
        alone = P.build_head_group(q, k, hp.pattern, hp.params, [h])
        assert torch.equal(_mask(alone, n), m[:, h:h + 1])


def _without_host_sync(build):
    """``build()`` on the GPU with any host sync an error (after the warm-up the caller did)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return build()
    finally:
        torch.cuda.set_sync_debug_mode("default")


COVERED = [HeadPlan("vertical_slash", {"vertical_size": 600, "slash_size": 300, "coverage": 0.5}),
           HeadPlan("vertical_slash", {"vertical_size": 400, "slash_size": 200, "coverage": 0.5}),
           HeadPlan("vertical_slash", {"vertical_size": 600, "slash_size": 300}),
           HeadPlan("a_shape", {"n_init": 64, "n_local": 128})]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_layer_of_coverage_heads(device, monkeypatch):
    """Heads with one coverage share a build whatever their caps; a head without it is another
    build. Each head's index is its own reference's; on the GPU the build does not sync."""
    n = 4096
    q, k = C.planted_qk(n, heads=4, kv_heads=2, hot_columns=[5, 300, 2700], diagonals=[150, 1400], seed=1)
    calls = []
    pat = P.get_pattern("vertical_slash")

    def counted(*a, **kw):
        calls.append(tuple(kw["heads"]))
        return pat.build(*a, **kw)
    monkeypatch.setitem(P.PATTERNS, "vertical_slash", dataclasses.replace(pat, build=counted))
    plan = LayerPlan(tuple(COVERED))
    dq, dk = q.to(device), k.to(device)
    ix = P.build_layer_index(dq, dk, plan)
    assert sorted(calls) == [(0, 1), (2,)]
    if device == "cuda":
        ix = _without_host_sync(lambda: P.build_layer_index(dq, dk, plan))
    _check(ix, n, 1, 4)
    m = _mask(ix, n).cpu()
    for h, hp in enumerate(COVERED):
        ref = P.get_pattern(hp.pattern).reference_mask(q, k, hp.params, heads=[h])
        assert torch.equal(m[:, h:h + 1], ref), (h, hp.params)


def test_index_parts_count_broadcast_lists_once(monkeypatch):
    """SampleAttention's index holds one column list a head (broadcast over the query blocks)
    and counts a query block: the runtime's index budget counts that, so a budget a
    materialised list of the same widths would overrun keeps its heads in one part; the
    built index's per-call tensors fit the count."""
    from mcompile.kernels.index import index_memory_bytes
    n, B = 2048, 2
    sa = HeadPlan("sample_attention", {"alpha": 0.95, "window_frac": 0.05, "max_columns": 300})
    plan = LayerPlan((sa, sa, sa))
    blocks, columns = P.head_sizes(n, plan)[0]
    nqb = -(-n // 64)
    counted = 4 * B * 3 * (2 * nqb + columns)
    assert counted < index_memory_bytes(B, 1, n, blocks, columns)
    assert P.index_parts(plan, n, B, counted) == [(0, 1, 2)]
    q, k = C.planted_qk(n, heads=3, kv_heads=1, batch=B, hot_columns=[0, 700, 1500], diagonals=[40], seed=1)
    ix = P.build_part(q, k, plan, (0, 1, 2))
    assert ix.column_index.stride(2) == 0 and ix.block_offset.stride(0) == 0
    per_call = sum(t.untyped_storage().nbytes() for t in (ix.column_index, ix.column_count))
    assert per_call <= counted
    # a pattern whose lists are materialised a query block at a time splits under that budget
    monkeypatch.setitem(P.PATTERNS, "sample_attention",
                        dataclasses.replace(P.get_pattern("sample_attention"), broadcast_lists=False))
    P._PER_PLAN.clear()
    assert P.index_parts(plan, n, B, counted) == [(0,), (1,), (2,)]
    P._PER_PLAN.clear()


def test_static_heads_of_any_widths_share_one_part_of_spans():
    """Static heads with spans (dense, A-shape of any budget, a sliding window) are one part
    however unlike their widths: a BlockRanges of two numbers a head, no index. Its blocks are
    each head's own pattern's, and the layer's index, assembled from the parts, the plan's."""
    n, B = 4096, 2
    narrow = HeadPlan("a_shape", {"n_init": 64, "n_local": 128})
    window = HeadPlan("sliding_window", {"window": 192})
    plan = LayerPlan((narrow, HeadPlan("dense", {}), window, HeadPlan("block_sparse", {"top_k": 3}),
                      HeadPlan("a_shape", {"n_init": 0, "n_local": 3000})))
    sizes = P.head_sizes(n, plan)
    assert sizes[1][0] == 64 and max(sizes[0][0], sizes[2][0]) <= 5 and sizes[4][0] > 45
    assert P.index_parts(plan, n, B, budget=1 << 10) == [(3,), (0, 1, 2, 4)]
    q, k = C.planted_qk(n, heads=5, kv_heads=1, batch=B, hot_columns=[9], seed=2)
    ranges = P.build_part(q, k, plan, (0, 1, 2, 4))
    assert isinstance(ranges, BlockRanges)
    assert ranges.host_spans == ((64, 128), (0, n), (0, 192), (0, 3000))
    assert ranges.window.tolist() == [NO_WINDOW, NO_WINDOW, 192, NO_WINDOW]
    listed = ranges.to_index()
    check_index(listed.expand(B, 4), n)
    assert listed.max_blocks == max(sizes[h][0] for h in (0, 1, 2, 4))
    for j, h in enumerate((0, 1, 2, 4)):
        alone = P.build_head_group(q, k, plan.heads[h].pattern, plan.heads[h].params, [h])
        assert torch.equal(_mask(listed, n)[:, j:j + 1], _mask(alone, n)[:1]), h
    assert P.build_part(q, k, plan, (0, 1, 2, 4)) is ranges           # kept: made once per plan and length
    whole = _mask(P.build_layer_index(q, k, plan), n)
    for h, hp in enumerate(plan.heads):
        assert torch.equal(whole[:, h:h + 1], _mask(P.build_head_group(q, k, hp.pattern, hp.params, [h]), n)), h


@pytest.mark.parametrize("n", [1, 63, 64, 65, 700, 4096])
@pytest.mark.parametrize("block_m,block_n", [(64, 64), (128, 64), (64, 128), (32, 64)])
def test_span_blocks_list_the_union_of_sinks_and_windows(n, block_m, block_n):
    """``span_blocks`` (the kernel's arithmetic) against the selection it stands for, made the
    obvious way: per query block, the aligned sink blocks and the key blocks tiling the rows'
    window union, the two merged into one aligned range where they meet."""
    for sink_end, local in [(0, 1), (0, 100), (block_n, 1), (2 * block_n, 250), (block_n, n + 5), (0, n)]:
        count, offsets = span_blocks(n, sink_end, local, block_m, block_n)
        assert offsets.shape[-1] == span_width(n, [(sink_end, local)], block_m, block_n)
        for qb in range(count.shape[0]):
            start, end = qb * block_m, min(qb * block_m + block_m, n)
            w0 = max(0, start - local + 1)
            if w0 <= sink_end:
                want = list(range(0, end, block_n))
            else:
                want = list(range(0, sink_end, block_n)) + list(range(w0, end, block_n))
            assert offsets[qb, :count[qb]].tolist() == want, (sink_end, local, qb)


def test_block_ranges_refuse_bad_spans():
    with pytest.raises(ValueError, match="head 1 has sink_end 10"):
        BlockRanges.make([(0, 5), (10, 5)], 100)
    with pytest.raises(ValueError, match="local 0"):
        BlockRanges.make([(64, 0)], 100)
    with pytest.raises(ValueError, match="dynamic"):
        dataclasses.replace(P.get_pattern("block_sparse"), spans=P.get_pattern("a_shape").spans)


def test_static_cache_keeps_at_most_its_bytes_and_keeps_hitting_under_a_cycle():
    """A forward reads the same keys in order every call. With more than fit, the first kept
    stay and keep hitting (least-recently-used replacement would miss every read); entries
    unread for ``stale_reads`` reads give way to new ones (another length's keys); an entry
    larger than the cap is never kept; the bytes kept never pass the cap."""
    cache = C.StaticCache(max_bytes=3000, stale_reads=8)
    made = []

    def read(key, numel=250):                          # 250 floats: 1000 bytes
        return cache.get(key, lambda: made.append(key) or torch.full((numel,), float(len(made))), "cpu")
    for _ in range(3):
        for key in "abcde":
            read(key)
        assert cache.held() <= 3000
    assert made == list("abcde") + list("de") * 2 and list(cache.recent) == list("abc")
    first = read("a")
    assert read("a") is first and made[-1] == "e"
    read("big", 1000)                                  # 4000 bytes: returned, never kept
    assert "big" not in cache.recent
    for _ in range(3):                                 # another length: its keys take over once
        for key in "xyz":                              # a, b and c are stale
            read(key)
    assert list(cache.recent) == list("xyz") and cache.held() == 3000
    assert C.held_bytes((first, [first[:10], torch.zeros(3)])) == 1000 + 12


def test_build_layer_index_uniform_and_errors():
    n = 300
    q = torch.randn(1, 4, n, 16)
    k = torch.randn(1, 2, n, 16)
    plan = LayerPlan.uniform("a_shape", 4, n_init=64, n_local=100)
    ix = P.build_layer_index(q, k, plan)
    _check(ix, n, 1, 4)
    assert isinstance(P.build_part(q, k, plan, (0, 1, 2, 3)), BlockRanges)    # the runtime's: spans
    with pytest.raises(ValueError, match="plan has 3 heads"):
        P.build_layer_index(q, k, LayerPlan.uniform("dense", 3))
    with pytest.raises(ValueError):
        P.build_layer_index(q, k[:, :, :10], LayerPlan.uniform("dense", 4))


def test_bf16_inputs():
    n = 400
    q, k = C.planted_qk(n, heads=4, kv_heads=1, hot_columns=[0, 100], diagonals=[130], dtype=torch.bfloat16)
    plan = LayerPlan((HeadPlan("vertical_slash", {"vertical_size": 30, "slash_size": 100}),
                      HeadPlan("block_sparse", {"top_k": 2}), HeadPlan("sample_attention"), HeadPlan("dense")))
    ix = P.build_layer_index(q, k, plan)
    _check(ix, n, 1, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_no_host_sync():
    n = 4096
    q, k = C.planted_qk(n, heads=8, kv_heads=2, hot_columns=[0, 300], diagonals=[150], dtype=torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    plan = LayerPlan(tuple(MIXED))
    P.build_layer_index(q, k, plan)                                 # warm-up (Triton compile, caches)
    ix = _without_host_sync(lambda: P.build_layer_index(q, k, plan))
    _check(ix, n, 1, 8)
    ref = P.build_layer_index(q.cpu().float(), k.cpu().float(), plan)
    # same selection up to bf16 near-ties: compare the static heads exactly
    for h in (1, 2, 5, 7):
        assert torch.equal(_mask(ix, n)[:, h].cpu(), _mask(ref, n)[:, h])


# --- demos --------------------------------------------------------------------------------------------
def test_demos_draw_the_reference_selection(tmp_path, monkeypatch):
    """Each demo draws the selection that its pattern's reference mask makes of the demo's own
    inputs (planted structure for the online patterns) into a 720 x 720 PNG."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    inputs, drawn = {}, {}
    real_plot_mask = C.plot_mask

    def plot_mask(mask, path, title, **kw):
        drawn[path] = mask
        return real_plot_mask(mask, path, title, **kw)
    monkeypatch.setattr(C, "plot_mask", plot_mask)
    for name, pat in P.PATTERNS.items():
        module = sys.modules[pat.demo.__module__]

        def plot_selection(path, label, build, q, k, params, _real=module.plot_selection, **kw):
            inputs[path] = (q, k, params)
            return _real(path, label, build, q, k, params, **kw)
        monkeypatch.setattr(module, "plot_selection", plot_selection)
        path = pat.demo(str(tmp_path / f"{name}.png"), n=512)
        q, k, params = inputs[path]
        assert q.shape[2] == 512
        assert torch.equal(drawn[path], pat.reference_mask(q, k, params)[0, 0]), name
        assert imread(path).shape == (720, 720, 4), name


def test_static_index_is_built_once_per_shape():
    """A static pattern's index is kept per shape and parameters: the same object comes back
    for the same length, a new one for another length or parameters, and it is what a fresh
    build gives."""
    from mcompile.kernels.patterns import build_head_group
    q = torch.randn(1, 4, 300, 16)
    first = build_head_group(q, q[:, :2], "a_shape", {"n_init": 64, "n_local": 128})
    again = build_head_group(torch.randn(1, 4, 300, 16), q[:, :2], "a_shape", {"n_init": 64, "n_local": 128})
    assert again is first
    other = build_head_group(q, q[:, :2], "a_shape", {"n_init": 64, "n_local": 192})
    longer = build_head_group(torch.randn(1, 4, 400, 16), q[:, :2], "a_shape", {"n_init": 64, "n_local": 128})
    assert other is not first and longer is not first and longer.num_q_blocks == 7
    fresh = P.PATTERNS["a_shape"].build(q, q[:, :2], {"n_init": 64, "n_local": 128})
    for cached, built in zip(first.tensors(), fresh.tensors()):
        assert torch.equal(cached, built)
    with pytest.raises(RuntimeError):       # broadcast views: an in-place write cannot corrupt the cache
        first.block_count.add_(1)
    # online patterns are built every call
    dyn = [build_head_group(q, q[:, :2], "block_sparse", {"top_k": 2}) for _ in range(2)]
    assert dyn[0] is not dyn[1]


@pytest.mark.parametrize("n", [1, 63, 64, 65, 777, 4096, 32768])
@pytest.mark.parametrize("block_m", [32, 64])
def test_sample_attention_sizes_are_the_window_blocks_widths(n, block_m):
    """``sizes`` computes the width the runtime asks for every call without building the
    blocks: it must be the width ``window_blocks`` gives them."""
    for window_frac in (0.001, 0.05, 0.3, 1.0):
        p = SA.validate({"window_frac": window_frac})
        _, offsets, _ = C.window_blocks(n, SA._window(n, p), block_m, 64, "cpu")
        assert SA.sizes(n, p, block_m, 64)[0] == offsets.shape[-1], (n, window_frac)
