"""The unified sparse index: what every pattern builds and the one kernel reads.

In the pipeline (find sites -> resolve plan -> build index -> one kernel) this is the
contract between the pattern builders (``kernels/patterns``) and the sparse kernel
(``kernels/sparse_attention.py``): for each (batch, query head, query block of ``block_m``
rows) the index lists
  * ``block_count`` key blocks, given by their start positions in ``block_offset``;
    each covers keys ``[start, start + block_n)``;
  * ``column_count`` single key positions in ``column_index`` that no listed block covers.

:class:`SparseIndex` states the shapes and invariants (checked by :func:`check_index`);
:func:`index_memory_bytes` and :func:`dense_causal_index` what an index costs in memory.
The kernel's cost does not depend on MAX_*, only on the counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseIndex:
    """Which key blocks and columns each query block of each query head computes.

    ``H`` is the number of QUERY heads (the kernel maps query head ``h`` to KV head
    ``h // (Hq // Hkv)``). ``num_q_blocks == ceil(seq_len / block_m)``; query block ``i`` holds
    rows ``[i * block_m, min((i + 1) * block_m, seq_len))``.

    Invariants (checked by :func:`check_index`, run in debug mode and in tests):
      * dtypes are int32; shapes are (B, H, NQB) for the counts and (B, H, NQB, MAX) for the
        lists (MAX may be 0); the tensors may be broadcast views (``expand``, stride 0), which
        is how one head's index is shared by all heads without copies;
      * counts lie in ``[0, MAX]``; entries past the count are ignored (any value);
      * the first ``count`` entries are sorted ascending and distinct;
      * causal: no block start and no column lies after the last query row of its query block,
        ``min((i + 1) * block_m, seq_len) - 1`` (a block may cross the diagonal or run past the
        end of the sequence: the kernel masks keys after each row);
      * block starts are >= 0 and need not be multiples of ``block_n`` (vertical-slash
        merges diagonals into ranges that start anywhere); blocks of one row do not overlap
        (consecutive starts differ by at least ``block_n``);
      * columns are >= 0 and not inside any listed block of the same row;
      * ``window`` (optional, int32 (H,) or (1,) broadcast over heads, values >= 1): query row
        ``r`` of head ``h`` also drops keys ``<= r - window[h]``, as transformers' sliding-window
        mask does (``kv > q - window``). It makes a sliding window exact per row, which a list of
        blocks per query block of ``block_m`` rows cannot say. None: no lower bound.
    Positions are token indices (int32 holds up to 2^31 tokens); the kernel widens to int64
    before multiplying by strides."""

    block_count: torch.Tensor   # int32 (B, H, num_q_blocks)
    block_offset: torch.Tensor  # int32 (B, H, num_q_blocks, MAX_BLOCKS)
    column_count: torch.Tensor  # int32 (B, H, num_q_blocks)
    column_index: torch.Tensor  # int32 (B, H, num_q_blocks, MAX_COLUMNS)
    block_m: int = 64
    block_n: int = 64
    window: torch.Tensor | None = None   # int32 (H,) or (1,): per-row lower bound, see the invariants

    @property
    def num_q_blocks(self) -> int:
        return self.block_count.shape[-1]

    @property
    def max_blocks(self) -> int:
        return self.block_offset.shape[-1]

    @property
    def max_columns(self) -> int:
        return self.column_index.shape[-1]

    @property
    def batch_size(self) -> int:
        return self.block_count.shape[0]

    @property
    def num_heads(self) -> int:
        return self.block_count.shape[1]

    @property
    def device(self) -> torch.device:
        return self.block_count.device

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The four tensors in the order the custom op takes them."""
        return self.block_count, self.block_offset, self.column_count, self.column_index

    def expand(self, batch: int, heads: int) -> "SparseIndex":
        """Broadcast a (1 or B, 1 or H, ...) index to (batch, heads, ...) without copies."""
        def ex(t: torch.Tensor) -> torch.Tensor:
            return t.expand(batch, heads, *t.shape[2:])
        window = None if self.window is None else self.window.expand(heads)
        return SparseIndex(ex(self.block_count), ex(self.block_offset), ex(self.column_count),
                           ex(self.column_index), self.block_m, self.block_n, window)

    def with_window(self, window: int | torch.Tensor | None) -> "SparseIndex":
        """The same index with every head (an int) or each head (an (H,) tensor) limited to a
        sliding window of ``window`` keys; None removes the limit."""
        if window is not None and not isinstance(window, torch.Tensor):
            window = torch.full((1,), int(window), dtype=torch.int32, device=self.device)
        return SparseIndex(self.block_count, self.block_offset, self.column_count,
                           self.column_index, self.block_m, self.block_n, window)

    def memory_bytes(self) -> int:
        """Bytes actually allocated (broadcast views count once)."""
        seen, total = set(), 0
        for t in self.tensors():
            st = t.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
        return total


NO_WINDOW = 1 << 30   # a per-row window no sequence reaches: a head without one beside heads with one


@dataclass
class BlockRanges:
    """A static index that the kernel computes instead of reading: per query head two spans of
    keys, and per query block ``[start, last]`` of ``block_m`` rows the key blocks that tile
      * the sinks ``[0, sink_end)`` (``sink_end`` a multiple of ``block_n``), and
      * the union of its rows' windows of ``local`` keys, ``[start - local + 1, last]``, tiled
        forward from its first key;
    one range ``[0, last]`` in aligned blocks where the two meet (``start - local + 1 <=
    sink_end``). A-shape, sliding windows (``sink_end = 0``) and dense causal attention
    (``local >= N``) are all of this form, so a layer's static heads take one kernel launch and
    no memory for their index however their budgets differ. :func:`span_blocks` lists the same
    blocks (the builders' and the reference's source); :meth:`to_index` materialises them.

    ``spans`` int32 (H, 2) on the device, the rows ``(sink_end, local)`` of ``host_spans``;
    ``window`` as :attr:`SparseIndex.window`."""

    spans: torch.Tensor
    host_spans: tuple[tuple[int, int], ...]
    seq_len: int
    block_m: int = 64
    block_n: int = 64
    window: torch.Tensor | None = None

    @staticmethod
    def make(host_spans, seq_len: int, block_m: int = 64, block_n: int = 64, windows=None,
             device: torch.device | str | None = None) -> "BlockRanges":
        """From ``(sink_end, local)`` per head (ints) and optionally a per-row window per head
        (an int, or None for none); ValueError naming a bad span."""
        host_spans = tuple((int(s), int(w)) for s, w in host_spans)
        for h, (sink_end, local) in enumerate(host_spans):
            if sink_end < 0 or sink_end % block_n or local < 1:
                raise ValueError(f"BlockRanges: head {h} has sink_end {sink_end}, local {local}: sink_end "
                                 f"must be a multiple of block_n = {block_n} and >= 0, local >= 1")
        spans = torch.tensor(host_spans, dtype=torch.int32, device=device).view(-1, 2)
        window = None
        if windows is not None and any(w is not None for w in windows):
            window = torch.tensor([NO_WINDOW if w is None else int(w) for w in windows], dtype=torch.int32,
                                  device=device)
        return BlockRanges(spans, host_spans, seq_len, block_m, block_n, window)

    @property
    def num_heads(self) -> int:
        return len(self.host_spans)

    @property
    def num_q_blocks(self) -> int:
        return num_q_blocks(self.seq_len, self.block_m)

    @property
    def device(self) -> torch.device:
        return self.spans.device

    def to_index(self) -> SparseIndex:
        """The same blocks as a (1, H, ...) :class:`SparseIndex` on the spans' device (no host
        synchronisation: its widths follow from ``host_spans``)."""
        count, offsets = span_blocks(self.seq_len, self.spans[:, 0:1], self.spans[:, 1:2], self.block_m,
                                     self.block_n, span_width(self.seq_len, self.host_spans, self.block_m,
                                                              self.block_n))
        h, nqb = count.shape
        return SparseIndex(count.view(1, h, nqb), offsets.view(1, h, nqb, -1),
                           torch.zeros(1, h, nqb, dtype=torch.int32, device=self.device),
                           torch.zeros(1, h, nqb, 0, dtype=torch.int32, device=self.device),
                           self.block_m, self.block_n, self.window)


def span_width(n: int, host_spans, block_m: int = 64, block_n: int = 64) -> int:
    """The most blocks a query block lists under any of ``(sink_end, local)``: its sinks
    plus its window's union, never more than the key blocks of the sequence."""
    nkb = num_q_blocks(n, block_n)
    return max((min(nkb, sink_end // block_n + num_q_blocks(min(local, n) - 1 + block_m, block_n))
                for sink_end, local in host_spans), default=0)


def span_blocks(n: int, sink_end, local, block_m: int = 64, block_n: int = 64,
                width: int | None = None, device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks of :class:`BlockRanges` with these spans, the arithmetic the kernel does:
    ``sink_end`` and ``local`` ints or (H, 1) int tensors. Returns (count int32 (..., NQB),
    offsets int32 (..., NQB, width)), entries past the count 0; ``width`` defaults to
    :func:`span_width` (int spans only); ``device`` that of tensor spans."""
    if width is None:
        width = span_width(n, [(int(sink_end), int(local))], block_m, block_n)
    if isinstance(sink_end, torch.Tensor):
        device = sink_end.device
    start = torch.arange(num_q_blocks(n, block_m), device=device, dtype=torch.int64) * block_m
    end = torch.clamp(start + block_m, max=n)                      # one past the block's last row
    local = torch.as_tensor(local, device=device).long()
    sink_end = torch.as_tensor(sink_end, device=device).long()
    w0 = torch.clamp(start - (local - 1), min=0)                   # the window union's first key
    merged = w0 <= sink_end
    n_first = torch.where(merged, (end + block_n - 1) // block_n, sink_end // block_n)
    count = torch.where(merged, n_first, n_first + (end - w0 + block_n - 1) // block_n)
    j = torch.arange(width, device=device, dtype=torch.int64)
    n_first, w0, count = n_first.unsqueeze(-1), w0.unsqueeze(-1), count.unsqueeze(-1)
    offsets = torch.where(j < n_first, j * block_n, w0 + (j - n_first) * block_n)
    offsets = torch.where(j < count, offsets, 0)
    return count.squeeze(-1).to(torch.int32), offsets.to(torch.int32)


def num_q_blocks(seq_len: int, block_m: int) -> int:
    return (seq_len + block_m - 1) // block_m


def causal_blocks(n: int, block_m: int = 64, block_n: int = 64, first_query_block: int = 0) -> int:
    """Key blocks of ``block_n`` that dense causal attention of length ``n`` computes for one
    head, summed over its query blocks of ``block_m`` rows from ``first_query_block`` on (the
    diagonal blocks counted whole): the tiles of dense causal attention."""
    nqb, nkb = num_q_blocks(n, block_m), num_q_blocks(n, block_n)
    first = max(0, first_query_block)
    if block_m == block_n:                       # query block qb computes qb + 1 key blocks
        return (nqb * (nqb + 1) - first * (first + 1)) // 2 if first < nqb else 0
    return sum(min(nkb, -(-min((qb + 1) * block_m, n) // block_n)) for qb in range(first, nqb))


def index_memory_bytes(batch: int, heads: int, seq_len: int, max_blocks: int,
                       max_columns: int, block_m: int = 64) -> int:
    """Bytes of a fully materialised (not broadcast) int32 index:
    ``4 * B * H * NQB * (MAX_BLOCKS + MAX_COLUMNS + 2)``.

    For scale, at 1M tokens, 32 heads, ``block_m = 64`` (NQB = 16384), a pattern budget of 128
    blocks + 1024 columns per query block is 2.25 GiB (int32); the attention benchmark's
    vertical-slash index (about 130 blocks + 1000 columns) is about that."""
    nqb = num_q_blocks(seq_len, block_m)
    return 4 * batch * heads * nqb * (max_blocks + max_columns + 2)


def empty_index(batch: int, heads: int, seq_len: int, block_m: int = 64, block_n: int = 64,
                max_blocks: int = 0, max_columns: int = 0,
                device: torch.device | str | None = None) -> SparseIndex:
    """An index that selects nothing (every row gives zeros)."""
    nqb = num_q_blocks(seq_len, block_m)
    z = torch.zeros(batch, heads, nqb, dtype=torch.int32, device=device)
    return SparseIndex(z, torch.zeros(batch, heads, nqb, max_blocks, dtype=torch.int32, device=device),
                       z.clone(), torch.zeros(batch, heads, nqb, max_columns, dtype=torch.int32,
                                              device=device), block_m, block_n)


def dense_causal_index(batch: int, heads: int, seq_len: int, block_m: int = 64,
                       block_n: int = 64, device: torch.device | str | None = None) -> SparseIndex:
    """The full causal index: every key block up to the diagonal, no columns.

    Key blocks start at multiples of ``block_n``. Only one (batch, head) slice is stored;
    the result broadcasts it over ``batch`` and ``heads`` (stride 0). Materialised per head,
    the full causal index at 1M tokens and 32 heads (MAX_BLOCKS = 16384 blocks of 64) would
    be 32 GiB (1 GiB per head); instead one row of block starts (N / block_n int32, 64 KiB at
    1M) is broadcast (stride 0) over batch, heads and query blocks, the counts doing the
    causal cut."""
    nqb = num_q_blocks(seq_len, block_m)
    last_row = torch.clamp(torch.arange(1, nqb + 1, device=device) * block_m, max=seq_len) - 1
    counts = (last_row // block_n + 1).to(torch.int32)                      # (NQB,)
    max_blocks = num_q_blocks(seq_len, block_n)
    offsets = (torch.arange(max_blocks, device=device, dtype=torch.int32) * block_n)
    offsets = offsets.expand(nqb, max_blocks)
    cols = torch.zeros(nqb, 0, dtype=torch.int32, device=device)
    idx = SparseIndex(counts.view(1, 1, nqb), offsets.view(1, 1, nqb, max_blocks),
                      torch.zeros(1, 1, nqb, dtype=torch.int32, device=device),
                      cols.view(1, 1, nqb, 0), block_m, block_n)
    return idx.expand(batch, heads)


def _fail(msg: str) -> None:
    raise ValueError(f"invalid SparseIndex: {msg}")


def check_index(index: SparseIndex, seq_len: int, batch: int | None = None,
                heads: int | None = None) -> None:
    """Raise ValueError naming the first broken invariant (see :class:`SparseIndex`).

    Runs on the index's device; costs O(index size)."""
    bc, bo, cc, ci = index.tensors()
    bm, bn = index.block_m, index.block_n
    if not (isinstance(bm, int) and isinstance(bn, int) and bm > 0 and bn > 0):
        _fail(f"block_m/block_n must be positive ints, got {bm!r}/{bn!r}")
    for name, t in zip(("block_count", "block_offset", "column_count", "column_index"),
                       (bc, bo, cc, ci)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} is not a tensor")
        if t.dtype != torch.int32:
            _fail(f"{name} must be int32, got {t.dtype}")
        if t.device != bc.device:
            _fail(f"{name} is on {t.device}, block_count on {bc.device}")
    if bc.dim() != 3 or cc.dim() != 3 or bo.dim() != 4 or ci.dim() != 4:
        _fail("counts must be (B, H, NQB) and lists (B, H, NQB, MAX); got dims "
              f"{bc.dim()}, {bo.dim()}, {cc.dim()}, {ci.dim()}")
    B, H, nqb = bc.shape
    if cc.shape != bc.shape or bo.shape[:3] != bc.shape or ci.shape[:3] != bc.shape:
        _fail(f"shape mismatch: block_count {tuple(bc.shape)}, block_offset {tuple(bo.shape)}, "
              f"column_count {tuple(cc.shape)}, column_index {tuple(ci.shape)}")
    if batch is not None and B != batch:
        _fail(f"batch is {B}, expected {batch}")
    if heads is not None and H != heads:
        _fail(f"heads is {H}, expected {heads} (H counts query heads)")
    want = num_q_blocks(seq_len, bm)
    if nqb != want:
        _fail(f"num_q_blocks is {nqb}, expected ceil({seq_len}/{bm}) = {want}")
    if nqb == 0:
        return
    # a slice broadcast (stride 0) over batch or heads is checked once
    for dim in (0, 1):
        if all(t.stride(dim) == 0 or t.shape[dim] == 1 for t in (bc, bo, cc, ci)):
            bc, bo, cc, ci = (t.narrow(dim, 0, 1) for t in (bc, bo, cc, ci))
    dev = bc.device
    last_row = (torch.clamp(torch.arange(1, nqb + 1, device=dev, dtype=torch.int64) * bm,
                            max=seq_len) - 1)                               # (NQB,)

    def check_list(name: str, count: torch.Tensor, lst: torch.Tensor, min_gap: int):
        mx = lst.shape[-1]
        if bool(((count < 0) | (count > mx)).any()):
            bad = ((count < 0) | (count > mx)).nonzero()[0].tolist()
            _fail(f"{name} count out of [0, {mx}] at (b, h, qblock) = {tuple(bad)}: "
                  f"{int(count[tuple(bad)])}")
        if mx == 0:
            return None
        valid = torch.arange(mx, device=dev) < count.unsqueeze(-1)
        l64 = lst.long()
        if bool(((l64 < 0) & valid).any()):
            bad = ((l64 < 0) & valid).nonzero()[0].tolist()
            _fail(f"{name} entry {bad[3]} at (b, h, qblock) = {tuple(bad[:3])} is negative: "
                  f"{int(l64[tuple(bad)])}")
        late = (l64 > last_row.view(1, 1, nqb, 1)) & valid
        if bool(late.any()):
            bad = late.nonzero()[0].tolist()
            _fail(f"{name} entry {bad[3]} at (b, h, qblock) = {tuple(bad[:3])} is {int(l64[tuple(bad)])}, "
                  f"after the block's last query row {int(last_row[bad[2]])} (not causal)")
        if mx > 1:
            gap = l64[..., 1:] - l64[..., :-1]
            both = valid[..., 1:]
            badm = (gap < min_gap) & both
            if bool(badm.any()):
                bad = badm.nonzero()[0].tolist()
                what = "not sorted/distinct" if min_gap == 1 else \
                    f"overlapping or unsorted (starts must differ by >= block_n = {min_gap})"
                _fail(f"{name} at (b, h, qblock) = {tuple(bad[:3])} is {what}: entries {bad[3]}, "
                      f"{bad[3] + 1} = {int(l64[tuple(bad)])}, {int(l64[tuple(bad[:3]) + (bad[3] + 1,)])}")
        return valid

    if index.window is not None:
        w = index.window
        if not isinstance(w, torch.Tensor) or w.dtype != torch.int32 or w.dim() != 1 \
                or w.shape[0] not in (1, H) or w.device != dev:
            _fail(f"window must be an int32 tensor of shape (1,) or ({H},) on {dev}, got "
                  f"{getattr(w, 'dtype', type(w))} {tuple(getattr(w, 'shape', ()))}")
        if bool((w < 1).any()):
            _fail(f"window values must be >= 1, got {w.tolist()}")
    bvalid = check_list("block_offset", bc, bo, bn)
    cvalid = check_list("column_index", cc, ci, 1)
    if bvalid is not None and cvalid is not None:
        # column c is inside block s iff s <= c < s + bn; blocks are sorted, so find the last
        # block start <= c and test it.
        big = torch.iinfo(torch.int64).max // 4
        starts = torch.where(bvalid, bo.long(), big).contiguous()
        cols = ci.long().contiguous()
        pos = torch.searchsorted(starts, cols, right=True) - 1            # (B,H,NQB,MAXC)
        prev = torch.gather(starts, -1, pos.clamp(min=0))
        inside = (pos >= 0) & (cols < prev + bn) & cvalid
        if bool(inside.any()):
            bad = inside.nonzero()[0].tolist()
            _fail(f"column_index entry {bad[3]} at (b, h, qblock) = {tuple(bad[:3])} = "
                  f"{int(cols[tuple(bad)])} lies inside the listed block starting at "
                  f"{int(prev[tuple(bad)])}")


def index_pairs(index: SparseIndex, seq_len: int, chunk: int = 1 << 24) -> int:
    """Number of (query row, key) pairs the index selects after causal masking: the work
    the kernel actually computes is ``4 * head_dim * index_pairs`` FLOPs (two matmuls).

    Assumes the invariants (no overlaps). Works chunked over query blocks of one
    (batch, head) slice at a time; a slice broadcast over batch/heads (stride 0) is counted
    once and multiplied."""
    bc, bo, cc, ci = index.tensors()
    B, H, nqb = bc.shape
    bm, bn = index.block_m, index.block_n
    dev = bc.device
    if nqb == 0 or B == 0 or H == 0:
        return 0
    qstart = torch.arange(nqb, device=dev, dtype=torch.int64) * bm
    qend = torch.clamp(qstart + bm, max=seq_len)                            # exclusive
    shared_b = B == 1 or all(t.stride(0) == 0 for t in index.tensors())
    shared_h = H == 1 or all(t.stride(1) == 0 for t in index.tensors())
    bs = range(1) if shared_b else range(B)
    hs = range(1) if shared_h else range(H)
    step = max(1, chunk // max(1, index.max_blocks + index.max_columns))
    total = 0
    for b in bs:
        for h in hs:
            for q0 in range(0, nqb, step):
                sl = slice(q0, min(nqb, q0 + step))
                for cnt, lst, width in ((bc, bo, bn), (cc, ci, 1)):
                    if lst.shape[-1] == 0:
                        continue
                    keys = lst[b, h, sl].long()
                    valid = torch.arange(lst.shape[-1], device=dev) < cnt[b, h, sl].long().unsqueeze(-1)
                    total += int((_pairs(keys, width, qstart[sl], qend[sl]) * valid).sum())
    return total * (B if shared_b else 1) * (H if shared_h else 1)


def _pairs(first_key: torch.Tensor, width: int, qs: torch.Tensor, qe: torch.Tensor) -> torch.Tensor:
    """Causal (row, key) pairs between rows [qs, qe) and keys [first_key, first_key + width),
    elementwise; qs/qe are (NQB,), first_key is (NQB, M)."""
    def prefix(t):  # sum_{u=1..t} min(u, width), 0 for t <= 0
        t = torch.clamp(t, min=0)
        a = torch.clamp(t, max=width)
        return a * (a + 1) // 2 + (t - a) * width
    qs = qs.view(-1, 1)
    qe = qe.view(-1, 1)
    return prefix(qe - first_key) - prefix(qs - first_key)


def dense_causal_pairs(seq_len: int) -> int:
    """(row, key) pairs of full causal attention for one (batch, head)."""
    return seq_len * (seq_len + 1) // 2
