"""In-memory plans: which pattern (and its parameters) each head of each layer uses.

The pattern database (``mcompile.pattern_db``) loads files into these; the backend carries
one ``LayerPlan`` per attention site into the attention op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HeadPlan:
    pattern: str                      # a registered pattern name, e.g. "vertical_slash"
    params: dict[str, Any] = field(default_factory=dict)  # pattern-specific budgets

    def key(self) -> tuple:
        return (self.pattern, tuple(sorted(self.params.items())))


@dataclass(frozen=True)
class LayerPlan:
    heads: tuple[HeadPlan, ...]       # one per query head

    @property
    def is_dense(self) -> bool:
        return all(h.pattern == "dense" for h in self.heads)

    def groups(self) -> dict[tuple, list[int]]:
        """Heads that share pattern and parameters, so their index is built in one batch."""
        out: dict[tuple, list[int]] = {}
        for i, h in enumerate(self.heads):
            out.setdefault(h.key(), []).append(i)
        return out

    @staticmethod
    def uniform(pattern: str, num_heads: int, **params: Any) -> "LayerPlan":
        return LayerPlan(tuple(HeadPlan(pattern, dict(params)) for _ in range(num_heads)))
