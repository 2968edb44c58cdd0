"""Whether a site's sparse plan is worth running at length n, so sparse is never slower than dense.

The measured cost model (``kernels/cost_model.py``) prices both paths from the plan: static
patterns (sliding window, A-shape, block-sparse) compute a known number of blocks; the online
ones (vertical-slash, SampleAttention) only know a worst case before their index is built.
So each site also measures what its index really computed: after a sparse call, the index's
block and column counts are summed on the GPU and copied to pinned host memory without
waiting; a later call reads them once the copy has landed (no host synchronisation). Until a
site has measured a length near n (within a factor 2), a plan whose worst case is not already
cheaper than dense runs sparse once to find out.

The model prices the kernel on the shapes it was measured on; a plan whose predicted time is
not clearly below dense (above ``CONFIDENT`` of it), and every sparse plan of calls replayed
from CUDA graphs, is timed once per site and length on the GPU, both ways, before the route
settles (:func:`time_both`): a prediction that is off cannot make a settled route slower than
dense.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .kernels.cost_model import CostModel, Prediction, predict
from .kernels.index import causal_blocks

CONFIDENT = 0.5     # a predicted sparse/dense time ratio below this settles without timing
# a timed sparse call is kept only this far below dense's time: each path is timed once, alone,
# and at short lengths a plan covering almost every block times within noise of dense (the
# default plan at 8K, 99% of the blocks, measured 0.96x dense as a whole prefill, H100)
TIMING_MARGIN = 0.05
CYCLES_PER_MS = 2e6     # GPU clock cycles per ms for torch.cuda._sleep (about 2 GHz on Hopper)


@dataclass
class Observation:
    n: int
    density: float                  # (blocks + columns / 64) / dense causal blocks, all heads


@dataclass
class SiteCost:
    """Per site: the plan's groups and worst case per length, and the densities measured."""
    groups: list                    # (pattern, heads) per pattern group
    dynamic: bool                   # some group's selection depends on q/k
    builds: list = field(default_factory=list)          # the groups built every call: the online ones
    worst: dict = field(default_factory=dict)           # n -> (blocks, columns) summed over heads
    observed: list = field(default_factory=list)        # Observation, newest last
    pending: tuple | None = None    # (n, dense blocks, pinned counts, event) in flight
    settled: dict = field(default_factory=dict)         # (n, replayed) -> (run sparse, reason to run dense or None)
    ratio: dict = field(default_factory=dict)           # (n, replayed) -> predicted sparse / dense time

    def poll(self) -> None:
        """Take a measurement whose copy has landed (never waits)."""
        if self.pending is None or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            return      # a capturing stream may not query events
        n, dense_blocks, pinned, event = self.pending
        if not event.query():
            return
        blocks, columns = (int(x) for x in pinned.tolist())   # host memory: no device sync
        self.observed = [o for o in self.observed if o.n != n][-7:] + [
            Observation(n, (blocks + columns / 64) / max(dense_blocks, 1))]
        self.pending = None

    def near(self, n: int) -> Observation | None:
        close = [o for o in self.observed if abs(math.log2(o.n / n)) <= 1]
        return min(close, key=lambda o: abs(math.log2(o.n / n))) if close else None


def site_cost(plan, patterns) -> SiteCost:
    groups = {}
    for h in plan.heads:
        groups[h.pattern] = groups.get(h.pattern, 0) + 1
    online = [(p, h) for p, h in groups.items() if patterns[p].dynamic]
    return SiteCost(list(groups.items()), bool(online), online)


def worst_case(sc: SiteCost, plan, n: int, patterns) -> tuple[int, int]:
    if n not in sc.worst:
        if len(sc.worst) > 64:
            sc.worst.clear()
        blocks = columns = 0
        per_key: dict = {}
        for h in plan.heads:
            if h.key() not in per_key:
                per_key[h.key()] = patterns[h.pattern].cost(n, h.params)
            b, c = per_key[h.key()]
            blocks, columns = blocks + b, columns + c
        sc.worst[n] = (blocks, columns)
    return sc.worst[n]


def decide(model: CostModel, sc: SiteCost, plan, n: int, head_dim: int, tail_blocks: int,
           patterns, replayed: bool = False) -> tuple[bool, str | None]:
    """(run sparse, the reason to run dense). A length is settled once its prediction rests on
    exact counts or a measurement near it; until then an online plan runs sparse to measure.
    ``replayed``: the site's calls replay from CUDA graphs, so only GPU time is priced."""
    if (n, replayed) in sc.settled:
        return sc.settled[n, replayed]
    sc.poll()
    blocks, columns = worst_case(sc, plan, n, patterns)
    heads = len(plan.heads)
    prediction = predict(model, n, head_dim, heads, sc.builds, blocks, columns, tail_blocks, replayed=replayed)
    if sc.dynamic and not prediction.worth_it:
        seen = sc.near(n)
        if seen is None:
            return True, None
        prediction = predict(model, n, head_dim, heads, sc.builds, seen.density * heads * causal_blocks(n),
                             0.0, tail_blocks, replayed=replayed)
    if len(sc.settled) > 256:
        sc.settled.clear()
        sc.ratio.clear()
    sc.ratio[n, replayed] = prediction.sparse_us / max(prediction.dense_us, 1e-9)
    sc.settled[n, replayed] = (prediction.worth_it, None if prediction.worth_it else prediction.describe())
    return sc.settled[n, replayed]


def wants_measurement(sc: SiteCost, n: int, replayed: bool = False) -> bool:
    return sc.dynamic and sc.pending is None and (n, replayed) not in sc.settled


def measure(sc: SiteCost, n: int, heads: int, counts: torch.Tensor, wait: bool = False) -> None:
    """Start the copy of ``counts`` (int64 (2,) on the GPU: blocks, columns summed over heads);
    with ``wait``, wait for it and take it now."""
    if sc.pending is not None or not counts.is_cuda or torch.cuda.is_current_stream_capturing():
        return
    pinned = torch.empty(2, dtype=torch.int64, pin_memory=True)
    pinned.copy_(counts, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    sc.pending = (n, heads * causal_blocks(n), pinned, event)
    if wait:
        event.synchronize()
        sc.poll()


def needs_timing(sc: SiteCost, n: int, replayed: bool) -> bool:
    """Whether the settled sparse route at n is checked on the GPU before it is kept: where the
    prediction is close to dense's, and always for calls replayed from CUDA graphs. The model
    prices the kernel per block, which misses the fixed work of each query block at short
    lengths (measured on an H100 with SmolLM2 at 8K: predicted 0.1-0.2 of dense for A-shape
    layers, about even in fact); a graph replays its route for every later call of the length,
    and its one eager warm-up call, which times, runs anyway."""
    return sc.settled.get((n, replayed), (False,))[0] and (replayed or sc.ratio.get((n, replayed), 1.0) > CONFIDENT)


def time_both(sparse, dense) -> tuple[float, float]:
    """(sparse ms, dense ms) of GPU time of one call each on the current CUDA stream, after one
    untimed call each (Triton compiles, cuDNN picks its plan). Waits for the GPU: a site does
    this once per length, before its route settles. A GPU sleep queued before each timed call
    (three times the host's measured submission) hides the host's launch work: timed from an
    idle GPU, a host-bound call would look slower than it runs inside a prefill, where its host
    work overlaps the layers before it (host time is the cost model's to price; calls replayed
    from CUDA graphs have none)."""
    times = []
    for fn in (sparse, dense):
        start_host = time.perf_counter()
        fn()
        submit_ms = (time.perf_counter() - start_host) * 1e3
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(int(CYCLES_PER_MS * (3 * submit_ms + 1)))
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return times[0], times[1]
