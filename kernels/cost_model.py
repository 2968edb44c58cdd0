"""The measured cost model: predicted time of one attention call, dense or sparse.

Dense is SDPA's causal kernel; sparse is each pattern group's index building plus the one
sparse kernel over the computed blocks and columns, plus the dense tail. Every constant is a
measurement on the GPU by ``benchmarks/cost_model.py`` (``cost_model.json`` beside this file),
per head dim and length (``_held`` and ``_loglog`` say how lengths between and beyond the
measured ones are priced); :func:`predict` says how host and GPU time combine.

Units: microseconds; a block is ``block_m x block_n`` = 64 x 64 scores of one query head; a
column is 64 scores (one key for the 64 rows of a query block).

The runtime (``mcompile.cost_gate``) asks :func:`predict` whether a plan is worth running at
length n; the offline search can price candidates with the same numbers.
"""
from __future__ import annotations

import bisect
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .index import causal_blocks

DATA = Path(__file__).with_name("cost_model.json")
WORTH_IT = 0.9      # sparse runs when its predicted time is at most this fraction of dense's


@dataclass(frozen=True)
class Prediction:
    dense_us: float
    sparse_us: float
    density: float        # computed blocks (columns / 64) of dense causal blocks

    @property
    def worth_it(self) -> bool:
        return self.sparse_us <= WORTH_IT * self.dense_us

    def describe(self) -> str:
        """The report's reason: predicted sparse time > predicted dense time."""
        return f"cost {self.sparse_us / 1e3:.2f} > {self.dense_us / 1e3:.2f} ms"


class CostModel:
    """Tables from one GPU, by head dim: see ``benchmarks/cost_model.py`` for what is measured."""

    def __init__(self, data: dict):
        self.device = data["device"]
        self.tables = {int(d): t for d, t in data["head_dims"].items()}
        if not self.tables:
            raise ValueError("cost model: no head dims measured")

    @classmethod
    def load(cls, path: str | Path = DATA) -> "CostModel":
        return cls(json.loads(Path(path).read_text()))

    def _table(self, head_dim: int) -> dict:
        if head_dim in self.tables:
            return self.tables[head_dim]
        return self.tables[min(self.tables, key=lambda d: abs(math.log(d / head_dim)))]

    def dense_gpu_us(self, n: int, heads: int, head_dim: int) -> float:
        t = self._table(head_dim)
        return heads * causal_blocks(n) * _held(t["n"], t["dense_us_per_block"], n)

    def dense_us(self, n: int, heads: int, head_dim: int) -> float:
        return max(self.dense_gpu_us(n, heads, head_dim), self._table(head_dim)["dense_host_us"])

    def kernel_gpu_us(self, n: int, blocks: float, columns: float, head_dim: int) -> float:
        """The sparse kernel over ``blocks`` blocks and ``columns`` columns summed over heads."""
        t = self._table(head_dim)
        return blocks * _held(t["n"], t["kernel_us_per_block"], n) + columns * _held(t["n"], t["kernel_us_per_column"], n)

    def build_us(self, pattern: str, n: int, heads: int, head_dim: int) -> tuple[float, float]:
        """(GPU, host) time of building the index of one group of ``heads`` query heads."""
        t = self._table(head_dim)
        if pattern not in t["build"]:
            raise KeyError(f"cost model: pattern {pattern!r} not measured; measured: {sorted(t['build'])}")
        b = t["build"][pattern]
        return tuple(_loglog(t["n"], b[f"group_{kind}_us"], n) + heads * _loglog(t["n"], b[f"head_{kind}_us"], n)
                     for kind in ("gpu", "host"))


def _held(ns: list[int], values: list[float], n: int) -> float:
    """Linear in log n between measured lengths, held constant outside them (the per-block
    and per-column constants)."""
    if n <= ns[0]:
        return values[0]
    if n >= ns[-1]:
        return values[-1]
    i = bisect.bisect_right(ns, n)
    w = math.log(n / ns[i - 1]) / math.log(ns[i] / ns[i - 1])
    return values[i - 1] * (1 - w) + values[i] * w


def _loglog(ns: list[int], values: list[float], n: int) -> float:
    """Linear in log-log between measured lengths; the end segments' slopes outside them (the
    build times)."""
    if len(ns) == 1:
        return values[0] * n / ns[0]
    i = min(max(bisect.bisect_right(ns, n), 1), len(ns) - 1)
    lo, hi = max(values[i - 1], 1e-3), max(values[i], 1e-3)
    slope = math.log(hi / lo) / math.log(ns[i] / ns[i - 1])
    return lo * (n / ns[i - 1]) ** slope


@functools.lru_cache(maxsize=1)
def shipped() -> CostModel | None:
    """The cost model measured for this package, or None when the file is absent."""
    return CostModel.load() if DATA.is_file() else None


def predict(model: CostModel, n: int, head_dim: int, heads: int, builds: list[tuple[str, int]],
            blocks: float, columns: float, tail_blocks: float = 0.0, *, replayed: bool = False) -> Prediction:
    """Dense vs sparse for one call of ``heads`` query heads at length n.

    ``builds``: (pattern, heads) of each pattern group whose index is built in this call (the
    static patterns' indexes are kept per shape, so they cost nothing after a length's first
    call); ``blocks`` and ``columns``: what the kernel computes, summed over heads (worst case
    or measured); ``tail_blocks``: what the dense tail adds, summed over heads; ``replayed``: the
    call is replayed from a CUDA graph, so neither path costs host time.

    GPU time and host time are measured apart: the builders launch many small kernels, and at
    short lengths their Python and launch work on the host outlasts what they give the GPU to
    do (``cost_model.json``'s ``*_host_us`` against ``*_gpu_us`` say up to which length). A call
    without host synchronisation costs whichever is longer, so a path is priced at
    ``max(GPU time, host time)``; a call replayed from a CUDA graph costs no host time, so there
    it is priced at its GPU time alone."""
    t = model._table(head_dim)
    costs = [model.build_us(p, n, h, head_dim) for p, h in builds]
    gpu = sum(c[0] for c in costs) + model.kernel_gpu_us(n, blocks + tail_blocks, columns, head_dim)
    host = sum(c[1] for c in costs) + t["kernel_host_us"] * (2 if tail_blocks else 1)
    density = (blocks + columns / 64) / max(1, heads * causal_blocks(n))
    if replayed:
        return Prediction(model.dense_gpu_us(n, heads, head_dim), gpu, density)
    return Prediction(model.dense_us(n, heads, head_dim), max(gpu, host), density)
