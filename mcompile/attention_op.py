"""``mcompile::attention``: the op every rewritten attention site calls.

A plain ``torch.library.custom_op`` with a fake implementation, so Dynamo and Inductor keep
it in the graph as one opaque call; the dense/sparse decision happens inside, at run time
(see ``runtime.run_site``), so prompt lengths never cause recompiles.
"""
from __future__ import annotations

from typing import Optional

import torch

from .runtime import run_site, site_config


@torch.library.custom_op("mcompile::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding: Optional[torch.Tensor],
    q_offset: int,
    kv_offset: int,
    is_causal: bool,
    window: int,
    scale: float,
    site: str,
) -> torch.Tensor:
    """Attention of one call of site ``site`` (its key). k and v may have fewer heads than q
    (GQA, no repeat). The mask is what transformers' mask meant: causal, a sliding ``window``
    (0: none), key ``padding`` (None: none), query and key positions from the offsets."""
    out = run_site(site_config(site), q, k, v, padding, q_offset, kv_offset, is_causal, window, scale)
    return out.contiguous()


@attention.register_fake
def _(q, k, v, padding, q_offset, kv_offset, is_causal, window, scale, site):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))
