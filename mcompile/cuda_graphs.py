"""Replay a compiled prefill as one CUDA graph per input signature.

The sparse path decides, estimates and builds its index in Python inside ``mcompile::attention``;
at the shorter long-context lengths that host work, not the GPU, sets the pace
(``benchmarks/ttft.py`` times host and GPU per layer). Captured once, a length's whole prefill
(every layer's attention, index building included) is one graph launch.

:class:`CudaGraphRunner` says when a signature runs eagerly, is captured and is replayed, and
what memory its graphs keep. What a graph cannot replay is refused at capture
(:func:`refuse_capture`), and the signature then runs eagerly: a padding mask (its values
choose the route each call) or any other host read.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch

log = logging.getLogger("mcompile")

MAX_GRAPHS = 8          # captured signatures kept per compiled callable
MAX_SEEN = 1024         # signatures remembered as seen once


class CaptureRefused(RuntimeError):
    """Raised inside a capture by code whose result would not hold on replay."""


def refuse_capture(reason: str) -> None:
    """Abort the CUDA graph capture in progress, if any, saying why (the call then runs eagerly)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise CaptureRefused(reason)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    static: list[Any]                 # the inputs the graph reads: parameters as given, copies of the rest
    copied: list[int]                 # positions of the inputs copied in before each replay
    outputs: Any                      # the graph's output tensors, in the callable's structure


def _signature(args) -> tuple | None:
    """What must match for a replay, or None when an argument cannot go into a graph."""
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != "cuda" or a.requires_grad and torch.is_grad_enabled():
                return None
            sig.append((tuple(a.shape), a.stride(), a.dtype, a.device, isinstance(a, torch.nn.Parameter)))
        elif isinstance(a, (int, float, bool)) or a is None:
            sig.append((type(a), a))
        else:
            return None
    return tuple(sig)


def _clone_out(x):
    return x.clone() if isinstance(x, torch.Tensor) else x


class CudaGraphRunner:
    """``fn(*args)`` replayed from a CUDA graph per signature.

    A signature (shapes, strides, dtypes, int arguments) runs eagerly the first time, on the
    capture stream: that call compiles the Triton kernels and settles each site's dense-or-sparse
    route (mcompile.cost_gate). The second call captures, later calls replay: a prompt length
    seen once (each decode step of ``generate``) never captures. Parameters are read where they
    live; other tensor inputs are copied into the graph's own buffers before each replay, and
    outputs are cloned out of the graph's memory, so a result stays valid after the next call.
    All graphs of one callable share one memory pool: it holds the largest captured prefill's
    intermediates for as long as the graphs are kept (``MAX_GRAPHS``, least recently used
    dropped first)."""

    def __init__(self, fn: Callable, name: str = "graph"):
        self.fn, self.name = fn, name
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.seen: set = set()
        self.refused: dict[tuple, str] = {}
        self.pool = None
        self.stream: torch.cuda.Stream | None = None

    def __call__(self, *args):
        sig = _signature(args)
        if sig is None or sig in self.refused:
            return self.fn(*args)
        entry = self.graphs.get(sig)
        if entry is not None and all(entry.static[i] is a for i, a in enumerate(args)
                                     if isinstance(a, torch.nn.Parameter)):
            self.graphs.move_to_end(sig)
            return self._replay(entry, args)
        if sig not in self.seen:
            if len(self.seen) >= MAX_SEEN:
                self.seen.clear()
            self.seen.add(sig)
            return self._on_capture_stream(self.fn, args)
        return self._capture(sig, args)

    def _on_capture_stream(self, fn, args):
        """Run ``fn`` on the stream later captures use, so its lazy setup happens there."""
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = fn(*args)
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def _capture(self, sig, args):
        copied = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter)]
        static = [a.clone() if i in copied else a for i, a in enumerate(args)]
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                outputs = self.fn(*static)
        except Exception as exc:   # noqa: BLE001  (any failure to capture means: run this signature eagerly)
            reason = str(exc) if isinstance(exc, CaptureRefused) else f"{type(exc).__name__}: {exc}"
            self.refused[sig] = reason
            log.info("%s: not replayed as a CUDA graph (%s); runs eagerly", self.name, reason.splitlines()[0])
            torch.cuda.synchronize()
            return self.fn(*args)
        self.pool = graph.pool()
        entry = self.graphs[sig] = _Graph(graph, static, copied, outputs)
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        log.debug("%s: captured a CUDA graph for %d input(s)", self.name, len(args))
        return self._replay(entry, args)

    @staticmethod
    def _replay(entry: _Graph, args):
        for i in entry.copied:
            entry.static[i].copy_(args[i])
        entry.graph.replay()
        return torch.utils._pytree.tree_map(_clone_out, entry.outputs)
