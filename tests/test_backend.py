"""The minference backend end to end on tiny random-weight models of many families (CPU)."""
from __future__ import annotations

import pytest
import torch
import transformers

import mcompile
from mcompile import reporting
from mcompile.eval.evaluate import layer_plans
from fresh_checks import run_fresh
from plan_reference import plan_logits
from tiny_models import COMMON, FAMILIES, MAIN_FAMILIES, fresh_dynamo, tiny_inputs, tiny_model  # noqa: F401 (autouse)

# MInference's default vertical-slash budgets cover every key at these tiny lengths: what runs
# sparsely with it must equal dense.
SPARSE = {"min_len": 16, "plan": "vertical_slash"}
# a_shape keeps each query block's first key block and its local one: at DROP_LEN (6 query
# blocks) the last rows lose keys 64..255, so the plan's output is far from dense. The dense
# tail is off so that every row follows the plan.
DROPPING = {"min_len": 16, "dense_tail": 0, "plan": {"pattern": "a_shape", "n_init": 64, "n_local": 64}}
DROP_LEN = 384




def _logits(model, ids, mask, use_cache):
    with torch.no_grad():
        kwargs = {"attention_mask": mask} if mask is not None else {}
        return model(ids, use_cache=use_cache, **kwargs).logits


def _close(a, b):
    # Padded query rows (fully masked) are not compared: they carry no prediction.
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _runs_the_plan(got, model, ids):
    """``got`` (logits of unpadded ``ids``) is what DROPPING's plan means, computed from the
    patterns' reference masks, and far from dense: a silent dense fallback fails here."""
    _close(got, plan_logits(model, ids, layer_plans(model, DROPPING)))
    dense = _logits(model, ids, None, False)
    assert float((got - dense).abs().max()) > 1e-2


CASES = [  # batch, left padding, pass attention_mask, use_cache
    (1, 0, False, False),
    (1, 0, True, True),
    (2, 5, True, True),
    (2, 3, True, False),
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_runs_the_plan_or_dense(family):
    """One prompt runs the plan, with or without a mask and a cache; a padded batch runs dense
    and matches eager."""
    model = tiny_model(family)
    compiled = torch.compile(model, backend="minference", options=DROPPING)
    for batch, pad, with_mask, use_cache in CASES:
        ids, mask = tiny_inputs(batch, DROP_LEN, pad)
        mask_arg = mask if with_mask else None
        got = _logits(compiled, ids, mask_arg, use_cache)
        if pad:
            _close(got, _logits(model, ids, mask_arg, use_cache))
        else:
            _runs_the_plan(got, model, ids)
    decisions = {r.decision for r in mcompile.report().rows}
    assert "sparse" in decisions and "dense: padding in the batch" in decisions, decisions


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_with_cache_matches_eager(family):
    model = tiny_model(family)
    ids, mask = tiny_inputs(2, 24, pad=4)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, min_new_tokens=5)
        model.compile(backend="minference", options=SPARSE)
        got = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert torch.equal(got, expected)
    decisions = {r.decision for r in mcompile.report().rows}
    assert "decode step (q_len 1): untouched" in decisions


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_fullgraph(family):
    model = tiny_model(family)
    compiled = torch.compile(model, backend="minference", fullgraph=True, options=DROPPING)
    ids, mask = tiny_inputs(1, DROP_LEN)
    _runs_the_plan(_logits(compiled, ids, mask, True), model, ids)


def test_sparse_path_runs_when_kernels_exist():
    model = tiny_model("llama")
    compiled = torch.compile(model, backend="minference", options=DROPPING)
    ids, mask = tiny_inputs(1, DROP_LEN)
    _runs_the_plan(_logits(compiled, ids, mask, False), model, ids)
    rows = mcompile.report().rows
    assert rows and all(r.decision == "sparse" and r.plan.startswith("a_shape") for r in rows), rows


def test_report_shows_mask_kinds_and_sliding_window():
    model = tiny_model("gemma3")
    compiled = torch.compile(model, backend="minference", options=SPARSE)
    ids, mask = tiny_inputs(2, 40, pad=3)
    _logits(compiled, ids, mask, False)
    rows = {r.layer: r for r in mcompile.report().rows}
    assert rows[0].mask == "causal+sliding(8)+padding"
    assert rows[1].mask == "causal+padding"
    assert rows[0].decision == rows[1].decision == "dense: padding in the batch"
    text = str(mcompile.report())
    assert "sliding(8)" in text and "4/2" in text    # heads / kv heads
    assert max(len(line) for line in text.splitlines()) <= 120, text


@pytest.mark.parametrize("plan", ["vertical_slash", "dense"])
def test_sliding_layers_run_their_exact_window_sparsely(plan):
    """Gemma 3's local layers (window 8 here, rows far longer) run the sliding_window pattern
    with the kernel's per-row window and match eager; a dense plan keeps them dense."""
    model = tiny_model("gemma3")
    compiled = torch.compile(model, backend="minference", options={"min_len": 16, "plan": plan})
    ids, mask = tiny_inputs(1, 70)
    _close(_logits(compiled, ids, mask, False), _logits(model, ids, mask, False))
    rows = {r.layer: r for r in mcompile.report().rows}
    if plan == "dense":
        assert rows[0].decision == "dense: plan: dense"
    else:
        assert rows[0].decision == "sparse: exact window 8", rows[0].decision
        assert rows[1].decision == "sparse" and rows[1].plan.startswith("vertical_slash")


def _count_compiles(model, lengths, dynamic):
    """Graphs compiled (Dynamo may enter the backend twice for one graph when it restarts
    analysis); each length runs its plan, at a static or a symbolic length."""
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend="minference", dynamic=dynamic, options=DROPPING)
    for n in lengths:
        ids, mask = tiny_inputs(1, n)
        _runs_the_plan(_logits(compiled, ids, mask, False), model, ids)
    assert len({r.graph for r in mcompile.report().rows}) == torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_three_lengths_compile_at_most_twice():
    assert _count_compiles(tiny_model("llama"), [200, 290, DROP_LEN], dynamic=None) <= 2


def test_dynamic_true_compiles_once():
    assert _count_compiles(tiny_model("qwen2"), [200, 290, DROP_LEN], dynamic=True) == 1


def test_eager_attention_passes_through():
    model = tiny_model("llama", attn="eager")
    compiled = torch.compile(model, backend="minference", options=SPARSE)
    ids, mask = tiny_inputs(1, 40)
    _close(_logits(compiled, ids, mask, False), _logits(model, ids, mask, False))
    assert mcompile.report().rows == []


@pytest.mark.parametrize("options, needle", [
    ({"min_lenn": 4}, "unknown minference option(s) ['min_lenn']"),
    ({"mode": "fast"}, "'mode': 'fast'; accepted: one of ['run', 'capture']"),
    ({"min_len": 0}, "'min_len'"),
    ({"plan": "diagonal"}, "'plan': 'diagonal'"),
    ({"log": "loud"}, "'log'"),
    ({"cuda_graphs": "yes"}, "'cuda_graphs'"),
    ({"cuda_graphs": True, "stats": True}, "excludes ['stats']"),
])
def test_bad_options_are_clear_errors(options, needle):
    with pytest.raises(mcompile.OptionError) as err:
        mcompile.Options.from_dict(options)
    assert needle in str(err.value)
    compiled = torch.compile(tiny_model("llama"), backend="minference", options=options)
    ids, mask = tiny_inputs(1, 20)
    with pytest.raises(Exception) as err:
        _logits(compiled, ids, mask, False)
    assert needle in str(err.value)


@pytest.mark.parametrize("how", [{"options": {"min_len": 16, "cuda_graphs": True}},
                                 {"mode": "reduce-overhead"}])
def test_cuda_graph_request_keeps_cpu_results(how):
    """mode="reduce-overhead" and the cuda_graphs option ask Inductor for CUDA graphs; a CPU
    graph is not captured and gives what it gives without them (the GPU test replays them)."""
    torch._dynamo.reset()
    model = tiny_model("llama")
    ids, mask = tiny_inputs(1, 40)
    plain = torch.compile(model, backend="minference", options={"min_len": 16})
    expected = _logits(plain, ids, mask, False)
    torch._dynamo.reset()
    graphs = torch.compile(model, backend="minference", **how)
    _close(_logits(graphs, ids, mask, False), expected)


def test_capture_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cap"
    model = tiny_model("llama")
    opts = {"mode": "capture", "capture_dir": str(out), "min_len": 16}
    compiled = torch.compile(model, backend="minference", options=opts)
    ids, mask = tiny_inputs(1, 40)
    _close(_logits(compiled, ids, mask, False), _logits(model, ids, mask, False))
    _logits(compiled, ids[:, :32], mask[:, :32], False)
    from mcompile.capture import forget, load_capture
    samples = load_capture(out)
    assert len(samples) == 2 and sorted(samples[0]) == [0, 1]
    assert samples[0][0]["q"].shape == (1, 4, 40, 16) and samples[0][0]["k"].shape == (1, 2, 40, 16)
    assert samples[1][1]["k"].shape == (1, 2, 32, 16)
    forget(out)  # as a new process would be
    torch._dynamo.reset()
    again = torch.compile(model, backend="minference", options=opts)
    with pytest.raises(Exception, match="already holds a capture"):
        _logits(again, ids, mask, False)


def test_attention_op_opcheck():
    from mcompile.runtime import SiteConfig, register_site
    from mcompile.plan import LayerPlan
    register_site(SiteConfig("opcheck#0", 0, LayerPlan.uniform("dense", 4), min_len=1))
    register_site(SiteConfig("opcheck#1", 0, LayerPlan.uniform("dense", 4), min_len=1, mask_recognised=True))
    q, k, v = torch.randn(2, 4, 24, 16), torch.randn(2, 2, 24, 16), torch.randn(2, 2, 24, 16)
    padding = torch.ones(2, 24, dtype=torch.bool)
    padding[1, :3] = False
    for args in [
        (q, k, v, None, 0, 0, True, 0, 0.25, "opcheck#0"),
        (q, k, v, padding, 0, 0, True, 6, 0.25, "opcheck#1"),
    ]:
        torch.library.opcheck(torch.ops.mcompile.attention.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_entry_point_found_without_import():
    run_fresh("entry_point_loads_mcompile")


def test_dynamic_mask_without_attention_mask_is_recognised():
    """With dynamic shapes and no attention_mask, transformers checks position_ids for packed
    sequences inside the mask; it is still plain causal, so no N^2 mask is kept."""
    model = tiny_model("llama")
    compiled = torch.compile(model, backend="minference", dynamic=True, options=DROPPING)
    ids, _ = tiny_inputs(1, DROP_LEN)
    _runs_the_plan(_logits(compiled, ids, None, False), model, ids)
    rows = mcompile.report().rows
    assert rows and all(r.mask == "causal" and r.decision.startswith("sparse") for r in rows), str(mcompile.report())


def test_large_indexes_are_built_part_by_part(monkeypatch):
    """Above the index budget a part's heads run in splits (here one head each); the result
    and the recorded work are those of one call over all heads, and follow the plan."""
    from mcompile import runtime
    from mcompile.kernels import patterns
    from mcompile.kernels.index import index_memory_bytes
    from mcompile.kernels.patterns import layer_sizes
    from mcompile.plan import LayerPlan
    model = tiny_model("llama")     # 4 q / 2 kv heads
    ids, mask = tiny_inputs(1, DROP_LEN)
    top_k = {"pattern": "block_sparse", "top_k": 2}        # an online pattern: its index takes memory
    opts = {**DROPPING, "plan": top_k, "stats": True}
    compiled = torch.compile(model, backend="minference", options=opts)
    whole = _logits(compiled, ids, mask, False)
    density = mcompile.report().density()
    assert density < 0.8
    calls = []
    real = patterns.index_parts
    plan = LayerPlan.uniform("block_sparse", 4, top_k=2)
    head_bytes = index_memory_bytes(1, 1, DROP_LEN, *layer_sizes(DROP_LEN, plan))
    monkeypatch.setattr(runtime, "INDEX_BYTES_PER_CHUNK", head_bytes)     # one head a split
    monkeypatch.setattr(runtime, "INDEX_BYTES_FLOOR", head_bytes)
    monkeypatch.setattr(patterns, "index_parts", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    torch._dynamo.reset()
    reporting.reset()
    compiled = torch.compile(model, backend="minference", options=opts)
    chunked = _logits(compiled, ids, mask, False)
    assert calls and all(c == [(0,), (1,), (2,), (3,)] for c in calls)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    _close(chunked, plan_logits(model, ids, layer_plans(model, opts)))
    assert float((chunked - _logits(model, ids, None, False)).abs().max()) > 1e-2
    assert mcompile.report().density() == pytest.approx(density)


def _plan_reference(q, k, v, plan):
    """(attention under each head's reference mask, dense causal attention), in float32."""
    from mcompile.kernels.patterns import get_pattern
    B, hq, N, D = q.shape
    r = torch.arange(N)
    allowed = (r.view(1, -1) <= r.view(-1, 1)) & torch.cat(
        [get_pattern(hp.pattern).reference_mask(q, k, hp.params, heads=[h]) for h, hp in enumerate(plan.heads)], 1)
    kk, vv = (t.repeat_interleave(hq // k.shape[1], 1).double() for t in (k, v))
    scores = (q.double() @ kk.transpose(-1, -2)) * D ** -0.5
    want = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vv).float()
    dense = (scores.masked_fill(~(r.view(1, -1) <= r.view(-1, 1)), float("-inf")).softmax(-1) @ vv).float()
    return want, dense


@pytest.mark.parametrize("cpu_kernel", ["reference", "triton"])
def test_a_layer_runs_as_parts_of_its_own_widths(monkeypatch, cpu_kernel):
    """A layer's heads run as its pattern groups (online patterns each, static heads together
    as spans the kernel computes), each written into its heads of one output: a vertical-slash
    head with many columns does not widen the A-shape or dense heads' blocks. Over the budget
    an online part splits widest head first; the static part, two numbers a head, never does.
    Every split gives the one call's output, which follows the plan's reference masks, not
    dense (the kernel itself, interpreted, reads q, K/V and the output at the part's heads)."""
    from mcompile import runtime
    from mcompile.kernels import ops
    from mcompile.kernels.index import index_memory_bytes
    from mcompile.kernels.patterns import head_sizes, index_parts
    from mcompile.plan import HeadPlan, LayerPlan
    monkeypatch.setattr(ops, "_cpu_backend", cpu_kernel)
    g = torch.Generator().manual_seed(0)
    B, N, D = 2, 384, 32
    q, k, v = (torch.randn(B, h, N, D, generator=g) for h in (6, 3, 3))
    narrow = HeadPlan("a_shape", {"n_init": 64, "n_local": 64})
    vs = {"vertical_size": 200, "slash_size": 2}
    plan = LayerPlan((narrow, HeadPlan("dense", {}), HeadPlan("vertical_slash", vs), narrow,
                      HeadPlan("vertical_slash", {**vs, "vertical_size": 30}), HeadPlan("dense", {})))
    cfg = runtime.SiteConfig(key="widths", layer=0, plan=plan, min_len=16)
    sizes = head_sizes(N, plan)
    assert sizes[2][1] == 200 and sizes[1][0] == 6 and max(sizes[0]) < 6
    assert index_parts(plan, N, B) == [(2, 4), (0, 1, 3, 5)]
    one_wide = index_memory_bytes(B, 1, N, sizes[2][0], sizes[2][1])
    assert index_parts(plan, N, B, one_wide) == [(2,), (4,), (0, 1, 3, 5)]
    assert index_parts(plan, N, B, 1) == [(2,), (4,), (0, 1, 3, 5)]
    want, dense = _plan_reference(q, k, v, plan)
    outputs = []
    for budget in (1 << 30, one_wide):
        monkeypatch.setattr(runtime, "index_budget", lambda *a, b=budget: b)
        outputs.append(runtime.sparse_call(cfg, plan, q, k, v, None, tail_rows=64))
        torch.testing.assert_close(outputs[-1], outputs[0], rtol=1e-5, atol=1e-5)
    out = outputs[0]
    # the dense tail (the last 64 rows exact) aside, every row follows the plan
    torch.testing.assert_close(out[:, :, :-64], want[:, :, :-64], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:, :, -64:], dense[:, :, -64:], rtol=1e-4, atol=1e-4)
    assert float((out[:, :, :-64] - dense[:, :, :-64]).abs().max()) > 1e-2


def test_window_longer_than_the_prompt_is_plain_causal():
    """A sliding window that spans the whole prompt masks nothing: the layer follows the plan
    (sparse) and, when short, runs SDPA's causal kernel; a longer prompt gets the exact window."""
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(head_dim=16, sliding_window=64,
                                        layer_types=["sliding_attention", "full_attention"], **COMMON)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    compiled = torch.compile(model, backend="minference", options=SPARSE, dynamic=True)
    for n, expected in ((60, "sparse"), (12, "dense: short"), (100, "sparse: exact window 64")):
        ids, mask = tiny_inputs(1, n)
        _close(_logits(compiled, ids, mask, False), _logits(model, ids, mask, False))
        rows = {r.layer: r for r in mcompile.report().rows}
        assert rows[0].decision.startswith(expected), (n, rows[0].decision)


def test_report_gives_a_uniform_layers_parameters_in_the_patterns_order():
    from mcompile.plan import LayerPlan
    from mcompile.reporting import summarise_plan
    assert summarise_plan(LayerPlan.uniform("vertical_slash", 9, slash_size=6096, vertical_size=1000)) == \
        "vertical_slash(1000/6096) x9"
    assert summarise_plan(LayerPlan.uniform("vertical_slash", 2, coverage=0.9, slash_size=300, vertical_size=40)) == \
        "vertical_slash(40/300/0.9) x2"
    assert summarise_plan(LayerPlan.uniform("a_shape", 3, n_local=1024, n_init=64)) == "a_shape(64/1024) x3"
