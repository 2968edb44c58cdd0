"""Validation of pattern database objects: the JSON Schema plus the checks a schema cannot
express (layer and head counts against the model, the fingerprint). schema.json holds the file's
structure; the part naming patterns and their parameters is derived from the registry each time
a document is validated (:func:`current_schema`), so a pattern registered later is accepted.

Budget convention (also in schema.json): a budget parameter is a token count (a JSON
integer), ``{"frac": x}`` with ``0 < x <= 1`` (a fraction of the sequence length) or
``{"scale": a, "power": b}`` (a law of the length, ``a * N^b`` with ``0 <= b <= 1``), resolved
at run time by :func:`resolve_budget` (the index builders' own function, so the database's
counts are the ones the runtime builds). In memory (``HeadPlan.params``) a fraction is a
:class:`Frac` and a law a :class:`Law`; both are hashable, so ``LayerPlan.groups()`` works.
Which parameters a pattern takes, and which are budgets, comes from its registered ``Pattern``.

Version 2 adds laws; a version 1 file is the same document with fractions and counts only,
so it loads as it is (:func:`migrate`).
"""
from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from mcompile.kernels.patterns import PATTERNS as REGISTERED_PATTERNS
from mcompile.kernels.patterns import Law, resolve_budget  # noqa: F401 (re-exported)

from .errors import Issue, PatternDBValidationError, json_path, render_value
from .identity import fingerprint

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)      # a version 1 file migrates by its version number alone
SCHEMA_PATH = Path(__file__).with_name("schema.json")

# The registry itself (not a copy), so patterns registered after this import count.
PATTERNS = REGISTERED_PATTERNS
LAYER_KINDS = ("searched", "sliding", "not_searched")


@dataclass(frozen=True)
class Frac:
    """A budget given as a fraction of the sequence length (JSON: ``{"frac": value}``)."""

    value: float

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"Frac: value must be a number in (0, 1], got {v!r}")
        object.__setattr__(self, "value", float(v))

    def to_json(self) -> dict[str, float]:
        return {"frac": self.value}

    def __repr__(self) -> str:
        return f"Frac({self.value!r})"


def budget_params(pattern: str) -> frozenset[str]:
    """The parameters of ``pattern`` that are budgets (none for an unknown name)."""
    found = REGISTERED_PATTERNS.get(pattern)
    return frozenset(found.budgets) if found is not None else frozenset()


def params_from_json(params: dict[str, Any], pattern: str) -> dict[str, Any]:
    """JSON params -> in-memory params ({"frac": x} -> Frac(x); integral floats of counts -> int)."""
    budgets = budget_params(pattern)
    out: dict[str, Any] = {}
    for k in sorted(params):
        v = params[k]
        if isinstance(v, dict) and set(v) == {"frac"}:
            out[k] = Frac(v["frac"])
        elif isinstance(v, dict) and set(v) == {"scale", "power"}:
            out[k] = Law(v["scale"], v["power"])
        elif k in budgets and isinstance(v, float) and v.is_integer():
            out[k] = int(v)
        else:
            out[k] = v
    return out


def params_to_json(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (params[k].to_json() if isinstance(params[k], (Frac, Law)) else params[k])
            for k in sorted(params)}


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


_BUDGET_WORDS = ('{"frac": x} with 0 < x <= 1 (a fraction of the sequence length) or {"scale": a, '
                 '"power": b} (a * N^b tokens, a > 0, 0 <= b <= 1)')
_TYPE_OF_DEFAULT = ((bool, {"type": "boolean", "description": "true or false"}),
                    (int, {"type": "integer", "description": "an integer"}),
                    (float, {"type": "number", "description": "a number"}),
                    (str, {"type": "string", "description": "a string"}))


def param_schema(pattern, name: str) -> dict[str, Any]:
    """One parameter's JSON Schema: a budget from its least count, otherwise from its default's
    type; the pattern's own ``param_schema`` entry is merged over it."""
    if name in pattern.budgets:
        least = pattern.budgets[name]
        out: dict[str, Any] = {
            "description": f"a token count (integer >= {least}), {_BUDGET_WORDS}",
            "oneOf": [{"type": "integer", "minimum": least}, {"$ref": "#/$defs/frac"},
                      {"$ref": "#/$defs/law"}]}
    else:
        default = pattern.defaults[name]
        out = next((dict(s) for t, s in _TYPE_OF_DEFAULT if isinstance(default, t)), {})
    return {**out, **pattern.param_schema.get(name, {})}


def params_schema(pattern) -> dict[str, Any]:
    """The JSON Schema of a head's ``params`` for a registered pattern."""
    if not pattern.defaults:
        return {"type": "object", "maxProperties": 0, "description": "no parameters ({})"}
    required = [k for k in pattern.defaults if k not in pattern.optional]
    optional = [k for k in pattern.defaults if k in pattern.optional]
    listed = ", ".join(required + (["optional " + ", ".join(optional)] if optional else []))
    return {"type": "object", "required": required, "additionalProperties": False,
            "description": f"{pattern.name} parameters: {listed}",
            "properties": {k: param_schema(pattern, k) for k in pattern.defaults}}


def current_schema() -> dict[str, Any]:
    """schema.json with the head's pattern names and a ``params_<name>`` definition per pattern
    as the registry holds them now."""
    return _schema_for(tuple(REGISTERED_PATTERNS.items()))


@functools.lru_cache(maxsize=8)
def _schema_for(registered: tuple) -> dict[str, Any]:
    schema = copy.deepcopy(load_schema())
    defs = schema["$defs"]
    names = [name for name, _ in registered]
    defs["head"]["properties"]["pattern"] = {"enum": names, "description": "one of " + ", ".join(names)}
    defs["head"]["allOf"] = [
        {"if": {"required": ["pattern"], "properties": {"pattern": {"const": name}}},
         "then": {"properties": {"params": {"$ref": f"#/$defs/params_{name}"}}}} for name in names]
    for name, pattern in registered:
        defs[f"params_{name}"] = params_schema(pattern)
    return schema


@functools.lru_cache(maxsize=16)
def _validator_for(schema_key: tuple, ref: str | None) -> jsonschema.protocols.Validator:
    schema = _schema_for(schema_key)
    if ref is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"],
                  "$ref": f"#/$defs/{ref}"}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _validator(ref: str | None = None) -> jsonschema.protocols.Validator:
    return _validator_for(tuple(REGISTERED_PATTERNS.items()), ref)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _resolve(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return current_schema()["$defs"].get(name, {})
    return schema if isinstance(schema, dict) else {}


def _accepted(schema: dict[str, Any], validator: str, value: Any) -> str:
    desc = schema.get("description")
    if desc:
        return desc
    if validator == "enum":
        return "one of " + ", ".join(map(str, value))
    if validator == "type":
        return "a JSON " + (" or ".join(value) if isinstance(value, list) else str(value))
    if validator == "const":
        return render_value(value)
    return f"a value satisfying {validator} {render_value(value)}"


def _issues_from_error(err: jsonschema.ValidationError, base: list[Any]) -> list[Issue]:
    parts = base + list(err.absolute_path)
    schema = err.schema if isinstance(err.schema, dict) else {}
    v = err.validator
    if v == "required":
        inst = err.instance if isinstance(err.instance, dict) else {}
        out = []
        for name in err.validator_value:
            if name not in inst:
                sub = _resolve(schema.get("properties", {}).get(name, {}))
                out.append(Issue(json_path(parts + [name]), "nothing (missing)",
                                 sub.get("description", "a required field")))
        return out
    if v == "additionalProperties":
        known = list(schema.get("properties", {}))
        inst = err.instance if isinstance(err.instance, dict) else {}
        extras = [k for k in inst if k not in known]
        return [Issue(json_path(parts + [k]), f"an unknown field {render_value(k)}",
                      "only the fields " + ", ".join(known) + " (" +
                      schema.get("description", "this object") + ")") for k in extras]
    found = render_value(err.instance)
    if v == "type":
        found += f" (a JSON {_json_type(err.instance)})"
    return [Issue(json_path(parts), found, _accepted(schema, v, err.validator_value))]


def schema_issues(obj: Any, ref: str | None = None, base: list[Any] | None = None) -> list[Issue]:
    """Issues the JSON Schema finds (``ref``: validate against one ``$defs`` entry)."""
    issues: list[Issue] = []
    for err in _validator(ref).iter_errors(obj):
        issues.extend(_issues_from_error(err, list(base or [])))
    return issues


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def semantic_issues(obj: Any) -> list[Issue]:
    """Checks across fields; guarded so they run (where they can) even on a malformed object."""
    issues: list[Issue] = []
    if not isinstance(obj, dict):
        return issues
    model = obj.get("model") if isinstance(obj.get("model"), dict) else {}
    L, H = _int(model.get("num_layers")), _int(model.get("num_heads"))
    KV, D = _int(model.get("num_kv_heads")), _int(model.get("head_dim"))
    if H and KV and H % KV:
        issues.append(Issue("$.model.num_kv_heads", render_value(KV),
                            f"a divisor of model.num_heads ({H})"))
    fp = model.get("fingerprint")
    if L and H and KV and D and isinstance(fp, str):
        want = fingerprint(L, H, KV, D)
        if fp != want:
            issues.append(Issue("$.model.fingerprint", render_value(fp),
                                f"{want!r} (computed from num_layers={L}, num_heads={H}, "
                                f"num_kv_heads={KV}, head_dim={D})"))
    layers = obj.get("layers")
    if isinstance(layers, list):
        if L and layers and len(layers) != L:
            issues.append(Issue("$.layers", f"{len(layers)} layers",
                                f"{L} layers (one per model layer: model.num_layers)"))
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict) or layer.get("kind") != "searched":
                continue
            heads = layer.get("heads")
            if H and isinstance(heads, list) and heads and len(heads) != H:
                issues.append(Issue(f"$.layers[{i}].heads", f"{len(heads)} heads",
                                    f"{H} heads (one per query head: model.num_heads)"))
    return issues


def check_schema_version(obj: Any) -> list[Issue]:
    """The version check comes first: a file of another version is one clear error."""
    if not isinstance(obj, dict):
        return [Issue("$", f"a JSON {_json_type(obj)}",
                      "a JSON object (an mcompile pattern database)")]
    if "schema_version" not in obj:
        return [Issue("$.schema_version", "nothing (missing)",
                      f"{SCHEMA_VERSION} (the schema version this mcompile reads)")]
    v = obj["schema_version"]
    if isinstance(v, bool) or not isinstance(v, int) or v not in READABLE_VERSIONS:
        return [Issue("$.schema_version", render_value(v),
                      f"one of {', '.join(map(str, READABLE_VERSIONS))} (the schema versions this mcompile "
                      f"reads; it writes {SCHEMA_VERSION})")]
    return []


def migrate(obj: Any) -> Any:
    """A readable document of an older version as the current version (a copy; others as
    they are). Version 1 has no laws, so only its version number changes."""
    if isinstance(obj, dict) and obj.get("schema_version") == 1 and not isinstance(obj["schema_version"], bool):
        obj = {**obj, "schema_version": SCHEMA_VERSION}
    return obj


def _looks_like_minference(obj: Any) -> bool:
    return (isinstance(obj, list) and bool(obj) and isinstance(obj[0], dict)
            and all(isinstance(v, list) for v in obj[0].values()))


def collect_issues(obj: Any) -> list[Issue]:
    issues = check_schema_version(obj)
    if issues:
        return issues
    obj = migrate(obj)
    issues = schema_issues(obj) + semantic_issues(obj)
    seen, out = set(), []
    for i in sorted(issues, key=lambda i: i.path):
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def validate_obj(obj: Any, file: str = "<memory>") -> None:
    """Raise :class:`PatternDBValidationError` naming every problem; return None when valid."""
    issues = collect_issues(obj)
    if issues:
        hint = None
        if _looks_like_minference(obj):
            hint = ("this looks like a MInference 1.0 pattern file; convert it with "
                    "`mcompile db import --from minference IN OUT --model-shape L,H,KV,D`")
        raise PatternDBValidationError(file, issues, hint=hint)


def validate_head_params(pattern: str, params: dict[str, Any], where: str = "<memory>",
                         base: list[Any] | None = None) -> None:
    """Validate one head's pattern + params (in-memory form, Frac allowed)."""
    head = {"pattern": pattern, "params": params_to_json(params) if isinstance(params, dict)
            else params}
    issues = schema_issues(copy.deepcopy(head), ref="head", base=base)
    if issues:
        raise PatternDBValidationError(where, issues)
