"""``mcompile::attention``: the op every rewritten attention site calls.

A plain ``torch.library.custom_op`` with a fake implementation, so Dynamo and Inductor keep
it in the graph as one opaque call; the dense/sparse decision happens inside, at run time
(see ``runtime.run_site``), so prompt lengths never cause recompiles.
"""
from __future__ import annotations

from typing import Optional

import torch

from .runtime import run_site


@torch.library.custom_op("mcompile::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    padding: Optional[torch.Tensor],
    q_offset: int,
    kv_offset: int,
    site: str,
    mask_mode: str,
    is_causal: bool,
    window: int,
    scale: float,
    dropout_p: float,
) -> torch.Tensor:
    """Attention of one site. k and v may have fewer heads than q (GQA, no repeat).

    mask_mode "flag": no mask, ``is_causal`` as SDPA's; "recognised": the mask is
    causal/window/padding described by the other arguments; "opaque": ``attn_mask`` as given.
    """
    out = run_site(site, q, k, v, attn_mask, padding, q_offset, kv_offset, mask_mode, is_causal, window, scale,
                   dropout_p)
    return out.contiguous()


@attention.register_fake
def _(q, k, v, attn_mask, padding, q_offset, kv_offset, site, mask_mode, is_causal, window, scale, dropout_p):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))
