"""Compress what a prefill leaves in the KV cache (``mcompile/kv_compress.py``, SnapKV).

Dynamo traces transformers' ``DynamicCache.update`` into the graph: a layer's cache after the
call is the ``torch.cat`` of what it held and the new keys (values), which is both what the
attention site reads and one of the graph's outputs, which Dynamo stores back into the cache.
This pass makes that output ``mcompile::kv_compress`` of it instead, so the attention of this
call still reads every key and the cache keeps what SnapKV chooses. A site is compressed when it
is a rewritten (prefill) full causal attention whose keys and values the graph returns;
sliding-window layers (their cache keeps the window already), decode steps and calls without a
cache are left alone, with the reason for the report.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx

from .sites import AttentionSite, inherit_site_meta


def _returned(output: fx.Node) -> set[fx.Node]:
    found: set[fx.Node] = set()
    fx.node.map_arg(output.args, found.add)
    return found


def compress_cache_outputs(gm: fx.GraphModule, sites: list[AttentionSite], budget: int, window: int,
                           kernel: int) -> dict[int, str]:
    """Route each eligible site's returned keys and values through ``mcompile::kv_compress``.
    Returns, per rewritten site's ordinal, what happens to its cache: ``"compressed"`` or why not."""
    op = torch.ops.mcompile.kv_compress.default
    graph = gm.graph
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    returned = _returned(output)
    outcome: dict[int, str] = {}
    replace: dict[fx.Node, fx.Node] = {}
    for site in sites:
        if not site.rewrite:
            continue
        if site.window or not site.causal:
            outcome[site.ordinal] = "uncompressed: sliding window" if site.window else "uncompressed: not causal"
        elif site.key not in returned or site.value not in returned:
            outcome[site.ordinal] = "uncompressed: the graph returns no cache for it (use_cache=False or not a DynamicCache)"
        else:
            scale = site.scale if site.scale is not None else 1.0 / math.sqrt(site.head_dim)
            args = (site.query, site.key, site.value, site.mask.padding if site.mask else None,
                    budget, window, kernel, scale if isinstance(scale, fx.Node) else float(scale))
            # right after the site, labelled as it is, so the layer stays one contiguous piece
            # (passes/layerwise.py)
            with graph.inserting_after(site.node):
                kept = graph.call_function(op, args)
            with graph.inserting_after(kept):
                keys = graph.call_function(operator.getitem, (kept, 0))
            with graph.inserting_after(keys):
                values = graph.call_function(operator.getitem, (kept, 1))
            for node in (kept, keys, values):
                inherit_site_meta(node, site.node)
            replace[site.key], replace[site.value] = keys, values
            outcome[site.ordinal] = "compressed"
    if replace:
        output.args = fx.node.map_arg(output.args, lambda n: replace.get(n, n))
        graph.lint()
        gm.recompile()
    return outcome
