"""In-memory pattern database: model identity, provenance, and per layer per head plans.

``PatternDB.from_obj`` validates (schema + semantic checks) before building anything;
``PatternDB.to_obj`` gives the JSON object with a fixed key order (see io.dumps).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

from mcompile.plan import HeadPlan, LayerPlan

from .identity import ModelIdentity
from .schema import (SCHEMA_VERSION, migrate, params_from_json, params_to_json, validate_head_params,
                     validate_obj)


def tool_version() -> str:
    try:
        from importlib.metadata import version
        return version("mcompile")
    except Exception:  # pragma: no cover - not installed
        return "0.1.0"


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v) if isinstance(v, (int, float)) else v


@dataclass(frozen=True)
class HeadEntry:
    pattern: str
    params: dict[str, Any] = field(default_factory=dict)   # budgets: int or Frac
    recall: float | None = None    # attention mass recalled at calibration, in [0, 1]
    cost: float | None = None      # kernel cost relative to dense causal attention
    score: float | None = None     # raw score from another tool (e.g. MInference), if any

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"pattern": self.pattern, "params": params_to_json(self.params),
                               "recall": self.recall, "cost": self.cost}
        if self.score is not None:
            obj["score"] = self.score
        return obj

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "HeadEntry":
        return cls(pattern=obj["pattern"], params=params_from_json(obj.get("params", {}), obj["pattern"]),
                   recall=_opt_float(obj.get("recall")), cost=_opt_float(obj.get("cost")),
                   score=_opt_float(obj.get("score")))

    def head_plan(self) -> HeadPlan:
        return HeadPlan(self.pattern, dict(self.params))


@dataclass(frozen=True)
class LayerEntry:
    kind: str                                  # "searched" | "sliding" | "not_searched"
    heads: tuple[HeadEntry, ...] = ()          # only for "searched"
    window: int | None = None                  # only for "sliding"
    reason: str | None = None                  # only for "not_searched"

    @classmethod
    def searched(cls, heads: Iterable[HeadEntry]) -> "LayerEntry":
        return cls("searched", tuple(heads))

    @classmethod
    def sliding(cls, window: int | None = None) -> "LayerEntry":
        return cls("sliding", window=window)

    @classmethod
    def not_searched(cls, reason: str | None = None) -> "LayerEntry":
        return cls("not_searched", reason=reason)

    def to_obj(self) -> dict[str, Any]:
        if self.kind == "searched":
            return {"kind": "searched", "heads": [h.to_obj() for h in self.heads]}
        if self.kind == "sliding":
            return {"kind": "sliding", "window": self.window}
        return {"kind": self.kind, "reason": self.reason}

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "LayerEntry":
        kind = obj["kind"]
        if kind == "searched":
            return cls.searched(HeadEntry.from_obj(h) for h in obj["heads"])
        if kind == "sliding":
            return cls.sliding(obj.get("window"))
        return cls.not_searched(obj.get("reason"))

    def layer_plan(self) -> LayerPlan | None:
        if self.kind != "searched":
            return None
        return LayerPlan(tuple(h.head_plan() for h in self.heads))


@dataclass(frozen=True)
class Provenance:
    tool: str = "mcompile"
    tool_version: str = field(default_factory=tool_version)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc)
                         .replace(microsecond=0).isoformat())
    command: str | None = None
    calibration: dict[str, Any] | None = None  # {"data": str, "length": int, "samples": int}
    budget: dict[str, Any] | None = None       # free-form numbers/strings, e.g. target_cost
    source: str | None = None                 # e.g. "minference:FILE"
    notes: str | None = None

    KEYS = ("tool", "tool_version", "created", "command", "calibration", "budget", "source",
            "notes")

    def to_obj(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.KEYS}
        if isinstance(self.calibration, dict):
            out["calibration"] = {k: self.calibration[k] for k in sorted(self.calibration)}
        if isinstance(self.budget, dict):
            out["budget"] = {k: self.budget[k] for k in sorted(self.budget)}
        return out

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "Provenance":
        return cls(**{k: obj.get(k) for k in cls.KEYS})


@dataclass(frozen=True)
class PatternDB:
    model: ModelIdentity
    provenance: Provenance
    layers: tuple[LayerEntry, ...]
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def build(cls, model: ModelIdentity, layers: Sequence[LayerEntry],
              provenance: Provenance | None = None, *, validate: bool = True) -> "PatternDB":
        """Build from Python objects; sliding layers of ``model`` follow the layer kinds."""
        layers = tuple(layers)
        sliding = tuple(i for i, l in enumerate(layers) if l.kind == "sliding")
        if len(layers) == model.num_layers:
            model = replace(model, sliding_layers=sliding)
        db = cls(model=model, provenance=provenance or Provenance(), layers=layers)
        if validate:
            db.validate()
        return db

    def validate(self, file: str = "<memory>") -> None:
        for i, layer in enumerate(self.layers):
            for j, h in enumerate(layer.heads):
                validate_head_params(h.pattern, h.params, file, ["layers", i, "heads", j])
        validate_obj(self.to_obj(), file)

    # ---- JSON object <-> PatternDB ----------------------------------------------------
    def to_obj(self) -> dict[str, Any]:
        m = self.model
        model: dict[str, Any] = {
            "name": m.name, "architecture": m.architecture, "num_layers": m.num_layers,
            "num_heads": m.num_heads, "num_kv_heads": m.num_kv_heads, "head_dim": m.head_dim,
            "sliding_window": m.sliding_window, "fingerprint": m.fingerprint,
        }
        return {"schema_version": self.schema_version, "model": model,
                "provenance": self.provenance.to_obj(),
                "layers": [l.to_obj() for l in self.layers]}

    @classmethod
    def from_obj(cls, obj: Any, file: str = "<memory>") -> "PatternDB":
        validate_obj(obj, file)
        obj = migrate(obj)
        layers = tuple(LayerEntry.from_obj(l) for l in obj["layers"])
        m = obj["model"]
        model = ModelIdentity(
            num_layers=m["num_layers"], num_heads=m["num_heads"],
            num_kv_heads=m["num_kv_heads"], head_dim=m["head_dim"], name=m.get("name"),
            architecture=m.get("architecture"), sliding_window=m.get("sliding_window"),
            sliding_layers=tuple(i for i, l in enumerate(layers) if l.kind == "sliding"))
        return cls(model=model, provenance=Provenance.from_obj(obj["provenance"]),
                   layers=layers, schema_version=obj["schema_version"])

    # ---- convenience --------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def layer_plan(self, layer_idx: int) -> LayerPlan | None:
        return self.layers[layer_idx].layer_plan()

    def pattern_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            for h in layer.heads:
                out[h.pattern] = out.get(h.pattern, 0) + 1
        return out
