"""The one sparse flash-attention forward kernel (Triton) over the unified index.

The last stage of the pipeline (find sites -> resolve plan -> build index -> one kernel): one
program computes ``BLOCK_M`` query rows (``index.block_m`` or a divisor of it) of one query
head, reading the index row of their query block (or, for a ``BlockRanges``, computing its
blocks from the head's two spans: the static patterns keep no index):
  stage 0  load the query tile once;
  stage 1  online softmax over the listed key blocks wholly at or below the query block's first
           row: no masks, no bounds checks (the flash-attention loop);
  stage 2  the last ``NUM_DIAG`` listed blocks, which may cross the diagonal or the end of
           the sequence: causal mask;
  stage 3  the listed single columns, gathered ``BLOCK_N`` at a time into one tile, with the
           causal mask (a column may lie after some rows of the block);
  stage 4  normalise, write the output in the input dtype and (optionally) the LSE.
``_sparse_attn_fwd`` says how windows, tiles, GQA and precision are handled.
"""
from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch

from .index import BlockRanges, SparseIndex, check_index, num_q_blocks

# Every Triton kernel of the package is a module-level ``@triton.jit`` function under
# ``if HAS_TRITON:`` in a kernel module (this one, and ``patterns/_triton_*.py``, which reuse
# this guarded import), and callers import a kernel module only where its kernels launch: the
# package imports without triton and without the cost of importing it, and kernels that call
# one another find each other by global name, where Triton's compiler and interpreter look.
try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
        _HAS_DESC = True
    except Exception:  # older triton
        TensorDescriptor = None
        _HAS_DESC = False
except Exception:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None
    HAS_TRITON = False
    _HAS_DESC = False

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


class KernelConfig(NamedTuple):
    block_m: int      # query rows per program; divides index.block_m
    block_n: int      # key tile; divides index.block_n
    num_warps: int
    num_stages: int
    use_tma: bool     # listed blocks through TMA descriptors (CUDA, aligned tensors)
    warp_specialize: bool = False   # Triton's automatic warp specialisation of stage 1
                                    # (triton 3.6 asserts on it with 4 warps: use 8)


# Tuned on an H100 (see benchmarks/NOTES_kernel.md): (head_dim, index.block_m, index.block_n,
# index has columns) -> KernelConfig, for 16-bit inputs. Missing entries use _default_config.
TUNED_CONFIGS: dict[tuple[int, int, int, bool], KernelConfig] = {
    # measured on an H100 80GB HBM3, triton 3.6, bf16 (benchmarks/attention.py --sweep;
    # d128: 32 q / 8 kv heads at 32K; d64: 9 / 3 at 16K; d256: 4 / 1 at 16K)
    (128, 128, 128, False): KernelConfig(128, 128, 8, 2, True),   # 458 TFLOP/s dense
    (128, 128, 64, False): KernelConfig(64, 64, 4, 3, True),      # 430
    (128, 64, 64, False): KernelConfig(64, 64, 4, 2, True),       # 417 top-k 100 blocks
    (128, 64, 64, True): KernelConfig(64, 64, 4, 3, True),        # 419 vertical-slash
    (128, 128, 64, True): KernelConfig(64, 64, 4, 3, True),       # 411 vertical-slash
    (64, 128, 64, False): KernelConfig(64, 64, 4, 3, True),       # 316
    (64, 64, 64, False): KernelConfig(64, 64, 4, 3, False),       # 278
    (256, 128, 64, False): KernelConfig(64, 64, 4, 2, True),      # 354
    (256, 64, 64, False): KernelConfig(64, 64, 4, 2, True),       # 334
}


def launch_shrinking(launch, configs):
    """``launch(config)`` for the first of ``configs``; while the GPU's shared memory is too
    small for one (Triton's ``OutOfResources``), the next. Any other error, or the last
    config's, propagates. ``configs`` may be a generator: it is advanced only on a retry."""
    configs = iter(configs)
    config = next(configs)
    while True:
        try:
            return launch(config)
        except Exception as e:
            if type(e).__name__ != "OutOfResources":
                raise
            config = next(configs, None)
            if config is None:
                raise


def _default_config(head_dim: int, block_m: int, block_n: int,
                    dtype: torch.dtype = torch.bfloat16) -> KernelConfig:
    if dtype == torch.float32:      # tests/debugging: keep shared memory under 227 KB
        return KernelConfig(min(block_m, 64), min(block_n, 32), 4,
                            1 if head_dim >= 256 else 2, False)
    tile_m = min(block_m, 64 if head_dim >= 256 else 128)
    tile_n = min(block_n, 64)
    warps = 8 if tile_m >= 128 or head_dim >= 256 else 4
    stages = 2 if head_dim >= 256 else 3
    return KernelConfig(tile_m, tile_n, warps, stages, False)


def get_config(head_dim: int, block_m: int, block_n: int,
               dtype: torch.dtype = torch.bfloat16, columns: bool = False) -> KernelConfig:
    """The tuned config for 16-bit inputs, else the default (always for float32)."""
    cfg = None
    if dtype != torch.float32:
        cfg = TUNED_CONFIGS.get((head_dim, block_m, block_n, columns)) or \
            TUNED_CONFIGS.get((head_dim, block_m, block_n, not columns))
    return cfg if cfg is not None else _default_config(head_dim, block_m, block_n, dtype)


def _tma_ok(t: torch.Tensor) -> bool:
    es = t.element_size()
    return (t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in t.stride()[:-1])
            and all(s > 0 for s in t.shape))


if HAS_TRITON:

    @triton.jit
    def _attn_tile(acc, l_i, m_i, q, k, v, qk_mask, qk_scale,
                   MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
        """One BLOCK_M x BLOCK_N step of online softmax (base-2 exponentials)."""
        if DOT_FP32:  # interpreter: its bf16 dot is wrong, so fp32 products (same inputs)
            k = k.to(tl.float32)
        # -- scores; masked entries -inf --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            qk = tl.where(qk_mask, qk, float("-inf"))
        # -- running max in log2 units (qk_scale = scale * log2(e) > 0); m_i starts at a
        #    finite floor so fully masked tiles give p = 0; the scale folds into one FMA --
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        # -- rescale and accumulate P @ V (P rounded to the input dtype, as on the GPU) --
        acc = acc * alpha[:, None]
        if DOT_FP32:
            acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc,
                         input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        return acc, l_i, m_ij

    @triton.jit
    def _block_start(blk_ptr, i, stride_bok, n_first, w0, INDEX_BLOCK_N: tl.constexpr, RANGES: tl.constexpr):
        """The first key of the ``i``-th listed block: read from the index's list, or (RANGES)
        ``i`` blocks from key 0 within the first ``n_first``, from ``w0`` after them."""
        if RANGES:
            return tl.where(i < n_first, i * INDEX_BLOCK_N, w0 + (i - n_first) * INDEX_BLOCK_N)
        return tl.load(blk_ptr + i * stride_bok)

    @triton.jit
    def _sparse_attn_fwd(
        Q, K, V, Out, Lse,
        K_desc, V_desc,                # TMA descriptors of K/V (B, Hkv, N, D) when USE_TMA
        BlockCount, BlockOffset, ColumnCount, ColumnIndex,
        Spans,                         # int32 (INDEX_HEADS, 2) (sink_end, local) a head (RANGES)
        Window, stride_wh,             # per-query-head sliding window (read when HAS_WINDOW)
        Heads, INDEX_HEADS,            # the layer's query head of each of the index's heads (HAS_HEADS)
        qk_scale,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,   # shared by K and V (the launcher ensures it)
        stride_ob, stride_oh, stride_on,
        stride_lb, stride_lh,
        stride_bcb, stride_bch, stride_bcm,
        stride_bob, stride_boh, stride_bom, stride_bok,
        stride_ccb, stride_cch, stride_ccm,
        stride_cib, stride_cih, stride_cim, stride_cik,
        N_CTX, NUM_Q_BLOCKS, H_KV,
        GROUP,                         # query heads per KV head (runtime: fewer compiles)
        HEAD_DIM: tl.constexpr,
        INDEX_BLOCK_M: tl.constexpr,   # rows per query block of the index (= index.block_m)
        BLOCK_M: tl.constexpr,         # rows per program; divides INDEX_BLOCK_M
        INDEX_BLOCK_N: tl.constexpr,   # keys per listed block (= index.block_n)
        BLOCK_N: tl.constexpr,         # key tile; divides INDEX_BLOCK_N
        NUM_DIAG: tl.constexpr,        # listed blocks that may cross the diagonal of the index's
                                       # query block (the last ones)
        RETURN_LSE: tl.constexpr,
        HAS_WINDOW: tl.constexpr,      # rows also drop keys <= row - window
        HAS_HEADS: tl.constexpr,       # the index covers INDEX_HEADS of q's heads, listed in Heads
        RANGES: tl.constexpr,          # blocks from Spans (index.BlockRanges), no lists, no columns
        USE_TMA: tl.constexpr,         # listed blocks through TMA descriptors (Hopper+)
        WARP_SPEC: tl.constexpr,       # Triton's automatic warp specialisation of stage 1
        DOT_PRECISION: tl.constexpr,
        DOT_FP32: tl.constexpr,        # upcast operands to fp32 (CPU interpreter, bf16)
    ):
        """Stages 0-4 of the module docstring for one row tile of one query head.

        With a sliding window (``index.window``, one value per query head) every stage also
        masks keys ``<= row - window``: exact per-row windows, at the price of one mask per tile.

        Blocks are sorted, do not overlap and start no later than the query block's last row, so
        at most ``NUM_DIAG = (index.block_m + index.block_n - 3) // index.block_n + 1`` of them
        can cross the diagonal, and they are the last ones. Key blocks of ``index.block_n`` are
        walked in tiles of ``BLOCK_N``; with ``use_tma`` they are loaded through TMA tensor
        descriptors (4-D, so any (B, H, N, D) strides work), otherwise through pointers; columns
        always use pointers (a gather).

        GQA: query head ``h`` reads KV head ``h // GROUP`` directly (no ``repeat_kv``); the
        programs of one KV group run next to each other so that their K/V tiles are shared
        through L2. Address arithmetic that can pass 2^31 (batch/head offsets, row * stride at
        1M tokens, index offsets) is done in int64. Accumulation is fp32; rows with no selected
        key produce 0 and LSE = -inf (m_i starts at a finite floor, so fully masked tiles
        contribute p = 0, never NaN).

        An index over some of q's heads (one pattern's heads of a layer: ``HAS_HEADS``) maps its
        head ``j`` to q's head ``Heads[j]``: the index and window are read at ``j``, q, K/V, the
        output and the LSE at the layer's head, so each pattern's part of a layer writes its
        heads of one output without a layer-wide index."""
        # ---- program -> (batch, kv head, row tile, query head; the index's head) ----
        # The query heads of one KV head and one row tile are adjacent programs (they stream
        # the same K/V); row tiles run last-first (longest rows first).
        SPLIT_M: tl.constexpr = INDEX_BLOCK_M // BLOCK_M
        pid = tl.program_id(0)
        if HAS_HEADS:
            ix_h = (pid % INDEX_HEADS).to(tl.int64)
            tile = NUM_Q_BLOCKS * SPLIT_M - 1 - pid // INDEX_HEADS
            off_b32 = tl.program_id(1)
            off_h = tl.load(Heads + ix_h).to(tl.int64)
            off_kvh32 = (off_h // GROUP).to(tl.int32)
        else:
            off_bkv = tl.program_id(1)
            tile = NUM_Q_BLOCKS * SPLIT_M - 1 - pid // GROUP
            off_b32 = off_bkv // H_KV
            off_kvh32 = off_bkv % H_KV
            off_h = off_kvh32.to(tl.int64) * GROUP + pid % GROUP
            ix_h = off_h
        qb = tile // SPLIT_M               # the index's query block
        off_b = off_b32.to(tl.int64)
        off_kvh = off_kvh32.to(tl.int64)
        start_m = tile * BLOCK_M

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX

        q_base = Q + off_b * stride_qb + off_h * stride_qh
        k_base = K + off_b * stride_kb + off_kvh * stride_kh
        v_base = V + off_b * stride_kb + off_kvh * stride_kh
        # tile offsets shared by K and V (same strides): int32 inside a tile
        kv_tile = offs_n[:, None] * stride_kn + offs_d[None, :]

        # ---- stage 0: the query tile, loaded once ----
        q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qn + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)

        # sliding window: keys must lie above row - window (a lower bound per row)
        if HAS_WINDOW:
            key_floor = offs_m - tl.load(Window + ix_h * stride_wh)
        else:
            key_floor = offs_m - N_CTX - 1

        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        # index row of this (batch, head, query block); int64 offsets (32 x 16K x 16K > 2^31)
        qb64 = qb.to(tl.int64)
        blk_ptr = (BlockOffset + off_b * stride_bob + ix_h * stride_boh + qb64 * stride_bom)
        if RANGES:
            # the blocks follow from the head's spans (index.span_blocks does the same): the
            # first n_first from key 0 (the sinks, or everything up to the diagonal where the
            # window reaches them), then the window's union tiled forward from w0
            sink_end = tl.load(Spans + ix_h * 2)
            local = tl.load(Spans + ix_h * 2 + 1)
            q_end = tl.minimum((qb + 1) * INDEX_BLOCK_M, N_CTX)
            w0 = tl.maximum(qb * INDEX_BLOCK_M - (local - 1), 0)
            merged = w0 <= sink_end
            n_first = tl.where(merged, tl.cdiv(q_end, INDEX_BLOCK_N), sink_end // INDEX_BLOCK_N)
            n_blocks = tl.where(merged, n_first, n_first + tl.cdiv(q_end - w0, INDEX_BLOCK_N))
        else:
            n_first = 0
            w0 = 0
            n_blocks = tl.load(BlockCount + off_b * stride_bcb + ix_h * stride_bch + qb64 * stride_bcm)
        n_safe = tl.maximum(n_blocks - NUM_DIAG, 0)

        # ---- stage 1: blocks wholly below the diagonal: no masks (but the window's) ----
        for i in tl.range(0, n_safe, warp_specialize=WARP_SPEC):
            start_n = _block_start(blk_ptr, i, stride_bok, n_first, w0, INDEX_BLOCK_N, RANGES)
            if not USE_TMA:
                k_blk = k_base + start_n.to(tl.int64) * stride_kn   # int64 once per block
                v_blk = v_base + start_n.to(tl.int64) * stride_kn
            for j in tl.static_range(INDEX_BLOCK_N // BLOCK_N):
                if USE_TMA:
                    k = K_desc.load([off_b32, off_kvh32, start_n + j * BLOCK_N, 0]).reshape(BLOCK_N, HEAD_DIM)
                    v = V_desc.load([off_b32, off_kvh32, start_n + j * BLOCK_N, 0]).reshape(BLOCK_N, HEAD_DIM)
                else:
                    k = tl.load(k_blk + j * BLOCK_N * stride_kn + kv_tile)
                    v = tl.load(v_blk + j * BLOCK_N * stride_kn + kv_tile)
                win_mask = (start_n + j * BLOCK_N + offs_n)[None, :] > key_floor[:, None]
                acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, k, v, win_mask, qk_scale,
                                           HAS_WINDOW, DOT_PRECISION, DOT_FP32)

        # ---- stage 2: the last NUM_DIAG blocks: causal mask; keys past the end are read
        #      clamped (pointers) or zero-filled (TMA) and always masked, since a valid row
        #      r < N_CTX only keeps keys <= r ----
        for i in range(n_safe, n_blocks):
            start_n = _block_start(blk_ptr, i, stride_bok, n_first, w0, INDEX_BLOCK_N, RANGES)
            for j in tl.static_range(INDEX_BLOCK_N // BLOCK_N):
                keys = start_n + j * BLOCK_N + offs_n
                if USE_TMA:
                    k = K_desc.load([off_b32, off_kvh32, start_n + j * BLOCK_N, 0]).reshape(BLOCK_N, HEAD_DIM)
                    v = V_desc.load([off_b32, off_kvh32, start_n + j * BLOCK_N, 0]).reshape(BLOCK_N, HEAD_DIM)
                else:
                    kv_off = tl.minimum(keys, N_CTX - 1).to(tl.int64)[:, None] * stride_kn + offs_d[None, :]
                    k = tl.load(k_base + kv_off)
                    v = tl.load(v_base + kv_off)
                qk_mask = (keys[None, :] <= offs_m[:, None]) & (keys[None, :] > key_floor[:, None])
                acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, k, v, qk_mask, qk_scale,
                                           True, DOT_PRECISION, DOT_FP32)

        # ---- stage 3: single columns, gathered BLOCK_N at a time (slots past the count
        #      read key 0 and are masked) ----
        col_ptr = (ColumnIndex + off_b * stride_cib + ix_h * stride_cih + qb64 * stride_cim)
        if RANGES:
            n_cols = 0
        else:
            n_cols = tl.load(ColumnCount + off_b * stride_ccb + ix_h * stride_cch + qb64 * stride_ccm)
        for c0 in range(0, n_cols, BLOCK_N):
            c_ok = (c0 + offs_n) < n_cols
            cols = tl.load(col_ptr + (c0 + offs_n) * stride_cik, mask=c_ok, other=0)
            kv_off = cols.to(tl.int64)[:, None] * stride_kn + offs_d[None, :]
            k = tl.load(k_base + kv_off)
            v = tl.load(v_base + kv_off)
            qk_mask = ((cols[None, :] <= offs_m[:, None]) & (cols[None, :] > key_floor[:, None])
                       & c_ok[None, :])
            acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, k, v, qk_mask, qk_scale,
                                       True, DOT_PRECISION, DOT_FP32)

        # ---- stage 4: normalise; empty rows -> 0 and LSE -inf ----
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        acc = acc / l_safe[:, None]
        o_ptrs = (Out + off_b * stride_ob + off_h * stride_oh
                  + offs_m.to(tl.int64)[:, None] * stride_on + offs_d[None, :])
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None])
        if RETURN_LSE:
            lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
            tl.store(Lse + off_b * stride_lb + off_h * stride_lh + offs_m, lse, mask=row_ok)


class _InterpretLaunch:
    """Run a ``@triton.jit`` kernel on CPU tensors with Triton's interpreter, even when
    TRITON_INTERPRET was not set before triton was imported (then every ``@jit`` function,
    ours and triton.language's own such as ``tl.zeros`` / ``tl.sum``, is a compiled-mode
    JITFunction). For the duration of the launch, calls to JITFunction objects are routed to
    interpreted copies. Tests and the CPU debug path only; not thread-safe."""

    _interp: dict = {}

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
            if isinstance(self.kernel, InterpretedFunction):      # TRITON_INTERPRET=1 at import
                return self.kernel[grid](*args, **kwargs)
            interp = _InterpretLaunch._interp

            def as_interp(jitted):
                if jitted.fn not in interp:
                    interp[jitted.fn] = InterpretedFunction(jitted.fn)
                return interp[jitted.fn]

            saved = JITFunction.__call__
            JITFunction.__call__ = lambda jf, *a, **k: as_interp(jf)(*a, **k)
            try:
                return as_interp(self.kernel)[grid](*args, **kwargs)
            finally:
                JITFunction.__call__ = saved
        return launch


def _validate(q, k, v, index: SparseIndex):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (B, H, N, D)")
    B, Hq, N, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(f"k/v shape {tuple(k.shape)}/{tuple(v.shape)} do not match q {tuple(q.shape)} "
                         "(causal self-attention: q_len == kv_len, one head dim)")
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads {Hq} are not a multiple of KV heads {Hkv}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} not supported (supported: {SUPPORTED_HEAD_DIMS})")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype \
            or v.dtype != q.dtype:
        raise ValueError(f"dtypes {q.dtype}/{k.dtype}/{v.dtype}: need one of fp16, bf16, fp32")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride {t.stride(-1)})")
    bm, bn = index.block_m, index.block_n
    for name, x in (("block_m", bm), ("block_n", bn)):
        if x < 16 or x & (x - 1):
            raise ValueError(f"index.{name} = {x}: the kernel needs a power of two >= 16")
    if index.num_q_blocks != num_q_blocks(N, bm):
        raise ValueError(f"index has {index.num_q_blocks} query blocks, N = {N} needs "
                         f"{num_q_blocks(N, bm)} of {bm}")
    return B, Hq, Hkv, N, D


def _ranges_lists(ranges: BlockRanges, batch: int) -> SparseIndex:
    """What the launcher reads of a :class:`BlockRanges`' index: its shapes and window, over
    empty lists the kernel never reads (its counts and starts come from the spans)."""
    nothing = _placeholder(ranges.device)
    counts = nothing.view(1, 1, 1).expand(batch, ranges.num_heads, ranges.num_q_blocks)
    lists = nothing.expand(batch, ranges.num_heads, ranges.num_q_blocks, 0)
    return SparseIndex(counts, lists, counts, lists, ranges.block_m, ranges.block_n, ranges.window)


@functools.lru_cache(maxsize=None)
def _placeholder(device: torch.device) -> torch.Tensor:
    """A list for the kernel to point at where an index has none (never read), made once per
    device: a fresh one would cost a fill launch every call."""
    return torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=device)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex | BlockRanges,
                     scale: float | None = None, return_lse: bool = False, *,
                     out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
                     config: KernelConfig | tuple | None = None, debug: bool | None = None,
                     heads: torch.Tensor | None = None):
    """Launch the Triton kernel: q (B, Hq, N, D), k/v (B, Hkv, N, D) (any strides with a
    contiguous last dim) -> out like q [, lse (B, Hq, N) float32].

    ``index`` may be (B, Hq) or broadcast (1 -> B, 1 -> Hq), or a :class:`BlockRanges` over
    the same heads (every batch row alike), whose blocks the kernel computes. ``heads`` (int32 or int64 (H,) on
    q's device, distinct values in [0, Hq)): the index covers only these query heads, its head
    ``j`` being q's head ``heads[j]``; ``out`` (and ``lse``) must then be given, and only
    those heads' rows of them are written. ``config`` (a
    :class:`KernelConfig` or the same 5-tuple) overrides the tuned table (TMA is used only
    where the tensors allow it: 16-byte aligned). ``out``/``lse`` may be given (tests poison
    them). ``debug`` (default: env MCOMPILE_DEBUG_INDEX=1) runs :func:`check_index` first.
    CPU tensors run the same kernel in Triton's interpreter (slow: tests)."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use mcompile.kernels.ops.sparse_attention")
    ranges = index if isinstance(index, BlockRanges) else None
    if ranges is not None:
        if ranges.seq_len != q.shape[2] or ranges.spans.device != q.device:
            raise ValueError(f"BlockRanges for {ranges.seq_len} tokens on {ranges.spans.device}, q has "
                             f"{q.shape[2]} on {q.device}")
        index = _ranges_lists(ranges, q.shape[0])
    B, Hq, Hkv, N, D = _validate(q, k, v, index)
    index_heads = Hq
    if heads is not None:
        if heads.dim() != 1 or heads.dtype not in (torch.int32, torch.int64) or heads.device != q.device \
                or not 0 < heads.numel() <= Hq:
            raise ValueError(f"heads must be int32 or int64 (H,) on {q.device} with 0 < H <= {Hq}, got "
                             f"{heads.dtype} {tuple(heads.shape)} on {heads.device}")
        if out is None or (return_lse and lse is None):
            raise ValueError("an index over some heads writes into a given out (and lse)")
        index_heads = heads.numel()
    if ranges is not None and ranges.num_heads != index_heads:
        raise ValueError(f"BlockRanges over {ranges.num_heads} heads, the call covers {index_heads}")
    if tuple(index.block_count.shape[:2]) != (B, index_heads):
        index = index.expand(B, index_heads)
    if debug is None:
        debug = os.environ.get("MCOMPILE_DEBUG_INDEX", "0") == "1"
    if debug:
        check_index(index if ranges is None else ranges.to_index().expand(B, index_heads), N, B, index_heads)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError("out must have q's shape and dtype and a contiguous last dim")
    if return_lse:
        if lse is None:
            lse = torch.empty(B, Hq, N, dtype=torch.float32, device=q.device)
        if lse.shape != (B, Hq, N) or lse.dtype != torch.float32 or lse.stride(-1) != 1:
            raise ValueError("lse must be float32 (B, Hq, N) with a contiguous last dim")
    else:
        lse = torch.empty(1, 1, dtype=torch.float32, device=q.device)
    if N == 0 or B == 0 or Hq == 0:
        return (out, lse) if return_lse else out
    bm, bn = index.block_m, index.block_n
    cfg = KernelConfig(*config) if config is not None else \
        get_config(D, bm, bn, q.dtype, index.max_columns > 0)
    tile_m, tile_n, warps, stages, use_tma, warp_spec = cfg
    if bn % tile_n or bm % tile_m or tile_m < 16 or tile_n < 16:
        raise ValueError(f"config {cfg}: tiles must be >= 16 and divide the index's "
                         f"block_m {bm} / block_n {bn}")
    bc, bo, cc, ci = index.tensors()
    # zero-size lists: give the kernel a valid pointer (never read: counts are 0)
    if bo.shape[-1] == 0:
        bo = _placeholder(q.device).expand(B, index_heads, bo.shape[2], 1)
    if ci.shape[-1] == 0:
        ci = _placeholder(q.device).expand(B, index_heads, ci.shape[2], 1)
    if k.stride() != v.stride():        # the kernel shares one set of K/V tile offsets
        k, v = k.contiguous(), v.contiguous()
    window = index.window
    if window is not None:
        if window.dim() != 1 or window.shape[0] not in (1, index_heads) or window.dtype != torch.int32 \
                or window.device != q.device:
            raise ValueError(f"index.window must be int32 (1,) or ({index_heads},) on {q.device}, got "
                             f"{window.dtype} {tuple(window.shape)} on {window.device}")
        stride_wh = window.stride(0) if window.shape[0] == index_heads else 0
    else:
        window, stride_wh = bc, 0          # never read
    nqb = index.num_q_blocks
    group = Hq // Hkv
    interpret = q.device.type == "cpu"
    interp_fp32 = interpret and q.dtype == torch.bfloat16
    def launch(tile_m, tile_n, warps, stages, use_tma, warp_spec=False):
        k_desc = v_desc = None
        if use_tma and _HAS_DESC and _tma_ok(k) and _tma_ok(v):
            block = [1, 1, tile_n, D]
            k_desc = TensorDescriptor(k, list(k.shape), list(k.stride()), block)
            v_desc = TensorDescriptor(v, list(v.shape), list(v.stride()), block)
        else:
            use_tma = False
        grid = (nqb * (bm // tile_m) * group, B * Hkv) if heads is None else (nqb * (bm // tile_m) * index_heads, B)
        (_InterpretLaunch(_sparse_attn_fwd) if interpret else _sparse_attn_fwd)[grid](
            q, k, v, out, lse,
            k_desc, v_desc,
            bc, bo, cc, ci,
            bc if ranges is None else ranges.spans,
            window, stride_wh,
            bc if heads is None else heads, index_heads,
            scale * 1.4426950408889634,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1) if return_lse else 0,
            bc.stride(0), bc.stride(1), bc.stride(2),
            bo.stride(0), bo.stride(1), bo.stride(2), bo.stride(3),
            cc.stride(0), cc.stride(1), cc.stride(2),
            ci.stride(0), ci.stride(1), ci.stride(2), ci.stride(3),
            N, nqb, Hkv, group,
            HEAD_DIM=D, INDEX_BLOCK_M=bm, BLOCK_M=tile_m, INDEX_BLOCK_N=bn,
            BLOCK_N=tile_n,
            NUM_DIAG=(bm + bn - 3) // bn + 1,
            RETURN_LSE=return_lse,
            HAS_WINDOW=index.window is not None,
            HAS_HEADS=heads is not None,
            RANGES=ranges is not None,
            USE_TMA=use_tma,
            WARP_SPEC=bool(warp_spec) and not interpret,
            # fp32 on the GPU: 3xTF32 (near-fp32; plain "ieee" FMA code takes ptxas ~1 min)
            DOT_PRECISION=("ieee" if interpret else "tf32x3") if q.dtype == torch.float32
            or interp_fp32 else "tf32",
            DOT_FP32=interp_fp32,
            num_warps=warps, num_stages=stages,
        )

    # shared memory over the device's limit: fall back, smaller (not for a config asked for)
    fallback = [] if config is not None else [(min(tile_m, 64), min(tile_n, 32), 4, 1, False)]
    launch_shrinking(lambda c: launch(*c), [cfg, *fallback])
    return (out, lse) if return_lse else out
