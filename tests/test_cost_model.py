"""The measured cost model and the per-site gate that keeps sparse from running slower than dense."""
from __future__ import annotations

import pytest
import torch

from mcompile import cost_gate
from mcompile.kernels.cost_model import DATA, CostModel, predict, shipped
from mcompile.kernels.index import causal_blocks
from mcompile.kernels.patterns import PATTERNS
from mcompile.plan import HeadPlan, LayerPlan

NS = [4096, 32768, 131072]


def synthetic(dense=1.0, kernel=1.25, column=0.03, group=200.0, head=40.0, host=0.0) -> CostModel:
    """GPU build time ``group + head * n / 4096`` per group; host time ``host`` per group."""
    build = {p: {"group_gpu_us": [group] * 3, "head_gpu_us": [head * n / NS[0] for n in NS],
                 "group_host_us": [host] * 3, "head_host_us": [0.0] * 3}
             for p in PATTERNS if p != "dense"}
    table = {"n": NS, "dense_host_us": 10.0, "kernel_host_us": 10.0, "dense_us_per_block": [dense] * 3,
             "kernel_us_per_block": [kernel] * 3, "kernel_us_per_column": [column] * 3, "build": build}
    return CostModel({"device": "synthetic", "head_dims": {"64": table}})


def test_interpolation_and_extrapolation():
    m = synthetic()
    # build time per head grows linearly in n in the table: log-log interpolation keeps it linear
    for n in (2048, 8192, 65536, 1 << 20):
        gpu, host = m.build_us("a_shape", n, 1, 64)
        assert gpu == pytest.approx(200 + 40 * n / 4096, rel=1e-6) and host < 0.01
    assert m.dense_us(8192, 4, 64) == pytest.approx(4 * causal_blocks(8192))
    assert m.dense_us(8192, 4, 100) == m.dense_us(8192, 4, 64)     # nearest measured head dim
    with pytest.raises(KeyError, match="not measured"):
        m.build_us("no_such_pattern", 8192, 1, 64)


def test_static_plans_are_priced_exactly():
    """A narrow window is worth running at 32K; a window that covers almost every key is not."""
    m = synthetic()
    heads = 4
    for window, expected in ((512, True), (32000, False)):
        plan = LayerPlan.uniform("sliding_window", heads, window=window)
        sc = cost_gate.site_cost(plan, PATTERNS)
        run, reason = cost_gate.decide(m, sc, plan, 32768, 64, 0, PATTERNS)
        blocks = heads * PATTERNS["sliding_window"].cost(32768, {"window": window})[0]
        pred = predict(m, 32768, 64, heads, sc.builds, blocks, 0)
        assert sc.builds == []          # a static index is kept per shape: no build after the first call
        assert run is expected and (reason is None) is expected, pred.describe()
        if not expected:
            assert reason == f"cost {pred.sparse_us / 1e3:.2f} > {pred.dense_us / 1e3:.2f} ms"
        assert not sc.dynamic and sc.pending is None and (32768, False) in sc.settled


class _Landed:
    def query(self):
        return True


def test_dynamic_plan_measures_then_decides_from_the_measurement():
    """vertical_slash's worst case covers every block at 32K: the gate runs it once to measure,
    then runs dense when the measured density is high and sparse when it is low."""
    m = synthetic()
    n, heads = 32768, 4
    plan = LayerPlan.uniform("vertical_slash", heads)
    for density, expected in ((0.97, False), (0.1, True)):
        sc = cost_gate.site_cost(plan, PATTERNS)
        assert sc.dynamic
        assert cost_gate.decide(m, sc, plan, n, 64, 0, PATTERNS) == (True, None)   # nothing measured yet
        assert cost_gate.wants_measurement(sc, n)
        dense_blocks = heads * causal_blocks(n)
        counts = torch.tensor([int(density * dense_blocks), 0])
        sc.pending = (n, dense_blocks, counts, _Landed())            # as cost_gate.measure leaves it
        run, reason = cost_gate.decide(m, sc, plan, n, 64, 0, PATTERNS)
        assert sc.pending is None and sc.observed[-1].density == pytest.approx(density, abs=1e-4)
        assert run is expected and not cost_gate.wants_measurement(sc, n)
        if not expected:
            expected_blocks = sc.observed[-1].density * heads * causal_blocks(n)
            pred = predict(m, n, 64, heads, sc.builds, expected_blocks, 0.0)
            assert reason == pred.describe() and pred.density == pytest.approx(density, abs=1e-4)
        # a length 4x away is not covered by that measurement
        assert cost_gate.decide(m, sc, plan, 4 * n, 64, 0, PATTERNS) == (True, None)


def test_host_time_counts_when_it_outlasts_the_gpu():
    """A plan that is cheap on the GPU but whose builders keep the host busy longer than dense
    attention takes is not worth running."""
    blocks = 4 * PATTERNS["sliding_window"].cost(32768, {"window": 512})[0]
    dense = synthetic().dense_us(32768, 4, 64)
    assert predict(synthetic(host=0.0), 32768, 64, 4, [("sliding_window", 4)], blocks, 0).worth_it
    slow_host = predict(synthetic(host=2 * dense), 32768, 64, 4, [("sliding_window", 4)], blocks, 0)
    assert not slow_host.worth_it and slow_host.sparse_us >= 2 * dense


def test_replayed_calls_are_priced_by_gpu_time_alone():
    """Under CUDA graphs the builders' host work is not repeated: the host-bound plan above is
    worth running there, priced at its GPU time, and the gate keeps the two verdicts apart."""
    blocks = 4 * PATTERNS["sliding_window"].cost(32768, {"window": 512})[0]
    slow_host = synthetic(host=2 * synthetic().dense_us(32768, 4, 64))
    eager = predict(slow_host, 32768, 64, 4, [("sliding_window", 4)], blocks, 0)
    replayed = predict(slow_host, 32768, 64, 4, [("sliding_window", 4)], blocks, 0, replayed=True)
    assert not eager.worth_it and replayed.worth_it
    assert replayed.sparse_us == pytest.approx(200 + 4 * 40 * 8 + 1.25 * blocks)
    assert replayed.dense_us == pytest.approx(4 * causal_blocks(32768))
    plan = LayerPlan.uniform("sliding_window", 4, window=512)
    sc = cost_gate.site_cost(plan, PATTERNS)
    sc.builds = [("sliding_window", 4)]         # priced as if built every call
    assert cost_gate.decide(slow_host, sc, plan, 32768, 64, 0, PATTERNS)[0] is False
    assert cost_gate.decide(slow_host, sc, plan, 32768, 64, 0, PATTERNS, replayed=True) == (True, None)
    assert cost_gate.decide(slow_host, sc, plan, 32768, 64, 0, PATTERNS)[0] is False


def test_mixed_plan_counts_each_pattern_group_once():
    m = synthetic()
    plan = LayerPlan((HeadPlan("a_shape", {"n_init": 64, "n_local": 1024}),) * 3
                     + (HeadPlan("block_sparse", {"top_k": 8}),))
    sc = cost_gate.site_cost(plan, PATTERNS)
    assert sorted(sc.groups) == [("a_shape", 3), ("block_sparse", 1)] and sc.builds == [("block_sparse", 1)]
    blocks, columns = cost_gate.worst_case(sc, plan, 8192, PATTERNS)
    a, _ = PATTERNS["a_shape"].cost(8192, {"n_init": 64, "n_local": 1024})
    b, _ = PATTERNS["block_sparse"].cost(8192, {"top_k": 8})
    assert (blocks, columns) == (3 * a + b, 0)
    pred = predict(m, 8192, 64, 4, sc.groups, blocks, columns)      # every group built
    assert pred.sparse_us == pytest.approx(2 * 200 + 4 * 40 * 2 + 1.25 * (3 * a + b))   # GPU-bound here
    steady = predict(m, 8192, 64, 4, sc.builds, blocks, columns)   # a_shape's index kept
    assert steady.sparse_us == pytest.approx(200 + 40 * 2 + 1.25 * (3 * a + b))


def test_shipped_cost_model_covers_every_pattern_and_head_dim():
    if not DATA.is_file():
        pytest.skip("no measured cost model shipped")
    model = shipped()
    assert set(model.tables) >= {64, 128, 256}
    for table in model.tables.values():
        assert set(table["build"]) == set(PATTERNS) - {"dense"}
        assert all(v > 0 for v in table["dense_us_per_block"] + table["kernel_us_per_block"])
    # MInference's default plan at 8K selects nearly every key: never worth it there
    plan = LayerPlan.uniform("vertical_slash", 9)
    sc = cost_gate.site_cost(plan, PATTERNS)
    blocks, columns = cost_gate.worst_case(sc, plan, 8192, PATTERNS)
    assert not predict(model, 8192, 64, 9, sc.builds, blocks, columns).worth_it


def test_backend_runs_dense_where_the_cost_model_says_sparse_is_slower(monkeypatch):
    """Through the compiled model: a window covering nearly every key runs dense and the report
    says why; a narrow window runs sparse; outputs match eager either way."""
    import mcompile
    from mcompile import reporting, runtime
    from tiny_models import tiny_inputs, tiny_model

    monkeypatch.setattr(runtime, "cost_model_for", lambda cfg, q: synthetic(group=20.0) if cfg.cost_model else None)
    model = tiny_model("llama")
    ids, mask = tiny_inputs(1, 1024)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, use_cache=False).logits
    for window, expected in ((1000, "dense: cost "), (16, "sparse")):
        torch._dynamo.reset()
        reporting.reset()
        plan = {"pattern": "sliding_window", "window": window}
        compiled = torch.compile(model, backend="minference", options={"min_len": 64, "plan": plan, "dense_tail": 0})
        with torch.no_grad():
            out = compiled(ids, attention_mask=mask, use_cache=False).logits
        rows = mcompile.report().rows
        assert rows and all(r.decision.startswith(expected) for r in rows), str(mcompile.report())
        if expected == "sparse":   # the plan's own reference: a narrow window drops keys
            assert not torch.allclose(out, ref, atol=1e-3)
        else:
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_backend_times_a_close_prediction_once_and_keeps_the_faster_path(monkeypatch):
    """A window the cost model prefers only narrowly (predicted at 0.64 of dense) is timed both
    ways once per site and length: measured slower it runs dense (equal to eager), measured
    faster it runs sparse (equal to the same plan without the cost model, which drops keys),
    measured faster by less than the timing's noise margin it runs dense."""
    import mcompile
    from mcompile import cost_gate, reporting, runtime
    from tiny_models import tiny_inputs, tiny_model

    monkeypatch.setattr(runtime, "cost_model_for", lambda cfg, q: synthetic(group=20.0) if cfg.cost_model else None)
    timed = []

    def fake_time_both(sparse, dense):
        timed.append(1)
        sparse(), dense()                   # both paths run on the real inputs
        return verdict
    monkeypatch.setattr(cost_gate, "time_both", fake_time_both)
    model = tiny_model("llama")
    ids, mask = tiny_inputs(1, 1024)
    plan = {"pattern": "sliding_window", "window": 256}
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, use_cache=False).logits
        torch._dynamo.reset()
        ungated = torch.compile(model, backend="minference", options={"min_len": 64, "plan": plan, "dense_tail": 0,
                                                                      "cost_model": False})
        sparse_ref = ungated(ids, attention_mask=mask, use_cache=False).logits
    assert not torch.allclose(sparse_ref, ref, atol=1e-3)
    layers = model.config.num_hidden_layers
    for verdict, expected in (((2.0, 1.0), "dense: measured 2.00 > 1.00 ms"), ((0.5, 1.0), "sparse"),
                              ((0.97, 1.0), "dense: measured 0.97 within 5% of 1.00 ms")):
        torch._dynamo.reset()
        reporting.reset()
        timed.clear()
        compiled = torch.compile(model, backend="minference", options={"min_len": 64, "plan": plan, "dense_tail": 0})
        with torch.no_grad():
            outs = [compiled(ids, attention_mask=mask, use_cache=False).logits for _ in range(2)]
        assert len(timed) == layers             # once per site, though the padding mask is read every call
        rows = mcompile.report().rows
        assert rows and all(r.decision == expected for r in rows), str(mcompile.report())
        for out in outs:
            torch.testing.assert_close(out, ref if expected.startswith("dense") else sparse_ref, rtol=1e-4, atol=1e-4)


def _timing_says(monkeypatch, sparse_ms: float, dense_ms: float) -> list:
    """Replace the GPU timing by these times; the list returned grows by one per timing."""
    from mcompile import cost_gate
    timed = []

    def fake_time_both(sparse, dense):
        timed.append(1)
        return sparse_ms, dense_ms
    monkeypatch.setattr(cost_gate, "time_both", fake_time_both)
    return timed


def test_cuda_graph_warm_up_settles_and_times_the_route_before_capture(monkeypatch):
    """Under CUDA graphs the call that records may not time, so the eager call before it, once
    its index's measurement has landed, settles the route there: a close prediction is timed
    and the faster path (here dense) is what the graph will hold."""
    from mcompile import cost_gate, runtime
    from mcompile.kernels.patterns._common import planted_qk

    model = synthetic(group=20.0)
    monkeypatch.setattr(runtime, "cost_model_for", lambda cfg, q: model)
    measured = 0.5

    def landed(sc, n, heads, counts, wait=False):          # the copy of the counts has landed
        sc.observed.append(cost_gate.Observation(n, measured))
    monkeypatch.setattr(cost_gate, "measure", landed)
    timed = _timing_says(monkeypatch, sparse_ms=2.0, dense_ms=1.0)

    n, heads = 4096, 4
    plan = LayerPlan.uniform("vertical_slash", heads, vertical_size=64, slash_size=256)
    ratio = predict(model, n, 64, heads, [("vertical_slash", heads)], measured * heads * causal_blocks(n), 0.0,
                    replayed=True)
    assert cost_gate.CONFIDENT < ratio.sparse_us / ratio.dense_us and ratio.worth_it   # a close call: timed
    q, k = planted_qk(n, heads=heads, kv_heads=1, d=64, hot_columns=(5,), seed=3)
    v = torch.randn(1, 1, n, 64, generator=torch.Generator().manual_seed(4))
    cfg = runtime.SiteConfig(key="warm-up", layer=0, plan=plan, min_len=64, dense_tail=0, cuda_graphs=True)
    args = (q, k, v, None, 0, 0, True, 0, None)
    runtime.run_site(cfg, *args)
    assert timed == [1]
    (route,) = cfg._routes.values()
    assert route == ("dense", "dense: measured 2.00 > 1.00 ms")
    dense = runtime.dense_attention(cfg, *args)
    torch.testing.assert_close(runtime.run_site(cfg, *args), dense)   # the settled route, not timed again
    assert timed == [1]


def test_cuda_graph_calls_time_even_a_confident_prediction(monkeypatch):
    """A static plan predicted far below dense settles untimed when calls run eagerly, but is
    timed once before a CUDA graph would replay it: there the faster path measured (here dense)
    is kept."""
    from mcompile import cost_gate, runtime

    model = synthetic()
    monkeypatch.setattr(runtime, "cost_model_for", lambda cfg, q: model)
    timed = _timing_says(monkeypatch, sparse_ms=2.0, dense_ms=1.0)
    n, heads = 4096, 4
    plan = LayerPlan.uniform("a_shape", heads, n_init=64, n_local=256)
    blocks, columns = cost_gate.worst_case(cost_gate.site_cost(plan, PATTERNS), plan, n, PATTERNS)
    ratio = predict(model, n, 64, heads, [], blocks, columns, replayed=True)
    assert ratio.sparse_us / ratio.dense_us < cost_gate.CONFIDENT          # a confident prediction
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, h, n, 64, generator=g) for h in (heads, 1, 1))
    args = (q, k, v, None, 0, 0, True, 0, None)
    eager = runtime.SiteConfig(key="eager", layer=0, plan=plan, min_len=64, dense_tail=0)
    runtime.run_site(eager, *args)
    assert timed == [] and next(iter(eager._routes.values()))[0] == "sparse"
    graphs = runtime.SiteConfig(key="graphs", layer=0, plan=plan, min_len=64, dense_tail=0, cuda_graphs=True)
    torch.testing.assert_close(runtime.run_site(graphs, *args), runtime.dense_attention(graphs, *args))
    assert timed == [1] and next(iter(graphs._routes.values())) == ("dense", "dense: measured 2.00 > 1.00 ms")
