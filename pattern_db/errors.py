"""User-facing errors of the pattern database.

Every error that a bad file can cause names the file, the JSON path of the bad field, what
was found there and what is accepted. Callers (the CLI, the backend) print ``str(err)``; no
traceback is needed to understand it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

MAX_REPORTED_ISSUES = 20


class PatternDBError(Exception):
    """Base class of every error this package raises for a user mistake or a bad file."""


@dataclass(frozen=True)
class Issue:
    """One problem in one file: where (JSON path), what was found, what is accepted."""

    path: str        # JSONPath-like: $.layers[3].heads[2].params.n_local
    found: str       # human-readable rendering of what is there ("nothing (missing)", "-5")
    accepted: str    # what would be accepted there

    def render(self) -> str:
        return f"{self.path}: found {self.found}; accepted: {self.accepted}"


class PatternDBValidationError(PatternDBError, ValueError):
    """A file (or in-memory object) failed validation; ``issues`` lists every problem found."""

    def __init__(self, file: str, issues: Sequence[Issue], *, hint: str | None = None):
        self.file = str(file)
        self.issues = list(issues)
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.issues) == 1:
            msg = f"{self.file}: {self.issues[0].render()}"
        else:
            shown = self.issues[:MAX_REPORTED_ISSUES]
            lines = [f"{self.file}: {len(self.issues)} problems:"]
            lines += [f"  {i.render()}" for i in shown]
            if len(self.issues) > len(shown):
                lines.append(f"  ... and {len(self.issues) - len(shown)} more")
            msg = "\n".join(lines)
        if self.hint:
            msg += f"\n  hint: {self.hint}"
        return msg

    @property
    def paths(self) -> list[str]:
        return [i.path for i in self.issues]


class FingerprintMismatchError(PatternDBError, ValueError):
    """A database made for one model shape was offered for another (refused unless forced)."""

    def __init__(self, file: str, db_fingerprint: str, model_fingerprint: str, detail: str = ""):
        self.file = str(file)
        self.db_fingerprint = db_fingerprint
        self.model_fingerprint = model_fingerprint
        msg = (
            f"{self.file}: pattern database fingerprint {db_fingerprint} does not match the "
            f"model being compiled, fingerprint {model_fingerprint}"
        )
        if detail:
            msg += f" ({detail})"
        msg += ("; refusing to use it. To use it anyway pass options={'force_db': True} to the "
                "backend (force=True to resolve_model_plan).")
        super().__init__(msg)


class UnknownDatabaseError(PatternDBError, LookupError):
    """A database key or path that does not exist."""


def render_value(value: Any, limit: int = 80) -> str:
    """Short JSON rendering of a found value for error messages."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def json_path(parts: Iterable[Any], root: str = "$") -> str:
    """``["layers", 3, "heads"]`` -> ``$.layers[3].heads``; odd keys as ``["12"]``."""
    out = root
    for p in parts:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        elif isinstance(p, str) and p.isidentifier():
            out += f".{p}"
        else:
            out += f"[{json.dumps(str(p))}]"
    return out
