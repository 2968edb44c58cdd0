"""Which plan the backend uses for a model: explicit database, shipped database, or default.

Order (``resolve_model_plan``):
  1. ``db_option`` is a ``PatternDB`` or a path to a JSON file -> that database;
     ``db_option`` is a shipped key (file stem in pattern_db/databases/) -> that database.
     Either is refused when its fingerprint differs from the model's, unless ``force``.
  2. ``db_option == "auto"`` (the backend's default) -> the shipped database whose
     fingerprint matches the model (a name match breaks ties), else the default plan.
  3. ``db_option`` is None or "default" -> the default plan, no database (as the backend's
     ``options={"db": None}`` documents).
The default plan is vertical-slash with MInference's usual budgets (1000 vertical columns,
6096 diagonals) on every head of every layer that is not sliding; the index builder clamps
budgets to the sequence length at run time.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcompile.kernels.patterns import vertical_slash
from mcompile.plan import LayerPlan

from .database import PatternDB
from .errors import FingerprintMismatchError, PatternDBError, UnknownDatabaseError
from .identity import ModelIdentity
from .io import load_db, read_json_file

DATABASES_DIR = Path(__file__).with_name("databases")
DEFAULT_PATTERN = vertical_slash.NAME
DEFAULT_PARAMS: dict[str, int] = dict(vertical_slash.MINFERENCE_COUNTS)


def default_layer_plan(num_heads: int) -> LayerPlan:
    return LayerPlan.uniform(DEFAULT_PATTERN, num_heads, **DEFAULT_PARAMS)


def shipped_databases(databases_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Shipped databases by key (file stem), sorted."""
    d = Path(databases_dir) if databases_dir is not None else DATABASES_DIR
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.json"))}


@dataclass
class ModelPlan:
    """The resolved plan: ``layer_plan(i)`` gives layer ``i``'s LayerPlan, or None for a layer
    the backend keeps as it is (sliding window, not searched)."""

    identity: ModelIdentity
    source: str                         # "default" or "db:<path>" / "db:<memory>"
    reason: str                         # why this source was chosen (for the report)
    db: PatternDB | None = None
    forced: bool = False                # fingerprint mismatch overridden by force=True
    notes: list[str] = field(default_factory=list)
    _cache: dict[int, LayerPlan | None] = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def is_default(self) -> bool:
        return self.db is None

    def layer_plan(self, layer_idx: int) -> LayerPlan | None:
        n = self.identity.num_layers
        if not isinstance(layer_idx, int) or not 0 <= layer_idx < n:
            raise IndexError(f"layer index {layer_idx!r} out of range for a model with {n} "
                             f"layers ({self.identity.fingerprint})")
        if layer_idx not in self._cache:
            self._cache[layer_idx] = self._layer_plan(layer_idx)
        return self._cache[layer_idx]

    def _layer_plan(self, i: int) -> LayerPlan | None:
        if self.db is None:
            if i in self.identity.sliding_layers:
                return None
            return default_layer_plan(self.identity.num_heads)
        if i >= len(self.db.layers):      # only with force: database has fewer layers
            return None
        return self.db.layers[i].layer_plan()

    def describe(self) -> str:
        text = f"{self.source} ({self.reason})"
        if self.forced:
            text += " [forced despite fingerprint mismatch]"
        return text


def _check_fingerprint(db: PatternDB, where: str, identity: ModelIdentity,
                       force: bool) -> list[str]:
    dbm = db.model
    if db.fingerprint == identity.fingerprint:
        return []
    detail = (f"database: {dbm.shape_text}; model: {identity.shape_text}")
    if not force:
        raise FingerprintMismatchError(where, db.fingerprint, identity.fingerprint, detail)
    if dbm.num_heads != identity.num_heads:
        raise PatternDBError(
            f"{where}: cannot force a database with {dbm.num_heads} query heads per layer onto "
            f"a model with {identity.num_heads} (database fingerprint {db.fingerprint}, "
            f"model fingerprint {identity.fingerprint}): plans are per query head")
    note = (f"forced: database fingerprint {db.fingerprint} != model fingerprint "
            f"{identity.fingerprint} ({detail})")
    if dbm.num_layers < identity.num_layers:
        note += f"; layers {dbm.num_layers}..{identity.num_layers - 1} have no plan (kept dense)"
    return [note]


def _from_db(db: PatternDB, where: str, reason: str, identity: ModelIdentity,
             force: bool) -> ModelPlan:
    notes = _check_fingerprint(db, where, identity, force)
    return ModelPlan(identity=identity, source=f"db:{where}", reason=reason, db=db,
                     forced=bool(notes), notes=notes)


def _looks_like_path(s: str) -> bool:
    return s.endswith(".json") or os.sep in s or (os.altsep or "/") in s or os.path.isfile(s)


def _auto(identity: ModelIdentity, databases_dir: str | os.PathLike | None) -> ModelPlan:
    fp = identity.fingerprint
    matches: list[tuple[str, Path, Any]] = []
    for key, path in shipped_databases(databases_dir).items():
        try:
            obj = read_json_file(path)
        except PatternDBError as e:
            warnings.warn(f"skipping shipped pattern database: {e}", stacklevel=3)
            continue
        model = obj.get("model") if isinstance(obj, dict) else None
        if isinstance(model, dict) and model.get("fingerprint") == fp:
            matches.append((key, path, model.get("name")))
    if not matches:
        return ModelPlan(identity=identity, source="default",
                         reason=f"no shipped database has fingerprint {fp}")
    named = [m for m in matches if identity.name and m[2] == identity.name]
    key, path, _ = (named or matches)[0]
    reason = f"shipped database {key!r} matches fingerprint {fp}"
    if len(matches) > 1:
        reason += (f"; {len(matches)} shipped databases match "
                   f"({', '.join(m[0] for m in matches)}), chose {key!r}"
                   + (" by model name" if named else " (first by key)"))
    return _from_db(load_db(path), str(path), reason, identity, False)


def resolve_model_plan(db_option: Any, identity: ModelIdentity, force: bool = False, *,
                       databases_dir: str | os.PathLike | None = None) -> ModelPlan:
    """Resolve the plan for a model.

    ``db_option``: "auto" (shipped database by fingerprint, else default), None or "default"
    (default plan), a ``PatternDB``, a path to a JSON file (str or PathLike), or a shipped key.
    ``force``: use a database whose fingerprint differs (the head count must still match).
    Raises ``PatternDBValidationError`` (bad file), ``FingerprintMismatchError``,
    ``UnknownDatabaseError`` (unknown key or missing file; lists the shipped keys).
    """
    if not isinstance(identity, ModelIdentity):
        raise TypeError(f"identity must be a ModelIdentity, got {type(identity).__name__}")
    if isinstance(db_option, PatternDB):
        return _from_db(db_option, "<memory>", "database passed in", identity, force)
    if db_option == "auto":
        return _auto(identity, databases_dir)
    if db_option is None or db_option == "default":
        return ModelPlan(identity=identity, source="default",
                         reason=f"requested (db={db_option!r})")
    if not isinstance(db_option, (str, os.PathLike)):
        raise TypeError("db option must be None, 'auto', 'default', a path, a shipped key or a "
                        f"PatternDB; got {type(db_option).__name__}")
    shipped = shipped_databases(databases_dir)
    keys = ", ".join(shipped) or "(none)"
    text = os.fspath(db_option)
    if isinstance(db_option, os.PathLike) or _looks_like_path(text):
        if not os.path.isfile(text):
            raise UnknownDatabaseError(
                f"{text}: no such pattern database file. Pass an existing JSON file, a shipped "
                f"key ({keys}), 'auto' or 'default'.")
        return _from_db(load_db(text), text, "explicit path", identity, force)
    if text not in shipped:
        raise UnknownDatabaseError(
            f"unknown pattern database {text!r}: not a file and not a shipped key. Shipped "
            f"keys: {keys}. Or pass a path to a JSON file, 'auto' or 'default'.")
    path = shipped[text]
    return _from_db(load_db(path), str(path), f"shipped key {text!r}", identity, force)
