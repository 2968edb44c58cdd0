"""The kv_compress option (SnapKV after the prefill) on the CPU: the selection against a
pure-torch reference, the compiled model's cache and ``generate`` against the same compression
done by hand on the eager model's cache, and the option's errors."""
from __future__ import annotations

import pytest
import torch
import transformers

import mcompile
from mcompile import kv_compress as KV
from tiny_models import fresh_dynamo, tiny_inputs, tiny_model  # noqa: F401 (autouse)

BUDGET, WINDOW, KERNEL = 48, 16, 5
OPTION = {"method": "snapkv", "budget": BUDGET, "window": WINDOW, "kernel": KERNEL}
PROMPT = 200




def reference_positions(q, k, budget, window, kernel, scale):
    """SnapKV's choice, written plainly: the whole softmax of the last ``window`` queries
    (causal), its probabilities summed over those queries and the group's heads, a max over
    ``kernel`` neighbours, the ``budget`` best (ties: lower position) and the last ``window``."""
    B, Hq, Nq, _ = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    group = Hq // Hkv
    rows = min(window, Nq)
    kk = k.repeat_interleave(group, dim=1).double()
    logits = q[:, :, -rows:].double() @ kk.transpose(-1, -2) * scale
    pos = torch.arange(N - rows, N)
    logits[..., torch.arange(N)[None, :] > pos[:, None]] = float("-inf")
    probs = logits.softmax(-1)[..., : N - window].sum(-2)            # (B, Hq, N - window)
    scores = probs.view(B, Hkv, group, -1).sum(2)
    half = kernel // 2
    out = torch.empty(B, Hkv, budget + window, dtype=torch.long)
    for b in range(B):
        for h in range(Hkv):
            s = scores[b, h].tolist()
            pooled = [max(s[max(0, i - half): i + half + 1]) for i in range(len(s))]
            best = sorted(range(len(s)), key=lambda i: (-pooled[i], i))[:budget]
            out[b, h] = torch.tensor(sorted(best) + list(range(N - window, N)))
    return out


@pytest.mark.parametrize("case", ["random", "planted", "ties", "past", "chunks"])
def test_positions_match_the_reference(case, monkeypatch):
    g = torch.Generator().manual_seed(7)
    B, Hq, Hkv, N, D = 2, 6, 2, 300, 16
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g)
    budget, window, kernel = 40, 24, 7
    if case == "planted":          # a few keys every query attends to, as real heads have
        hot = torch.tensor([3, 50, 51, 140, 222])
        k[:, :, hot] = 4 * q[:, :2, -1:].mean(1, keepdim=True).expand(B, Hkv, len(hot), D)
    elif case == "ties":           # every key and query alike (exact in any precision): every score
        q, k = torch.full_like(q, 0.5), torch.ones(B, Hkv, N, D)     # equal, the lowest positions win
    elif case == "past":           # q holds the last rows only (a cache before this call)
        q = q[:, :, -10:]
    elif case == "chunks":         # the two passes over several chunks, one ragged
        monkeypatch.setattr(KV, "SCORE_CHUNK", 64)
    scale = D ** -0.5
    got = KV.snapkv_positions(q, k, budget, window, kernel, scale)
    want = reference_positions(q, k, budget, window, kernel, scale)
    assert torch.equal(got, want)
    if case == "planted":
        assert set(hot.tolist()) <= set(got[0, 0].tolist())
    if case == "ties":
        assert got[0, 0, :budget].tolist() == list(range(budget))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_planted_keys_are_kept_at_length(device):
    """A long prompt (three chunks of scores) whose window attends to five planted keys far more
    than to any other: the budget of five max-pool widths keeps exactly those keys and their
    neighbours, whatever the precision (bf16 on the GPU)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(11)
    B, Hq, Hkv, N, D, window, kernel = 1, 4, 2, 40000, 64, 32, 7
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(Hkv, D, generator=g), dim=-1)
    q[:, :, -window:] = 8 * direction.repeat_interleave(Hq // Hkv, 0)[None, :, None] \
        + 0.1 * torch.randn(B, Hq, window, D, generator=g)
    hot = [5, 9000, 17000, 25001, 39900]
    k[:, :, hot] = 8 * direction[None, :, None]
    budget = len(hot) * kernel
    keys, values = torch.ops.mcompile.kv_compress(q.to(device, dtype), k.to(device, dtype), (2 * k).to(device, dtype),
                                                  None, budget, window, kernel, D ** -0.5)
    want = sorted(p for h in hot for p in range(h - kernel // 2, h + kernel // 2 + 1)) + list(range(N - window, N))
    assert keys.shape == (B, Hkv, budget + window, D)
    torch.testing.assert_close(keys.float().cpu(), k[:, :, want].to(dtype).float())
    torch.testing.assert_close(values.float().cpu(), 2 * k[:, :, want].to(dtype).float())


def test_op_keeps_the_chosen_keys_and_values():
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 4, 120, 8, generator=g), torch.randn(1, 2, 120, 8, generator=g), torch.randn(1, 2, 120, 8, generator=g)
    keys, values = torch.ops.mcompile.kv_compress(q, k, v, None, 30, 10, 3, 0.35)
    want = reference_positions(q, k, 30, 10, 3, 0.35)
    assert torch.equal(keys, k.gather(2, want[..., None].expand(-1, -1, -1, 8)))
    assert torch.equal(values, v.gather(2, want[..., None].expand(-1, -1, -1, 8)))
    # a prompt no longer than budget + window keeps everything
    short_k, short_v = torch.ops.mcompile.kv_compress(q, k, v, None, 100, 20, 3, 0.35)
    assert torch.equal(short_k, k) and torch.equal(short_v, v)


# --- the compiled model ----------------------------------------------------------------------------
_RECORDED: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _recording_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, recording each layer's (query, key) of the prefill."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if query.shape[2] > 1:
        _RECORDED[module.layer_idx] = (query.detach().clone(), key.detach().clone())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


transformers.AttentionInterface.register("mcompile_test_recording", _recording_sdpa)
# the masks SDPA gets (a sliding layer's window included)
transformers.masking_utils.AttentionMaskInterface.register("mcompile_test_recording",
                                                           transformers.masking_utils.sdpa_mask)


def _hand_compressed_cache(model, ids, budget):
    """The eager model's prefill cache, every full-attention layer compressed by the reference
    selection; and the prefill's logits."""
    _RECORDED.clear()
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = out.past_key_values
    types = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
    for i, layer in enumerate(cache.layers):
        if types[i] != "full_attention":
            continue
        q, k = _RECORDED[i]
        keep = reference_positions(q, layer.keys, budget, WINDOW, KERNEL, model.model.layers[i].self_attn.scaling)
        index = keep[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
        layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
    return cache, out.logits


def _greedy_from(model, cache, first_logits, n_prompt, steps):
    tokens = [first_logits[:, -1].argmax(-1, keepdim=True)]
    with torch.no_grad():
        for t in range(steps - 1):
            pos = torch.tensor([n_prompt + t])
            logits = model(tokens[-1], past_key_values=cache, use_cache=True, cache_position=pos,
                           position_ids=pos[None].expand(tokens[-1].shape[0], -1)).logits
            tokens.append(logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, -1)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_compiled_cache_and_generate_follow_snapkv(family):
    """The compiled prefill leaves budget + window positions in each full-attention layer, the
    ones the reference chooses; generate continues from them as the hand-compressed eager cache
    does; the report says what each layer kept."""
    eager = tiny_model(family, attn="mcompile_test_recording")
    ids, mask = tiny_inputs(2, PROMPT)
    expected_cache, logits = _hand_compressed_cache(eager, ids, BUDGET)
    model = tiny_model(family)          # the same weights
    model.compile(backend="minference", options={"min_len": 16, "kv_compress": OPTION})
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        got = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    for layer, want in zip(out.past_key_values.layers, expected_cache.layers):
        assert layer.keys.shape == want.keys.shape
        torch.testing.assert_close(layer.keys, want.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.values, want.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(got[:, PROMPT:], _greedy_from(eager, expected_cache, logits, PROMPT, 5))
    full = [i for i, layer in enumerate(out.past_key_values.layers) if layer.keys.shape[2] == BUDGET + WINDOW]
    assert full, "no layer was compressed"
    said = {(r.layer, r.kv_cache) for r in mcompile.report().rows if r.kv_cache}
    assert said == {(i, f"kept {BUDGET + WINDOW} of {PROMPT}" if i in full else "uncompressed: sliding window")
                    for i in range(len(out.past_key_values.layers))}


def test_budget_covering_the_prompt_changes_nothing():
    model = tiny_model("qwen2")
    ids, mask = tiny_inputs(1, 120)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        model.compile(backend="minference", options={"min_len": 16, "kv_compress": {"budget": 200, "window": 16}})
        out = model(ids, attention_mask=mask, use_cache=True)
        got = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert all(layer.keys.shape[2] == 120 for layer in out.past_key_values.layers)
    assert torch.equal(got, plain)


def test_a_padded_batch_is_refused():
    model = tiny_model("llama")
    ids, mask = tiny_inputs(2, PROMPT, pad=5)
    compiled = torch.compile(model, backend="minference", options={"min_len": 16, "kv_compress": OPTION})
    with torch.no_grad(), pytest.raises(ValueError, match="kv_compress.*without padding"):
        compiled(ids, attention_mask=mask, use_cache=True)


@pytest.mark.parametrize("value, message", [
    ("snapkv", "None or a dict"),
    ({"budget": 64, "size": 3}, r"unknown key\(s\) \['size'\]"),
    ({"method": "h2o"}, r"method 'h2o'; accepted: \['snapkv'\]"),
    ({"budget": -1}, "budget -1; accepted: an integer >= 1"),
    ({"window": 0}, "window 0"),
    ({"kernel": 4}, "kernel 4; accepted: an odd integer"),
    ({"budget": 12.5}, "budget 12.5"),
])
def test_bad_options_are_named(value, message):
    with pytest.raises(mcompile.OptionError, match=message):
        mcompile.Options.from_dict({"kv_compress": value})


def test_no_recompile_per_length():
    """The kept length is min(N, budget + window) in the graph's shapes: lengths on either side
    of it share one dynamic graph after the first, static one."""
    compiled = torch.compile(tiny_model("llama"), backend="minference", options={"min_len": 16, "kv_compress": OPTION})
    with torch.no_grad():
        for n in (60, PROMPT, 260, 40):
            ids, _ = tiny_inputs(1, n)
            cache = compiled(ids, use_cache=True).past_key_values
            assert [layer.keys.shape[2] for layer in cache.layers] == [min(n, BUDGET + WINDOW)] * 2
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
