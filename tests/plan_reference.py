"""What a sparse plan means for a whole model, without the backend: the eager model with every
attention call replaced by a softmax over the keys that the plan's pure-torch reference masks
(``Pattern.reference_mask``) select. No index and no kernel is involved, so a compiled model
compared with these logits shows that the backend ran the plan: not dense, not another plan.

Unpadded prefill only (no past keys, no padding). A layer with a sliding window shorter than
the prompt runs its exact window, as the backend does; other layers follow ``plans`` (layer
index -> LayerPlan) or, when absent there, attend to every causal key."""
from __future__ import annotations

import torch
import transformers

from mcompile.kernels.patterns import get_pattern

NAME = "mcompile_plan_reference"
_plans: dict = {}      # the plans of the call in progress (plan_logits)


def _attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
    B, Hq, N, D = q.shape
    if k.shape[2] != N or attention_mask is not None:
        raise ValueError("the plan reference covers unpadded prefill only")
    scale = D ** -0.5 if scaling is None else scaling
    r = torch.arange(N, device=q.device)
    allowed = (r.view(1, -1) <= r.view(-1, 1)).expand(B, Hq, N, N)
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    plan = _plans.get(module.layer_idx)
    if window and N > window:
        allowed = allowed & (r.view(1, -1) > r.view(-1, 1) - window)
    elif plan is not None:
        masks = [get_pattern(hp.pattern).reference_mask(q, k, hp.params, heads=[h], scale=scale)
                 for h, hp in enumerate(plan.heads)]
        allowed = allowed & torch.cat(masks, 1)
    group = Hq // k.shape[1]
    kk, vv = (t.repeat_interleave(group, 1).double() for t in (k, v))
    scores = (q.double() @ kk.transpose(-1, -2)) * scale
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vv
    return out.to(q.dtype).transpose(1, 2).contiguous(), None


transformers.AttentionInterface.register(NAME, _attention)


def plan_logits(model, ids: torch.Tensor, plans: dict) -> torch.Tensor:
    """Logits of ``model`` on ``ids`` (no cache) with each layer attending as ``plans`` says."""
    previous = model.config._attn_implementation
    _plans.update(plans)
    try:
        model.set_attn_implementation(NAME)
        with torch.no_grad():
            return model(ids, use_cache=False).logits
    finally:
        model.set_attn_implementation(previous)
        _plans.clear()
