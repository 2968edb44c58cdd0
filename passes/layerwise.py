"""Layer-wise compilation: compile each distinct decoder layer once with Inductor, reuse it.

Dynamo unrolls a decoder's N layers into one flat graph; AOTAutograd and Inductor then trace,
lower, schedule and generate code for every layer, so their time grows with N. Here the
(rewritten) graph is cut into contiguous pieces: each decoder layer (``nn_module_stack``, as
in ``passes/regions.py``) and the runs of other nodes between them (embedding and rotary
tables before, the final norm and head after). Pieces with the same code and the same input
shapes are compiled ONCE with ``compile_fx`` (weights are graph inputs, so one compiled layer
serves every identical layer) and a small Python runner calls the compiled pieces in order.

Inside a shared layer the attention op's key becomes ``mcompile::attention_slot`` (a 0-d int64
CPU tensor per site and layer says which key; ``regions._extract`` does that rewrite).

Unlike ``invoke_subgraph`` (regions.py) this relies on no Inductor support for nested regions:
each piece is an ordinary graph for ``compile_fx``, with Dynamo's fake tensors (symbolic
shapes included) as example inputs, the way Dynamo's DDPOptimizer compiles its buckets.

Limits, where the flat graph is compiled instead (``compile_layerwise`` returns None): no two
identical layers, in-place ops, a float input Dynamo did not specialise, operands that are not
tensors or ints, or autograd (grad mode on with inputs that require grad: the pieces would
each keep their own backward, which this runner does not manage). Cross-layer fusion (the
residual add of one layer with the next layer's norm) is lost; the runner frees each value
after its last use and calls the pieces boxed where it can, so inputs die inside the piece.
"""
from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx

from . import regions as _regions

log = logging.getLogger("mcompile")


@dataclass
class _Step:
    fn: Callable
    boxed: bool
    inputs: list[int]          # value ids
    outputs: list[int]         # value ids
    free: list[int]            # value ids whose last use is this step
    slots: list[torch.Tensor]  # real 0-d int64 CPU tensors: which key each attention call uses


class LayerwiseModule:
    """Runs the compiled pieces in graph order; called by Dynamo with the graph's inputs."""

    def __init__(self, n_args: int, consts: dict[int, Any], steps: list[_Step], n_values: int, output: Any,
                 info: dict):
        self.n_args, self.consts, self.steps, self.n_values, self.output = n_args, consts, steps, n_values, output
        self.info = info

    def __call__(self, *args):
        vals: list[Any] = [None] * self.n_values
        vals[:self.n_args] = args
        for i, v in self.consts.items():
            vals[i] = v
        for step in self.steps:
            inputs = [vals[i] for i in step.inputs]
            inputs += step.slots
            for i in step.free:
                vals[i] = None
            outs = step.fn(inputs) if step.boxed else step.fn(*inputs)
            del inputs
            for i, o in zip(step.outputs, outs):
                vals[i] = o
            del outs
        return fx.node.map_aggregate(self.output, lambda x: vals[x.index] if isinstance(x, _Ref) else x)


@dataclass(frozen=True)
class _Ref:
    index: int


def _boxed(fn: Callable, piece: fx.GraphModule) -> tuple[Callable, bool]:
    """The boxed function under what ``compile_fx`` returned, when there is one.

    ``compile_fx`` on a GraphModule returns AOTAutograd's ``forward(*runtime_args)``, which
    keeps its arguments alive until the piece returns. Under it sits a boxed runtime wrapper
    (one list argument, stolen and cleared) that gets ``params + runtime_args``; our pieces have
    no parameters, so calling it with our list lets the piece free a layer's input (e.g. the
    residual stream) as soon as it is consumed, as the flat graph does."""
    if any(True for _ in piece.parameters()) or any(True for _ in piece.buffers()):
        return fn, False
    g = getattr(fn, "__wrapped__", None)
    for _ in range(8):
        if g is None:
            break
        code = getattr(g, "__code__", None)
        if (code is not None and getattr(g, "_boxed_call", False) and code.co_argcount == 1
                and not code.co_flags & 0x04 and not code.co_flags & 0x08):  # no *args, no **kwargs
            return g, True
        g = getattr(g, "__wrapped__", None)
    return fn, False


def _segments(gm: fx.GraphModule) -> list[_regions._Block] | None:
    """The graph's compute nodes as contiguous pieces: each layer's block, and the runs of
    other nodes between blocks (layer -1)."""
    blocks = _regions.layer_blocks(gm)
    if not _regions._repeated(blocks) or any(_regions._mutates(n) for b in blocks for n in b.nodes):
        return None
    block_of = {n: b for b in blocks for n in b.nodes}
    pieces: list[_regions._Block] = []
    current = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if _regions._is_input_scalar(node):
            return None  # an unspecialised float input
        if _regions._mutates(node):
            return None
        b = block_of.get(node)
        if b is not None:
            if current is not b:
                if b.nodes[0] is not node:
                    return None  # a layer in two pieces
                pieces.append(b)
                current = b
            continue
        if current is None or current.layer != -1:
            current = _regions._Block(-1)
            pieces.append(current)
        current.nodes.append(node)
    return pieces


def compile_layerwise(gm: fx.GraphModule, example_inputs: list[Any],
                      compile_piece: Callable[[fx.GraphModule, list[Any]], Callable]) -> LayerwiseModule | None:
    """Compile ``gm`` piece by piece, identical pieces once; None when it does not apply."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs):
        return None
    pieces = _segments(gm)
    if pieces is None:
        return None
    _regions._define_slot_op()
    regions = [_regions._extract(gm, p) for p in pieces]
    if not all(_regions._operand(x) for r in regions for x in r.inputs):
        return None
    if not all(r.outputs for r in regions):
        return None
    if not all(_symbols_bound(r) for r in regions):
        log.info("layer-wise: a piece uses a size symbol none of its inputs carries; compiling the flat graph")
        return None
    fake_mode = torch._guards.detect_fake_mode([n.meta.get("example_value") for n in gm.graph.nodes
                                                if n.op == "placeholder"])
    if fake_mode is None:
        return None

    # value ids: graph inputs first (Dynamo's argument order), then get_attr constants, then outputs
    ids: dict[fx.Node, int] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in placeholders:
        ids[n] = len(ids)
    consts = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            ids[n] = len(ids)
            consts[ids[n]] = operator.attrgetter(n.target)(gm)
    for r in regions:
        for o in r.outputs:
            ids[o] = len(ids)

    last_use: dict[int, int] = {}
    for s, r in enumerate(regions):
        for x in r.inputs:
            last_use[ids[x]] = s
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    kept = set()
    fx.node.map_arg(out_node.args[0], lambda x: kept.add(ids[x]))

    compiled: dict[str, tuple[Callable, bool]] = {}
    steps = []
    t0 = time.perf_counter()
    for s, r in enumerate(regions):
        first = len(_regions._KEYS)
        _regions._KEYS.extend(r.slot_keys)
        slots = [torch.tensor(first + j, dtype=torch.int64) for j in range(len(r.slot_keys))]
        if r.signature not in compiled:
            with fake_mode:
                fake_slots = [torch.empty((), dtype=torch.int64) for _ in slots]
            examples = [x.meta["example_value"] for x in r.inputs] + fake_slots
            fn = compile_piece(r.sub, examples)
            compiled[r.signature] = _boxed(fn, r.sub)
        fn, boxed = compiled[r.signature]
        free = [ids[x] for x in r.inputs if last_use[ids[x]] == s and ids[x] not in kept]
        steps.append(_Step(fn, boxed, [ids[x] for x in r.inputs], [ids[o] for o in r.outputs], free, slots))
    output = fx.node.map_arg(out_node.args[0], lambda x: _Ref(ids[x]))
    info = {"pieces": len(regions), "compiled": len(compiled), "boxed": all(b for _, b in compiled.values()),
            "compile_s": round(time.perf_counter() - t0, 2)}
    log.info("layer-wise: %d pieces, %d compiled (boxed calls: %s) in %.1f s", info["pieces"], info["compiled"],
             info["boxed"], info["compile_s"])
    return LayerwiseModule(len(placeholders), consts, steps, len(ids), output, info)


def _free_symbols(value) -> set:
    """Sympy symbols in a SymInt/SymFloat/SymBool, a tensor's sizes and strides, or a tuple of them."""
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return set(value.node.expr.free_symbols)
    if isinstance(value, torch.Tensor):
        return set().union(*(_free_symbols(x) for x in (*value.shape, *value.stride())))
    if isinstance(value, (tuple, list)):
        return set().union(*(_free_symbols(x) for x in value))
    return set()


def _bound_symbols(value) -> set:
    """Symbols a compiled piece can read off an input: a size, stride or SymInt that is one symbol."""
    if isinstance(value, torch.SymInt):
        return {value.node.expr} if value.node.expr.is_Symbol else set()
    if isinstance(value, torch.Tensor):
        return set().union(*(_bound_symbols(x) for x in (*value.shape, *value.stride())))
    return set()


def _symbols_bound(region) -> bool:
    """Every size symbol the piece's nodes use is carried by one of its inputs (else Inductor's
    code for the piece would name a symbol it never defined)."""
    bound = set().union(*(_bound_symbols(x.meta.get("example_value")) for x in region.inputs))
    used = set().union(*(_free_symbols(n.meta.get("example_value")) for n in region.sub.graph.nodes
                         if n.op != "output"))   # placeholders too: an input SymInt like max(0, 1 - s9)
    return used <= bound
