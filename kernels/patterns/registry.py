"""The pattern registry: a new pattern is one file that builds a :class:`Pattern` and calls
:func:`register_pattern` at import (the built-in ones through :func:`register_or_demo`, which
also gives each file its demo command), plus one import line in ``patterns/__init__.py``.

The :class:`Pattern` is the one source of a pattern's name, parameters, defaults and budgets:
the backend's options, the database's schema and the search read them from the registry as it
is when they run, so a pattern registered later (a user's own file) is accepted everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PATTERNS: dict[str, "Pattern"] = {}

# The JSON Schema of a parameter that is a number in (0, 1] (e.g. sample_attention's fractions).
FRACTION_SCHEMA = {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                   "description": "a number in (0, 1]"}


@dataclass(frozen=True, eq=False)     # compared and hashed by identity: the schema caches by it
class Pattern:
    """One sparse pattern; every callable works per query head, ``params`` the plan's dict."""

    name: str
    # build(q, k, params, *, heads=None, block_m=64, block_n=64, scale=None) -> SparseIndex:
    # q (B, Hq, N, D), k (B, Hkv, N, D) after RoPE; ``heads`` the query heads to build for
    # (default all, in order), all with these params, in one batched call. Returns an index over
    # (B, len(heads)) (possibly broadcast views). Torch ops only, sizes from N and params.
    build: Callable
    # validate(params) -> dict: checks names and values (ValueError naming the parameter) and
    # fills defaults.
    validate: Callable[[dict], dict]
    # sizes(n, params, block_m=64, block_n=64) -> (max_blocks, max_columns): the static list
    # widths ``build`` returns for length n.
    sizes: Callable
    # cost(n, params, block_m=64, block_n=64) -> (blocks, columns) for one head at length n,
    # summed over query blocks (exact for static patterns; the worst case for dynamic ones).
    cost: Callable
    # reference_mask(q, k, params, *, heads=None, block_m=64, block_n=64, scale=None) ->
    # (B, H, N, N) bool: the same selection the obvious slow way (float64, materialised), equal
    # to ``index_to_mask(build(...))``.
    reference_mask: Callable
    # demo(path, n=1024, **params) -> path: a PNG of one head's selection on planted inputs.
    demo: Callable
    # whether the selection depends on q/k (False: a static mask from N and params)
    dynamic: bool
    # every parameter and its default, in the order reports list them
    defaults: dict[str, Any] = field(default_factory=dict)
    # the parameters that are budgets (a count, {"frac": x} or {"scale": a, "power": b}, see
    # ``_common.check_budget``) and the least count each accepts; the search scales these
    budgets: dict[str, int] = field(default_factory=dict)
    # parameters a database head may leave out (the default applies); the others it must name,
    # so a stored plan does not change when a default does
    optional: tuple[str, ...] = ()
    # JSON Schema of a parameter, merged over the one derived from ``budgets`` or the default's
    # type (e.g. a range, or a budget's wording)
    param_schema: dict[str, dict] = field(default_factory=dict)
    # how tables and plots name and colour it: ``short`` defaults to the name's initials
    # (``block_sparse`` -> ``bs``); a colour keeps a pattern recognisable across every plot
    short: str = ""
    colour: str = "#8c564b"
    # the parameters that may differ between the heads of one ``build`` call, which then takes
    # ``params`` as a list with one dict per head of ``heads``: a layer's heads of this pattern
    # whose other parameters agree are built in one call (one set of launches), however many
    # budgets the plan gives them
    per_head: tuple[str, ...] = ()
    # whether ``build`` returns its lists as views broadcast over the query blocks (its block
    # lists kept per length, each head's column list stored once, the counts doing the causal
    # cut): its heads' index then costs one column list a head, not one a query block, and the
    # runtime's index budget (``index_parts``) counts it so
    broadcast_lists: bool = False
    # spans(n, params, block_m=64, block_n=64) -> (sink_end, local, window or None), for a
    # static pattern whose blocks are sinks plus the union of its rows' windows
    # (``index.BlockRanges``): the kernel computes them from these numbers, so its heads keep no
    # index in memory and share one launch whatever their budgets. ``build`` must list the same
    # blocks (``index.span_blocks``). None: the index ``build`` returns is used.
    spans: Callable | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        unknown = sorted((set(self.budgets) | set(self.optional) | set(self.param_schema) | set(self.per_head))
                         - set(self.defaults))
        if unknown:
            raise ValueError(f"pattern {self.name!r}: {unknown} declared but not in its defaults "
                             f"{list(self.defaults)}")
        if self.spans is not None and self.dynamic:
            raise ValueError(f"pattern {self.name!r}: spans describe a static pattern's blocks, and it is dynamic")


def register_pattern(pattern: Pattern, *, replace: bool = False) -> Pattern:
    """Add a pattern under ``pattern.name``; re-registering a name needs ``replace=True``."""
    if not isinstance(pattern, Pattern):
        raise TypeError(f"register_pattern expects a Pattern, got {type(pattern).__name__}")
    old = PATTERNS.get(pattern.name)
    if old is not None and old is not pattern and not replace:
        raise ValueError(f"pattern {pattern.name!r} is already registered")
    PATTERNS[pattern.name] = pattern
    return pattern


def unregister_pattern(name: str) -> Pattern:
    """Remove a registered pattern (e.g. a test's own) and return it."""
    try:
        return PATTERNS.pop(name)
    except KeyError:
        raise KeyError(f"unknown sparse pattern {name!r}; registered: {sorted(PATTERNS)}") from None


def register_or_demo(pattern: Pattern, module_name: str) -> Pattern:
    """The last line of a pattern file: registers the pattern on import; run as
    ``python -m mcompile.kernels.patterns.<name> [out.png]`` (``module_name == "__main__"``) it
    writes the pattern's demo instead and prints the path."""
    if module_name == "__main__":
        import sys
        print(pattern.demo(sys.argv[1] if len(sys.argv) > 1 else f"{pattern.name}.png"))
        return pattern
    return register_pattern(pattern)


def short_name(name: str) -> str:
    """What tables call a pattern (an unregistered name's initials)."""
    found = PATTERNS.get(name)
    return (found.short if found is not None and found.short else "".join(w[0] for w in name.split("_")))


def colour_of(name: str) -> str:
    """The colour plots draw a pattern in (grey for an unregistered name)."""
    found = PATTERNS.get(name)
    return found.colour if found is not None else "#bbbbbb"


def get_pattern(name: str) -> Pattern:
    try:
        return PATTERNS[name]
    except KeyError:
        raise KeyError(f"unknown sparse pattern {name!r}; registered: {sorted(PATTERNS)}") from None


def validate_params(name: str, params: dict | None) -> dict:
    """The pattern's parameters with defaults filled; ValueError naming a bad one."""
    return get_pattern(name).validate(params or {})
