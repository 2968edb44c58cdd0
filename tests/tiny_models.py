"""Tiny random-weight decoder models built from transformers configs (no downloads)."""
from __future__ import annotations

import pytest
import torch
import transformers

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024)

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**COMMON),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON),
    "qwen3": lambda: transformers.Qwen3Config(head_dim=16, **COMMON),
    "gemma3": lambda: transformers.Gemma3TextConfig(head_dim=16, sliding_window=8,
                                                     layer_types=["sliding_attention", "full_attention"], **COMMON),
    "mistral": lambda: transformers.MistralConfig(sliding_window=None, **COMMON),
    "phi3": lambda: transformers.Phi3Config(pad_token_id=0, **COMMON),
}
MAIN_FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")


def tiny_model(family: str, seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = FAMILIES[family]()
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    return model.eval()


def tiny_inputs(batch: int, length: int, pad: int = 0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and an attention mask; row 1 (if any) left-padded by ``pad`` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, COMMON["vocab_size"], (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1 and pad:
        mask[1, :pad] = 0
        ids[1, :pad] = 0
    return ids, mask


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from nothing and reports only its own sites (autouse in every module
    that imports it)."""
    from mcompile import reporting     # here: fresh_checks.py checks a process that has not imported mcompile
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    reporting.reset()
    yield
    torch._dynamo.reset()
