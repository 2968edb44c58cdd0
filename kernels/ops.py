"""``torch.ops.mcompile.sparse_attention``: the sparse kernel as a torch.library custom op.

The last stage of the pipeline (find sites -> resolve plan -> build index -> one kernel) as
an op the compiled graph can hold: :func:`sparse_attention` takes a :class:`SparseIndex` and
calls the op, whose signature and dispatch (CUDA -> the Triton kernel; CPU -> the pure-torch
reference or Triton's interpreter) :func:`sparse_attention_op` describes. A fake (meta)
implementation keeps it in a ``torch.compile(..., fullgraph=True)`` graph, opaque to Inductor.

It is a plain ``torch.library.custom_op`` whose CUDA implementation launches the raw
``@triton.jit`` kernel: ``torch.library.triton_op`` cannot compile on a CPU-only machine.
Triton is imported lazily, so this module imports without it.
"""
from __future__ import annotations

import os

import torch

from .index import BlockRanges, SparseIndex
from .reference import sparse_attention_reference

OP_NAME = "mcompile::sparse_attention"

_cpu_backend: str | None = None   # None -> env MCOMPILE_CPU_KERNEL (default "reference")


def set_cpu_backend(name: str | None) -> None:
    """``"reference"`` (pure torch), ``"triton"`` (interpreter; needs TRITON_INTERPRET=1)
    or None (use the env var MCOMPILE_CPU_KERNEL, default reference)."""
    global _cpu_backend
    if name not in (None, "reference", "triton"):
        raise ValueError(f"unknown CPU backend {name!r}")
    _cpu_backend = name


def cpu_backend() -> str:
    name = _cpu_backend or os.environ.get("MCOMPILE_CPU_KERNEL", "reference")
    if name not in ("reference", "triton"):
        raise ValueError(f"MCOMPILE_CPU_KERNEL={name!r}: use 'reference' or 'triton'")
    return name


def _index(block_count, block_offset, column_count, column_index, block_m, block_n, window=None):
    return SparseIndex(block_count, block_offset, column_count, column_index, block_m, block_n, window)


def _triton_impl(q, k, v, index, scale):
    from .sparse_attention import sparse_attention as _launch   # lazy: imports triton
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, as the fake says
    return _launch(q, k, v, index, scale=scale, return_lse=True, out=out)


@torch.library.custom_op(OP_NAME, mutates_args=())
def sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        block_count: torch.Tensor, block_offset: torch.Tensor,
                        column_count: torch.Tensor, column_index: torch.Tensor,
                        block_m: int, block_n: int, scale: float,
                        window: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The op, the index passed as its four tensors plus ints, not the dataclass::

        mcompile::sparse_attention(Tensor q, Tensor k, Tensor v,
                                   Tensor block_count, Tensor block_offset,
                                   Tensor column_count, Tensor column_index,
                                   int block_m, int block_n, float scale,
                                   Tensor? window=None) -> (Tensor out, Tensor lse)

    ``out`` is (B, Hq, N, D), contiguous, in q's dtype; ``lse`` is (B, Hq, N) float32 (natural
    log; -inf for rows that select nothing). The index tensors may be (B, Hq, ...) or broadcast
    from 1; ``window`` is the index's optional per-head sliding window (int32 (Hq,) or (1,)).

    Dispatch: CUDA -> the Triton kernel; CPU -> the pure-torch reference, or the same Triton
    kernel run by Triton's interpreter when ``MCOMPILE_CPU_KERNEL=triton`` (or
    :func:`set_cpu_backend`) asks for it (slow: tests only; CPU tensors always take the
    interpreter, with or without ``TRITON_INTERPRET=1``)."""
    index = _index(block_count, block_offset, column_count, column_index, block_m, block_n, window)
    if q.device.type == "cpu":
        if cpu_backend() == "triton":
            return _triton_impl(q, k, v, index, scale)
        return sparse_attention_reference(q, k, v, index, scale=scale, return_lse=True)
    if q.device.type == "cuda":
        return _triton_impl(q, k, v, index, scale)
    # other devices: the reference (pure torch) is correct wherever torch runs
    return sparse_attention_reference(q, k, v, index, scale=scale, return_lse=True)


# The fake (meta) implementation makes the op traceable, so torch.compile(..., fullgraph=True)
# keeps it in the graph; it is opaque to Inductor.
@sparse_attention_op.register_fake
def _(q, k, v, block_count, block_offset, column_count, column_index, block_m, block_n, scale, window=None):
    B, Hq, N, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, Hq, N), dtype=torch.float32)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex,
                     scale: float | None = None, return_lse: bool = False):
    """The entry point for callers: dispatches through ``torch.ops.mcompile.sparse_attention``
    (so it works eagerly and under torch.compile). Returns out [, lse]."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    out, lse = torch.ops.mcompile.sparse_attention(
        q, k, v, index.block_count, index.block_offset, index.column_count,
        index.column_index, index.block_m, index.block_n, float(scale), index.window)
    return (out, lse) if return_lse else out


def sparse_attention_into(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex | BlockRanges,
                          out: torch.Tensor, heads: tuple[int, ...] | None = None,
                          scale: float | None = None) -> torch.Tensor:
    """Sparse attention written into ``out`` (like q) at the query heads ``heads`` that the
    index covers (its head ``j`` is q's head ``heads[j]``; None: every head). The runtime
    calls it once per part of a layer (``patterns.index_parts``), inside its own opaque op, so
    the layer's output is written in place and no layer-wide index exists. CUDA (and the CPU
    under ``MCOMPILE_CPU_KERNEL=triton``) launches the kernel over those heads; the CPU
    reference computes them (a :class:`BlockRanges` materialised) and copies them in. Returns
    ``out``."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if q.is_cuda or (q.device.type == "cpu" and cpu_backend() == "triton"):
        from .patterns import device_index
        from .sparse_attention import sparse_attention as _launch   # lazy: imports triton
        rows = None if heads is None else device_index(heads, q.device, torch.int32)
        return _launch(q, k, v, index, scale=scale, out=out, heads=rows)
    if isinstance(index, BlockRanges):
        index = index.to_index()
    if heads is None:
        return out.copy_(sparse_attention_reference(q, k, v, index, scale=scale))
    group = q.shape[1] // k.shape[1]
    kv = [h // group for h in heads]                 # each query head with its own KV head
    hs = list(heads)
    out[:, hs] = sparse_attention_reference(q[:, hs], k[:, kv], v[:, kv], index, scale=scale)
    return out
