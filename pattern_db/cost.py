"""What a plan costs on the GPU at a length: its density and its predicted time against dense.

Both come from the runtime's measured cost model (``mcompile.kernels.cost_model``), the one the
backend uses to decide dense or sparse per call, so ``mcompile db cost``, the search and the
runtime price a plan the same way. Times are GPU time (a prefill replayed from CUDA graphs has
no host time); a layer whose plan is not worth running is priced as dense, as the runtime runs it.

A head's density at length n: static patterns (dense, A-shape, sliding window, block-sparse)
from the pattern's own ``cost``, exactly; the online ones (vertical-slash, SampleAttention) select
per input, and their ``cost`` is a worst case (every diagonal its own block), so their density
is the smaller of it and the keys their budgets give a row (``summary.estimate_density``),
scaled by what the search measured on real inputs at its calibration length where the database
records it (``HeadEntry.cost``): a head that computed half its estimate at 8K is taken to compute
half of it at every length. Block-sparse's ``cost`` is exact (top-k blocks per query block).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mcompile.cost_gate import site_cost
from mcompile.kernels.cost_model import CostModel, predict, shipped
from mcompile.kernels.index import causal_blocks
from mcompile.kernels.patterns import PATTERNS, get_pattern
from mcompile.kernels.tail import tail_work
from mcompile.plan import LayerPlan
from mcompile.reporting import text_table

from .database import HeadEntry, PatternDB
from .summary import estimate_density

DENSE_TAIL_ROWS = 64        # the backend's default ``dense_tail``


@dataclass(frozen=True)
class LengthCost:
    n: int
    density: float          # computed blocks (columns / 64) of dense causal blocks, searched heads
    time_vs_dense: float    # predicted GPU time of the searched layers' attention, of dense's

    def to_obj(self) -> dict:
        return {"n": self.n, "density": round(self.density, 4), "time_vs_dense": round(self.time_vs_dense, 4)}


def head_density(head: HeadEntry, n: int, calibration_length: int | None = None) -> float:
    """Computed blocks of dense causal blocks for one head at length n (see the module's note)."""
    pattern = get_pattern(head.pattern)

    def density_at(length: int) -> float:
        blocks, columns = pattern.cost(length, head.params)
        counted = (blocks + columns / 64) / causal_blocks(length)
        return counted if not pattern.dynamic else min(counted, estimate_density(head, length))
    density = density_at(n)
    if pattern.dynamic and head.cost is not None and calibration_length:
        at_calibration = density_at(calibration_length)
        if at_calibration > 0:
            density *= min(1.0, head.cost) / at_calibration
    return min(1.0, density)


def layer_time(model: CostModel, heads: Sequence[HeadEntry], n: int, head_dim: int,
               calibration_length: int | None = None, tail_rows: int = DENSE_TAIL_ROWS) -> tuple[float, float, float]:
    """(sparse µs as the runtime would run it, dense µs, summed head density) of one layer's call."""
    density = [head_density(h, n, calibration_length) for h in heads]
    builds = site_cost(LayerPlan([h.head_plan() for h in heads]), PATTERNS).builds   # as the gate counts them
    blocks = sum(density) * causal_blocks(n)
    tail = len(heads) * tail_work(n, tail_rows) if tail_rows else 0
    prediction = predict(model, n, head_dim, len(heads), builds, blocks, 0.0, tail, replayed=True)
    sparse = prediction.sparse_us if prediction.worth_it else prediction.dense_us
    if all(h.pattern == "dense" for h in heads):
        sparse = prediction.dense_us
    return sparse, prediction.dense_us, sum(density)


def plan_cost(db: PatternDB, lengths: Sequence[int], model: CostModel | None = None) -> list[LengthCost]:
    """Per length: the density and predicted time of the database's searched (full-attention)
    layers against dense."""
    model = model or shipped()
    if model is None:
        raise RuntimeError("no measured cost model is installed (mcompile/kernels/cost_model.json)")
    searched = [layer.heads for layer in db.layers if layer.kind == "searched"]
    if not searched:
        raise ValueError("the database has no searched layers: nothing to price")
    calibration = (db.provenance.calibration or {}).get("length")
    out = []
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"length {n!r}: lengths must be whole numbers of tokens >= 1")
        sparse = dense = density = 0.0
        for heads in searched:
            s, d, dens = layer_time(model, heads, n, db.model.head_dim, calibration)
            sparse, dense, density = sparse + s, dense + d, density + dens
        out.append(LengthCost(n, density / sum(len(h) for h in searched), sparse / dense))
    return out


def cost_table(rows: Sequence[LengthCost], device: str) -> str:
    lines = text_table(("tokens", "density", "time vs dense"),
                       [(str(r.n), f"{r.density:.3f}", f"{r.time_vs_dense:.3f}") for r in rows])
    return "\n".join(lines + [f"(predicted GPU time on {device})"])


def relative_time(model: CostModel, pattern: str, density: float, n: int, head_dim: int, layer_heads: int) -> float:
    """One head's GPU time at length n, of dense attention's for that head: the sparse kernel
    over ``density`` of the dense blocks plus the head's share of its pattern's index building
    (the search's cost, so a pattern whose building eats its savings loses). Dense is 1."""
    if pattern == "dense":
        return 1.0
    blocks = causal_blocks(n)
    time = model.kernel_gpu_us(n, density * blocks, 0.0, head_dim)
    if get_pattern(pattern).dynamic:
        group = model.build_us(pattern, n, layer_heads, head_dim)[0]
        time += group / layer_heads
    return time / model.dense_gpu_us(n, 1, head_dim)
