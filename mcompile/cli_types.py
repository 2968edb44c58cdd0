"""argparse types of the command lines (``mcompile`` and the benchmarks): comma-separated lists
of numbers, names and lengths (token counts with K/M suffixes). A bad item is refused by name,
with what the option accepts."""
from __future__ import annotations

import argparse
from typing import Callable, TypeVar

T = TypeVar("T")

LENGTH_SYNTAX = ("lengths are whole numbers of tokens >= 1, comma-separated, "
                 "optionally with K (x1024) or M (x1048576), e.g. 8192,32K,1M")


def comma_list(parse: Callable[[str], T], what: str, accepted: str, container: Callable = list,
               skip_empty: bool = True) -> Callable[[str], "list[T]"]:
    """An argparse type: ``text`` split at commas, each stripped item read by ``parse`` (empty
    items skipped unless ``skip_empty`` is off), collected in ``container``. An item ``parse``
    refuses (ValueError or ArgumentTypeError) is named, with ``accepted``."""
    def convert(text: str):
        out = []
        for part in text.split(","):
            item = part.strip()
            if not item and skip_empty:
                continue
            try:
                out.append(parse(item))
            except (ValueError, argparse.ArgumentTypeError):
                raise argparse.ArgumentTypeError(f"bad {what} {item!r} in {text!r}: {accepted}") from None
        return container(out)
    convert.__name__ = f"comma-separated {what}s"
    return convert


def length(text: str) -> int:
    """``8192``, ``32K``, ``1M`` -> token counts (K = 1024, M = 1024^2), at least 1."""
    item = text.strip()
    scale = {"k": 1 << 10, "m": 1 << 20}.get(item[-1:].lower(), 1)
    digits = item[:-1] if scale > 1 else item
    if not digits.isdigit() or int(digits) * scale < 1:
        raise argparse.ArgumentTypeError(f"bad length {item!r}: {LENGTH_SYNTAX}")
    return int(digits) * scale


INTS_SYNTAX = "comma-separated whole numbers, e.g. 0,1,2"
FLOATS_SYNTAX = "comma-separated numbers, e.g. 0.1,0.25,1"
NAMES_SYNTAX = "comma-separated names"

lengths = comma_list(length, "length", LENGTH_SYNTAX, skip_empty=False)
ints = comma_list(int, "integer", INTS_SYNTAX)
floats = comma_list(float, "number", FLOATS_SYNTAX)
names = comma_list(str, "name", NAMES_SYNTAX)
