"""Pattern database: schema, validation errors, round trip, lookup, imports, CLI (CPU, fast)."""
from __future__ import annotations

import argparse
import copy
import json
import math
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcompile.kernels.patterns import validate_params
from mcompile.pattern_db import (DEFAULT_PARAMS, FingerprintMismatchError, Frac, HeadEntry,
                                 LayerEntry, ModelIdentity, ModelPlan, PatternDB,
                                 PatternDBError, PatternDBValidationError, Provenance,
                                 UnknownDatabaseError, dumps, fingerprint, import_minference,
                                 import_sglang_config, load_db, loads, resolve_budget,
                                 resolve_model_plan, save_db)
from mcompile.pattern_db.cli import add_db_parser
from mcompile.plan import HeadPlan, LayerPlan

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------------
# helpers
def tiny_identity(**kw) -> ModelIdentity:
    return ModelIdentity(num_layers=3, num_heads=2, num_kv_heads=1, head_dim=64,
                         name=kw.pop("name", "tiny"), **kw)


def tiny_db(identity: ModelIdentity | None = None, vs=(100, 200)) -> PatternDB:
    ident = identity or tiny_identity()
    heads = [HeadEntry("vertical_slash", {"vertical_size": vs[0], "slash_size": vs[1]},
                       recall=0.9, cost=0.1),
             HeadEntry("a_shape", {"n_init": 4, "n_local": Frac(0.25)}, recall=0.8, cost=0.2)]
    heads = (heads * ident.num_heads)[: ident.num_heads]
    layers = [LayerEntry.searched(heads), LayerEntry.sliding(512)]
    layers += [LayerEntry.not_searched("too short")] * (ident.num_layers - 2)
    return PatternDB.build(ident, layers,
                           Provenance(created="2025-01-01T00:00:00+00:00", command="test",
                                      calibration={"data": "kjv", "length": 8192, "samples": 2},
                                      budget={"target_cost": 0.1}))


def base_obj() -> dict:
    return json.loads(dumps(tiny_db()))


# ---------------------------------------------------------------------------------------------
# fingerprint and identity
def test_fingerprint_stable_and_distinct():
    fp = fingerprint(30, 9, 3, 64)
    assert fp == fingerprint(30, 9, 3, 64)
    assert fp.startswith("L30-H9-KV3-D64-") and len(fp.split("-")[-1]) == 8
    assert len({fingerprint(30, 9, 3, 64), fingerprint(30, 9, 1, 64), fingerprint(30, 9, 3, 128),
                fingerprint(18, 4, 1, 256)}) == 4
    with pytest.raises(ValueError):
        fingerprint(0, 9, 3, 64)


def test_from_hf_config_architectures():
    from transformers import (Gemma3Config, LlamaConfig, MistralConfig, Phi3Config,
                              Qwen2Config, Qwen3Config)
    small = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=6, intermediate_size=32, vocab_size=64)
    i = ModelIdentity.from_hf_config(LlamaConfig(**small))
    assert (i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim) == (6, 4, 2, 16)
    assert i.sliding_layers == ()
    i = ModelIdentity.from_hf_config(Qwen2Config(**small))       # no head_dim attribute
    assert i.head_dim == 16 and i.sliding_layers == ()
    i = ModelIdentity.from_hf_config(Qwen3Config(**small, head_dim=32))
    assert i.head_dim == 32
    i = ModelIdentity.from_hf_config(Phi3Config(**small))
    assert i.head_dim == 16 and i.num_kv_heads == 2 and i.sliding_layers == ()
    i = ModelIdentity.from_hf_config(MistralConfig(**small, sliding_window=128))
    assert i.sliding_layers == tuple(range(6)) and i.sliding_window == 128
    i = ModelIdentity.from_hf_config(MistralConfig(**small, sliding_window=None))
    assert i.sliding_layers == ()
    g = Gemma3Config(text_config=dict(small, num_hidden_layers=18, head_dim=256,
                                      num_key_value_heads=1, sliding_window=512))
    i = ModelIdentity.from_hf_config(g)
    assert (i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim) == (18, 4, 1, 256)
    assert i.sliding_layers == tuple(x for x in range(18) if (x + 1) % 6)
    assert i.sliding_window == 512
    # old-style dict config with sliding_window_pattern and no layer_types
    d = dict(small, num_hidden_layers=12, sliding_window=512, sliding_window_pattern=6,
             architectures=["Gemma3ForCausalLM"])
    i = ModelIdentity.from_hf_config(d)
    assert i.sliding_layers == tuple(x for x in range(12) if (x + 1) % 6)
    assert i.architecture == "Gemma3ForCausalLM"


def test_resolve_budget_and_frac():
    assert resolve_budget(1000, 500) == 500
    assert resolve_budget(10, 500) == 10
    assert resolve_budget(Frac(0.1), 1000) == 100
    assert resolve_budget(Frac(0.001), 10) == 1
    assert resolve_budget(Frac(0.5), 1000, unit=64) == 8     # 16 blocks of 64
    with pytest.raises(ValueError):
        Frac(1.5)
    with pytest.raises(ValueError):
        resolve_budget(-1, 10)


def test_database_resolves_budgets_as_the_runtime_does():
    """The counts a database's budgets stand for are the ones the index builders build."""
    from mcompile.kernels import patterns
    from mcompile.pattern_db import schema
    assert resolve_budget is schema.resolve_budget is patterns.resolve_budget
    assert resolve_budget(Frac(0.07), 100) == 7       # 0.07 * 100 is 7.000000000000001 in floats
    for frac in (0.01, 0.07, 0.1, 0.29, 0.57, 0.58, 0.9, 1.0):
        for n in (100, 1000, 4097, 8192, 131072):
            for unit in (1, 64):
                exact = math.ceil(Fraction(str(frac)) * -(-n // unit))   # the decimal, not its float
                assert resolve_budget(Frac(frac), n, unit) == max(1, exact), (frac, n, unit)


def test_schema_follows_the_registry():
    """schema.json holds the file's structure; the head's pattern names and each pattern's
    parameters come from the registry when a document is validated."""
    from mcompile.kernels.patterns import PATTERNS as registry
    from mcompile.pattern_db import schema
    assert schema.PATTERNS is registry
    assert "params_dense" not in schema.load_schema()["$defs"]
    defs = schema.current_schema()["$defs"]
    pattern_field = defs["head"]["properties"]["pattern"]
    assert pattern_field["enum"] == list(registry)
    assert all(name in pattern_field["description"] for name in registry)
    params_of = {branch["if"]["properties"]["pattern"]["const"]:
                 branch["then"]["properties"]["params"]["$ref"] for branch in defs["head"]["allOf"]}
    assert params_of == {name: f"#/$defs/params_{name}" for name in registry}
    for name, pattern in registry.items():
        params = defs[f"params_{name}"]
        assert list(params.get("properties", {})) == list(pattern.defaults), name
        assert set(params.get("required", ())) == set(pattern.defaults) - set(pattern.optional), name
        assert schema.budget_params(name) == set(pattern.budgets) <= set(pattern.defaults)
        for budget, least in pattern.budgets.items():
            assert params["properties"][budget]["oneOf"][0] == {"type": "integer", "minimum": least}


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-4, 1.0), st.integers(1, 200_000), st.sampled_from([1, 64]))
def test_fraction_budget_is_ceil_of_the_fraction(frac, n, unit):
    total = -(-n // unit)
    got = resolve_budget(Frac(frac), n, unit)
    assert got == resolve_budget({"frac": frac}, n, unit) == resolve_budget(frac, n, unit)
    assert 1 <= got <= total
    assert got >= frac * total - 1e-6 and (got - 1) < max(1.0, frac * total)


# ---------------------------------------------------------------------------------------------
# round trip
names = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
count = st.integers(1, 200_000)
frac = st.floats(0, 1, exclude_min=True, allow_nan=False).map(Frac)
budget = st.one_of(count, frac)
unit = st.floats(0, 1, exclude_min=True, allow_nan=False)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)

PARAMS = {
    "dense": st.just({}),
    "a_shape": st.fixed_dictionaries({"n_init": st.one_of(st.integers(0, 1000), frac),
                                      "n_local": budget}),
    "vertical_slash": st.fixed_dictionaries({"vertical_size": budget, "slash_size": budget}),
    "block_sparse": st.fixed_dictionaries({"top_k": budget}),
    "sample_attention": st.fixed_dictionaries({"alpha": unit, "window_frac": unit},
                                              optional={"sample_frac": unit}),
    "sliding_window": st.fixed_dictionaries({"window": budget}),
}


@st.composite
def head_entries(draw):
    pattern = draw(st.sampled_from(sorted(PARAMS)))
    return HeadEntry(pattern, draw(PARAMS[pattern]),
                     recall=draw(st.one_of(st.none(), st.floats(0, 1))),
                     cost=draw(st.one_of(st.none(), st.floats(0, 1e6))),
                     score=draw(st.one_of(st.none(), finite)))


@st.composite
def databases(draw):
    kv = draw(st.integers(1, 3))
    ident = ModelIdentity(num_layers=draw(st.integers(1, 5)), num_heads=kv * draw(
        st.integers(1, 3)), num_kv_heads=kv, head_dim=draw(st.sampled_from([64, 128, 256])),
        name=draw(names), architecture=draw(names),
        sliding_window=draw(st.one_of(st.none(), st.integers(1, 4096))))
    layers = []
    for _ in range(ident.num_layers):
        kind = draw(st.sampled_from(["searched", "searched", "sliding", "not_searched"]))
        if kind == "searched":
            layers.append(LayerEntry.searched(draw(st.lists(
                head_entries(), min_size=ident.num_heads, max_size=ident.num_heads))))
        elif kind == "sliding":
            layers.append(LayerEntry.sliding(draw(st.one_of(st.none(), st.integers(1, 9999)))))
        else:
            layers.append(LayerEntry.not_searched(draw(names)))
    created = draw(st.datetimes()).isoformat()
    prov = Provenance(
        tool=draw(st.text(min_size=1, max_size=8)),
        tool_version="0.1.0", created=created, command=draw(names),
        calibration=draw(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"data": names, "length": st.integers(1, 10**6),
                          "samples": st.integers(1, 100)}))),
        budget=draw(st.one_of(st.none(), st.dictionaries(
            st.text(max_size=6), st.one_of(finite, st.text(max_size=6), st.booleans(),
                                           st.none()), max_size=3))),
        source=draw(names), notes=draw(names))
    return PatternDB.build(ident, layers, prov)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(databases())
def test_round_trip_random_databases(db):
    text = dumps(db)
    back = loads(text, "roundtrip.json")
    assert back == db
    assert dumps(back) == text                  # textual stability: stable key order
    # one head per line: each searched head is exactly one line of the file
    n_heads = sum(len(l.heads) for l in db.layers)
    assert sum(1 for line in text.splitlines() if line.strip().startswith('{"pattern"')) \
        == n_heads


def test_save_load_file(tmp_path):
    db = tiny_db()
    p = save_db(db, tmp_path / "sub" / "tiny.json")
    assert load_db(p) == db
    assert p.read_text().endswith("]\n}\n")


def test_sample_attention_params_round_trip_and_build(tmp_path):
    """Every parameter the sample_attention builder takes is storable, and loads back into a
    plan the builder accepts."""
    from mcompile.kernels.patterns import validate_params
    params = {"alpha": 0.9, "window_frac": 0.05, "sample_frac": 0.1, "max_columns": Frac(0.2),
              "count_window": False}
    ident = tiny_identity()
    heads = [HeadEntry("sample_attention", params, recall=0.9, cost=0.2)] * ident.num_heads
    db = PatternDB.build(ident, [LayerEntry.searched(heads)] * 3, Provenance(command="test"))
    loaded = load_db(save_db(db, tmp_path / "sa.json"))
    assert loaded == db
    plan = loaded.layers[0].layer_plan().heads[0]
    assert validate_params(plan.pattern, plan.params)["count_window"] is False
    bad = json.loads(dumps(db))
    bad["layers"][0]["heads"][0]["params"]["count_window"] = "no"
    with pytest.raises(PatternDBValidationError, match="count_window"):
        loads(json.dumps(bad))


def test_save_refuses_invalid(tmp_path):
    ident = tiny_identity()
    bad = PatternDB(ident, Provenance(), (LayerEntry.searched([HeadEntry("dense")]),) * 3)
    with pytest.raises(PatternDBValidationError, match=r"\$\.layers\[0\]\.heads"):
        save_db(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(PatternDBValidationError, match="vertical_size"):
        PatternDB.build(ident, [LayerEntry.searched(
            [HeadEntry("vertical_slash", {"vertical_size": 0, "slash_size": 1})] * 2)] * 3)


# ---------------------------------------------------------------------------------------------
# malformed files: each error names the file and the right field
def _h(o, i=0, j=0):
    return o["layers"][i]["heads"][j]


MALFORMED = [
    ("unknown_pattern", lambda o: _h(o).__setitem__("pattern", "vertical"),
     "$.layers[0].heads[0].pattern", "one of dense"),
    ("negative_budget", lambda o: _h(o)["params"].__setitem__("vertical_size", -5),
     "$.layers[0].heads[0].params.vertical_size", "integer >= 1"),
    ("zero_budget", lambda o: _h(o)["params"].__setitem__("slash_size", 0),
     "$.layers[0].heads[0].params.slash_size", "integer >= 1"),
    ("frac_above_one", lambda o: _h(o)["params"].__setitem__("vertical_size", {"frac": 1.5}),
     "$.layers[0].heads[0].params.vertical_size", "0 < x <= 1"),
    ("frac_zero", lambda o: _h(o, 0, 1)["params"].__setitem__("n_local", {"frac": 0}),
     "$.layers[0].heads[1].params.n_local", "0 < x <= 1"),
    ("budget_string", lambda o: _h(o)["params"].__setitem__("vertical_size", "1000"),
     "$.layers[0].heads[0].params.vertical_size", "token count"),
    ("budget_float", lambda o: _h(o)["params"].__setitem__("vertical_size", 10.5),
     "$.layers[0].heads[0].params.vertical_size", "token count"),
    ("missing_param", lambda o: _h(o)["params"].pop("slash_size"),
     "$.layers[0].heads[0].params.slash_size", "found nothing (missing)"),
    ("param_of_other_pattern", lambda o: _h(o)["params"].__setitem__("n_init", 3),
     "$.layers[0].heads[0].params.n_init", "only the fields vertical_size, slash_size"),
    ("negative_n_init", lambda o: _h(o, 0, 1)["params"].__setitem__("n_init", -1),
     "$.layers[0].heads[1].params.n_init", "integer >= 0"),
    ("dense_with_params", lambda o: _h(o).update(pattern="dense", params={"top_k": 3}),
     "$.layers[0].heads[0].params", "no parameters"),
    ("alpha_out_of_range", lambda o: _h(o).update(
        pattern="sample_attention", params={"alpha": 1.2, "window_frac": 0.1}),
     "$.layers[0].heads[0].params.alpha", "(0, 1]"),
    ("too_few_heads", lambda o: o["layers"][0]["heads"].pop(),
     "$.layers[0].heads", "2 heads"),
    ("too_many_heads", lambda o: o["layers"][0]["heads"].append(_h(o)),
     "$.layers[0].heads", "found 3 heads"),
    ("too_few_layers", lambda o: o["layers"].pop(), "$.layers", "3 layers"),
    ("wrong_schema_version", lambda o: o.__setitem__("schema_version", 3),
     "$.schema_version", "found 3; accepted: one of 1, 2"),
    ("missing_schema_version", lambda o: o.pop("schema_version"),
     "$.schema_version", "missing"),
    ("edited_fingerprint", lambda o: o["model"].__setitem__("fingerprint",
                                                           "L3-H2-KV1-D64-00000000"),
     "$.model.fingerprint", fingerprint(3, 2, 1, 64)),
    ("malformed_fingerprint", lambda o: o["model"].__setitem__("fingerprint", "llama"),
     "$.model.fingerprint", "L30-H9-KV3-D64"),
    ("kv_not_divisor", lambda o: o["model"].__setitem__("num_kv_heads", 3),
     "$.model.num_kv_heads", "a divisor of model.num_heads"),
    ("zero_heads", lambda o: o["model"].__setitem__("num_heads", 0),
     "$.model.num_heads", "integer >= 1"),
    ("unknown_layer_kind", lambda o: o["layers"][1].__setitem__("kind", "slid"),
     "$.layers[1].kind", "one of searched, sliding, not_searched"),
    ("sliding_with_heads", lambda o: o["layers"][1].__setitem__("heads", []),
     "$.layers[1].heads", "unknown field"),
    ("searched_without_heads", lambda o: o["layers"][0].pop("heads"),
     "$.layers[0].heads", "missing"),
    ("recall_above_one", lambda o: _h(o).__setitem__("recall", 1.5),
     "$.layers[0].heads[0].recall", "[0, 1]"),
    ("negative_cost", lambda o: _h(o).__setitem__("cost", -0.1),
     "$.layers[0].heads[0].cost", ">= 0"),
    ("missing_created", lambda o: o["provenance"].pop("created"),
     "$.provenance.created", "ISO 8601"),
    ("bad_calibration_length", lambda o: o["provenance"]["calibration"].__setitem__(
        "length", -8), "$.provenance.calibration", "length"),
    ("unknown_top_level", lambda o: o.__setitem__("extra", 1), "$.extra", "unknown field"),
    ("head_not_object", lambda o: o["layers"][0]["heads"].__setitem__(0, "vs"),
     "$.layers[0].heads[0]", "pattern, params"),
    ("sliding_window_zero", lambda o: o["layers"][1].__setitem__("window", 0),
     "$.layers[1].window", "integer >= 1"),
]


@pytest.mark.parametrize("mutate,path,text", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_file_names_field(tmp_path, mutate, path, text):
    obj = base_obj()
    mutate(obj)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(obj))
    with pytest.raises(PatternDBValidationError) as ei:
        load_db(f)
    msg = str(ei.value)
    assert str(f) in msg
    assert path in ei.value.paths, (path, msg)
    line = next(l for l in msg.splitlines() if path + ":" in l)
    assert "found" in line and "accepted" in line
    assert text in msg, msg


def test_syntax_error_line_column(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{\n  "schema_version": 1,\n  "model": {,}\n}')
    with pytest.raises(PatternDBValidationError, match=r"broken\.json: \$: found invalid JSON "
                                                       r"at line 3 column"):
        load_db(f)


def test_duplicate_key_and_nan_are_errors():
    text = dumps(tiny_db())
    dup = text.replace('"recall": 0.9', '"recall": 0.9, "recall": 0.1', 1)
    with pytest.raises(PatternDBValidationError) as ei:
        loads(dup, "dup.json")
    assert ei.value.paths == ["$.layers[0].heads[0].recall"]
    nan = text.replace('"cost": 0.1', '"cost": NaN', 1)
    with pytest.raises(PatternDBValidationError, match=r"\$\.layers\[0\]\.heads\[0\]\.cost: "
                                                       r"found NaN"):
        loads(nan, "nan.json")


def test_minference_file_given_to_loader_gets_hint():
    with pytest.raises(PatternDBValidationError, match="import --from minference"):
        load_db(DATA / "minference_small.json")


def test_missing_file():
    with pytest.raises(PatternDBValidationError, match="no such file"):
        load_db("/nonexistent/x.json")


def test_loading_never_executes_code(tmp_path):
    # no pickle/eval path exists: a file that is not JSON is just a syntax error
    f = tmp_path / "evil.json"
    f.write_text("__import__('os').system('touch pwned')")
    with pytest.raises(PatternDBValidationError, match="invalid JSON"):
        load_db(f)
    assert not Path("pwned").exists()


# ---------------------------------------------------------------------------------------------
# lookup
@pytest.fixture()
def shipped(tmp_path):
    d = tmp_path / "databases"
    save_db(tiny_db(), d / "tiny.json")
    other = ModelIdentity(2, 4, 2, 128, name="other")
    save_db(PatternDB.build(other, [LayerEntry.searched([HeadEntry("dense")] * 4)] * 2),
            d / "other.json")
    return d


def test_auto_finds_shipped_by_fingerprint_alone(shipped):
    ident = ModelIdentity.from_shapes(3, 2, 1, 64)           # no name: fingerprint only
    plan = resolve_model_plan("auto", ident, databases_dir=shipped)
    assert plan.source == f"db:{shipped / 'tiny.json'}"
    assert "matches fingerprint" in plan.reason
    lp = plan.layer_plan(0)
    assert isinstance(lp, LayerPlan) and len(lp.heads) == 2
    assert lp.heads[0] == HeadPlan("vertical_slash", {"slash_size": 200, "vertical_size": 100})
    assert lp.heads[1].params["n_local"] == Frac(0.25)
    assert plan.layer_plan(1) is None and plan.layer_plan(2) is None   # sliding, not searched
    # None (like "default") means the default plan, as the backend's options document
    assert resolve_model_plan(None, ident, databases_dir=shipped).is_default


def test_auto_falls_back_to_default(shipped):
    ident = ModelIdentity(4, 8, 2, 64, sliding_layers=(1,))
    plan = resolve_model_plan("auto", ident, databases_dir=shipped)
    assert plan.source == "default" and plan.is_default
    assert ident.fingerprint in plan.reason
    lp = plan.layer_plan(0)
    assert len(lp.heads) == 8
    assert all(h == HeadPlan("vertical_slash", DEFAULT_PARAMS) for h in lp.heads)
    assert DEFAULT_PARAMS == {"vertical_size": 1000, "slash_size": 6096}
    assert DEFAULT_PARAMS == validate_params("vertical_slash", {})   # the pattern's own defaults
    assert plan.layer_plan(1) is None                            # sliding layer stays exact
    with pytest.raises(IndexError):
        plan.layer_plan(4)


def test_lookup_order_explicit_beats_shipped(shipped, tmp_path):
    ident = tiny_identity()
    mine = save_db(tiny_db(vs=(7, 9)), tmp_path / "mine.json")
    plan = resolve_model_plan(str(mine), ident, databases_dir=shipped)
    assert plan.source == f"db:{mine}" and plan.reason == "explicit path"
    assert plan.layer_plan(0).heads[0].params == {"slash_size": 9, "vertical_size": 7}
    plan = resolve_model_plan(mine, ident, databases_dir=shipped)          # PathLike
    assert plan.layer_plan(0).heads[0].params["vertical_size"] == 7
    plan = resolve_model_plan("tiny", ident, databases_dir=shipped)        # shipped key
    assert plan.layer_plan(0).heads[0].params["vertical_size"] == 100
    plan = resolve_model_plan("default", ident, databases_dir=shipped)     # explicit default
    assert plan.is_default
    plan = resolve_model_plan(tiny_db(vs=(1, 2)), ident, databases_dir=shipped)
    assert plan.source == "db:<memory>"


def test_fingerprint_refusal_and_force(shipped):
    wrong = ModelIdentity(5, 2, 2, 64)            # same head count, other shape
    with pytest.raises(FingerprintMismatchError) as ei:
        resolve_model_plan("tiny", wrong, databases_dir=shipped)
    msg = str(ei.value)
    assert fingerprint(3, 2, 1, 64) in msg and wrong.fingerprint in msg and "force_db" in msg
    plan = resolve_model_plan("tiny", wrong, force=True, databases_dir=shipped)
    assert plan.forced and plan.notes and wrong.fingerprint in plan.notes[0]
    assert plan.layer_plan(0) is not None and plan.layer_plan(4) is None
    with pytest.raises(PatternDBError, match="per query head"):
        resolve_model_plan("tiny", ModelIdentity(3, 4, 1, 64), force=True,
                           databases_dir=shipped)


def test_unknown_key_and_missing_file_list_shipped(shipped):
    with pytest.raises(UnknownDatabaseError, match="Shipped keys: other, tiny"):
        resolve_model_plan("llama-9000", tiny_identity(), databases_dir=shipped)
    with pytest.raises(UnknownDatabaseError, match=r"no such pattern database file.*other, tiny"):
        resolve_model_plan("nope/missing.json", tiny_identity(), databases_dir=shipped)


def test_name_breaks_fingerprint_ties_and_broken_shipped_skipped(shipped):
    save_db(tiny_db(identity=tiny_identity(name="alt"), vs=(5, 5)), shipped / "a_alt.json")
    (shipped / "broken.json").write_text("{")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        plan = resolve_model_plan("auto", tiny_identity(name="tiny"), databases_dir=shipped)
    assert plan.source.endswith("tiny.json") and "by model name" in plan.reason
    assert any("broken.json" in str(x.message) for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = resolve_model_plan("auto", ModelIdentity.from_shapes(3, 2, 1, 64, name=""),
                                  databases_dir=shipped)
    assert plan.source.endswith("a_alt.json") and "first by key" in plan.reason
    with pytest.raises(PatternDBValidationError, match="broken.json"):
        resolve_model_plan("broken", tiny_identity(), databases_dir=shipped)


def test_real_shipped_dir_resolves():
    plan = resolve_model_plan("auto", ModelIdentity(30, 9, 3, 64, name="SmolLM2"))
    assert isinstance(plan, ModelPlan) and plan.layer_plan(0) is not None


# ---------------------------------------------------------------------------------------------
# MInference / SGLang import
def test_import_minference_small_file():
    ident = ModelIdentity(3, 4, 2, 128, name="mini")
    db = import_minference(DATA / "minference_small.json", ident)
    l0, l1, l2 = db.layers
    assert l0.heads[0] == HeadEntry("vertical_slash", {"vertical_size": 1000,
                                                       "slash_size": 6096}, score=0.95)
    assert l0.heads[1].pattern == "a_shape" and l0.heads[1].params == {"n_init": 100,
                                                                       "n_local": 800}
    assert l0.heads[2].pattern == "block_sparse" and l0.heads[2].params == {"top_k": 100}
    assert l1.heads[0].score == 12345 and l1.heads[0].recall is None
    assert l1.heads[1].params == {"n_init": 64, "n_local": 1024}        # "a_shape" alias
    assert l1.heads[2].params == {"vertical_size": 1000, "slash_size": 6096}   # missing head
    assert all(h.params == {"vertical_size": 1000, "slash_size": 6096} for h in l2.heads)
    assert "layers 2..2 absent" in db.provenance.notes
    assert db.provenance.source == "minference:minference_small.json"
    assert loads(dumps(db)) == db


def test_import_minference_shape_from_file_and_errors():
    db = import_minference(DATA / "minference_small.json", num_kv_heads=1, head_dim=64)
    assert (db.model.num_layers, db.model.num_heads) == (2, 4)
    with pytest.raises(PatternDBValidationError, match="model-shape"):
        import_minference(DATA / "minference_small.json")
    data = json.loads((DATA / "minference_small.json").read_text())
    bad = copy.deepcopy(data)
    bad[0]["1"] = ["flex_vertical_and_slash", [0.9, 4096], [0.9, 4096], 0.0]
    with pytest.raises(PatternDBValidationError) as ei:
        import_minference(bad, ModelIdentity(2, 4, 2, 64))
    assert ei.value.paths == ['$[0]["1"][0]'] and "stream_llm" in str(ei.value)
    bad = copy.deepcopy(data)
    bad[1]["7"] = ["vertical_and_slash", 10, 10, 0]
    with pytest.raises(PatternDBValidationError, match=r'\$\[1\]\["7"\]: found head key'):
        import_minference(bad, ModelIdentity(2, 4, 2, 64))
    bad = copy.deepcopy(data)
    bad[0]["0"][2] = -3
    with pytest.raises(PatternDBValidationError, match=r'\$\[0\]\["0"\]\[2\]: found -3'):
        import_minference(bad, ModelIdentity(2, 4, 2, 64))
    with pytest.raises(PatternDBValidationError, match="at most 1 layers"):
        import_minference(data, ModelIdentity(1, 4, 2, 64))


def test_import_sglang_config():
    db = import_sglang_config(DATA / "sglang_config.json")
    assert (db.model.num_layers, db.model.num_heads, db.model.num_kv_heads,
            db.model.head_dim) == (2, 4, 2, 16)
    assert db.model.architecture == "Qwen2ForCausalLM"
    assert db.layers[1].heads[0].params == {"vertical_size": 9192, "slash_size": 14288}
    assert "sparse_attention_threshold=32768" in db.provenance.notes
    cfg = json.loads((DATA / "sglang_config.json").read_text())
    del cfg["dual_chunk_attention_config"]["sparse_attention_config"]
    with pytest.raises(PatternDBValidationError,
                       match=r"dual_chunk_attention_config\.sparse_attention_config: found "
                             r"nothing"):
        import_sglang_config(cfg)


# ---------------------------------------------------------------------------------------------
# CLI (in process, through a parser built like mcompile's)
def run_cli(argv, capsys):
    try:
        from mcompile.cli import main as mcompile_main   # the lead's entry, once it exists
    except ImportError:
        mcompile_main = None
    if mcompile_main is not None:
        code = mcompile_main(list(argv))
    else:
        parser = argparse.ArgumentParser(prog="mcompile")
        add_db_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))
        code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_validate(tmp_path, capsys):
    good = save_db(tiny_db(), tmp_path / "good.json")
    code, out, err = run_cli(["db", "validate", str(good)], capsys)
    assert code == 0 and out.startswith("OK:") and fingerprint(3, 2, 1, 64) in out
    code, out, _ = run_cli(["db", "validate", str(good), "--model-shape", "3,2,1,64"], capsys)
    assert code == 0 and "matches" in out
    code, out, err = run_cli(["db", "validate", str(good), "--model-shape", "L4-H2-KV1-D64"],
                             capsys)
    assert code == 1 and fingerprint(4, 2, 1, 64) in err and fingerprint(3, 2, 1, 64) in err
    obj = base_obj()
    obj["layers"][0]["heads"][1]["pattern"] = "stream"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj))
    code, out, err = run_cli(["db", "validate", str(bad)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "$.layers[0].heads[1].pattern" in err


def test_cli_show_and_plot(tmp_path, capsys):
    good = save_db(tiny_db(), tmp_path / "good.json")
    png = tmp_path / "map.png"
    code, out, err = run_cli(["db", "show", str(good), "--plot", str(png)], capsys)
    assert code == 0, err
    assert "fingerprint: " + fingerprint(3, 2, 1, 64) in out
    assert "1x vs(100,200)" in out and "sliding" in out and "not_searched" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(["db", "show", str(tmp_path / "none.json")], capsys)
    assert code == 1 and "no such file" in err


def test_cli_import_and_diff(tmp_path, capsys):
    out_a = tmp_path / "a.json"
    code, out, err = run_cli(["db", "import", "--from", "minference",
                              str(DATA / "minference_small.json"), str(out_a),
                              "--model-shape", "2,4,2,64", "--name", "mini"], capsys)
    assert code == 0, err
    db = load_db(out_a)
    assert db.model.name == "mini" and "import" in (db.provenance.command or "")
    code, _, err = run_cli(["db", "import", "--from", "minference",
                            str(DATA / "minference_small.json"), str(out_a),
                            "--model-shape", "2,4,2,64"], capsys)
    assert code == 1 and "--overwrite" in err
    code, _, err = run_cli(["db", "import", "--from", "minference",
                            str(DATA / "minference_small.json"), str(tmp_path / "x.json")],
                           capsys)
    assert code == 1 and "--model-shape" in err and not (tmp_path / "x.json").exists()
    out_s = tmp_path / "s.json"
    code, _, err = run_cli(["db", "import", "--from", "sglang", str(DATA / "sglang_config.json"),
                            str(out_s)], capsys)
    assert code == 0, err
    assert load_db(out_s).model.head_dim == 16

    # diff: same -> 0, changed head -> 1, broken file -> 2
    code, out, _ = run_cli(["db", "diff", str(out_a), str(out_a)], capsys)
    assert code == 0 and "same plan" in out
    obj = json.loads(out_a.read_text())
    obj["layers"][0]["heads"][3] = {"pattern": "dense", "params": {}}
    out_b = tmp_path / "b.json"
    out_b.write_text(json.dumps(obj))
    code, out, _ = run_cli(["db", "diff", str(out_a), str(out_b)], capsys)
    assert code == 1
    assert "layer 0 head 3: vertical_slash{slash_size=800, vertical_size=30} -> dense" in out
    out_b.write_text("[]")
    code, _, err = run_cli(["db", "diff", str(out_a), str(out_b)], capsys)
    assert code == 2 and "b.json" in err
