"""Find the scaled-dot-product-attention calls of a Dynamo FX graph.

A site is one ``torch._C._nn.scaled_dot_product_attention`` call_function node. For each we
normalise the arguments (positional or keyword, defaults filled in), read the layer index
from ``nn_module_stack`` and the shapes from ``example_value``, and see through
transformers' ``repeat_kv`` (unsqueeze -> expand -> reshape) so that the attention op can
read the un-repeated keys and values (GQA without copies). ``AttentionSite`` is the one
compile-time record of a site: this module fills in what the graph says, and
``rewrite.classify_site`` how the site is rewritten.

Reading shapes never compares symbolic sizes, so discovering sites adds no guards.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .masks import MaskInfo

SDPA_TARGETS = (torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention)
SDPA_ARG_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
_LAYER_RE = re.compile(r"layers?[.\[](\d+)")


@dataclass
class AttentionSite:
    node: fx.Node
    ordinal: int                 # position among the graph's sites
    layer: int                   # model layer index (from nn_module_stack, else the ordinal)
    module_path: str
    query: fx.Node
    key: fx.Node                 # un-repeated keys when repeat_kv was seen through
    value: fx.Node
    attn_mask: Any               # fx.Node or None
    dropout_p: Any
    is_causal: bool
    scale: Any                   # float or None
    batch: Any                   # int or SymInt
    num_heads: int
    num_kv_heads: int
    q_len: Any                   # int or SymInt
    kv_len: Any
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    # set by rewrite.classify_site
    rewrite: bool = False
    reason: str = ""             # why it is left alone (when rewrite is False)
    mask: MaskInfo | None = None  # what the recognised attn_mask means; None: no mask (SDPA's causal flag)

    @property
    def is_decode(self) -> bool:
        """A static single-token query: decode steps, left untouched."""
        return isinstance(self.q_len, int) and self.q_len == 1

    @property
    def causal(self) -> bool:
        return self.mask.causal if self.mask is not None else self.is_causal

    @property
    def window(self) -> int:
        return (self.mask.window or 0) if self.mask is not None else 0

    @property
    def mask_kind(self) -> str:
        if self.mask is not None:
            return self.mask.kind
        if self.attn_mask is None:
            return "causal (flag)" if self.is_causal else "none"
        return "unrecognised"


def inherit_site_meta(node: fx.Node, site_node: fx.Node) -> None:
    """Label ``node`` as the site's call is labelled (its layer, for passes/layerwise.py; its
    source line, for Inductor's comments)."""
    node.meta.update({k: site_node.meta[k] for k in ("stack_trace", "nn_module_stack", "source_fn_stack")
                      if k in site_node.meta})


def _value(node: Any) -> Any:
    return node.meta.get("example_value") if isinstance(node, fx.Node) else None


def normalise_sdpa_args(node: fx.Node) -> dict[str, Any]:
    """Positional and keyword SDPA arguments as one dict, defaults filled in."""
    args = dict(zip(SDPA_ARG_NAMES, node.args))
    for name, val in node.kwargs.items():
        if name not in SDPA_ARG_NAMES:
            raise ValueError(f"unexpected scaled_dot_product_attention argument {name!r} at node {node.name}")
        args[name] = val
    for name, default in SDPA_DEFAULTS.items():
        args.setdefault(name, default)
    return args


def see_through_repeat_kv(node: fx.Node) -> fx.Node:
    """If ``node`` is transformers' repeat_kv of some tensor, return that tensor; else ``node``.

    repeat_kv is ``x[:, :, None, :, :].expand(B, H, n_rep, L, D).reshape(B, H * n_rep, L, D)``.
    """
    if not (isinstance(node, fx.Node) and node.op == "call_method" and node.target == "reshape"):
        return node
    expand = node.args[0]
    if not (isinstance(expand, fx.Node) and expand.op == "call_method" and expand.target == "expand"):
        return node
    unsq = expand.args[0]
    if not (isinstance(unsq, fx.Node) and unsq.op == "call_function" and unsq.target is operator.getitem):
        return node
    src, index = unsq.args
    full = slice(None, None, None)
    if index != (full, full, None, full, full) or _value(src) is None or _value(src).dim() != 4:
        return node
    return src


def target_name(node: fx.Node) -> str:
    """A node's operation by name: the method's, or the function's ``__name__``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def writes_in_place(node: fx.Node) -> bool:
    """An in-place tensor call: ``x.copy_(y)``, ``index_copy_``, setitem, a mutable aten op."""
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.is_mutable
    name = target_name(node)
    return node.op in ("call_method", "call_function") and (
        "setitem" in name or (name.endswith("_") and not name.endswith("__")))


def layer_of(node: fx.Node) -> tuple[int | None, str]:
    """Layer index and module path of the innermost module in ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _cls in reversed(list(stack.values())):
        match = _LAYER_RE.findall(str(path))
        if match:
            return int(match[-1]), str(path)
    paths = [str(p) for p, _ in stack.values()]
    return None, (paths[-1] if paths else "")


def find_attention_sites(gm: fx.GraphModule) -> list[AttentionSite]:
    """Every SDPA call of ``gm``, in graph order. Pure: the graph is not modified."""
    sites = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in SDPA_TARGETS:
            continue
        args = normalise_sdpa_args(node)
        q, k, v = args["query"], see_through_repeat_kv(args["key"]), see_through_repeat_kv(args["value"])
        qv, kv = _value(q), _value(k)
        if qv is None or kv is None or qv.dim() != 4 or kv.dim() != 4:
            continue  # not the (B, H, L, D) attention of a decoder: leave it alone
        layer, path = layer_of(node)
        sites.append(AttentionSite(
            node=node, ordinal=len(sites), layer=layer if layer is not None else len(sites),
            module_path=path, query=q, key=k, value=v, attn_mask=args["attn_mask"],
            dropout_p=args["dropout_p"], is_causal=bool(args["is_causal"]), scale=args["scale"],
            batch=qv.shape[0], num_heads=int(qv.shape[1]), num_kv_heads=int(kv.shape[1]),
            q_len=qv.shape[2], kv_len=kv.shape[2], head_dim=int(qv.shape[3]),
            dtype=qv.dtype, device=qv.device,
        ))
    return sites
