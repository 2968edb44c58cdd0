"""Load and save pattern databases. JSON only: loading never executes code.

The strict parser rejects what Python's json module would otherwise let through silently:
duplicate keys (the last one would win) and NaN/Infinity (not JSON). Saving writes a fixed
key order and one head per line, so a changed head is a one-line diff.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .database import PatternDB
from .errors import Issue, PatternDBValidationError, json_path

_INDENT = "  "


class _DupDict(dict):
    """A parsed object that had repeated keys (recorded, reported with their path)."""

    dups: list[str]


class _BadConst:
    def __init__(self, name: str):
        self.name = name


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    dups: list[str] = []
    for k, v in pairs:
        if k in seen:
            dups.append(k)
        seen[k] = v
    if dups:
        d = _DupDict(seen)
        d.dups = dups
        return d
    return seen


def _find_strict_issues(obj: Any, parts: list[Any], out: list[Issue]) -> None:
    if isinstance(obj, _DupDict):
        for k in obj.dups:
            out.append(Issue(json_path(parts + [k]), "a key given more than once",
                             "each key at most once per object"))
    if isinstance(obj, dict):
        for k, v in obj.items():
            _find_strict_issues(v, parts + [k], out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _find_strict_issues(v, parts + [i], out)
    elif isinstance(obj, _BadConst):
        out.append(Issue(json_path(parts), obj.name, "a finite JSON number (NaN and Infinity "
                         "are not JSON)"))


def parse_json_strict(text: str, file: str = "<string>") -> Any:
    """Parse JSON text; errors name the file and the line/column or JSON path."""
    try:
        obj = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_BadConst)
    except json.JSONDecodeError as e:
        raise PatternDBValidationError(file, [Issue(
            "$", f"invalid JSON at line {e.lineno} column {e.colno} ({e.msg})",
            "a JSON document")]) from None
    issues: list[Issue] = []
    _find_strict_issues(obj, [], issues)
    if issues:
        raise PatternDBValidationError(file, issues)
    return obj


def read_json_file(path: str | os.PathLike) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PatternDBValidationError(str(p), [Issue("$", "no such file",
                                                      "an existing JSON file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PatternDBValidationError(str(p), [Issue("$", f"an unreadable file ({e})",
                                                      "a readable UTF-8 JSON file")]) from None
    return parse_json_strict(text, str(p))


def loads(text: str, file: str = "<string>") -> PatternDB:
    return PatternDB.from_obj(parse_json_strict(text, file), file)


def load_db(path: str | os.PathLike) -> PatternDB:
    """Load and fully validate a database file; raises PatternDBValidationError."""
    return PatternDB.from_obj(read_json_file(path), str(path))


def _dump(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def _block(obj: dict[str, Any], level: int) -> str:
    pad = _INDENT * (level + 1)
    items = [f"{pad}{_dump(k)}: {_dump(v)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(items) + "\n" + _INDENT * level + "}"


def dumps(db: PatternDB) -> str:
    """The file text: fixed key order, one head per line, trailing newline."""
    obj = db.to_obj()
    layers = []
    for layer in obj["layers"]:
        if layer["kind"] == "searched":
            heads = ",\n".join(f"{_INDENT * 4}{_dump(h)}" for h in layer["heads"])
            layers.append(f'{_INDENT * 2}{{"kind": "searched", "heads": [\n{heads}\n'
                          f"{_INDENT * 2}]}}")
        else:
            layers.append(_INDENT * 2 + _dump(layer))
    return ("{\n"
            f'{_INDENT}"schema_version": {obj["schema_version"]},\n'
            f'{_INDENT}"model": {_block(obj["model"], 1)},\n'
            f'{_INDENT}"provenance": {_block(obj["provenance"], 1)},\n'
            f'{_INDENT}"layers": [\n' + ",\n".join(layers) + f"\n{_INDENT}]\n"
            "}\n")


def save_db(db: PatternDB, path: str | os.PathLike) -> Path:
    """Validate, then write atomically (temporary file + rename). Returns the path."""
    db.validate(str(path))
    text = dumps(db)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p
