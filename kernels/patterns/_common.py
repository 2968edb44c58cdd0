"""Shared pieces of the pattern index builders: budget resolution, query-block geometry,
range tiling, stable compaction, GQA score matmuls without ``repeat_kv``, the cache of what
depends on the length alone, and the slow helpers the references and demos use.

Everything on the build path is torch ops whose sizes follow from ``N`` and the parameters
alone (no ``.item()``, ``.tolist()``, ``nonzero`` or boolean indexing), so nothing waits on
the device.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..index import BlockRanges, SparseIndex, num_q_blocks, span_blocks

INT32_BIG = torch.iinfo(torch.int32).max

# Working-memory budget (bytes) for the score tensors of the online builders; larger
# problems are processed in chunks (a static number of them, computed from N).
SCORE_BUDGET_BYTES = 1 << 30


def use_triton(device) -> bool:
    """Whether the builders use their Triton kernels: on CUDA by default; anywhere when
    ``MCOMPILE_PATTERNS_TRITON=1`` (e.g. on CPU under ``TRITON_INTERPRET=1``, for tests);
    never when it is ``0``."""
    flag = os.environ.get("MCOMPILE_PATTERNS_TRITON")
    if flag is not None:
        return flag == "1"
    return torch.device(device).type == "cuda"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Law:
    """A budget that follows the length: ``scale * items ** power`` items, where ``items`` is
    what the budget counts at length n (``ceil(n / unit)``: tokens, or key blocks for
    ``top_k``). ``power`` 0 is a fixed count, 1 a fraction of the length; between them a
    budget grows more slowly than the prompt, so the density falls as prompts grow (longer
    contexts tolerate sparser plans). JSON: ``{"scale": a, "power": b}``."""

    scale: float
    power: float

    def __post_init__(self) -> None:
        for name, v, lo, hi in (("scale", self.scale, 0.0, math.inf), ("power", self.power, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"Law: {name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.scale <= 0:
            raise ValueError(f"Law: scale must be > 0, got {self.scale!r}")

    def items(self, total: int) -> float:
        """The unclamped budget for ``total`` items."""
        return self.scale * total ** self.power

    @classmethod
    def through(cls, points: Sequence[tuple[int, float]]) -> "Law":
        """The law through (items, budget) points: its power fitted by least squares in log-log
        and clamped to [0, 1], its scale such that it passes through the first point (the one
        the others are matched to). One point gives a fixed count."""
        pts = [(float(t), max(float(b), 1.0)) for t, b in points]
        if not pts:
            raise ValueError("Law.through: no points")
        xs = [math.log(t) for t, _ in pts]
        ys = [math.log(b) for _, b in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        power = 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
        power = round(min(1.0, max(0.0, power)), 3)
        # six digits, rounded down: the law resolves to the first point's count exactly there
        scale = math.exp(ys[0] - power * xs[0])
        digits = 10 ** (5 - math.floor(math.log10(scale)))
        return cls(math.floor(scale * digits) / digits, power)

    def to_json(self) -> dict[str, float]:
        return {"scale": self.scale, "power": self.power}

    def __str__(self) -> str:
        return f"{self.scale:.3g}N^{self.power:.2g}"


def law_value(value: Any) -> Law | None:
    """The law a budget value stands for (a :class:`Law` or ``{"scale": a, "power": b}``), or None."""
    if isinstance(value, Law):
        return value
    if isinstance(value, dict) and set(value) == {"scale", "power"}:
        return Law(value["scale"], value["power"])
    return None


def frac_value(value: Any) -> float | None:
    """The fraction a budget value stands for, or None when it is a count.

    Accepted fractions: a float in (0, 1] (a float > 1 with an integral value is a count),
    ``{"frac": x}``, or any object with a float ``.value`` (``pattern_db.schema.Frac``)."""
    if isinstance(value, dict) and set(value) == {"frac"}:
        value = value["frac"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"fraction must be a number in (0, 1], got {value!r}")
        return float(value)
    if hasattr(value, "value") and not isinstance(value, (int, float)):
        v = value.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"fraction must be a number in (0, 1], got {v!r}")
        return float(v)
    if isinstance(value, float) and 0 < value <= 1:
        return value
    return None


def check_budget(name: str, value: Any, minimum: int = 0) -> Any:
    """Validate a budget parameter (count >= minimum, or a fraction); return it normalised
    (integral floats > 1 become ints)."""
    try:
        f = frac_value(value)
        law = law_value(value)
    except ValueError as e:
        raise ValueError(f"parameter {name!r}: {e}") from None
    if f is not None or law is not None:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"parameter {name!r} must be a count >= {minimum}, a fraction in (0, 1] of the "
                         f"length or a law {{'scale': a, 'power': b}} (a * N^b, 0 <= b <= 1), got {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"parameter {name!r} must be a number in (0, 1], got {value!r}")
    return float(value)


def resolve_budget(value: Any, n: int, unit: int = 1) -> int:
    """Budget -> count for length ``n`` (``unit`` tokens per counted item, e.g. 64 for
    ``top_k`` in key blocks). Counts are clamped to what exists; a fraction of the
    ``ceil(n / unit)`` items, or a :class:`Law` of them, is rounded up and is at least 1 (the
    1e-9 keeps a product like ``0.07 * 100 = 7.000000000000001`` at 7), so ``Law(f, 1)`` is
    ``Frac(f)``. ``pattern_db`` imports this function, so a database and the index builders
    resolve a budget the same way."""
    total = max(1, cdiv(n, unit))
    f = frac_value(value)
    if f is not None:
        return min(total, max(1, math.ceil(f * total - 1e-9)))
    law = law_value(value)
    if law is not None:
        return min(total, max(1, math.ceil(law.items(total) - 1e-9)))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count >= 0 or a fraction in (0, 1], got {value!r}")
    return min(value, total)


def with_defaults(params: dict | None, defaults: dict, allowed: Sequence[str], pattern: str) -> dict:
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"pattern {pattern!r}: unknown parameter(s) {unknown}; accepted: {list(allowed)}")
    out = dict(defaults)
    out.update(params)
    return out


def with_budgets(params: dict | None, defaults: dict, minimums: dict[str, int], pattern: str) -> dict:
    """``with_defaults`` for a pattern whose parameters are all budgets: each one named in
    ``minimums`` is checked by ``check_budget`` against its minimum count."""
    p = with_defaults(params, defaults, tuple(minimums), pattern)
    for name, minimum in minimums.items():
        p[name] = check_budget(name, p[name], minimum=minimum)
    return p


# --- geometry -----------------------------------------------------------------------------------
def q_blocks(n: int, block_m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, last) int64 (NQB,): first and last query row of each query block."""
    nqb = num_q_blocks(n, block_m)
    start = torch.arange(nqb, device=device, dtype=torch.int64) * block_m
    last = torch.clamp(start + block_m, max=n) - 1
    return start, last


def compact(values: torch.Tensor, keep: torch.Tensor, width: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable compaction along the last dim: (count int32 (...), packed int32 (..., width)).

    Entries past the count are 0."""
    L = values.shape[-1] if width is None else width
    keep = keep.expand(values.shape)
    pos = torch.cumsum(keep.to(torch.int32), -1) - 1
    dump = torch.full_like(pos, L)
    idx = torch.where(keep & (pos < L), pos, dump).long()
    out = torch.zeros(*values.shape[:-1], L + 1, dtype=torch.int32, device=values.device)
    out.scatter_(-1, idx, values.to(torch.int32))
    count = keep.sum(-1, dtype=torch.int32)
    return count, out[..., :L]


def static_index(count: torch.Tensor, offsets: torch.Tensor, batch: int, heads: int,
                 block_m: int, block_n: int) -> SparseIndex:
    """An index whose blocks are the same for every (batch, head): (NQB,) counts and
    (NQB, MAX) offsets broadcast (stride 0), no columns."""
    nqb = count.shape[0]
    dev = count.device
    idx = SparseIndex(count.view(1, 1, nqb), offsets.view(1, 1, nqb, -1),
                      torch.zeros(1, 1, nqb, dtype=torch.int32, device=dev),
                      torch.zeros(1, 1, nqb, 0, dtype=torch.int32, device=dev), block_m, block_n)
    return idx.expand(batch, heads)


def window_blocks(n: int, window: int, block_m: int, block_n: int, device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blocks covering, for each query block, the union of its rows' windows
    ``[r - window + 1, r]``: keys ``[max(0, start - window + 1), last]``, tiled forward from the
    first key (the last block may run past the diagonal; the kernel masks it).
    Returns (count (NQB,), offsets (NQB, MAX), w0 (NQB,) int64 first key): the blocks are
    :func:`~mcompile.kernels.index.span_blocks` with no sinks, as a sliding window's."""
    start, _ = q_blocks(n, block_m, device)
    count, offs = span_blocks(n, 0, window, block_m, block_n, device=device)
    return count, offs, torch.clamp(start - (window - 1), min=0)


# What the static caches may hold in all, per cache: what they keep stays allocated between
# calls, above dense attention's peak (in the MLP, which holds nothing of ours). The built-in
# static patterns keep a few bytes a layer (BlockRanges' spans); a static pattern without spans
# keeps its index (a broadcast row of blocks a query block) and SampleAttention its sampled rows;
# past the cap what is not kept is built again each call (under CUDA graphs inside the graph,
# which costs no host time).
STATIC_CACHE_BYTES = 32 << 20
# An entry gives way to a new one only once it has gone this many reads of its cache unread.
# A forward reads the same keys in the same order every call: replacing the least recently
# used entry at once would, whenever they do not all fit, evict each entry just before it is
# read again and keep none; this way those kept first keep being read.
STATIC_CACHE_STALE_READS = 256


def held_bytes(value) -> int:
    """Bytes of the tensors ``value`` holds (a tensor, a SparseIndex or BlockRanges, or tuples and lists of
    them), each storage counted once."""
    storages: dict = {}

    def walk(v):
        if isinstance(v, torch.Tensor):
            storages[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        elif isinstance(v, SparseIndex):
            walk((*v.tensors(), v.window))
        elif isinstance(v, BlockRanges):
            walk((v.spans, v.window))
        elif isinstance(v, (tuple, list)):
            for item in v:
                walk(item)
    walk(value)
    return sum(storages.values())


class StaticCache:
    """Values that depend on the length and parameters alone (static indexes, sampled rows,
    window blocks), kept per key: later calls cost no launches. At most ``entries`` of them and
    ``max_bytes`` in all are kept (a larger one never); a new value takes the place of the
    least recently read entries only where they have gone ``stale_reads`` reads unread, else it
    is returned and not kept. Nothing is stored while a CUDA graph captures (its memory belongs
    to the graph), and an entry read while one captures is kept for good (the graph reads its
    memory on every replay)."""

    def __init__(self, entries: int = 1024, max_bytes: int | None = None, stale_reads: int | None = None):
        self.entries = entries
        self.max_bytes = STATIC_CACHE_BYTES if max_bytes is None else max_bytes
        self.stale_reads = STATIC_CACHE_STALE_READS if stale_reads is None else stale_reads
        self.recent: OrderedDict = OrderedDict()     # key -> [value, bytes, read number], least recent first
        self.read_by_graphs: dict = {}
        self.reads = 0
        self.made = 0                                # values made (reads that missed)

    def held(self) -> int:
        """Bytes the recent entries hold (those read by graphs aside)."""
        return sum(entry[1] for entry in self.recent.values())

    def _room(self, size: int) -> bool:
        """Whether a value of ``size`` bytes fits, dropping the least recently read entries
        that have gone ``stale_reads`` reads unread to make room."""
        held = self.held()
        while self.recent and (len(self.recent) >= self.entries or held + size > self.max_bytes):
            oldest = next(iter(self.recent.values()))
            if self.reads - oldest[2] <= self.stale_reads:
                return False
            held -= self.recent.popitem(last=False)[1][1]
        return held + size <= self.max_bytes

    def get(self, key, make: Callable[[], Any], device):
        """The value under ``key``, made by ``make()`` and kept (where there is room) if absent."""
        self.reads += 1
        capturing = torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()
        value = self.read_by_graphs.get(key)
        if value is not None:
            return value
        entry = self.recent.get(key)
        if entry is not None:
            entry[2] = self.reads
            self.recent.move_to_end(key)
            if capturing:
                self.read_by_graphs[key] = self.recent.pop(key)[0]
            return entry[0]
        value = make()
        self.made += 1
        size = held_bytes(value)
        if not capturing and self._room(size):
            self.recent[key] = [value, size, self.reads]
        return value


_IDX_CACHE: dict = {}


def device_index(values: Sequence[int], device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A tensor of static indices or counts on ``device``, cached so repeated builds neither
    copy from the host nor convert each call."""
    key = (tuple(int(v) for v in values), str(torch.device(device)), dtype)
    t = _IDX_CACHE.get(key)
    if t is None:
        # never evicted: a captured CUDA graph reads these tensors where they are (plans hold
        # few distinct head lists)
        t = torch.tensor(key[0], dtype=dtype, device=device)
        _IDX_CACHE[key] = t
    return t


# --- GQA scores without repeat_kv ---------------------------------------------------------------
class HeadMap:
    """Static bookkeeping for a set of query heads under GQA: query head ``h`` reads KV head
    ``h // group``. Lets a group of arbitrary query heads be multiplied against K with one
    batched matmul over the KV heads they use, without copying K per query head."""

    def __init__(self, heads: Sequence[int], num_q_heads: int, num_kv_heads: int):
        if num_q_heads % num_kv_heads:
            raise ValueError(f"query heads {num_q_heads} not a multiple of kv heads {num_kv_heads}")
        self.heads = [int(h) for h in heads]
        self.group = num_q_heads // num_kv_heads
        self.num_kv_heads = num_kv_heads
        kv_of = [h // self.group for h in self.heads]
        self.kv_used = sorted(set(kv_of))
        self.all_kv = self.kv_used == list(range(num_kv_heads))
        pos = {kv: i for i, kv in enumerate(self.kv_used)}
        slots: dict[int, int] = {}
        self.u_idx, self.slot_idx = [], []
        for kv in kv_of:
            self.u_idx.append(pos[kv])
            self.slot_idx.append(slots.get(kv, 0))
            slots[kv] = slots.get(kv, 0) + 1
        self.slots = max(slots.values()) if slots else 0
        # the common case: every query head, in order -> a plain reshape
        self.identity = self.heads == list(range(num_q_heads))

    def select_kv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, ...) -> (B, U, ...) the KV heads this group uses (a view when all)."""
        if self.all_kv:
            return x
        return x.index_select(1, device_index(self.kv_used, x.device))

    def select_q(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hq, ...) -> (B, Hg, ...) this group's query heads (a view when identity)."""
        if self.identity:
            return x
        return x.index_select(1, device_index(self.heads, x.device))

    def scores(self, qg: torch.Tensor, ku: torch.Tensor) -> torch.Tensor:
        """qg (B, Hg, R, D) (this group's heads, in order), ku (B, U, C, D) (``select_kv`` of K,
        possibly a slice of keys) -> (B, Hg, R, C) float32 ``qg . k`` (unscaled; the matmul runs
        in the input dtype, as MInference's)."""
        B, Hg, R, D = qg.shape
        U, C = ku.shape[1], ku.shape[2]
        if self.identity:
            qp = qg.reshape(B, U, self.group * R, D)
            s = torch.matmul(qp, ku.transpose(-1, -2))
            return s.view(B, Hg, R, C).float()
        dev = qg.device
        u = device_index(self.u_idx, dev)
        sl = device_index(self.slot_idx, dev)
        qp = qg.new_zeros(B, U, self.slots, R, D)
        qp[:, u, sl] = qg
        s = torch.matmul(qp.view(B, U, self.slots * R, D), ku.transpose(-1, -2))
        s = s.view(B, U, self.slots, R, C)
        return s[:, u, sl].float()


def row_chunks(total: int, bytes_per_item: int, budget: int | None = None,
               multiple: int = 1) -> list[tuple[int, int]]:
    """Static split of ``total`` items into chunks of at most ``budget`` bytes (default
    ``SCORE_BUDGET_BYTES``, read at call time)."""
    budget = SCORE_BUDGET_BYTES if budget is None else budget
    if total <= 0:
        return []
    per = max(multiple, (budget // max(1, bytes_per_item)) // multiple * multiple)
    return [(a, min(total, a + per)) for a in range(0, total, per)]


# --- index utilities ----------------------------------------------------------------------------
def index_cost(index: SparseIndex) -> tuple[int, int]:
    """(blocks, columns) an index actually lists, summed over batch, heads and query blocks
    (one host sync: for reports and the search, not the build path)."""
    return int(index.block_count.sum()), int(index.column_count.sum())


# --- slow helpers (references, tests, demos) ----------------------------------------------------
def causal_mask(n: int, device=None) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def block_union_mask(row_mask: torch.Tensor, block_m: int) -> torch.Tensor:
    """(…, N, N) per-row selection -> the per-query-block union (every row of a query block
    gets the union of its rows' keys), then causal: what a block index can express."""
    n = row_mask.shape[-1]
    nqb = num_q_blocks(n, block_m)
    pad = nqb * block_m - n
    m = torch.nn.functional.pad(row_mask, (0, 0, 0, pad))
    m = m.view(*row_mask.shape[:-2], nqb, block_m, n).any(-2)
    m = m.repeat_interleave(block_m, -2)[..., :n, :]
    return m & causal_mask(n, row_mask.device)


def dense_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax probabilities in float64, GQA by repeating K (slow; references only).
    q (B, Hq, N, D), k (B, Hkv, N, D) -> (B, Hq, R, N) for the given query rows (all by default)."""
    B, Hq, N, D = q.shape
    g = Hq // k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    kk = k.double().repeat_interleave(g, dim=1)
    if rows is None:
        rows = torch.arange(N, device=q.device)
    qq = q.double()[:, :, rows]
    s = torch.matmul(qq, kk.transpose(-1, -2)) * scale
    keys = torch.arange(N, device=q.device)
    s = s.masked_fill(keys.view(1, -1) > rows.view(-1, 1), float("-inf"))
    return torch.softmax(s, -1)


def planted_qk(n: int, *, heads: int = 1, kv_heads: int | None = None, d: int = 128,
               hot_columns: Sequence[int] = (), column_strength: float = 6.0,
               diagonals: Sequence[int] = (), diagonal_strength: float = 8.0,
               hot_blocks: Sequence[tuple[int, int]] = (), block_strength: float = 6.0,
               local: float = 0.0, noise: float = 0.3, batch: int = 1, seed: int = 0,
               block: int = 64, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic (q, k) whose causal attention has planted structure (every head the same
    structure, different noise):

    * ``hot_columns``: keys every query attends to (a shared direction; logit boost about
      ``column_strength``);
    * ``diagonals``: distances ``delta`` such that query ``i`` attends key ``i - delta``
      (a sum of rotations, like RoPE, peaking at ``i - j = delta``);
    * ``hot_blocks``: (query block, key block) pairs whose rows attend those keys;
    * ``local``: a peak at distance 0 (a local window) of that strength.
    Logit boosts are given after the ``1/sqrt(d)`` scale."""
    kv_heads = heads if kv_heads is None else kv_heads
    gen = torch.Generator().manual_seed(seed)
    q = noise * torch.randn(batch, heads, n, d, generator=gen, dtype=torch.float64)
    k = noise * torch.randn(batch, kv_heads, n, d, generator=gen, dtype=torch.float64)
    sd = d ** 0.25       # q_e * k_e = s^2 / sqrt(d) after scaling: s = sqrt(b) * d^(1/4)
    dim = 0

    def take(count: int) -> int:
        nonlocal dim
        if dim + count > d:
            raise ValueError(f"planted_qk: head dim {d} too small for the planted structure")
        dim += count
        return dim - count

    if hot_columns:
        e = take(1)
        a = math.sqrt(column_strength) * sd
        q[..., e] += a
        k[:, :, list(hot_columns), e] += a
    peaks = [(float(x), diagonal_strength) for x in diagonals]
    if local:
        peaks.append((0.0, local))
    for delta, strength in peaks:
        # RoPE-like: a sum of rotations with incommensurate frequencies in [0.3, 3] rad/token
        # gives a one-token-wide peak at i - j = delta and small side lobes elsewhere.
        f = 16
        e = take(2 * f)
        pos = torch.arange(n, dtype=torch.float64)
        amp = math.sqrt(strength / f) * sd
        for p in range(f):
            th = 0.3 * 10 ** (p / (f - 1))
            q[..., e + 2 * p] += amp * torch.cos(th * pos)
            q[..., e + 2 * p + 1] += amp * torch.sin(th * pos)
            k[..., e + 2 * p] += amp * torch.cos(th * (pos + delta))
            k[..., e + 2 * p + 1] += amp * torch.sin(th * (pos + delta))
    for qb, kb in hot_blocks:
        e = take(1)
        a = math.sqrt(block_strength) * sd
        q[..., qb * block:(qb + 1) * block, e] += a
        k[..., kb * block:(kb + 1) * block, e] += a
    return q.to(dtype), k.to(dtype)


def plot_mask(mask: torch.Tensor, path: str, title: str, block: int = 64) -> str:
    """Write an attention-gym-like PNG of an (N, N) selection (selected = dark)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = mask.shape[-1]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    ax.imshow(mask.float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ticks = list(range(0, n + 1, max(block, (n // 8) // block * block or block)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    density = float(mask.float().sum()) / (n * (n + 1) / 2)
    ax.set_title(f"{title}\n{density:.1%} of causal pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_selection(path: str, label: str, build, q: torch.Tensor, k: torch.Tensor, params: dict,
                   *, columns: bool = False, planted: str = "") -> str:
    """A pattern's demo PNG: the selection ``build(q, k, params)`` makes for the first (batch,
    head), titled with ``label``, the length and the blocks (and, with ``columns``, the
    columns) it lists; ``planted`` describes the synthetic inputs' structure on a second line."""
    from ..reference import index_to_mask
    n = q.shape[2]
    index = build(q, k, params)
    blocks, cols = index_cost(index)
    title = f"{label}  N={n}: {blocks} blocks" + (f" + {cols} columns" if columns else "")
    if planted:
        title += f"\n({planted})"
    return plot_mask(index_to_mask(index, n)[0, 0], path, title)
