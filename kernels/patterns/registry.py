"""The pattern registry: a new pattern is one file that builds a :class:`Pattern` and calls
:func:`register_pattern` at import (the built-in ones through :func:`register_or_demo`, which
also gives each file its demo command), plus one import line in ``patterns/__init__.py``.

Interface every pattern provides (all per query head; ``params`` is the plan's dict):

``validate(params) -> dict``
    Check names and values (raise ``ValueError`` naming the parameter) and fill defaults.
``build(q, k, params, *, heads=None, block_m=64, block_n=64, scale=None) -> SparseIndex``
    q (B, Hq, N, D), k (B, Hkv, N, D) after RoPE; ``heads`` the query heads to build for
    (default all, in order), all with these params, in one batched call. Returns an index
    over (B, len(heads)) (possibly broadcast views). Torch ops only, sizes from N and params.
``sizes(n, params, block_m=64, block_n=64) -> (max_blocks, max_columns)``
    The static list widths ``build`` will return for length n.
``cost(n, params, block_m=64, block_n=64) -> (blocks, columns)``
    Computed blocks and columns for one head at length n, summed over query blocks (exact for
    static patterns; the worst case for data-dependent ones).
``reference_mask(q, k, params, *, heads=None, block_m=64, block_n=64, scale=None) -> (B, H, N, N) bool``
    The same selection the obvious slow way (float64, materialised); equal to
    ``index_to_mask(build(...))``.
``demo(path, n=1024, **params) -> path``
    A PNG of the selection for one head on planted synthetic inputs.
``dynamic``
    Whether the selection depends on q/k (False: a static mask from N and params).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PATTERNS: dict[str, "Pattern"] = {}


@dataclass(frozen=True)
class Pattern:
    name: str
    build: Callable
    validate: Callable[[dict], dict]
    sizes: Callable
    cost: Callable
    reference_mask: Callable
    demo: Callable
    dynamic: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


def register_pattern(pattern: Pattern, *, replace: bool = False) -> Pattern:
    """Add a pattern under ``pattern.name``; re-registering a name needs ``replace=True``."""
    if not isinstance(pattern, Pattern):
        raise TypeError(f"register_pattern expects a Pattern, got {type(pattern).__name__}")
    old = PATTERNS.get(pattern.name)
    if old is not None and old is not pattern and not replace:
        raise ValueError(f"pattern {pattern.name!r} is already registered")
    PATTERNS[pattern.name] = pattern
    return pattern


def register_or_demo(pattern: Pattern, module_name: str) -> Pattern:
    """The last line of a pattern file: registers the pattern on import; run as
    ``python -m mcompile.kernels.patterns.<name> [out.png]`` (``module_name == "__main__"``) it
    writes the pattern's demo instead and prints the path."""
    if module_name == "__main__":
        import sys
        print(pattern.demo(sys.argv[1] if len(sys.argv) > 1 else f"{pattern.name}.png"))
        return pattern
    return register_pattern(pattern)


def get_pattern(name: str) -> Pattern:
    try:
        return PATTERNS[name]
    except KeyError:
        raise KeyError(f"unknown sparse pattern {name!r}; registered: {sorted(PATTERNS)}") from None


def validate_params(name: str, params: dict | None) -> dict:
    """The pattern's parameters with defaults filled; ValueError naming a bad one."""
    return get_pattern(name).validate(params or {})
