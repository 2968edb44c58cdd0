"""Budgets as laws of the length: resolution, the schema, the search's fit, and ``db cost``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mcompile.kernels.cost_model import shipped
from mcompile.kernels.patterns import build_layer_index, resolve_budget
from mcompile.pattern_db import (Frac, HeadEntry, LayerEntry, Law, ModelIdentity, PatternDB, Provenance,
                                 PatternDBValidationError, dumps, load_db, loads, save_db)
from mcompile.cli import main as mcompile_main
from mcompile.pattern_db.cost import plan_cost
from mcompile.pattern_db.search import SearchScores
from mcompile.pattern_db.search.candidates import Candidate
from mcompile.pattern_db.search.laws import fit_laws
from mcompile.plan import LayerPlan


def law_db(params: dict, pattern: str = "vertical_slash", layers: int = 2, heads: int = 2) -> PatternDB:
    ident = ModelIdentity(num_layers=layers, num_heads=heads, num_kv_heads=1, head_dim=64, name="laws")
    return PatternDB.build(ident, [LayerEntry.searched([HeadEntry(pattern, dict(params))] * heads)] * layers,
                           Provenance(created="2026-01-01T00:00:00+00:00",
                                      calibration={"data": "kjv", "length": 4096, "samples": 2,
                                                   "lengths": [2048, 4096]}))


def test_law_resolves_between_count_and_fraction():
    law = Law(3.0, 0.5)
    assert [resolve_budget(law, n) for n in (100, 8192, 131072)] == [30, 272, 1087]   # ceil(3 sqrt(n))
    assert resolve_budget(Law(1000, 0), 131072) == 1000 == resolve_budget(1000, 131072)
    assert resolve_budget(Law(5000, 0), 100) == 100                                   # clamped to n
    assert resolve_budget(Law(0.5, 0.9), 64 * 300, unit=64) == math.ceil(0.5 * 300 ** 0.9)   # key blocks
    for bad in ((0, 0.5), (-1, 0.5), (1.0, 1.5), (1.0, -0.1), (float("nan"), 0.5), (True, 0.5)):
        with pytest.raises(ValueError, match="Law"):
            Law(*bad)


def test_law_with_power_one_gives_the_fraction_index():
    """Where a law and the old fraction form coincide (power 1), the index is the same."""
    from mcompile.kernels.patterns._common import planted_qk
    q, k = planted_qk(1024, heads=2, kv_heads=1, d=128, hot_columns=(3, 200), diagonals=(0, 64, 300), seed=5)
    for pattern, frac_params, law_params in (
            ("vertical_slash", {"vertical_size": Frac(0.05), "slash_size": Frac(0.2)},
             {"vertical_size": Law(0.05, 1), "slash_size": Law(0.2, 1)}),
            ("block_sparse", {"top_k": Frac(0.3)}, {"top_k": Law(0.3, 1)}),
            ("a_shape", {"n_init": 64, "n_local": Frac(0.1)}, {"n_init": Law(64, 0), "n_local": Law(0.1, 1)})):
        a = build_layer_index(q, k, LayerPlan.uniform(pattern, 2, **frac_params))
        b = build_layer_index(q, k, LayerPlan.uniform(pattern, 2, **law_params))
        for x, y in zip((a.block_count, a.block_offset, a.column_count, a.column_index),
                        (b.block_count, b.block_offset, b.column_count, b.column_index)):
            assert torch.equal(x.expand_as(y), y.expand_as(x)), pattern
        assert int(a.block_count.sum()) > 0


def test_law_round_trips_through_the_schema(tmp_path):
    db = law_db({"vertical_size": Law(12.5, 0.4), "slash_size": Law(0.31, 0.85)})
    path = save_db(db, tmp_path / "laws.json")
    text = path.read_text()
    assert '"vertical_size": {"scale": 12.5, "power": 0.4}' in text and '"schema_version": 2' in text
    again = load_db(path)
    assert again.layers[0].heads[0].params == {"vertical_size": Law(12.5, 0.4), "slash_size": Law(0.31, 0.85)}
    plan = again.layer_plan(1)
    assert resolve_budget(plan.heads[0].params["slash_size"], 131072) == math.ceil(0.31 * 131072 ** 0.85)
    assert dumps(again) == dumps(db)


def test_version_one_files_load_and_bad_laws_are_named():
    obj = json.loads(dumps(law_db({"vertical_size": 1000, "slash_size": {"frac": 0.5}})))
    obj["schema_version"] = 1
    assert loads(json.dumps(obj)).schema_version == 2                 # migrated
    obj["schema_version"] = 2
    obj["layers"][0]["heads"][1]["params"]["slash_size"] = {"scale": 2.0, "power": 1.5}
    with pytest.raises(PatternDBValidationError) as e:
        loads(json.dumps(obj))
    assert "$.layers[0].heads[1].params.slash_size" in str(e.value) and "0 <= b <= 1" in str(e.value)


def scores_at(n: int, candidates: list[Candidate], loss_per_candidate: list[float]) -> SearchScores:
    loss = np.array(loss_per_candidate, dtype=float)[None, :, None]
    return SearchScores(length=n, candidates=candidates, layers=[0], num_heads=1, cost=loss * 0 + 0.1,
                        recall=1 - loss, error=loss)


def test_fit_laws_matches_the_loss_at_shorter_lengths():
    """A head that reaches its loss at 2K with half the key blocks it has at 8K (4x the length)
    gets the power log(2)/log(4) = 0.5, through the budget chosen at 8K."""
    fams = [Candidate("block_sparse", {"top_k": Frac(f)}, f) for f in (0.05, 0.1, 0.2, 0.4)]
    long = scores_at(8192, fams, [0.4, 0.2, 0.1, 0.05])          # top_k 7, 13, 26, 52 of 128 blocks
    short = scores_at(2048, fams, [0.4, 0.2, 0.15, 0.1])         # top_k 2, 4, 7, 13 of 32 blocks
    choice = np.array([[2]])                                     # chosen at 8K: 26 blocks, loss 0.1
    law = fit_laws(long, choice, [short], "output")[0][0]["top_k"]
    assert law == Law(26 / 128 ** 0.5, 0.5) or (law.power == 0.5 and law.scale == pytest.approx(26 / 128 ** 0.5, 1e-3))
    assert resolve_budget(law, 8192, 64) == 26                   # through the chosen budget
    assert resolve_budget(law, 2048, 64) == 13                   # the short length's match (loss 0.1)
    # a loss between two scored candidates interpolates their budgets in log space
    short_between = scores_at(2048, fams, [0.4, 0.2, 0.15, 0.05])     # 0.1 lies between 7 and 13 blocks
    law = fit_laws(long, choice, [short_between], "output")[0][0]["top_k"]
    assert 7 < law.items(32) < 13 and 0.5 < law.power < 1
    # needing more than its share at the short length clamps to a fraction through the chosen budget
    law = fit_laws(long, choice, [scores_at(2048, fams, [0.4, 0.1, 0.05, 0.02])], "output")[0][0]["top_k"]
    assert law == Frac(26 / 128) or law == Frac(0.2031)
    # no shorter length: the chosen candidate's parameters stay as they are
    assert fit_laws(long, choice, [], "output")[0][0] == {"top_k": Frac(0.2)}


def test_fit_laws_gives_a_count_when_the_need_does_not_grow():
    fams = [Candidate("vertical_slash", {"vertical_size": v, "slash_size": 4 * v}, None, "x") for v in (200, 400, 800)]
    long = scores_at(8192, fams, [0.3, 0.1, 0.05])
    short = scores_at(4096, fams, [0.3, 0.1, 0.05])
    params = fit_laws(long, np.array([[1]]), [short], "output")[0][0]
    assert params == {"vertical_size": 400, "slash_size": 1600}


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``mcompile ARGV`` run in this process."""
    code = mcompile_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.skipif(shipped() is None, reason="no measured cost model installed")
def test_db_cost_density_falls_with_a_law_and_errors_are_clear(tmp_path, capsys):
    fixed = save_db(law_db({"vertical_size": 1000, "slash_size": 6096}), tmp_path / "fixed.json")
    frac = save_db(law_db({"top_k": Frac(0.25)}, "block_sparse"), tmp_path / "frac.json")
    law = save_db(law_db({"top_k": Law(0.25 * 2048 ** 0.5, 0.5)}, "block_sparse"), tmp_path / "law.json")
    code, out, err = run_cli(["db", "cost", str(frac), "--lengths", "8K,131072,1M", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)

    def top_k_density(k: int, blocks: int) -> float:     # k key blocks per query block, or all it has
        return (k * (k + 1) / 2 + k * (blocks - k)) / (blocks * (blocks + 1) / 2)
    assert [r["n"] for r in rows] == [8192, 131072, 1048576]
    for r in rows:                                                    # a fraction keeps its density
        blocks = r["n"] // 64
        assert r["density"] == pytest.approx(top_k_density(blocks // 4, blocks), abs=2e-4)
    law_rows = json.loads(run_cli(["db", "cost", str(law), "--lengths", "131072,1048576", "--json"], capsys)[1])
    # a * B^0.5 key blocks of B: the same as the fraction at 128K (B = 2048), far sparser at 1M
    assert law_rows[0]["density"] == pytest.approx(rows[1]["density"], abs=2e-4)
    k = math.ceil(0.25 * 2048 ** 0.5 * 16384 ** 0.5 - 1e-9)
    assert law_rows[1]["density"] == pytest.approx(top_k_density(k, 16384), abs=2e-4) and law_rows[1]["density"] < 0.2
    assert law_rows[0]["time_vs_dense"] == rows[1]["time_vs_dense"]
    assert law_rows[1]["time_vs_dense"] < 0.5 * rows[2]["time_vs_dense"]
    code, out, _ = run_cli(["db", "cost", str(fixed), "--lengths", "32768,1048576"], capsys)
    assert code == 0 and "time vs dense" in out and "1048576" in out
    # bad files, lengths and budgets
    code, _, err = run_cli(["db", "cost", str(tmp_path / "none.json")], capsys)
    assert code == 1 and "no such file" in err
    with pytest.raises(SystemExit):
        run_cli(["db", "cost", str(frac), "--lengths", "8K,-5"], capsys)
    assert "bad length '-5'" in capsys.readouterr().err
    obj = json.loads(frac.read_text())
    obj["layers"][0]["heads"][0]["params"]["top_k"] = -3
    bad = tmp_path / "negative.json"
    bad.write_text(json.dumps(obj))
    code, _, err = run_cli(["db", "cost", str(bad)], capsys)
    assert code == 1 and "$.layers[0].heads[0].params.top_k" in err
    code, _, err = run_cli(["db", "cost", "default"], capsys)
    assert code == 1 and "--model-shape" in err
    code, out, err = run_cli(["db", "cost", "default", "--model-shape", "30,9,3,64", "--json"], capsys)
    assert code == 0 and json.loads(out)[-1]["density"] < 0.03          # 1000/6096 at 1M


def test_plan_cost_prices_a_dense_plan_as_dense():
    if shipped() is None:
        pytest.skip("no measured cost model installed")
    rows = plan_cost(law_db({}, "dense"), [8192, 131072])
    assert [(r.density, r.time_vs_dense) for r in rows] == [(1.0, 1.0), (1.0, 1.0)]


def test_candidates_whose_loss_rises_with_the_length_can_be_refused():
    """A family whose loss at the same fractions rises from 2K to 4K (its need outgrows the
    length, as vertical-slash's column-heavy family does on SmolLM2) is marked; with the marks
    refused the choice takes the best family whose loss falls, though the rising one is better
    at 4K; families that hold steady, and patterns without budgets, are never marked."""
    from mcompile.pattern_db.search.laws import rising_loss
    from mcompile.pattern_db.search.pipeline import choose
    bs = [Candidate("block_sparse", {"top_k": Frac(f)}, f) for f in (0.1, 0.2, 0.4)]
    sw = [Candidate("sliding_window", {"window": Frac(f)}, f) for f in (0.1, 0.2, 0.4)]
    flat = [Candidate("a_shape", {"n_init": 64, "n_local": Frac(f)}, f) for f in (0.1, 0.2, 0.4)]
    dense = [Candidate("dense", {}, 1.0)]
    cands = bs + sw + flat + dense
    short = scores_at(2048, cands, [0.05, 0.02, 0.01, 0.3, 0.2, 0.1, 0.2, 0.15, 0.12, 0.0])
    long = scores_at(4096, cands, [0.1, 0.05, 0.02, 0.2, 0.1, 0.05, 0.2, 0.15, 0.12, 0.0])
    marked = rising_loss(long, [short], "output")
    assert marked.shape == (1, len(cands)) and marked[0].tolist() == [True] * 3 + [False] * 7
    assert not rising_loss(long, [], "output").any()
    long.cost[0, -1, 0] = 1.0                                      # dense costs what it is: out of budget
    assert choose(long, 0.1, "output")[0, 0] == 2                  # the rising family's best
    assert choose(long, 0.1, "output", refused=marked)[0, 0] == 5  # the falling family's best


def test_families_whose_loss_mostly_rises_are_refused_for_every_head():
    """rising_families refuses every member of a family in which most (head, member) pairs rise,
    for every head, including a head whose own loss holds steady; other families stay open."""
    from mcompile.pattern_db.search.laws import rising_families
    bs = [Candidate("block_sparse", {"top_k": Frac(f)}, f) for f in (0.1, 0.2, 0.4)]
    sw = [Candidate("sliding_window", {"window": Frac(f)}, f) for f in (0.1, 0.2, 0.4)]
    cands = bs + sw
    short = scores_at(2048, cands, [0.05, 0.02, 0.01, 0.3, 0.2, 0.1])
    long = scores_at(4096, cands, [0.1, 0.05, 0.02, 0.2, 0.1, 0.05])
    refused = rising_families(long, [short], "output")
    assert refused.shape == (1, len(cands)) and refused[0].tolist() == [True] * 3 + [False] * 3
    # two of three block_sparse members rise: still most of the family, all three refused
    long.error[0, 2, 0] = 0.01
    assert rising_families(long, [short], "output")[0].tolist() == [True] * 3 + [False] * 3
    # one of three: not refused
    long.error[0, 1, 0] = 0.02
    assert not rising_families(long, [short], "output").any()
    assert not rising_families(long, [], "output").any()
