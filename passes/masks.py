"""Recognise the attention masks that transformers builds inside the graph.

transformers' ``sdpa_mask`` builds a (B, 1, Lq, Lkv) boolean mask from index tensors
(``arange + offset``, broadcast to 4-D) and small mask functions joined by ``&``:
``kv <= q`` (causal), ``kv > q - W`` (sliding window), ``padding[b, kv]`` (the 2-D
``attention_mask``). We read the mask's subgraph with a tiny abstract interpreter over
those few operations and return what the mask *means*. Any operation outside that
vocabulary makes the mask unrecognised, and the site keeps its mask unchanged (dense).

The attention op rebuilds the same mask from this meaning only when it must run dense, so
the sparse path never materialises an N^2 mask.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx


@dataclass(frozen=True)
class MaskInfo:
    causal: bool
    window: int | None = None         # sliding window size W: keys with kv > q - W
    padding: fx.Node | None = None    # (B, >= kv_offset + Lkv) bool, True = real token
    q_offset: Any = 0                 # int or a SymInt-valued node: q position of query row 0
    kv_offset: Any = 0                # int or a SymInt-valued node: position of key column 0

    @property
    def kind(self) -> str:
        parts = ["causal" if self.causal else "full"]
        if self.window is not None:
            parts.append(f"sliding({self.window})")
        if self.padding is not None:
            parts.append("padding")
        return "+".join(parts)


class Unrecognised(Exception):
    pass


# --- abstract values ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Range:          # arange(n) + offset, still 1-D
    offset: Any


@dataclass(frozen=True)
class _Index:          # a broadcast position index along one axis, plus a constant shift
    axis: str          # "b", "q" or "kv"
    offset: Any
    shift: int = 0


@dataclass(frozen=True)
class _Pred:           # a conjunction of recognised atoms
    atoms: frozenset


@dataclass(frozen=True)
class _FirstMinus:     # positions[:, :1] - shift, for transformers' packed-sequence detection
    range: _Range
    shift: int


class _Ones:           # diff of consecutive positions: all ones (one sequence, no packing)
    pass


class _SeqIds:         # cumsum of (diff != 1): all zeros, every token in sequence 0
    pass


@dataclass(frozen=True)
class _Tensor:         # an opaque tensor leaf (the padding mask)
    node: fx.Node


_FULL = slice(None, None, None)
_AXIS_OF_INDEX = (  # slices are unhashable before Python 3.12: a tuple of pairs
    ((_FULL, None, None, None), "b"),
    ((None, None, _FULL, None), "q"),
    ((None, None, None, _FULL), "kv"),
)


def _axis_of(index: Any) -> str | None:
    return next((axis for pattern, axis in _AXIS_OF_INDEX if index == pattern), None)
_IDENTITY_METHODS = {"to", "expand", "contiguous", "bool"}


def _is_offset(x: Any) -> bool:
    if isinstance(x, int) and not isinstance(x, bool):
        return True
    return isinstance(x, fx.Node) and isinstance(x.meta.get("example_value"), torch.SymInt)


def _eval(node: Any, env: dict) -> Any:
    if not isinstance(node, fx.Node):
        return node
    if node in env:
        return env[node]
    env[node] = result = _step(node, env)
    return result


def _step(node: fx.Node, env: dict) -> Any:
    val = node.meta.get("example_value")
    if isinstance(val, torch.Tensor) and val.dim() == 2 and val.dtype == torch.bool:
        try:
            return _known_step(node, env, val)
        except (Unrecognised, TypeError, ValueError):
            return _Tensor(node)  # the padding mask itself: a (B, L) bool tensor only the op reads
    return _known_step(node, env, val)


def _known_step(node: fx.Node, env: dict, val: Any) -> Any:
    if isinstance(val, torch.SymInt):  # a symbolic size or offset: only ever used as itself
        return node
    args = [fx.node.map_aggregate(a, lambda x: _eval(x, env)) for a in node.args]
    t = node.target
    if node.op == "call_function" and t is torch.arange and len(args) == 1 and not node.kwargs.get("dtype"):
        return _Range(0)
    if node.op == "call_function" and t is operator.add and isinstance(args[0], _Range) and _is_offset(node.args[1]):
        if args[0].offset != 0:
            raise Unrecognised("arange with two offsets")
        return _Range(node.args[1])
    if node.op == "call_method" and t in ("unsqueeze", "expand") and isinstance(args[0], _Range):
        return args[0]  # position_ids: the same positions for every batch row
    if node.op == "call_function" and t is operator.getitem:
        base, index = args
        if isinstance(base, _Range) and _axis_of(index) is not None:
            return _Index(_axis_of(index), base.offset)
        if isinstance(base, _Range) and index == (_FULL, slice(None, 1, None)):
            return _FirstMinus(base, 0)
        if isinstance(base, _Range) and isinstance(index, tuple) and len(index) == 2:
            b, i = index  # positions[b, idx]: the idx axis, shifted by the positions' offset
            if isinstance(b, _Index) and b.axis == "b" and isinstance(i, _Index) and i.axis in ("q", "kv"):
                if base.offset == 0:
                    return i
                if i.offset == 0 and i.shift == 0:
                    return _Index(i.axis, base.offset)
        if isinstance(base, _SeqIds):
            return base
        if isinstance(base, _Tensor) and isinstance(index, tuple) and len(index) == 2:
            b, kv = index
            if isinstance(b, _Index) and b.axis == "b" and isinstance(kv, _Index) and kv.axis == "kv" and kv.shift == 0:
                return _Pred(frozenset({("padding", base.node)}))
        raise Unrecognised(f"indexing at {node.name}")
    if node.op == "call_function" and t is operator.sub and isinstance(args[0], _FirstMinus) and isinstance(args[1], int):
        return _FirstMinus(args[0].range, args[0].shift + args[1])
    if node.op == "call_function" and t is torch.diff and isinstance(args[0], _Range):
        prepend = fx.node.map_aggregate(node.kwargs.get("prepend"), lambda x: _eval(x, env))
        if prepend == _FirstMinus(args[0], 1) and node.kwargs.get("dim", -1) == -1:
            return _Ones()
    if node.op == "call_function" and t is operator.ne and isinstance(args[0], _Ones) and args[1] == 1:
        return _SeqIds()  # all False: cumsum keeps it all zeros
    if node.op == "call_method" and t == "cumsum" and isinstance(args[0], _SeqIds):
        return args[0]
    if (t is operator.eq or t == "__eq__") and all(isinstance(a, _SeqIds) for a in args):
        return _Pred(frozenset())  # one packed sequence: every pair is in the same sequence
    if node.op == "call_function" and t is operator.sub and isinstance(args[0], _Index) and isinstance(args[1], int):
        i = args[0]
        return _Index(i.axis, i.offset, i.shift - args[1])
    if node.op == "call_function" and t in (operator.le, operator.gt):
        kv, q = args
        if not (isinstance(kv, _Index) and kv.axis == "kv" and isinstance(q, _Index) and q.axis == "q" and kv.shift == 0):
            raise Unrecognised(f"comparison at {node.name}")
        if t is operator.le and q.shift == 0:
            return _Pred(frozenset({("causal",)}))
        if t is operator.gt and q.shift < 0:
            return _Pred(frozenset({("window", -q.shift)}))
        raise Unrecognised(f"comparison at {node.name}")
    if node.op == "call_function" and t in (operator.and_, torch.logical_and) and all(isinstance(a, _Pred) for a in args):
        return _Pred(args[0].atoms | args[1].atoms)
    if node.op == "call_method" and t == "new_ones" and node.kwargs.get("dtype") == torch.bool and args[1] in ((), []):
        return _Pred(frozenset())
    if node.op == "call_method" and t in _IDENTITY_METHODS and isinstance(args[0], (_Pred, _Index)):
        return args[0]
    raise Unrecognised(f"{node.op} {t} at {node.name}")


def recognise_mask(mask: fx.Node) -> MaskInfo | None:
    """What a transformers-built SDPA mask means, or None when it is not one we know."""
    try:
        pred = _eval(mask, {})
    except (Unrecognised, TypeError, ValueError):
        return None
    if not isinstance(pred, _Pred):
        return None
    offsets = _offsets(mask)
    if offsets is None:
        return None
    causal = ("causal",) in pred.atoms
    windows = [a[1] for a in pred.atoms if a[0] == "window"]
    pads = [a[1] for a in pred.atoms if a[0] == "padding"]
    if len(windows) > 1 or len(pads) > 1 or (windows and not causal):
        return None
    return MaskInfo(causal=causal, window=windows[0] if windows else None,
                    padding=pads[0] if pads else None, q_offset=offsets[0], kv_offset=offsets[1])


def _offsets(mask: fx.Node) -> tuple[Any, Any] | None:
    """The q and kv offsets of the index tensors in the mask's subgraph (0 where absent)."""
    env: dict = {}
    _eval(mask, env)
    found = {"q": set(), "kv": set()}
    for val in env.values():
        if isinstance(val, _Index) and val.axis in found:
            found[val.axis].add(val.offset)
    if any(len(v) > 1 for v in found.values()):
        return None
    return tuple(next(iter(found[a]), 0) for a in ("q", "kv"))
