"""Pattern database: which sparse attention pattern each head of each layer uses.

Backend entry points::

    identity = ModelIdentity.from_shapes(num_layers, num_heads, num_kv_heads, head_dim)
    plan = resolve_model_plan(opts.db, identity, force=opts.force_db)  # db: "auto"|None|path|key
    plan.layer_plan(layer_idx)   # LayerPlan (one HeadPlan per query head) or None
    plan.source, plan.describe() # for the report

See pattern_db/README.md and schema.json for the file format.
"""
from .database import HeadEntry, LayerEntry, PatternDB, Provenance
from .errors import (FingerprintMismatchError, Issue, PatternDBError,
                     PatternDBValidationError, UnknownDatabaseError)
from .identity import ModelIdentity, fingerprint, parse_model_shape
from .io import dumps, load_db, loads, save_db
from .lookup import (DEFAULT_PARAMS, DEFAULT_PATTERN, ModelPlan, default_layer_plan,
                     resolve_model_plan, shipped_databases)
from .minference_import import import_minference, import_sglang_config
from .schema import (PATTERNS, SCHEMA_VERSION, Frac, Law, resolve_budget,
                     validate_obj)

__all__ = [
    "DEFAULT_PARAMS", "DEFAULT_PATTERN", "FingerprintMismatchError", "Frac", "HeadEntry",
    "Issue", "Law", "LayerEntry", "ModelIdentity", "ModelPlan", "PATTERNS",
    "PatternDB", "PatternDBError", "PatternDBValidationError", "Provenance", "SCHEMA_VERSION",
    "UnknownDatabaseError", "default_layer_plan", "dumps", "fingerprint", "import_minference",
    "import_sglang_config", "load_db", "loads", "parse_model_shape", "resolve_budget",
    "resolve_model_plan", "save_db", "shipped_databases", "validate_obj",
]
