"""The benchmarks' synthetic models (mcompile.eval.synthetic), benchmarks/prefill.py run as a command
(probe, a tiny whole run) and the results' plots (mcompile.eval.plots) on the CPU."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcompile.eval import plots
from mcompile.eval.synthetic import LOCALITY_DEFAULTS, apply_init, build_model, chunk_mlps, locality_bias

ROOT = Path(__file__).resolve().parents[1]


def _run_prefill(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prefill.py"), *argv], check=True, env=env)


def test_locality_bias_decays_with_log_distance():
    model = build_model(1, "tiny", "cpu", torch.float32)
    alpha, near, far = 1.5, 16.0, 1.0e5
    b, info = locality_bias(model, alpha, near, far)
    theta = model.model.rotary_emb.inv_freq.double()
    d = model.config.head_dim
    assert info["pairs"] == int(((theta >= 1 / far) & (theta <= 1 / near)).sum()) > 0
    assert torch.equal(b[: d // 2], b[d // 2:])

    def kernel(dist):  # the bias-bias logit term at distance dist
        return float(((b[: d // 2] ** 2 + b[d // 2:] ** 2) * torch.cos(theta * dist)).sum()) * d ** -0.5

    # flat below `near`, then falling by about alpha per unit of ln(distance)
    assert abs(kernel(0) - kernel(2)) < 0.2
    drop = kernel(near * 4) - kernel(near * 4 * math.e ** 2)
    assert 0.5 * 2 * alpha < drop < 1.5 * 2 * alpha


def test_apply_init_sets_biases_and_restores_weights():
    model = build_model(2, "tiny", "cpu", torch.float32)
    w = model.model.layers[1].self_attn.q_proj.weight.detach().clone()
    params = dict(LOCALITY_DEFAULTS, near=16.0)
    desc = apply_init(model, "locality", params)
    at = model.model.layers[1].self_attn
    d = model.config.head_dim
    assert desc["bias"]["pairs"] > 0 and at.q_proj.bias.abs().sum() > 0
    assert torch.equal(at.q_proj.bias.view(-1, d)[0], at.k_proj.bias.view(-1, d)[-1])
    assert torch.allclose(at.q_proj.weight, w * params["qk_scale"])
    apply_init(model, "random", params)
    assert at.q_proj.bias.abs().sum() == 0 and at.k_proj.bias.abs().sum() == 0
    assert torch.equal(at.q_proj.weight, w)


def test_chunked_mlp_is_the_same_function():
    model = build_model(1, "tiny", "cpu", torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 37))
    with torch.no_grad():
        ref = model(ids).logits
        chunk_mlps(model, 4)
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_probe_only_writes_profile_and_density(tmp_path):
    out = tmp_path / "probe.json"
    _run_prefill(["--shape", "tiny", "--layers", "1", "--lengths", "256", "--device", "cpu",
                               "--probe-only", "--locality", "near=16", "--out", str(out)])
    d = json.loads(out.read_text())
    assert {p["init"] for p in d["probe"]} == {"random", "locality"}
    for p in d["probe"]:
        assert 0 < p["density_default_plan"] <= 1
        assert abs(sum(p["mass_by_distance"].values()) - 1) < 1e-3
    assert "construction" in d["inits"]["locality"]


def test_tiny_whole_run_json_and_plots(tmp_path):
    out = tmp_path / "prefill_cpu_1L.json"
    _run_prefill(["--shape", "tiny", "--layers", "1", "--lengths", "256", "--min-len", "128",
                               "--device", "cpu", "--repeats", "1", "--cases", "nocache,cache+mask", "--stats",
                               "--attn-bench", "--no-probe", "--out", str(out)])
    d = json.loads(out.read_text())
    rows = d["rows"]
    assert {(r["variant"], r["init"], r["use_cache"], r["mask"]) for r in rows} == {
        ("dense-sdpa", "random", False, False), ("minference", "random", False, False),
        ("minference", "locality", False, False), ("minference", "locality", True, True)}
    # one sample after the warm-up; the derived numbers follow from the measured ones
    head_ms = d["head_ms"]["256"]
    dense_ms = next(r["ms"] for r in rows if r["variant"] == "dense-sdpa")
    attention = {(a["variant"], a["init"]): a["ms"] for a in d["attention_alone"]}
    for r in rows:
        assert r["all_ms"] == [r["ms"]]
        assert r["per_layer_ms"] == pytest.approx(r["ms"] - head_ms)          # one layer
        init = r["init"] if r["variant"] == "minference" else "any"
        assert r["attention_ms_per_layer"] == attention[r["variant"], init]
        if r["variant"] == "minference":
            assert all(k.startswith("sparse") for k in r["decisions"]), r["decisions"]  # mask and cache stay sparse
            # MInference's default budgets cover every key of 256 tokens
            assert r["density"] == pytest.approx(1.0) and r["speedup"] == pytest.approx(dense_ms / r["ms"])
    assert d["extrapolation"]["to_layers"] == 32 and len(d["extrapolation"]["rows"]) == len(rows)
    for e, r in zip(d["extrapolation"]["rows"], rows):
        assert e["ms"] == pytest.approx(head_ms + 32 * r["per_layer_ms"])
    assert set(attention) == {("dense-sdpa", "any"), ("minference", "random"), ("minference", "locality")}
    assert d["dense_sdpa_backend"]
    written = plots.main(["--prefill", str(out), str(tmp_path / "missing.json"), "--eval", "--ttft",
                          "--out-dir", str(tmp_path / "plots")])
    assert {p.name for p in written} == {"latency_vs_length.png", "speedup_vs_length.png", "attention_per_layer.png"}


def test_plots_draw_ttft_and_skip_rows_without_dense(tmp_path, monkeypatch):
    axes = pytest.importorskip("matplotlib.axes")
    from matplotlib.image import imread
    rows = [{"model": "m", "n": n, "variant": v, "ms": ms} for n, v, ms in
            ((8192, "dense", 10.0), (8192, "database", 20.0), (32768, "dense", 100.0), (32768, "database", 50.0))]
    good, bad = tmp_path / "ttft_m_h200.json", tmp_path / "ttft_bad.json"
    good.write_text(json.dumps({"device": "NVIDIA H200", "date": "2026-12-04", "rows": rows}))
    bad.write_text(json.dumps({"rows": [r for r in rows if r["variant"] != "dense"]}))
    bars = []
    real_bar = axes.Axes.bar

    def bar(ax, x, height, *args, **kwargs):
        bars.append((kwargs.get("label"), list(height)))
        return real_bar(ax, x, height, *args, **kwargs)
    monkeypatch.setattr(axes.Axes, "bar", bar)
    written = plots.main(["--prefill", "--eval", "--ttft", str(good), str(bad), "--out-dir", str(tmp_path)])
    assert [p.name for p in written] == ["ttft_m_h200.png"]
    assert bars == [("database", [0.5, 2.0])]          # dense ms / database ms at 8K and 32K
    assert imread(written[0]).shape == (396, 770, 4)    # 7 x 3.6 inches at 110 dpi


def test_plots_skip_missing_and_draw_niah(tmp_path):
    ev = tmp_path / "eval_x.json"
    ev.write_text(json.dumps({"niah": {"lengths": [1024, 2048], "depths": [0.0, 1.0],
                                       "accuracy": {"dense": [[1, 1], [1, 0]], "default": [[1, 0], [0, 0]]}}}))
    other = tmp_path / "eval_y.json"
    other.write_text(json.dumps({"perplexity": {}}))
    written = plots.main(["--results-dir", str(tmp_path / "nothing"), "--eval", str(ev), str(other),
                          "--out-dir", str(tmp_path)])
    assert [p.name for p in written] == ["niah_eval_x.png"]
    assert plots.main(["--results-dir", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "o")]) == []


def test_sample_attention_build_stages_run_each_stage_on_the_cpu(monkeypatch):
    """benchmarks/build_stages.py times SampleAttention's build cumulatively (scores, then with
    the selection, then the whole build) and counts the columns: on random inputs the selection
    fills the cap."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import build_stages
    timed = []

    def bench(fn):
        timed.append(fn())
        return float(len(timed))
    r = build_stages.measure_sa(2048, 4, 2, 32, "random", device="cpu", bench=bench)
    assert r["us"] == {"scores": 1.0, "+select": 2.0, "+index": 3.0}
    assert len(timed[0]) == 3 and len(timed[1]) == 2 and timed[2].num_q_blocks == 32
    assert r["columns"] == r["cap"] == 205


def test_score_tilings_all_compute_the_shipped_scores():
    """benchmarks/score_tilings.py, in Triton's interpreter: each tiling it times gives the
    shipped tiling's scores, and the shipped tilings are left as they were."""
    from fresh_checks import run_fresh
    run_fresh("score_tilings_interpreted", env=dict(os.environ, TRITON_INTERPRET="1", MCOMPILE_PATTERNS_TRITON="1"),
              timeout=900)


def test_join_gguf_waits_for_the_last_chunk(tmp_path):
    """benchmarks/gpu_env.sh's join_gguf joins `split -b 50M` chunks only once the last one is
    short (each chunk arrives in its own device call): with the first chunk alone it joins
    nothing, with all of them it rebuilds the file byte for byte."""
    data = os.urandom((50 << 20) + 1000)
    (tmp_path / "m").write_bytes(data)
    subprocess.run(["split", "-b", "50M", "-d", "m", "c."], cwd=tmp_path, check=True)
    (tmp_path / "c.01").rename(tmp_path / "later")
    script = ('eval "$(sed -n \'/^join_gguf()/,/^}/p\' ' + str(ROOT / "benchmarks" / "gpu_env.sh") + ')"; '
              'join_gguf c out')
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "out").exists()
    (tmp_path / "later").rename(tmp_path / "c.01")
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "out").read_bytes() == data


def test_memory_peak_finds_what_is_live_at_the_peak(monkeypatch):
    """benchmarks/memory_peak.py replays an allocator trace: the peak is where the most was
    allocated at once (not the largest single allocation, not the last moment), and what was
    live then is named by the first frames outside torch."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import memory_peak

    def frame(name, line):
        return {"filename": f"/x/{name}", "line": line, "name": "f"}
    ours, graph, torch_frame = frame("runtime.py", 1), frame("c3po.py", 7), {"filename": "/t/torch/nn.py", "line": 2, "name": "g"}
    trace = [{"action": "alloc", "addr": 1, "size": 100, "frames": [torch_frame, graph]},
             {"action": "alloc", "addr": 2, "size": 50, "frames": [ours]},
             {"action": "free_requested", "addr": 1, "size": 100},
             {"action": "free_completed", "addr": 1, "size": 100},
             {"action": "alloc", "addr": 3, "size": 120, "frames": [ours]},     # 170 live
             {"action": "free_requested", "addr": 3, "size": 120},
             {"action": "alloc", "addr": 4, "size": 160, "frames": []}]        # 210 live: the peak
    above, live = memory_peak.live_at_peak(trace)
    assert above == 210 and sorted(e["addr"] for e in live) == [2, 4]
    assert memory_peak.site(trace[0]) == "c3po.py:7:f" and memory_peak.site(trace[6]) == "?"


def test_static_cache_counts_what_the_caches_keep(tmp_path, monkeypatch):
    """benchmarks/static_cache.py on the shipped SmolLM2 database at 4K: every searched layer
    runs at least one part, the static ones are kept as spans (at most three int32 a head: no
    index), and the calls after the first make none of them again."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import static_cache
    from mcompile.kernels import patterns
    from mcompile.kernels.patterns import _common
    for name in ("_static_indexes", "_block_ranges"):      # what earlier tests kept is not counted
        monkeypatch.setattr(patterns, name, _common.StaticCache())
    out = tmp_path / "static.json"
    assert static_cache.main(["--db", str(ROOT / "pattern_db/databases/smollm2-135m.json"), "--lengths", "4K",
                              "--out", str(out)]) == 0
    row, = json.loads(out.read_text())["rows"]
    assert row["n"] == 4096 and row["parts"] >= 30 > row["static_parts"] > 0
    assert 0 < row["cached_bytes"] <= 12 * 9 * row["static_parts"] and row["cached_mib"] < _common.STATIC_CACHE_BYTES
    assert row["made_again"] == 0            # everything fits at 4K: a call builds nothing static
