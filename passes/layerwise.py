"""Layer-wise compilation: compile each distinct decoder layer once with Inductor, reuse it.

Dynamo unrolls a decoder's N layers into one flat graph, which AOTAutograd and Inductor then
compile layer by layer, in time that grows with N. Here the rewritten graph is cut into
contiguous pieces: each decoder layer (``nn_module_stack``) and the runs of other nodes between
them. Pieces with the same code and input shapes are compiled once with ``compile_fx``, with
Dynamo's fake tensors as example inputs, as Dynamo's DDPOptimizer compiles its buckets; weights
are graph inputs, so one compiled layer serves every identical layer. ``LayerwiseModule`` calls
the compiled pieces in order.

Each attention site has its own key, so inside a piece ``mcompile::attention`` becomes
``mcompile::attention_slot``: the same arguments plus a 0-d int64 CPU tensor, one per site and
layer, that says which key to use.
"""
from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

from .sites import layer_of, writes_in_place

log = logging.getLogger("mcompile")

_KEYS: list[str] = []  # slot value -> site key, for every slot made in this process


# --- the slot op -----------------------------------------------------------------------------
def _define_slot_op() -> None:
    """``mcompile::attention_slot(Tensor slot, <mcompile::attention's arguments>)``.

    The schema is derived from ``mcompile::attention`` so the two never drift apart."""
    if hasattr(torch.ops.mcompile, "attention_slot"):
        return
    schema = torch.ops.mcompile.attention.default._schema
    text = str(schema)  # "mcompile::attention(Tensor q, ...) -> Tensor"
    torch.library.define("mcompile::attention_slot", "(Tensor slot, " + text[text.index("(") + 1:])
    site_index = _site_arg()

    def _with_key(slot, args):
        args = list(args)
        args[site_index] = _KEYS[int(slot)]
        return args

    @torch.library.impl("mcompile::attention_slot", "CompositeExplicitAutograd")
    def _impl(slot, *args):
        return torch.ops.mcompile.attention.default(*_with_key(slot, args))

    @torch.library.register_fake("mcompile::attention_slot")
    def _fake(slot, *args):
        return torch.ops.mcompile.attention.default(*args)


def _site_arg() -> int:
    """Position of the site key among ``mcompile::attention``'s arguments."""
    return [a.name for a in torch.ops.mcompile.attention.default._schema.arguments].index("site")


# --- finding the layers ----------------------------------------------------------------------
@dataclass
class _Block:
    layer: int
    nodes: list[fx.Node] = field(default_factory=list)


def _layer_blocks(gm: fx.GraphModule) -> list[_Block] | None:
    """The graph's decoder layers as contiguous runs of nodes, or None when they are not.

    A node belongs to the layer of its ``nn_module_stack``; unlabelled nodes between two nodes
    of one layer belong to it; placeholders and get_attr nodes are inputs, never in a block."""
    blocks: list[_Block] = []
    pending: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output") or _is_input_scalar(node):
            continue
        layer, _ = layer_of(node)
        if layer is None:
            pending.append(node)
            continue
        if blocks and blocks[-1].layer == layer:
            blocks[-1].nodes += pending
        elif any(b.layer == layer for b in blocks):
            return None  # a layer in two pieces
        else:
            blocks.append(_Block(layer))
        pending = []
        blocks[-1].nodes.append(node)
    return blocks


def _is_input_scalar(node: fx.Node) -> bool:
    """``x.item()`` of a graph input: a Python float Dynamo passed as a 0-d tensor. It belongs to
    no layer: inside a piece its value would be data-dependent (``float_inputs``)."""
    return node.op == "call_method" and node.target == "item" and node.args[0].op == "placeholder"


def _mutates(node: fx.Node) -> bool:
    """In-place ops (a static cache's index_copy_, setitem) and module calls: such a graph is compiled flat."""
    return node.op == "call_module" or writes_in_place(node)


def _repeated(blocks: list[_Block] | None) -> bool:
    """At least two layers with the same operations: worth compiling layer-wise."""
    seen = set()
    for b in blocks or []:
        ops = tuple((n.op, str(n.target)) for n in b.nodes)
        if ops in seen:
            return True
        seen.add(ops)
    return False


def _operand(node: fx.Node) -> bool:
    """What a piece takes as an input: a tensor or an int (SymInt included)."""
    return isinstance(node.meta.get("example_value"), (torch.Tensor, int, torch.SymInt))


# --- one block as a graph ----------------------------------------------------------------------
@dataclass
class _Piece:
    inputs: list[fx.Node]
    outputs: list[fx.Node]
    sub: fx.GraphModule
    signature: str
    slot_keys: list[str]       # the site keys of this layer's attention calls, in order


def _meta_key(node: fx.Node) -> str:
    val = node.meta.get("example_value")
    if isinstance(val, torch.Tensor):
        return f"T{tuple(val.shape)}{val.stride()}{val.dtype}{val.device}{val.requires_grad}"
    return f"{type(val).__name__}:{val}"


def _extract(gm: fx.GraphModule, block: _Block) -> _Piece:
    """The block as a graph of its own: its inputs are the values it reads from outside, then
    one slot per attention call; its signature (code and input metadata) says which blocks can
    share one compiled piece."""
    inside = set(block.nodes)
    attention = torch.ops.mcompile.attention.default
    inputs: list[fx.Node] = []
    for node in block.nodes:
        fx.node.map_arg((node.args, node.kwargs), lambda x: None if x in inside or x in inputs else inputs.append(x))
    sites = [n for n in block.nodes if n.op == "call_function" and n.target is attention]
    site_arg = _site_arg()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, x in enumerate(inputs):
        env[x] = graph.placeholder(f"in{i}")
        env[x].meta.update(x.meta)
    slots = [graph.placeholder(f"slot{j}") for j in range(len(sites))]
    for i, node in enumerate(block.nodes):
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        target = node.target
        if node in sites:  # the key becomes a slot: the same string in every layer
            j = sites.index(node)
            args = (slots[j], *args[:site_arg], f"slot{j}", *args[site_arg + 1:])
            target = torch.ops.mcompile.attention_slot.default
        env[node] = graph.create_node(node.op, target, args, kwargs, name=f"n{i}")
        env[node].meta.update(node.meta)
    outputs = [n for n in block.nodes if any(u not in inside for u in n.users)]
    graph.output(tuple(env[n] for n in outputs))
    sub = fx.GraphModule(gm, graph)
    code = "\n".join(line for line in sub.code.splitlines() if not line.strip().startswith("#"))
    signature = code + "|" + "|".join(_meta_key(x) for x in inputs)
    return _Piece(inputs, outputs, sub, signature, [n.args[site_arg] for n in sites])


# --- layer-wise compilation ---------------------------------------------------------------------
def float_inputs(gm: fx.GraphModule) -> list[str]:
    """Symbols of the graph's float inputs (``x.item()`` of a 0-d placeholder), when it has layers.

    Under ``dynamic=True`` Dynamo passes module float attributes (a norm's eps, the attention
    scale) as inputs; a piece cannot take them (its inputs are tensors and ints), so the backend
    asks Dynamo to specialise them, as ``specialize_float=True`` would."""
    if not _repeated(_layer_blocks(gm)):
        return []
    names = []
    for node in gm.graph.nodes:
        val = node.meta.get("example_value") if _is_input_scalar(node) else None
        symbol = getattr(val.node, "_expr", None) if isinstance(val, torch.SymFloat) else None
        if symbol is not None and symbol.is_Symbol:  # _expr: the symbol even when already replaced
            names.append(str(symbol))
    return sorted(names)


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


def _segments(gm: fx.GraphModule) -> list[_Block] | None:
    """The graph's compute nodes as contiguous pieces: each layer's block, and the runs of
    other nodes between blocks (layer -1)."""
    blocks = _layer_blocks(gm)
    if not _repeated(blocks) or any(_mutates(n) for b in blocks for n in b.nodes):
        return None
    block_of = {n: b for b in blocks for n in b.nodes}
    pieces: list[_Block] = []
    current = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if _is_input_scalar(node):
            return None  # an unspecialised float input
        if _mutates(node):
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
            current = _Block(-1)
            pieces.append(current)
        current.nodes.append(node)
    return pieces


def compile_layerwise(gm: fx.GraphModule, example_inputs: list[Any],
                      compile_piece: Callable[[fx.GraphModule, list[Any]], Callable]) -> LayerwiseModule | None:
    """Compile ``gm`` piece by piece, identical pieces once; None when it does not apply.

    It does not apply, and the backend compiles the flat graph, with no two identical layers,
    in-place ops, a float input Dynamo did not specialise, inputs that are not tensors or ints,
    a size symbol that no input of a piece carries, or autograd (grad mode on with inputs that
    require grad: each piece would keep its own backward, which the runner does not manage).
    Cross-layer fusion (one layer's residual add with the next layer's norm) is lost; the runner
    frees each value after its last use and calls the pieces boxed where it can, so inputs die
    inside the piece."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs):
        return None
    blocks = _segments(gm)
    if blocks is None:
        return None
    _define_slot_op()
    pieces = [_extract(gm, b) for b in blocks]
    if not all(_operand(x) for r in pieces for x in r.inputs):
        return None
    if not all(r.outputs for r in pieces):
        return None
    if not all(_symbols_bound(r) for r in pieces):
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
    for r in pieces:
        for o in r.outputs:
            ids[o] = len(ids)

    last_use: dict[int, int] = {}
    for s, r in enumerate(pieces):
        for x in r.inputs:
            last_use[ids[x]] = s
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    kept = set()
    fx.node.map_arg(out_node.args[0], lambda x: kept.add(ids[x]))

    compiled: dict[str, tuple[Callable, bool]] = {}
    steps = []
    t0 = time.perf_counter()
    for s, r in enumerate(pieces):
        first = len(_KEYS)
        _KEYS.extend(r.slot_keys)
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
    info = {"pieces": len(pieces), "compiled": len(compiled), "boxed": all(b for _, b in compiled.values()),
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


def _symbols_bound(piece: _Piece) -> bool:
    """Every size symbol the piece's nodes use is carried by one of its inputs (else Inductor's
    code for the piece would name a symbol it never defined)."""
    bound = set().union(*(_bound_symbols(x.meta.get("example_value")) for x in piece.inputs))
    used = set().union(*(_free_symbols(n.meta.get("example_value")) for n in piece.sub.graph.nodes
                         if n.op != "output"))   # placeholders too: an input SymInt like max(0, 1 - s9)
    return used <= bound
