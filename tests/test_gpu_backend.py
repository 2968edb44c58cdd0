"""The backend's sparse path on the GPU: Triton index builders and the Triton kernel, end to end."""
from __future__ import annotations

import statistics
import time
from collections import Counter

import pytest
import torch

import mcompile
from mcompile import reporting
from tiny_models import tiny_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model(dtype):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                                   max_position_embeddings=1 << 15)
    with torch.device("cuda"):
        return transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("pattern", ["vertical_slash", "a_shape", "block_sparse", "sample_attention", "dense"])
def test_full_budget_sparse_equals_dense_on_gpu(pattern):
    torch._dynamo.reset()
    reporting.reset()
    model = _model(torch.bfloat16)
    ids, mask = tiny_inputs(1, 2000)
    ids, mask = (ids % 256).cuda(), mask.cuda()
    params = {"vertical_slash": {"vertical_size": 4096, "slash_size": 4096}, "a_shape": {"n_init": 64, "n_local": 4096},
              "block_sparse": {"top_k": 64}, "sample_attention": {"alpha": 1.0, "window_frac": 1.0}, "dense": {}}[pattern]
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, use_cache=False).logits.float()
        # cost_model off: a full budget computes every block, which the cost model would run dense
        compiled = torch.compile(model, backend="minference", options={"min_len": 512, "cost_model": False,
                                                                       "plan": {"pattern": pattern, **params}})
        out = compiled(ids, attention_mask=mask, use_cache=False).logits.float()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel
    rows = mcompile.report().rows
    if pattern == "dense":
        assert all(r.decision == "dense: plan: dense" for r in rows), rows
    else:
        assert all(r.decision == "sparse" and r.plan.startswith(pattern) for r in rows), rows


def test_default_plan_long_prompt_runs_sparse_on_gpu():
    torch._dynamo.reset()
    reporting.reset()
    model = _model(torch.bfloat16)
    n = 16384
    ids = torch.randint(0, 256, (1, n), device="cuda")
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits.float()
        compiled = torch.compile(model, backend="minference", options={"db": None, "stats": True})
        out = compiled(ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float()
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.1, rel   # random weights attend diffusely: the default plan drops some mass
    report = mcompile.report()
    assert all(r.decision == "sparse" and r.plan.startswith("vertical_slash") for r in report.rows), str(report)
    assert report.density() < 1.0


def _smollm2_layer_call(n=32768, with_padding=True):
    """One attention call of the shipped SmolLM2 database's most mixed layer, through the op,
    on structured q/k/v (9 query / 3 KV heads, d 64), with an all-ones padding tensor or none."""
    from mcompile import attention_op  # noqa: F401  (registers mcompile::attention)
    from mcompile.pattern_db import ModelIdentity, resolve_model_plan
    from mcompile.runtime import SiteConfig, register_site

    model_plan = resolve_model_plan("smollm2-135m", ModelIdentity(num_layers=30, num_heads=9, num_kv_heads=3,
                                                                   head_dim=64), force=True)
    from mcompile.kernels import patterns as P
    # the layer whose build has the most online parts (each online pattern is one build call,
    # the static heads are kept per shape), then the most heads built per call
    layer = max(range(30), key=lambda i: (sum(P.get_pattern(g[0]).dynamic for g in P._groups(model_plan.layer_plan(i))),
                                          sum(P.get_pattern(h.pattern).dynamic for h in model_plan.layer_plan(i).heads)))
    key = f"gpu-sync#{layer}"
    register_site(SiteConfig(key, layer, model_plan.layer_plan(layer), min_len=1024, mask_recognised=True,
                             cost_model=False))
    g = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(1, 1, n, 64, device="cuda", generator=g)
    q = (torch.randn(1, 9, n, 64, device="cuda", generator=g) + 2 * base).bfloat16()
    k = (torch.randn(1, 3, n, 64, device="cuda", generator=g) + 2 * base).bfloat16()
    v = torch.randn(1, 3, n, 64, device="cuda", generator=g).bfloat16()
    padding = torch.ones(1, n, dtype=torch.bool, device="cuda") if with_padding else None

    def call():
        return torch.ops.mcompile.attention(q, k, v, padding, 0, 0, True, 0, 0.125, key)
    call.inputs = (q, k, v)
    return call, key


def test_sparse_layer_call_does_not_synchronise_the_host():
    """After a first call (Triton compiles, the padding check reads its one answer), a sparse
    call waits on the GPU nowhere: set_sync_debug_mode raises on any synchronising call."""
    call, _ = _smollm2_layer_call()
    call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.float()).all()


def test_sparse_layer_call_kernel_launches():
    """Kernel launches of one sparse call of the database's most mixed layer (printed for the
    record; the bound is the 20 the sparse path aims for)."""
    call, key = _smollm2_layer_call()
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    launches = sum(1 for e in prof.events() if "LaunchKernel" in e.name)
    kernels = Counter(k.name[:60] for e in prof.events() for k in e.kernels)
    print(f"GPU kernels of that call: {sum(kernels.values())}, most launched: {kernels.most_common(12)}")
    print(f"kernel launches in one sparse layer call: {launches} (layer {key})")
    host, gpu = [], []
    for _ in range(20):             # host time to issue the call, and the GPU time it takes
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        call()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        gpu.append(start.elapsed_time(end))
    print(f"one sparse layer call: host {statistics.median(host):.3f} ms to issue it, {statistics.median(gpu):.3f} ms "
          "between CUDA events around it (median of 20)")
    assert 0 < launches <= LAUNCH_BOUND, launches


LAUNCH_BOUND = 20   # the target; 20 measured on an H100 at commit 6801a79, 19 at f2aa5db (2026-12-06)


def test_vertical_slash_build_is_seven_kernels_whatever_the_budgets():
    """A vertical-slash group's index, heads with nine different budgets, the group's heads not
    in order: the seven Triton kernels (the last query rows read in place, the selection in
    three), nothing per head or per budget."""
    from mcompile.kernels.patterns import vertical_slash as VS
    n = 32768
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 9, n, 64, device="cuda", generator=g).bfloat16()
    k = torch.randn(1, 3, n, 64, device="cuda", generator=g).bfloat16()
    params = [{"vertical_size": 30 + 40 * i, "slash_size": 100 + 300 * i} for i in range(9)]
    heads = [4, 0, 8, 2, 6, 1, 3, 7, 5]
    VS.build(q, k, params, heads=heads)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        VS.build(q, k, params, heads=heads)
        torch.cuda.synchronize()
    kernels = [k.name for e in prof.events() for k in e.kernels]
    assert len(kernels) <= 7, kernels


def test_sparse_layer_call_replays_as_a_cuda_graph():
    """The database's most mixed layer, captured in a CUDA graph: a replay on new q/k/v (the
    online patterns rebuild their index from them inside the graph) equals an eager call on
    the same inputs, and differs from dense attention, so the plan really drops keys. (A padding
    mask is refused under capture: its values choose the route.)"""
    call, _ = _smollm2_layer_call(with_padding=False)
    q, k, v = call.inputs
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()                              # warm-up: Triton compiles, caches fill
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    g = torch.Generator(device="cuda").manual_seed(1)
    base = torch.randn(1, 1, q.shape[2], 64, device="cuda", generator=g)
    q.copy_(torch.randn(q.shape, device="cuda", generator=g) + 3 * base)
    k.copy_(torch.randn(k.shape, device="cuda", generator=g) + 3 * base)
    v.copy_(torch.randn(v.shape, device="cuda", generator=g))
    captured.fill_(float("nan"))
    graph.replay()
    replayed = captured.float().clone()
    eager = call().float()
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125,
                                                             enable_gqa=True).float()
    assert torch.isfinite(replayed).all()
    assert (replayed - eager).abs().max().item() < 2e-2
    assert (eager - dense).abs().max().item() > 5e-2


def _compiled_with_graphs(model, graphs: bool):
    """A fresh compile of ``model`` with a plan that drops keys at 16K tokens, the cost model off,
    with or without CUDA graphs."""
    torch._dynamo.reset()
    reporting.reset()
    plan = {"pattern": "vertical_slash", "vertical_size": 64, "slash_size": 512}
    return torch.compile(model, backend="minference", dynamic=True,
                         options={"plan": plan, "cuda_graphs": graphs, "cost_model": False})


def test_compiled_model_with_cuda_graphs_replays_its_sparse_plan():
    """options cuda_graphs=True: the third call at a length replays (the op's Python, which
    counts calls in the report, does not run) and equals the same plan without CUDA graphs."""
    model = _model(torch.bfloat16)
    ids = torch.randint(0, 256, (1, 16384), device="cuda")
    results = {}
    for graphs in (False, True):
        compiled = _compiled_with_graphs(model, graphs)
        with torch.no_grad():
            for call in range(3):
                torch.compiler.cudagraph_mark_step_begin()
                out = compiled(ids, use_cache=False).logits.float().clone()
                if call == 1:
                    calls_after_recording = sum(sum(r.calls.values()) for r in mcompile.report().rows)
        calls = sum(sum(r.calls.values()) for r in mcompile.report().rows)
        results[graphs] = out
        assert all(r.decision == "sparse" for r in mcompile.report().rows), str(mcompile.report())
        if graphs:
            assert calls == calls_after_recording, (calls, calls_after_recording)
        else:
            assert calls == 3 * 2, calls
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits.float()
    graph_gap = ((results[True] - results[False]).norm() / results[False].norm()).item()
    plan_gap = ((results[False] - dense).norm() / dense.norm()).item()
    assert graph_gap < plan_gap / 5, (graph_gap, plan_gap)


def test_cuda_graphs_refuse_a_padding_mask_and_run_eagerly():
    """A padding mask's values choose each call's route, so a prefill given one is not
    captured: every call runs the op's Python (the report counts each) and matches the same
    compile without CUDA graphs."""
    model = _model(torch.bfloat16)
    ids = torch.randint(0, 256, (1, 16384), device="cuda")
    mask = torch.ones_like(ids)
    outs = {}
    for graphs in (False, True):
        compiled = _compiled_with_graphs(model, graphs)
        with torch.no_grad():
            for _ in range(3):
                outs[graphs] = compiled(ids, attention_mask=mask, use_cache=False).logits.float()
        assert sum(sum(r.calls.values()) for r in mcompile.report().rows) == 3 * 2
    assert ((outs[True] - outs[False]).norm() / outs[False].norm()).item() < 1e-3
