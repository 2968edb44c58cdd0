"""A pattern is one file and one import: a toy pattern defined here, registered for these tests
only, runs through the backend, the database (schema, save, load) and the search without any
other change to the project."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcompile import reporting
from mcompile.eval.evaluate import layer_plans
from mcompile.kernels.index import num_q_blocks
from mcompile.kernels.patterns import PATTERNS, Pattern, register_pattern, unregister_pattern
from mcompile.kernels.patterns._common import (cdiv, compact, plot_selection, q_blocks, static_index,
                                               with_defaults)
from mcompile.pattern_db import (HeadEntry, LayerEntry, PatternDB, PatternDBValidationError, Provenance,
                                 load_db, save_db)
from mcompile.pattern_db.schema import current_schema
from mcompile.pattern_db.search import build_database, capture_prompts, choose, model_identity, score_capture
from mcompile.pattern_db.search.candidates import make_candidates
from plan_reference import plan_logits
from tiny_models import tiny_inputs, tiny_model

# --- the toy pattern: what a user's pattern file holds ------------------------------------------
NAME = "toy"
DEFAULTS = {"stride": 2}


def validate(params: dict | None) -> dict:
    p = with_defaults(params, DEFAULTS, tuple(DEFAULTS), NAME)
    if isinstance(p["stride"], bool) or not isinstance(p["stride"], int) or p["stride"] < 1:
        raise ValueError(f"parameter 'stride' must be an integer >= 1, got {p['stride']!r}")
    return p


def _keep(n: int, stride: int, block_m: int, block_n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(NQB, NKB) which key blocks each query block lists, and their starts: every
    ``stride``-th key block before the query block's rows, plus the blocks its rows cover."""
    start, last = q_blocks(n, block_m, device)
    key = torch.arange(cdiv(n, block_n), device=device, dtype=torch.int64) * block_n
    causal = key.view(1, -1) <= last.view(-1, 1)
    diagonal = key.view(1, -1) + block_n > start.view(-1, 1)
    every = (key // block_n) % stride == 0
    return causal & (every.view(1, -1) | diagonal), key


def sizes(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    keep, _ = _keep(n, validate(params)["stride"], block_m, block_n, "cpu")
    return int(keep.sum(-1).max()), 0


def cost(n: int, params: dict | None = None, block_m: int = 64, block_n: int = 64) -> tuple[int, int]:
    keep, _ = _keep(n, validate(params)["stride"], block_m, block_n, "cpu")
    return int(keep.sum()), 0


def build(q, k, params=None, *, heads=None, block_m=64, block_n=64, scale=None):
    p = validate(params)
    B, Hq, N, _ = q.shape
    keep, key = _keep(N, p["stride"], block_m, block_n, q.device)
    count, offsets = compact(key.expand(keep.shape), keep, sizes(N, p, block_m, block_n)[0])
    return static_index(count, offsets, B, Hq if heads is None else len(heads), block_m, block_n)


def reference_mask(q, k, params=None, *, heads=None, block_m=64, block_n=64, scale=None):
    p = validate(params)
    B, Hq, N, _ = q.shape
    r = torch.arange(N, device=q.device)
    row_start = (r // block_m * block_m).view(-1, 1)
    col_block = (r // block_n).view(1, -1)
    mask = (r.view(1, -1) <= r.view(-1, 1)) & ((col_block % p["stride"] == 0)
                                               | ((col_block + 1) * block_n > row_start))
    return mask.expand(B, Hq if heads is None else len(heads), N, N).clone()


def demo(path: str = "toy.png", n: int = 1024, **params) -> str:
    q = torch.zeros(1, 1, n, 64)
    return plot_selection(path, f"{NAME} stride={validate(params)['stride']}", build, q, q, validate(params))


TOY = Pattern(NAME, build, validate, sizes, cost, reference_mask, demo, dynamic=False, defaults=DEFAULTS,
              param_schema={"stride": {"minimum": 1, "description": "a key block stride (integer >= 1)"}},
              doc="every stride-th key block before the diagonal, plus the diagonal blocks")
# --- end of the toy pattern ---------------------------------------------------------------------

LENGTH = 384        # 6 query blocks: the last ones skip key blocks 1 and 3, far from dense
OPTIONS = {"plan": {"pattern": NAME}, "min_len": 64, "dense_tail": 0}


@pytest.fixture(autouse=True)
def toy_registered():
    register_pattern(TOY)
    torch._dynamo.reset()
    reporting.reset()
    yield
    torch._dynamo.reset()
    if PATTERNS.get(NAME) is TOY:
        unregister_pattern(NAME)


def _dense(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _compiled(model, ids, options):
    compiled = torch.compile(model, backend="minference", options=options)
    with torch.no_grad():
        return compiled(ids, use_cache=False).logits


def test_the_toy_pattern_is_a_pattern():
    """Its index is its reference mask, and its cost counts that index's blocks."""
    from mcompile.kernels.index import check_index
    from mcompile.kernels.reference import index_to_mask
    q = torch.randn(1, 2, 300, 16)
    for stride in (1, 2, 3):
        index = build(q, q, {"stride": stride}, block_m=64, block_n=32)
        check_index(index, 300)
        assert torch.equal(index_to_mask(index, 300), reference_mask(q, q, {"stride": stride}, block_m=64, block_n=32))
    assert cost(LENGTH, {"stride": 1}) == (sum(i + 1 for i in range(num_q_blocks(LENGTH, 64))), 0)
    assert cost(LENGTH) == (1 + 2 + 2 + 3 + 3 + 4, 0)


def test_the_backend_runs_a_registered_pattern():
    model = tiny_model("llama")
    ids, _ = tiny_inputs(1, LENGTH)
    got = _compiled(model, ids, OPTIONS)
    torch.testing.assert_close(got, plan_logits(model, ids, layer_plans(model, OPTIONS)), rtol=1e-4, atol=1e-4)
    assert float((got - _dense(model, ids)).abs().max()) > 1e-2


def test_a_database_of_toy_heads_saves_loads_validates_and_runs(tmp_path):
    model = tiny_model("llama")
    identity = model_identity(model, name="tiny-llama")
    heads = [HeadEntry(NAME, {"stride": 2}), HeadEntry(NAME, {"stride": 3}), HeadEntry("dense"),
             HeadEntry(NAME, {"stride": 2})]
    db = PatternDB.build(identity, [LayerEntry.searched(heads)] * identity.num_layers, Provenance(command="test"))
    path = save_db(db, tmp_path / "toy.json")
    assert load_db(path) == db
    stored = json.loads(path.read_text())["layers"][0]["heads"][1]
    assert (stored["pattern"], stored["params"]) == (NAME, {"stride": 3})
    # the schema derived from the registry lists the toy's parameters and checks them
    assert current_schema()["$defs"][f"params_{NAME}"]["required"] == ["stride"]
    bad = json.loads(path.read_text())
    bad["layers"][1]["heads"][0]["params"] = {"stride": 0}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PatternDBValidationError, match=r"\$\.layers\[1\]\.heads\[0\]\.params\.stride: .*>= 1"):
        load_db(tmp_path / "bad.json")

    ids, _ = tiny_inputs(1, LENGTH)
    options = {"db": str(path), "min_len": 64, "dense_tail": 0}
    got = _compiled(model, ids, options)
    torch.testing.assert_close(got, plan_logits(model, ids, layer_plans(model, options)), rtol=1e-4, atol=1e-4)
    assert float((got - _dense(model, ids)).abs().max()) > 1e-2

    # without the pattern registered, the same file names an unknown pattern
    unregister_pattern(NAME)
    try:
        with pytest.raises(PatternDBValidationError, match=r"\$\.layers\[0\]\.heads\[0\]\.pattern: .*dense"):
            load_db(path)
    finally:
        register_pattern(TOY)


def test_the_search_scores_and_chooses_the_toy_pattern(tmp_path):
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 96, (1, 256), generator=g)]
    cap = capture_prompts(model, prompts, tmp_path / "cap")
    identity = model_identity(model, name="tiny-llama")
    cands = make_candidates(256, patterns=["dense", "a_shape", NAME])
    toy = [i for i, c in enumerate(cands) if c.pattern == NAME]
    assert len(toy) == 1 and cands[toy[0]].params == DEFAULTS
    scores = score_capture(cap, list(range(identity.num_layers)), cands, progress=False)
    t = toy[0]
    for array in (scores.cost, scores.recall, scores.kernel_density):
        assert np.isfinite(array[:, t]).all()
    # 8 of dense's 10 tiles at 256 tokens, recalling some but not all of the attention mass
    assert scores.kernel_density[:, t] == pytest.approx(0.8, abs=1e-6)
    assert (scores.recall[:, t] > 0).all() and (scores.recall[:, t] < 1).all()

    # with only toy and dense allowed, a budget below dense's cost takes toy heads
    choice = choose(scores, 0.9, "output", patterns=[NAME, "dense"])
    db = build_database(identity, scores, choice, Provenance(command="test"))
    back = load_db(save_db(db, tmp_path / "searched.json"))
    chosen = [h for layer in back.layers for h in layer.heads if h.pattern == NAME]
    assert chosen and all(h.params == DEFAULTS and h.cost == pytest.approx(0.8, abs=1e-4) for h in chosen)
