"""Tensor parallelism: which of the model's heads this rank's attention sites hold.

Under PyTorch's tensor parallelism (``parallelize_module`` with colwise q/k/v and rowwise o
projections) every rank traces the same model but computes only its slice of the heads: the
attention sites in its graph see ``Hq / degree`` query and ``Hkv / degree`` KV heads, and no
collective happens inside attention. The database is per model (global heads), so a rank takes
the plans of its own heads: local head ``i`` on rank ``r`` is global head ``r * Hq / degree + i``
(colwise sharding hands each rank whole, consecutive heads, GQA groups included).

The degree and rank come from the sharded parameters (DTensors) among the graph's inputs: a
weight split by rows over a mesh dimension of size d, whose rows are d times what one site's
query heads need, is a colwise q projection, and that dimension is the degree. The option
``tensor_parallel`` gives them instead (a 1-D ``DeviceMesh`` or ``{"degree": N, "rank": r}``),
for models sharded without DTensor parameters, or turns detection off (``False``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import OptionError
from .plan import LayerPlan


class TensorParallelError(ValueError):
    """Head sharding the backend cannot map to the model's heads."""


@dataclass(frozen=True)
class HeadShard:
    degree: int
    rank: int

    def global_heads(self, local_heads: int) -> range:
        """The model's query (or KV) heads that this rank's ``local_heads`` are."""
        return range(self.rank * local_heads, (self.rank + 1) * local_heads)

    def local_plan(self, layer_plan: LayerPlan | None, local_heads: int) -> LayerPlan | None:
        """The plans of this rank's heads, from a plan over all of the model's heads."""
        if layer_plan is None:
            return None
        if len(layer_plan.heads) != local_heads * self.degree:
            raise TensorParallelError(
                f"tensor parallel degree {self.degree}: a site holds {local_heads} query heads, so the model has "
                f"{local_heads * self.degree}, but the plan has {len(layer_plan.heads)}")
        heads = self.global_heads(local_heads)
        return LayerPlan(layer_plan.heads[heads.start:heads.stop])

    def describe(self, local_heads: int) -> str:
        """For the report: ``rank 1/2: heads 4-7``."""
        heads = self.global_heads(local_heads)
        return f"rank {self.rank}/{self.degree}: heads {heads.start}-{heads.stop - 1}"


def head_shard(option: Any, example_inputs: list[Any], heads: int, head_dim: int) -> HeadShard | None:
    """This rank's shard of the heads, or None when the model is not sharded (see the module
    docstring for ``option``: None detects, False turns off); ``heads`` and ``head_dim``: the
    query heads and head dim a site of this graph sees."""
    if option is False:
        return None
    if option is None:
        return _detect(example_inputs, heads, head_dim)
    if isinstance(option, dict):
        if set(option) != {"degree", "rank"} or not all(isinstance(option[k], int) for k in option):
            raise OptionError(f"bad value for minference option 'tensor_parallel': {option!r}; "
                              "a dict must be {'degree': N, 'rank': r} with integers")
        degree, rank = option["degree"], option["rank"]
        if degree < 1 or not 0 <= rank < degree:
            raise OptionError(f"bad value for minference option 'tensor_parallel': {option!r}; "
                              "need degree >= 1 and 0 <= rank < degree")
        return HeadShard(degree, rank) if degree > 1 else None
    mesh_type = _device_mesh_type()
    if mesh_type is not None and isinstance(option, mesh_type):
        if option.ndim != 1:
            raise OptionError(f"bad value for minference option 'tensor_parallel': a {option.ndim}-D device mesh; "
                              "give its tensor-parallel dimension (e.g. mesh['tp'])")
        return HeadShard(option.size(), option.get_local_rank()) if option.size() > 1 else None
    raise OptionError(f"bad value for minference option 'tensor_parallel': {option!r}; accepted: None (detect "
                      "from DTensor parameters), False, a 1-D DeviceMesh or {'degree': N, 'rank': r}")


def _device_mesh_type():
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:         # a torch built without distributed support
        return None
    return DeviceMesh


def _detect(example_inputs: list[Any], heads: int, head_dim: int) -> HeadShard | None:
    """From a weight sharded by rows (``Shard(0)``) over a mesh dimension of size d whose global
    rows are d times a site's query features (``heads * head_dim``): a colwise q projection,
    each rank holding whole heads. Weights sharded otherwise (FSDP's, whose ranks gather every
    head before attention) leave the sites with all of the model's heads: no match."""
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:
        return None
    for x in example_inputs:
        if not isinstance(x, DTensor) or x.dim() != 2:
            continue
        mesh = x.device_mesh
        for dim, placement in enumerate(x.placements):
            size = mesh.size(dim)
            if isinstance(placement, Shard) and placement.dim == 0 and size > 1 and x.shape[0] == heads * head_dim * size:
                return HeadShard(size, mesh.get_local_rank(dim))
    return None

def shard_heads(model, mesh):
    """Shard a transformers decoder's layers over the 1-D ``mesh`` with PyTorch's tensor
    parallelism, in place: attention q/k/v colwise and o rowwise (each rank its own whole heads),
    the MLP's gate/up colwise and down rowwise. One all-reduce after attention and one after
    the MLP per layer; none inside attention. Returns ``model``.

    Raises ``TensorParallelError`` when the degree would split a KV group (it must divide the KV
    head count) or the model's layers are not where transformers keeps them."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads, kv_heads, degree = config.num_attention_heads, config.num_key_value_heads, mesh.size()
    if kv_heads % degree:
        raise TensorParallelError(
            f"tensor parallel degree {degree} would split KV groups: the model has {heads} query / {kv_heads} KV "
            f"heads; the degree must divide {kv_heads}")
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise TensorParallelError(f"{type(model).__name__}: no decoder layers with a self_attn module found")
    for layer in layers:
        plan = {f"self_attn.{name}": ColwiseParallel() for name in ("q_proj", "k_proj", "v_proj")}
        plan["self_attn.o_proj"] = RowwiseParallel()
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) \
                and config.intermediate_size % degree == 0:
            plan.update({"mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
                         "mlp.down_proj": RowwiseParallel()})
        parallelize_module(layer, mesh, plan)
    return model
