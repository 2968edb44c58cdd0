"""The pieces of the Gemma 3 GPU pipeline (benchmarks/gemma_gpu.sh) that run without a GPU:
model resolution from a GGUF path or variable, the plan's recall on captured q/k, the NIAH
grid's tables, and the per-pattern recall-at-equal-cost view of a search's details."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcompile.eval import models


# --- models: GGUF file paths and MCOMPILE_GGUF_<NAME> --------------------------------------------
def test_env_var_name():
    assert models.env_var("gemma3-270m") == "MCOMPILE_GGUF_GEMMA3_270M"
    assert models.env_var("smollm2") == "MCOMPILE_GGUF_SMOLLM2"


def test_gguf_path_from_env_var(tmp_path, monkeypatch):
    f = tmp_path / "g.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv("MCOMPILE_GGUF_GEMMA3_270M", str(f))
    assert models.gguf_path("gemma3-270m") == f
    monkeypatch.setenv("MCOMPILE_GGUF_GEMMA3_270M", str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="MCOMPILE_GGUF_GEMMA3_270M"):
        models.gguf_path("gemma3-270m")
    with pytest.raises(ValueError, match="unknown model"):
        models.gguf_path("nope")


def test_checkpoint_dir_resolution_uses_the_cache(tmp_path, monkeypatch):
    """A .gguf path caches under its stem, a name under the name; a cached checkpoint is used
    without dequantising (which is stubbed to fail here)."""
    monkeypatch.setenv("MCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "dequantise", lambda *a: pytest.fail("dequantised although cached"))
    gguf = tmp_path / "models" / "tiny-q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    for key in ("tiny-q4", "gemma3-270m"):
        (tmp_path / "cache" / key).mkdir(parents=True)
        (tmp_path / "cache" / key / "config.json").write_text("{}")
    assert models.checkpoint_dir(gguf) == tmp_path / "cache" / "tiny-q4"
    assert models.checkpoint_dir(str(gguf)) == tmp_path / "cache" / "tiny-q4"
    assert models.checkpoint_dir("gemma3-270m") == tmp_path / "cache" / "gemma3-270m"
    assert models.checkpoint_dir(tmp_path / "models") == tmp_path / "models"   # a directory: as is
    with pytest.raises(FileNotFoundError):
        models.checkpoint_dir(tmp_path / "missing.gguf")


def test_checkpoint_dir_dequantises_once_from_the_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MCOMPILE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "g.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("MCOMPILE_GGUF_SMOLLM2", str(gguf))
    calls = []

    def fake(src, out):
        calls.append(src)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(models, "dequantise", fake)
    assert models.checkpoint_dir("smollm2") == tmp_path / "cache" / "smollm2"
    assert models.checkpoint_dir("smollm2") == tmp_path / "cache" / "smollm2"
    assert calls == [gguf]


# --- the plan's recall on captured q/k (tiny Gemma 3) -----------------------------------------------
def test_plan_recall_on_a_tiny_gemma3(tmp_path):
    from plan_reference import plan_logits
    from tiny_models import tiny_inputs, tiny_model

    from mcompile.eval.evaluate import compare, layer_plans, plan_recall
    from mcompile.pattern_db.search import capture_prompts

    model = tiny_model("gemma3")
    ids, _ = tiny_inputs(1, 256)
    capture_prompts(model, [ids], tmp_path / "cap")
    # layer 1 is the full-attention layer; a window covering everything recalls all the mass
    full = plan_recall(model, tmp_path / "cap", {"plan": {"pattern": "sliding_window", "window": 256}})
    assert list(full) == [1]
    assert full[1]["recall"] == pytest.approx(1.0, abs=1e-5) and full[1]["error"] < 1e-4
    small = plan_recall(model, tmp_path / "cap", {"plan": {"pattern": "a_shape", "n_init": 64, "n_local": 64}})
    assert 0 < small[1]["recall"] < 1 and 0 < small[1]["cost"] < 1 and len(small[1]["head_recall"]) == 4
    opts = {"plan": {"pattern": "a_shape", "n_init": 64, "n_local": 64}, "min_len": 128, "dense_tail": 0}
    cmp = compare(model, ids, opts)
    assert 0 < cmp.density < 1 and set(cmp.layer_density) == {0, 1}   # the sliding layer runs its window
    # perplexities and top-1 agreement are those of what the plan means (the patterns' reference
    # masks) against eager dense; the plan changes about a tenth of the predictions
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits[0, :-1]
    sparse = plan_logits(model, ids, layer_plans(model, opts))[0, :-1]
    ppl = {name: math.exp(float(F.cross_entropy(x, ids[0, 1:]))) for name, x in (("dense", dense), ("sparse", sparse))}
    assert cmp.dense_perplexity == pytest.approx(ppl["dense"], rel=1e-5)
    assert cmp.sparse_perplexity == pytest.approx(ppl["sparse"], rel=1e-5)
    assert cmp.perplexity_change == pytest.approx(ppl["sparse"] / ppl["dense"] - 1, abs=1e-5)
    agreement = (sparse.argmax(-1) == dense.argmax(-1)).float().mean().item()
    assert cmp.top1_agreement == agreement and agreement < 0.95
    # a_shape lists 1 + 2 + 3 + 3 of the 10 causal blocks; the dense tail makes the last row's 3 its 4
    assert cmp.layer_density[1] == pytest.approx(0.9)
    with_tail = compare(model, ids, {**opts, "dense_tail": 64})
    assert with_tail.layer_density[1] == pytest.approx(1.0) and with_tail.layer_density[0] == cmp.layer_density[0]


# --- NIAH tables ------------------------------------------------------------------------------------
def test_niah_grid_table_and_mean():
    from mcompile.eval.niah import NiahGrid

    g = NiahGrid([512, 1024], [0.0, 1.0], {"dense": [[1, 1], [1, 0.5]], "sparse": [[1, 0], [0, 0]]})
    assert g.mean("dense") == pytest.approx(0.875) and g.mean("sparse") == pytest.approx(0.25)
    text = g.table()
    assert "1024" in text and "sparse" in text and g.to_dict()["mean"]["sparse"] == pytest.approx(0.25)


# --- per-pattern recall at equal cost from a search's details ----------------------------------------
def test_pattern_recall_picks_the_best_candidate_under_each_cost():
    from mcompile.eval import pattern_recall as pr

    cands = [{"pattern": p, "params": {}} for p in ("a_shape", "a_shape", "vertical_slash", "dense")]
    cost = np.array([[[0.1, 0.1], [0.3, 0.3], [0.15, 0.5], [1.0, 1.0]]])      # (L=1, C=4, H=2)
    recall = np.array([[[0.5, 0.6], [0.8, 0.9], [0.95, 0.99], [1.0, 1.0]]])
    error = 1 - recall
    details = {"scores": {"length": 1024, "layers": [3], "num_heads": 2, "samples": 1, "candidates": cands,
                          "cost": cost.tolist(), "recall": recall.tolist(), "error": error.tolist()}}
    res = pr.analyse(details, [0.2, 0.35])
    assert list(res["patterns"]) == ["a_shape", "vertical_slash"]     # dense is not compared
    a, vs = res["patterns"]["a_shape"], res["patterns"]["vertical_slash"]
    assert a["0.2"]["head_recall"] == [[0.5, 0.6]] and a["0.35"]["head_recall"] == [[0.8, 0.9]]
    assert vs["0.2"]["head_recall"][0][0] == 0.95 and np.isnan(vs["0.2"]["head_recall"][0][1])
    assert vs["0.2"]["heads_fitting"] == 1 and vs["0.2"]["mean_recall"] == pytest.approx(0.95)
    assert "1/2 heads fit" in pr.summary_table(res)
    assert "| 3.1 |" in pr.head_table(res, 0.35)


def test_pooled_perplexity_over_windows():
    from mcompile.eval.evaluate import Comparison, pooled

    a = Comparison(1024, 10.0, 11.0, 0.1, 0.9, 0.3)
    b = Comparison(1024, 40.0, 40.0, 0.0, 0.8, 0.2)
    agg = pooled([a, b])
    # the perplexity of both windows' tokens together: exp of the mean NLL
    assert agg["dense_perplexity"] == pytest.approx(20.0) and agg["sparse_perplexity"] == pytest.approx(440 ** 0.5)
    assert agg["perplexity_change"] == pytest.approx((440 ** 0.5) / 20 - 1)
    assert agg["top1_agreement"] == pytest.approx(0.85) and agg["density"] == pytest.approx(0.25)
    assert pooled([a])["perplexity_change"] == pytest.approx(0.1)


def test_eval_plan_takes_a_name_or_a_json_object():
    import argparse

    from mcompile.eval.cli import plan_option
    assert plan_option("vertical_slash") == "vertical_slash"
    assert plan_option('{"pattern": "vertical_slash", "coverage": 0.9}') == {"pattern": "vertical_slash", "coverage": 0.9}
    with pytest.raises(argparse.ArgumentTypeError, match="not a pattern name or a JSON object"):
        plan_option('{"pattern": vertical_slash}')
