"""Rewrite attention sites into the ``mcompile::attention`` op.

``classify_site`` says how a site will be rewritten (or why it stays as it is);
``rewrite_sites`` does the graph surgery and removes what became dead (the N^2 mask
subgraph, repeat_kv copies). Running the pass twice is harmless: a rewritten graph has no
SDPA calls left to find.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

from .masks import recognise_mask
from .sites import AttentionSite, inherit_site_meta, target_name, writes_in_place


def classify_site(site: AttentionSite) -> None:
    """Set ``site.rewrite``; and ``site.reason`` where the site stays as it is, ``site.mask``
    where its mask is recognised (no mask at all: SDPA's causal flag says everything)."""
    if site.is_decode:
        site.reason = "decode step (q_len 1): untouched"
    elif site.attn_mask is None:
        site.rewrite = True
    elif not isinstance(site.attn_mask, fx.Node):
        site.reason = "mask is not a graph value: untouched"
    else:
        site.mask = recognise_mask(site.attn_mask)
        site.rewrite = site.mask is not None
        site.reason = "" if site.rewrite else "mask not recognised: untouched (dense)"


_VIEWS = frozenset({"view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "expand", "narrow",
                    "select", "t", "flatten", "unflatten", "view_as", "as_strided", "diagonal", "getitem"})


def _mutates_live(node: fx.Node) -> bool:
    """Whether dead-code elimination must keep ``node``: FX's own impurity, or an in-place call
    (``x.copy_(y)``, ``masked_fill_``) whose target, or a tensor it views, is read elsewhere
    (transformers' tensor parallelism copies each all-reduce into its output buffer this way).
    In-place work on a dead tensor (a recognised mask being filled) goes with it."""
    if node.is_impure():
        return True
    if not writes_in_place(node):
        return False
    reader, target = node, node.args[0] if node.args else None
    while isinstance(target, fx.Node):
        if target.op in ("placeholder", "get_attr") or any(u is not reader for u in target.users):
            return True
        if target_name(target) not in _VIEWS or not target.args:
            return False
        reader, target = target, target.args[0]
    return True         # not a graph value: keep what cannot be followed


def rewrite_sites(gm: fx.GraphModule, sites: list[AttentionSite], keys: dict[int, str]) -> fx.GraphModule:
    """Replace each rewritable site by ``mcompile::attention``; ``keys`` maps ordinal -> site key."""
    op = torch.ops.mcompile.attention.default
    graph = gm.graph
    for site in sites:
        if not site.rewrite:
            continue
        info = site.mask
        scale = site.scale if site.scale is not None else 1.0 / math.sqrt(site.head_dim)
        # the mask's meaning stays in the graph (a sliding-window layer is other code than a
        # full one); the rest the runtime needs is in the site's runtime.SiteConfig
        args: tuple[Any, ...] = (
            site.query, site.key, site.value,
            info.padding if info else None,
            info.q_offset if info else 0,
            info.kv_offset if info else 0,
            site.causal, site.window,
            scale if isinstance(scale, fx.Node) else float(scale),
            keys[site.ordinal],
        )
        with graph.inserting_before(site.node):
            new = graph.call_function(op, args)
        inherit_site_meta(new, site.node)
        site.node.replace_all_uses_with(new)
        graph.erase_node(site.node)
    # the recognised masks' subgraphs are dead now; in-place calls whose own result goes unused
    # (an all-reduce copied into its output buffer under tensor parallelism) must stay
    graph.eliminate_dead_code(is_impure_node=_mutates_live)
    graph.lint()
    gm.recompile()
    return gm
