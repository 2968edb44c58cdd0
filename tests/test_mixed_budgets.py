"""Heads of one online pattern with different budgets (and SampleAttention thresholds and
windows) are built in one call, and a layer's static heads once per shape: the index equals
each head built alone with its own parameters, and the work per call follows the patterns of
the layer, not the number of budgets in it. CPU (the torch paths, and the Triton paths under
the interpreter in a fresh process)."""
from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mcompile.kernels import patterns as P
from mcompile.kernels.index import check_index
from mcompile.kernels.patterns import _common as C
from mcompile.kernels.reference import index_to_mask
from mcompile.plan import HeadPlan, LayerPlan
from fresh_checks import run_fresh, same_vs_selection

# four query heads on two KV heads, each with its own budget (counts, fractions and laws)
MIXED = {
    "vertical_slash": [{"vertical_size": 30, "slash_size": 100}, {"vertical_size": 90, "slash_size": 0.5},
                       {"vertical_size": C.Law(2.0, 0.5), "slash_size": 150}, {"vertical_size": 0.2, "slash_size": 100}],
    "block_sparse": [{"top_k": 2}, {"top_k": 5}, {"top_k": 0.5}, {"top_k": C.Law(1.0, 0.5)}],
    "sample_attention": [{"alpha": 0.9, "window_frac": 0.05}, {"alpha": 0.97, "window_frac": 0.125, "max_columns": 0.05},
                         {"alpha": 0.8, "window_frac": 0.3, "max_columns": 20}, {"alpha": 0.95, "window_frac": 0.08,
                                                                               "max_columns": 0}],
}


def _inputs(kind: str, n: int):
    if kind == "random":
        g = torch.Generator().manual_seed(n)
        return torch.randn(2, 4, n, 32, generator=g), torch.randn(2, 2, n, 32, generator=g)
    return C.planted_qk(n, heads=4, kv_heads=2, batch=2, d=128, hot_columns=[3, n // 3], diagonals=[40, 170],
                        hot_blocks=[(n // 64 - 1, 2)], local=3.0, seed=n)


def _alone(q, k, pattern, params):
    """Each head's index built by itself, as masks (B, H, N, N)."""
    return torch.cat([index_to_mask(P.build_head_group(q, k, pattern, p, [h]), q.shape[2])
                      for h, p in enumerate(params)], 1)


@pytest.mark.parametrize("kind", ["random", "planted"])
@pytest.mark.parametrize("pattern", sorted(MIXED))
@pytest.mark.parametrize("n", [200, 777])
def test_one_call_for_heads_with_different_budgets_equals_each_head_alone(pattern, kind, n):
    q, k = _inputs(kind, n)
    params = MIXED[pattern]
    plan = LayerPlan(tuple(HeadPlan(pattern, p) for p in params))
    assert len(P._groups(plan)) == 1                     # one group: one build for all four budgets
    index = P.build_layer_index(q, k, plan)
    check_index(index, n, 2, 4)
    got, want = index_to_mask(index, n), _alone(q, k, pattern, params)
    assert torch.equal(got, want)
    # the budgets really differ: the heads do not compute the same number of keys
    assert len(set(got.sum((0, 2, 3)).tolist())) > 1


def test_mixed_layer_equals_its_heads_built_alone():
    """Online patterns with mixed budgets beside static heads with several budgets."""
    n = 700
    q, k = _inputs("planted", n)
    q = torch.cat([q, q.flip(1)], 1)                                           # 8 query heads on 2 KV heads
    heads = [HeadPlan("vertical_slash", MIXED["vertical_slash"][0]), HeadPlan("a_shape", {"n_init": 64, "n_local": 128}),
             HeadPlan("block_sparse", MIXED["block_sparse"][1]), HeadPlan("vertical_slash", MIXED["vertical_slash"][2]),
             HeadPlan("sliding_window", {"window": 100}), HeadPlan("a_shape", {"n_init": 0, "n_local": 0.3}),
             HeadPlan("block_sparse", MIXED["block_sparse"][3]), HeadPlan("dense", {})]
    plan = LayerPlan(tuple(heads))
    index = P.build_layer_index(q, k, plan)
    check_index(index, n, 2, 8)
    want = torch.cat([index_to_mask(P.build_head_group(q, k, h.pattern, h.params, [i]), n)
                      for i, h in enumerate(heads)], 1)
    assert torch.equal(index_to_mask(index, n), want)


class _CountOps(TorchDispatchMode):
    """Counts the torch operations dispatched (each is at least one kernel launch on the GPU,
    views aside)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _ops(fn) -> int:
    with _CountOps() as count:
        fn()
    return sum(count.ops.values())


def test_launches_follow_the_patterns_not_the_budgets():
    """A layer whose nine heads hold nine vertical-slash budgets, three block-sparse and three
    A-shape ones costs the torch operations of one with two budgets per pattern; a layer of
    static heads alone is one part of spans that costs none after its first call, however many
    budgets it holds."""
    n = 512
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 15, n, 32, generator=g), torch.randn(1, 3, n, 32, generator=g)

    def plan(distinct: int) -> LayerPlan:
        vs = [HeadPlan("vertical_slash", {"vertical_size": 30 + 10 * (i % distinct), "slash_size": 100}) for i in range(9)]
        bs = [HeadPlan("block_sparse", {"top_k": 2 + i % distinct}) for i in range(3)]
        a = [HeadPlan("a_shape", {"n_init": 64, "n_local": 64 * (1 + i % distinct)}) for i in range(3)]
        return LayerPlan(tuple(vs + bs + a))

    few, many = plan(2), plan(9)
    assert [len(P._groups(p)) for p in (few, many)] == [4, 5]      # one per online pattern, one per A-shape budget
    for p in (few, many):
        P.build_layer_index(q, k, p)                                          # warm: Triton, the kept spans
    assert _ops(lambda: P.build_layer_index(q, k, many)) == _ops(lambda: P.build_layer_index(q, k, few))

    static = LayerPlan(tuple(HeadPlan("a_shape", {"n_init": 64, "n_local": 64 * (1 + i)}) for i in range(12))
                       + tuple(HeadPlan("sliding_window", {"window": 100 + i}) for i in range(3)))
    parts = P.index_parts(static, n, 1, budget=1 << 20)
    assert parts == [tuple(range(15))]
    first = P.build_part(q, k, static, parts[0])
    assert _ops(lambda: P.build_part(q, k, static, parts[0])) == 0
    assert P.build_part(q, k, static, parts[0]) is first
    want = torch.cat([index_to_mask(P.build_head_group(q, k, h.pattern, h.params, [i]), n)
                      for i, h in enumerate(static.heads)], 1)
    assert torch.equal(index_to_mask(first.to_index(), n), want)
    assert torch.equal(index_to_mask(P.build_layer_index(q, k, static), n), want)


def test_mixed_budgets_on_the_triton_paths_interpreted():
    """The same equalities on the builders' Triton paths (per-head top_k in the block-sparse
    kernel, per-head vertical and slash counts around the vertical-slash kernels)."""
    run_fresh("mixed_budgets_interpreted", env=dict(os.environ, TRITON_INTERPRET="1", MCOMPILE_PATTERNS_TRITON="1"),
              timeout=900)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shipped_database_layers_equal_their_heads_alone_on_gpu():
    """Every searched layer of the shipped SmolLM2 database, built on the GPU's Triton paths in
    bf16 (one call per online pattern), lists what each head built alone lists."""
    from mcompile.pattern_db import ModelIdentity, resolve_model_plan
    n = 2048
    plans = resolve_model_plan("smollm2-135m", ModelIdentity(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64),
                               force=True)
    q, k = C.planted_qk(n, heads=9, kv_heads=3, d=128, hot_columns=[3, 700], diagonals=[40, 170], local=3.0,
                        dtype=torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    for layer in range(30):
        plan = plans.layer_plan(layer)
        if plan.is_dense:
            continue
        index = P.build_layer_index(q, k, plan)
        check_index(index, n, 1, 9)
        want = torch.cat([index_to_mask(P.build_head_group(q, k, h.pattern, h.params, [i]), n)
                          for i, h in enumerate(plan.heads)], 1)
        assert torch.equal(index_to_mask(index, n), want), layer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_selection_kernels_equal_torch_selection_on_gpu(monkeypatch):
    """At 32K in bf16 on planted and random inputs, the fused selections take what torch's stable
    selections take from the same scores: the vertical-slash selection and index with nine per-head budgets,
    and SampleAttention's stage 2 with per-head alpha and caps."""
    from mcompile.kernels.patterns import sample_attention as SA
    n = 32768
    g = torch.Generator().manual_seed(7)
    planted = C.planted_qk(n, heads=9, kv_heads=3, d=128, hot_columns=[3, 700, 20000], diagonals=[40, 5000],
                           local=3.0, dtype=torch.bfloat16)
    rand = (torch.randn(1, 9, n, 64, generator=g).bfloat16(), torch.randn(1, 3, n, 64, generator=g).bfloat16())
    vs_params = [{"vertical_size": 30 + 200 * i, "slash_size": 100 + 700 * i} for i in range(9)]
    sa_params = [{"alpha": a, "window_frac": 0.05, "max_columns": c} for a, c in
                 zip((0.8, 0.9, 0.95, 0.99, 0.5, 0.97, 0.9, 0.85, 0.999), (50, 500, 0.05, 3000, 10, 0.1, 200, 1000, 0.2))]
    for q, k in (planted, rand):
        q, k = q.cuda(), k.cuda()
        same_vs_selection(q, k, vs_params)
        ps = SA.head_params(sa_params)
        col, win, tot = SA.column_scores(q, k, ps)
        alpha, cap = [p["alpha"] for p in ps], [SA.column_cap(n, p) for p in ps]
        count, chosen = SA.filter_columns(col, win, tot, alpha, cap)
        monkeypatch.setenv("MCOMPILE_PATTERNS_TRITON", "0")
        want_count, want = SA.filter_columns(col, win, tot, alpha, cap)
        monkeypatch.delenv("MCOMPILE_PATTERNS_TRITON")
        assert torch.equal(count, want_count) and torch.equal(chosen, want)
        assert int(count.min()) > 0
