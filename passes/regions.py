"""Regional compilation: lower and compile each repeated decoder layer once.

Dynamo unrolls a decoder's N layers into one flat graph, and Inductor then traces, lowers,
schedules and generates code for every layer: compile time grows with N (most of a
32-layer compile is spent on the repeated layers). Here we cut the graph at layer boundaries
(``nn_module_stack``), turn each layer into a subgraph and call structurally identical layers
through one ``invoke_subgraph`` higher-order op with one identifier, the form Dynamo emits for
``torch.compiler.nested_compile_region``: AOTAutograd traces it once and Inductor lowers and
generates code for it once, then calls that code N times. Everything stays in one graph.

Layers must be identical for that, but each attention site has its own key (a string
constant of ``mcompile::attention``). Inside a shared layer the op becomes
``mcompile::attention_slot``: the same arguments plus a 0-d int64 tensor, one per site and
layer, that says which key to use; the slot op resolves it and calls ``mcompile::attention``.

``outline_layers`` edits ``gm`` in place (like ``rewrite_sites``) and is idempotent: an
outlined graph has no layer left to outline. When anything looks unusual (layers not
contiguous, in-place ops, operands a subgraph cannot take, no two identical layers) the graph
is left as it was. Under ``dynamic=True`` the backend first has Dynamo specialise the float
inputs (``float_inputs``), which subgraphs cannot take.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .sites import layer_of, writes_in_place

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


def layer_blocks(gm: fx.GraphModule) -> list[_Block] | None:
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
    """``x.item()`` of a graph input: a Python float Dynamo passed as a 0-d tensor. It stays
    outside the layers: inside a subgraph its value would be data-dependent."""
    return node.op == "call_method" and node.target == "item" and node.args[0].op == "placeholder"


def _mutates(node: fx.Node) -> bool:
    """In-place ops (a static cache's index_copy_, setitem) and module calls: such layers stay as they are."""
    return node.op == "call_module" or writes_in_place(node)


def _repeated(blocks: list[_Block] | None) -> bool:
    """At least two layers with the same operations: worth outlining."""
    seen = set()
    for b in blocks or []:
        ops = tuple((n.op, str(n.target)) for n in b.nodes)
        if ops in seen:
            return True
        seen.add(ops)
    return False


def _operand(node: fx.Node) -> bool:
    """What invoke_subgraph accepts as an operand: a tensor or an int (SymInt included)."""
    return isinstance(node.meta.get("example_value"), (torch.Tensor, int, torch.SymInt))


# --- one block as a subgraph ------------------------------------------------------------------
@dataclass
class _Region:
    block: _Block
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


def _extract(gm: fx.GraphModule, block: _Block) -> _Region:
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
    return _Region(block, inputs, outputs, sub, signature, [n.args[site_arg] for n in sites])


# --- the pass ---------------------------------------------------------------------------------
def float_inputs(gm: fx.GraphModule) -> list[str]:
    """Symbols of the graph's float inputs (``x.item()`` of a 0-d placeholder), when it has layers.

    Under ``dynamic=True`` Dynamo passes module float attributes (a norm's eps, the attention
    scale) as inputs; a subgraph cannot take them (invoke_subgraph operands are tensors and
    ints), so the backend asks Dynamo to specialise them, as ``specialize_float=True`` would."""
    if not _repeated(layer_blocks(gm)):
        return []
    names = []
    for node in gm.graph.nodes:
        val = node.meta.get("example_value") if _is_input_scalar(node) else None
        symbol = getattr(val.node, "_expr", None) if isinstance(val, torch.SymFloat) else None
        if symbol is not None and symbol.is_Symbol:  # _expr: the symbol even when already replaced
            names.append(str(symbol))
    return sorted(names)


def outline_layers(gm: fx.GraphModule) -> int:
    """Call repeated identical layers of ``gm`` through shared subgraphs; returns how many
    layers now go through one (0: the graph is unchanged)."""
    blocks = layer_blocks(gm)
    if not _repeated(blocks) or any(_mutates(n) for b in blocks for n in b.nodes):
        return 0
    _define_slot_op()
    regions = [_extract(gm, b) for b in blocks]
    if not all(_operand(x) for r in regions for x in r.inputs):
        return 0  # e.g. a float input Dynamo did not specialise
    groups: dict[str, list[_Region]] = {}
    for r in regions:
        groups.setdefault(r.signature, []).append(r)
    shared = [members for members in groups.values() if len(members) > 1]
    if not shared:
        return 0
    # one slot value per attention call of an outlined layer: 0-d views of one CPU arange (one
    # kernel in all; get_attr tensors would need a Dynamo source)
    keys = [key for members in shared for r in members for key in r.slot_keys]
    with gm.graph.inserting_before(blocks[0].nodes[0]):
        slots = gm.graph.call_function(torch.arange, (len(_KEYS), len(_KEYS) + len(keys)),
                                       {"dtype": torch.int64, "device": "cpu"})
    _KEYS.extend(keys)
    done, moved, next_slot = 0, {}, 0
    for members in shared:
        name = _free_name(gm, "mcompile_layer")
        gm.add_submodule(name, members[0].sub)
        for r in members:
            _replace(gm, r, name, moved, slots, next_slot)
            next_slot += len(r.slot_keys)
            done += 1
    gm.graph.lint()
    gm.recompile()
    return done


def _free_name(gm: fx.GraphModule, base: str) -> str:
    i = 0
    while hasattr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def _replace(gm: fx.GraphModule, r: _Region, name: str, moved: dict, slots: fx.Node, first_slot: int) -> None:
    """Replace the block by a call of subgraph ``name`` with slots ``first_slot...`` of
    ``slots``; ``moved`` maps the outputs of blocks replaced before to their getitem nodes."""
    graph = gm.graph
    first, inside = r.block.nodes[0], set(r.block.nodes)
    for x in r.inputs:
        if _is_input_scalar(x):  # it may sit among the layer's nodes: move it before them
            first.prepend(x)
    with graph.inserting_before(first):
        sub = graph.get_attr(name)
        slot_nodes = [graph.call_function(operator.getitem, (slots, first_slot + j)) for j in range(len(r.slot_keys))]
        operands = [moved.get(x, x) for x in r.inputs] + slot_nodes
        call = graph.call_function(torch.ops.higher_order.invoke_subgraph, (sub, name, *operands))
        call.meta["nn_module_stack"] = first.meta.get("nn_module_stack", {})
        for i, out in enumerate(r.outputs):
            new = graph.call_function(operator.getitem, (call, i))
            new.meta.update(out.meta)
            moved[out] = new
            out.replace_all_uses_with(new, delete_user_cb=lambda user: user not in inside)
    for node in reversed(r.block.nodes):
        graph.erase_node(node)
