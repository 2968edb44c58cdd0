"""Layer-wise compilation (passes/layerwise.py): each distinct decoder layer is compiled once,
and results, site keys, the report, capture mode and dynamic shapes are as on the flat graph (CPU)."""
from __future__ import annotations

import pytest
import torch
import transformers

import mcompile
import mcompile.backend as backend
from tiny_models import COMMON, fresh_dynamo, tiny_inputs  # noqa: F401 (autouse)

SPARSE = {"min_len": 16, "plan": "vertical_slash"}




def _model(family: str = "llama", layers: int = 4):
    torch.manual_seed(0)
    common = {**COMMON, "num_hidden_layers": layers}
    if family == "gemma3":
        cfg = transformers.Gemma3TextConfig(head_dim=16, sliding_window=8,
                                            layer_types=["sliding_attention", "full_attention"] * (layers // 2),
                                            **common)
    else:
        cfg = transformers.LlamaConfig(**common)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=False).logits


@pytest.fixture
def layerwise(monkeypatch):
    """Layer-wise compilation on, and what it made."""
    made = []

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    real = backend.compile_layerwise
    monkeypatch.setattr(backend, "compile_layerwise", spy)
    return {**SPARSE, "layerwise": True}, made


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_layerwise_compiles_each_distinct_layer_once(family, layerwise):
    opts, made = layerwise
    model = _model(family)
    compiled = torch.compile(model, backend="minference", options=opts, dynamic=True)
    for length, pad in ((40, 0), (56, 5)):
        ids, mask = tiny_inputs(2, length, pad)
        torch.testing.assert_close(_logits(compiled, ids, mask), _logits(model, ids, mask), rtol=1e-4, atol=1e-4)
    info = made[-1].info
    # before the layers, 4 layers, after them; compiled: the two ends and one (llama) or two (gemma3) layers
    assert info["pieces"] == 6 and info["compiled"] == (3 if family == "llama" else 4)
    rows = mcompile.report().rows
    assert sorted(r.layer for r in rows) == [0, 1, 2, 3]
    assert all(r.decision != "not run yet" and sum(r.calls.values()) == 2 for r in rows)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompile per length


def test_layerwise_matches_flat_and_default_dynamic(layerwise):
    opts, made = layerwise
    model = _model()
    ids, mask = tiny_inputs(1, 48)
    flat = torch.compile(model, backend="minference", options=SPARSE | {"layerwise": False}, dynamic=True)
    expected = _logits(flat, ids, mask)
    assert made == []  # not even tried
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minference", fullgraph=True, options=opts)  # default dynamic
    torch.testing.assert_close(_logits(compiled, ids, mask), expected, rtol=1e-5, atol=1e-5)
    for length in (32, 40):
        ids, mask = tiny_inputs(1, length)
        torch.testing.assert_close(_logits(compiled, ids, mask), _logits(model, ids, mask), rtol=1e-4, atol=1e-4)
    assert made and all(m is not None for m in made)


def test_layerwise_capture_mode_records_every_layer(tmp_path, layerwise):
    opts, made = layerwise
    model = _model()
    opts = {**opts, "mode": "capture", "capture_dir": str(tmp_path / "cap")}
    opts.pop("plan")
    compiled = torch.compile(model, backend="minference", options=opts, dynamic=True)
    ids, _ = tiny_inputs(1, 40)
    _logits(compiled, ids)
    assert made[-1] is not None
    assert sorted(p.name for p in (tmp_path / "cap" / "sample0000").iterdir()) == [
        f"layer{i:03d}.pt" for i in range(4)]


def test_layerwise_not_used_with_autograd():
    """With grad mode on and inputs that require grad the flat graph is compiled instead."""
    from mcompile.passes.layerwise import compile_layerwise

    gm = torch.fx.symbolic_trace(lambda x: (x * 2,))
    with torch.enable_grad():
        assert compile_layerwise(gm, [torch.ones(2, requires_grad=True)], lambda g, ins: g) is None


def test_dead_code_pass_keeps_in_place_writes_that_are_read():
    """The rewrite's dead-code pass: ``out.copy_(reduced)`` (how transformers' tensor
    parallelism lands an all-reduce) stays, though its own result is unused; an in-place fill
    of a tensor nobody reads (a recognised mask's) goes, and so does a write through a view of
    such a tensor, while a write through a view of a live one stays."""
    import torch.fx as fx

    from mcompile.passes.rewrite import _mutates_live

    def f(x, y):
        out = x * 2
        out.copy_(y)                        # out is read below
        mask = torch.ones(4, 4)
        mask.masked_fill_(mask > 0, 0.0)    # mask is dead
        dead_view = torch.zeros(4, 4).view(16)
        dead_view.add_(1.0)
        live = x + 1
        live.view(-1).mul_(3.0)             # live is read below, through its view
        return out + live

    gm = fx.symbolic_trace(f)
    gm.graph.eliminate_dead_code(is_impure_node=_mutates_live)
    gm.recompile()
    kept = [n.target for n in gm.graph.nodes if n.op == "call_method"]
    assert kept.count("copy_") == 1 and kept.count("mul_") == 1, kept
    assert "masked_fill_" not in kept and "add_" not in kept, kept
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    torch.testing.assert_close(gm(x, y), f(x, y))
    plain = fx.symbolic_trace(f)
    plain.graph.eliminate_dead_code()       # FX's own rule drops the read write
    assert "copy_" not in [n.target for n in plain.graph.nodes]
