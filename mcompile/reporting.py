"""What the backend did: one row per attention site, with the compile-time facts and the
latest run-time decision (sparse pattern per head, or dense and why).

``mcompile.report()`` returns a ``Report``; ``print`` it for a table, ``.save(path)`` for JSON
(``mcompile report FILE`` prints a saved one).
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_rows: dict[str, "SiteRow"] = {}

COLUMNS = ("graph", "layer", "heads", "kv_heads", "head_dim", "causal", "mask", "plan", "decision", "calls")


@dataclass
class SiteRow:
    key: str
    graph: str
    layer: int
    module: str
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    mask: str
    plan: str                      # e.g. "vertical_slash(vertical_size=1000,slash_size=6096) x9" or "-"
    decision: str                  # compile-time decision until the site runs, then the latest run's
    calls: Counter = field(default_factory=Counter)   # run-time decision -> count
    work: list = field(default_factory=lambda: [0, 0, 0])  # with options stats=True: computed blocks, columns, dense blocks


def summarise_plan(layer_plan) -> str:
    if layer_plan is None:
        return "-"
    counts = Counter()
    for h in layer_plan.heads:
        params = ",".join(f"{k}={v}" for k, v in sorted(h.params.items()))
        counts[f"{h.pattern}({params})" if params else h.pattern] += 1
    return ", ".join(f"{name} x{n}" for name, n in counts.items())


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
        table = [COLUMNS] + [
            (r.graph, str(r.layer), str(r.heads), str(r.kv_heads), str(r.head_dim), "yes" if r.causal else "no",
             r.mask, r.plan, r.decision, str(sum(r.calls.values())))
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def report() -> Report:
    """Every attention site the minference backend has compiled in this process."""
    with _lock:
        return Report(sorted(_rows.values(), key=lambda r: (r.graph, r.layer, r.key)))
