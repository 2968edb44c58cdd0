"""The backend's sparse path on the GPU: Triton index builders and the Triton kernel, end to end."""
from __future__ import annotations

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
        compiled = torch.compile(model, backend="minference", options={"min_len": 512,
                                                                       "plan": {"pattern": pattern, **params}})
        out = compiled(ids, attention_mask=mask, use_cache=False).logits.float()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel
    decisions = {r.decision for r in mcompile.report().rows}
    expected = "dense: plan: dense" if pattern == "dense" else f"sparse: {pattern}"
    assert all(d.startswith(expected) for d in decisions), decisions


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
    assert all(r.decision.startswith("sparse: vertical_slash") for r in report.rows), str(report)
    assert report.density() < 1.0
