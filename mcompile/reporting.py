"""What the backend did: one row per attention site, with the compile-time facts and the
latest run-time decision (sparse pattern per head, or dense and why).

``mcompile.report()`` returns a ``Report``; ``print`` it for a table, ``.save(path)`` for JSON
(``mcompile report FILE`` prints a saved one).
"""
from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_rows: dict[str, "SiteRow"] = {}

# one line per site and decision, grouped by graph; the per-head plan is printed by ``format_heads``
COLUMNS = ("layer", "heads", "mask", "plan", "decision", "calls")


def text_table(header, rows) -> list[str]:
    """The lines of a plain-text table: ``header``, a rule of dashes, then ``rows`` (sequences of
    strings), each column left-aligned to its widest cell, two spaces apart."""
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


@dataclass
class SiteRow:
    """A site's line of the report, as saved to JSON and read back without the model: what
    people read, taken from the pass's ``AttentionSite`` and the run's decisions."""
    key: str
    graph: str
    layer: int
    module: str
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    mask: str
    plan: str                      # summary, e.g. "vertical_slash(1000/6096) x9" or "sample_attention 5, dense 4"
    decision: str                  # compile-time decision until the site runs, then the latest run's
    calls: Counter = field(default_factory=Counter)   # run-time decision -> count
    work: list = field(default_factory=lambda: [0, 0, 0])  # with options stats=True: computed blocks, columns, dense blocks
    head_plans: list = field(default_factory=list)        # one "pattern(k=v,...)" per query head
    shard: str = ""                # under tensor parallelism: "rank 1/2: heads 4-7" (the model's query heads)
    kv_cache: str = ""             # with the kv_compress option: what the cache keeps ("kept 4160 of 32768", or why not)


def format_value(value: Any) -> str:
    """A parameter value for people: fractions and floats to 3 significant digits."""
    frac = getattr(value, "value", None)
    if isinstance(frac, float):
        return f"{frac:.3g}N"
    if isinstance(value, dict) and set(value) == {"frac"}:
        return f"{value['frac']:.3g}N"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def describe_head(head) -> str:
    """``pattern(k=v,...)`` of one HeadPlan, values rounded."""
    params = ",".join(f"{k}={format_value(v)}" for k, v in sorted(head.params.items()))
    return f"{head.pattern}({params})" if params else head.pattern


def abbreviation(pattern: str) -> str:
    """What a table cell calls a pattern: its registered short name (``block_sparse`` -> ``bs``)."""
    from .kernels.patterns.registry import short_name
    return short_name(pattern)


def declared_order(pattern: str, params: dict) -> list[str]:
    """``params``' names in the order the pattern declares them (``vertical_size`` before
    ``slash_size``, as people write 1000/6096), any others after, sorted."""
    from .kernels.patterns.registry import PATTERNS
    declared = list(getattr(PATTERNS.get(pattern), "defaults", {}))
    return [k for k in declared if k in params] + sorted(k for k in params if k not in declared)


def summarise_plan(layer_plan) -> str:
    """Short enough for one table cell: a uniform layer shows its parameters
    (``vertical_slash(1000/6096) x9``), a mixed one its heads per pattern, most first, by the
    patterns' initials (``sa 5, bs 3, vs 1``; the table prints the legend)."""
    if layer_plan is None:
        return "-"
    heads = list(layer_plan.heads)
    if len({h.key() for h in heads}) == 1:
        values = "/".join(format_value(heads[0].params[k]) for k in declared_order(heads[0].pattern, heads[0].params))
        return f"{heads[0].pattern}({values}) x{len(heads)}" if values else f"{heads[0].pattern} x{len(heads)}"
    counts = Counter(h.pattern for h in heads)
    return ", ".join(f"{abbreviation(name)} {n}" for name, n in counts.most_common())


def _legend(rows) -> str:
    """The initials the mixed plans of ``rows`` use, spelled out."""
    names = sorted({h.split("(")[0] for r in rows for h in r.head_plans})
    used = [n for n in names if any(re.search(rf"(^|, ){abbreviation(n)} \d", r.plan) for r in rows)]
    return "plans: " + ", ".join(f"{abbreviation(n)} = {n}" for n in used) if used else ""


def head_plans(layer_plan) -> list[str]:
    return [] if layer_plan is None else [describe_head(h) for h in layer_plan.heads]


def add_site(row: SiteRow) -> None:
    with _lock:
        _rows[row.key] = row


def record_decision(key: str, decision: str) -> None:
    row = _rows.get(key)
    if row is not None:
        row.decision = decision
        row.calls[decision] += 1


def record_work(key: str, blocks: int, columns: int, dense_blocks: int) -> None:
    row = _rows.get(key)
    if row is not None:
        row.work = [row.work[0] + blocks, row.work[1] + columns, row.work[2] + dense_blocks]


def record_kv_kept(key: str, kept: int, total: int) -> None:
    row = _rows.get(key)
    if row is not None:
        row.kv_cache = f"kept {kept} of {total}"


def reset() -> None:
    """Forget every site (the compiled graphs keep working; their rows come back when they compile again)."""
    with _lock:
        _rows.clear()


@dataclass
class Report:
    rows: list[SiteRow]

    def to_dict(self) -> dict[str, Any]:
        return {"sites": [{**asdict(r), "calls": dict(r.calls)} for r in self.rows]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        data = json.loads(Path(path).read_text())
        return cls([SiteRow(**{**r, "calls": Counter(r.get("calls", {}))}) for r in data["sites"]])

    def density(self) -> float | None:
        """Work of the sparse calls recorded with ``stats=True``, as a fraction of dense causal
        64x64 blocks (a column counts as 1/64 of a block); None when nothing was recorded."""
        blocks, columns, dense = (sum(r.work[i] for r in self.rows) for i in range(3))
        return (blocks + columns / 64) / dense if dense else None

    def __str__(self) -> str:
        if not self.rows:
            return "mcompile: no attention sites compiled yet"
        kv = any(r.kv_cache for r in self.rows)
        table = [COLUMNS + (("kv cache",) if kv else ())]
        graphs = []                      # (index into table where the graph's rows start, graph id)
        for r in self.rows:
            if not graphs or graphs[-1][1] != r.graph:
                graphs.append((len(table), r.graph))
            heads = f"{r.heads}/{r.kv_heads} d{r.head_dim}" + (f" ({r.shard})" if r.shard else "")
            site = (str(r.layer), heads, r.mask, r.plan)
            for decision, calls in (r.calls.most_common() or [(r.decision, 0)]):
                table.append((*site, decision, str(calls)) + ((r.kv_cache or "-",) if kv else ()))
        lines = text_table(table[0], table[1:])
        out = lines[:2]
        starts = dict(graphs)
        for i, line in enumerate(lines[2:], start=1):
            if i in starts:
                out.append(f"graph {starts[i]}:")
            out.append(line)
        legend = _legend(self.rows)
        return "\n".join(out + ([legend] if legend else []))

    def format_heads(self) -> str:
        """The full plan of every site, one line per query head (``mcompile report FILE --heads``)."""
        lines = []
        for r in self.rows:
            lines.append(f"graph {r.graph} layer {r.layer} ({r.module}): {r.plan}")
            lines += [f"  head {h}: {p}" for h, p in enumerate(r.head_plans)]
        return "\n".join(lines) if lines else str(self)


def report() -> Report:
    """Every attention site the minference backend has compiled in this process."""
    with _lock:
        return Report(sorted(_rows.values(), key=lambda r: (r.graph, r.layer, r.key)))
