"""The ``minference`` torch.compile backend.

Found through the ``torch_dynamo_backends`` entry point (pyproject.toml), so
``torch.compile(model, backend="minference")`` needs no ``import mcompile``. This module must
not call ``register_backend`` for the same name (Dynamo asserts on duplicates).

find sites -> resolve plan -> [compress the returned cache] -> rewrite into mcompile::attention ->
Inductor, each distinct decoder layer compiled once (passes/layerwise.py; the flat graph where
that does not apply).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx as fx

from . import attention_op  # noqa: F401  (registers mcompile::attention)
from . import kv_compress  # noqa: F401  (registers mcompile::kv_compress)
from . import reporting as _report
from .capture import CaptureWriter
from .cuda_graphs import CudaGraphRunner
from .options import Options
from .passes.kv_compress import compress_cache_outputs
from .passes.layerwise import compile_layerwise, float_inputs
from .passes.rewrite import classify_site, rewrite_sites
from .passes.sites import AttentionSite, find_attention_sites
from .plan import LayerPlan
from .runtime import SiteConfig, register_site
from .tensor_parallel import HeadShard, head_shard

log = logging.getLogger("mcompile")


def _configure_logging(level: int) -> None:
    log.setLevel(level)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[mcompile] %(levelname)s %(message)s"))
        log.addHandler(handler)


def model_shape(sites: list[AttentionSite]) -> dict[str, int]:
    """What the graph tells of the model: layer count, heads, kv heads, head dim."""
    first = sites[0]
    return {"num_layers": max(s.layer for s in sites) + 1, "num_heads": first.num_heads,
            "num_kv_heads": first.num_kv_heads, "head_dim": first.head_dim}


def model_plans(opts: Options, identity=None):
    """A function (layer, query heads) -> LayerPlan | None for the model ``identity`` (a
    ``ModelIdentity``; not needed for a forced plan) under ``opts``: the forced ``plan=`` over
    those heads, else the layer's plan in the database ``opts.db`` resolves to; and a
    description of where the plan came from."""
    forced = opts.forced_plan()
    if forced is not None:
        name, params = forced
        return (lambda layer, heads: LayerPlan.uniform(name, heads, **params)), f"forced: {name}"
    from .pattern_db import resolve_model_plan

    model_plan = resolve_model_plan(opts.db, identity, force=opts.force_db)
    return (lambda layer, heads: model_plan.layer_plan(layer)), model_plan.source


def resolve_plans(opts: Options, sites: list[AttentionSite], shard: HeadShard | None = None):
    """A function (layer, local query heads) -> LayerPlan | None, and a description of where the
    plan came from. Under tensor parallelism (``shard``) the model's plan is resolved for all of
    its heads and each site takes its rank's."""
    if opts.forced_plan() is not None:
        return model_plans(opts)
    from .pattern_db import FingerprintMismatchError, ModelIdentity

    shape = model_shape(sites)
    if shard is not None:
        shape.update(num_heads=shape["num_heads"] * shard.degree, num_kv_heads=shape["num_kv_heads"] * shard.degree)
    identity = ModelIdentity(**shape)
    try:
        plan_for, source = model_plans(opts, identity)
    except FingerprintMismatchError as exc:
        if shard is not None:
            exc.args = (f"{exc} Under tensor parallel degree {shard.degree}: each rank's sites hold "
                        f"{sites[0].num_heads} query / {sites[0].num_kv_heads} KV heads, so the model has "
                        f"{identity.num_heads} / {identity.num_kv_heads}.",)
        raise
    if shard is None:
        return plan_for, source
    return (lambda layer, heads: shard.local_plan(plan_for(layer, identity.num_heads), heads)), source


def _specialise_float_inputs(gm: fx.GraphModule) -> None:
    """Under ``dynamic=True`` Dynamo passes module float attributes (norm eps, attention scale)
    as graph inputs; layer-wise pieces cannot take them (passes/layerwise.py). Ask Dynamo to
    specialise them (a guard on each value) through the restart its own tensorify pass uses: the
    attention scale, which our op takes as a Python float, forces that restart anyway, so this
    costs no extra trace. Runs first, before anything is registered for this graph."""
    floats = float_inputs(gm)
    if not floats:
        return
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis
    from torch._dynamo.symbolic_convert import TensorifyState

    if any(TensorifyState.should_specialize(f) for f in floats):
        return  # asked before and still there: compile the graph as it is
    for f in floats:
        TensorifyState.specialize(f)
    log.debug("restarting Dynamo analysis to specialise float inputs %s", floats)
    raise TensorifyScalarRestartAnalysis


def _compile_id() -> str:
    cid = torch._guards.CompileContext.current_compile_id()
    return str(cid) if cid is not None else "eager"


def minference_backend(gm: fx.GraphModule, example_inputs: list[Any], options: dict | None = None,
                       mode: str | None = None):
    opts = Options.from_dict(options)
    _configure_logging(opts.log_level)
    # torch.compile passes mode= or options=, never both: mode="reduce-overhead" and the option
    # cuda_graphs=True ask for the same thing, CUDA graphs over the compiled graph
    patches = dict(torch._inductor.list_mode_options(mode)) if mode else {}
    if opts.cuda_graphs:
        patches["triton.cudagraphs"] = True
    cuda_graphs = bool(patches.get("triton.cudagraphs"))
    # option layerwise (default): each distinct decoder layer compiled once, reused for the others
    # (H100, LLaMA-3-8B shape, 32 layers, cold: 33.5 s instead of 71-86 s flat; lower peak at 512K)
    if opts.layerwise:
        _specialise_float_inputs(gm)
    sites = find_attention_sites(gm)
    for s in sites:
        classify_site(s)
    graph_id = _compile_id()
    rewritten = [s for s in sites if s.rewrite]
    shard = head_shard(opts.tensor_parallel, example_inputs, sites[0].num_heads, sites[0].head_dim) if rewritten else None
    plan_for, source = resolve_plans(opts, sites, shard) if rewritten else (None, "-")
    capture = CaptureWriter.open(opts.capture_dir, opts.overwrite) if rewritten and opts.mode == "capture" else None
    # the cache a prefill leaves, compressed (option kv_compress): before the rewrite, which
    # erases the SDPA nodes the pass places its op after
    kv = opts.kv_compression()
    kv_outcome = compress_cache_outputs(gm, sites, kv.budget, kv.window, kv.kernel) if kv and rewritten else {}
    keys = {}
    for s in sites:
        keys[s.ordinal] = key = f"{graph_id}#{s.ordinal}"
        plan = plan_for(s.layer, s.num_heads) if s.rewrite else None
        compressed = kv_outcome.get(s.ordinal) == "compressed"
        if s.rewrite:
            register_site(SiteConfig(key, s.layer, plan, opts.min_len, mask_recognised=s.mask is not None,
                                     dropout_p=float(s.dropout_p), capture=capture, debug=opts.debug,
                                     stats=opts.stats, dense_tail=opts.dense_tail, cost_model=opts.cost_model,
                                     cuda_graphs=cuda_graphs, kv_keep=kv.keep if compressed else 0))
        row = _row(key, graph_id, s, plan, shard)
        if kv is not None and s.rewrite:
            row.kv_cache = kv.describe() if compressed else kv_outcome[s.ordinal]
        _report.add_site(row)
    if rewritten:
        rewrite_sites(gm, sites, keys)
    log.info("graph %s: rewrote %d of %d attention site(s); plan from %s", graph_id, len(rewritten), len(sites),
             source)
    if opts.report:
        _report.report().save(opts.report)
    from torch._inductor.compile_fx import compile_fx

    if opts.layerwise:
        # the layer-wise runner replays as a whole (mcompile/cuda_graphs.py): Inductor's own CUDA
        # graphs would stop at each attention op, whose layer slot is a CPU input
        piece_patches = {k: v for k, v in patches.items() if k != "triton.cudagraphs"} or None
        compiled = compile_layerwise(gm, example_inputs,
                                     lambda g, ins: compile_fx(g, ins, config_patches=piece_patches))
        if compiled is not None:
            return CudaGraphRunner(compiled, name=f"graph {graph_id}") if cuda_graphs else compiled
        log.info("graph %s: layer-wise compilation does not apply; compiling the whole graph", graph_id)
    return compile_fx(gm, example_inputs, config_patches=patches or None)


def _row(key: str, graph_id: str, s: AttentionSite, plan: LayerPlan | None,
         shard: HeadShard | None = None) -> _report.SiteRow:
    if not s.rewrite:
        decision = s.reason
    elif plan is None or plan.is_dense:
        decision = "dense: plan"
    else:
        decision = "not run yet"
    return _report.SiteRow(key=key, graph=graph_id, layer=s.layer, module=s.module_path, heads=s.num_heads,
                           kv_heads=s.num_kv_heads, head_dim=s.head_dim, causal=s.causal, mask=s.mask_kind,
                           plan=_report.summarise_plan(plan), decision=decision,
                           head_plans=_report.head_plans(plan),
                           shard=shard.describe(s.num_heads) if shard is not None else "")
