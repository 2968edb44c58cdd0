"""Plots of the benchmark results JSONs (PNG, matplotlib), for the README.

  * ``latency_vs_length.png``: whole-model prefill time vs context length (log-log), dense vs
    minference, one line per (device, weights init, cache/mask case). Points from 32-layer runs
    are measured (filled markers); points from layer slices (``--layers 4``) are the 32-layer
    extrapolation that benchmarks/prefill.py wrote (hollow markers; head + 32 x per-layer time).
  * ``speedup_vs_length.png``: dense / minference for the same series, with the speedup targets (``TARGETS``).
  * ``attention_per_layer.png``: one layer's attention alone (dense SDPA vs index + sparse kernel),
    where prefill.py ran with ``--attn-bench``.
  * ``ttft_<model>_<device>.png``: a real model's time to first token against dense, per length
    and variant, from benchmarks/ttft.py's JSONs (bars: dense time / variant time).
  * ``niah_<name>.png``: needle-in-a-haystack heat maps (dense vs sparse) from ``mcompile eval``
    JSONs that hold a ``niah`` grid (drawn by ``mcompile.eval.niah.plot_grid``).
Missing inputs are skipped with a message; benchmarks/plots.py runs :func:`main` on benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGETS = {131072: 2.3, 524288: 8.0, 1048576: 15.0}   # speedup targets: 32-layer whole-model prefill vs best dense SDPA


def _load(paths: list[Path]) -> list[tuple[Path, dict]]:
    out = []
    for p in paths:
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError) as exc:
            print(f"skip {p}: {exc}")
    return out


def _case(r: dict) -> str:
    return ("cache" if r.get("use_cache") else "nocache") + ("+mask" if r.get("mask") else "")


def _short_device(name: str) -> str:
    for key in ("H100", "H200", "A100", "B200"):
        if key in name:
            return key
    return name


def prefill_points(runs: list[tuple[Path, dict]]) -> dict:
    """{(device, variant, init, case): {length: (ms, measured, speedup)}} at 32 layers."""
    series: dict = {}
    for path, d in runs:
        if "rows" not in d:
            print(f"skip {path.name}: no 'rows' (not a prefill result)")
            continue
        dev = _short_device(d.get("device", "?"))
        layers = d.get("layers")
        if layers == 32:
            pts = [(r, True) for r in d["rows"] if r.get("ms")]
        elif (d.get("extrapolation") or {}).get("rows"):
            pts = [(r, False) for r in d["extrapolation"]["rows"] if r.get("ms")]
        else:
            print(f"skip {path.name}: {layers} layers and no extrapolation to 32 layers")
            continue
        for r, measured in pts:
            if r.get("variant") == "inductor-plain":
                continue
            init = r.get("init", "random")   # runs before --init existed had random weights
            init = "any" if r["variant"] == "dense-sdpa" else init
            key = (dev, r["variant"], init, _case(r))
            speedup = r.get("speedup")
            series.setdefault(key, {})[r["length"]] = (r["ms"], measured and not r.get("composed"), speedup)
    return series


def _fmt_len(n: int) -> str:
    if n >= 1048576 and n % 1048576 == 0:
        return f"{n // 1048576}M"
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _axes_lengths(ax, lengths) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(lengths)
    ax.set_xticks(ticks, [_fmt_len(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.grid(True, which="both", alpha=0.3)


def _save_log_plot(fig, ax, plt, ylabel: str, title: str, path: Path) -> Path:
    """Finish a timing plot (log y axis, labels, legend), write it to ``path`` and close it."""
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_prefill(series: dict, out_dir: Path, plt) -> list[Path]:
    written = []
    if not series:
        print("no prefill results: latency and speedup plots skipped")
        return written
    lengths = {n for pts in series.values() for n in pts}
    # latency
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted(series):
        dev, variant, init, case = key
        pts = sorted(series[key].items())
        xs, ys = [n for n, _ in pts], [v[0] / 1e3 for _, v in pts]
        label = f"{dev} {variant}" + ("" if variant == "dense-sdpa" else f" {init} {case}")
        line, = ax.plot(xs, ys, label=label, linestyle="--" if variant == "dense-sdpa" else "-")
        for n, (ms, measured, _) in pts:
            ax.plot([n], [ms / 1e3], "o", color=line.get_color(), mfc=line.get_color() if measured else "none")
    _axes_lengths(ax, lengths)
    written.append(_save_log_plot(
        fig, ax, plt, "prefill time, 32 layers (s)",
        "LLaMA-3-8B shape, random weights: prefill time\n"
        "(filled: measured; hollow: 4-layer slice x 32 / composed)",
        out_dir / "latency_vs_length.png"))
    # speedup
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for key in sorted(series):
        dev, variant, init, case = key
        if variant != "minference":
            continue
        pts = sorted((n, v) for n, v in series[key].items() if v[2])
        if not pts:
            continue
        line, = ax.plot([n for n, _ in pts], [v[2] for _, v in pts], "-", label=f"{dev} {init} {case}")
        for n, (_, measured, s) in pts:
            ax.plot([n], [s], "o", color=line.get_color(), mfc=line.get_color() if measured else "none")
        drawn = True
    if not drawn:
        plt.close(fig)
        print("no speedups in the prefill results: speedup plot skipped")
        return written
    ax.plot(list(TARGETS), list(TARGETS.values()), "k*", ms=10, label="speedup targets")
    ax.axhline(1.0, color="grey", lw=1)
    _axes_lengths(ax, lengths | set(TARGETS))
    written.append(_save_log_plot(
        fig, ax, plt, "speedup over dense SDPA (x)",
        "minference (default plan) vs dense SDPA, whole-model prefill, 32 layers\n"
        "(filled: measured; hollow: from the 4-layer slice)",
        out_dir / "speedup_vs_length.png"))
    return written


def plot_attention(runs: list[tuple[Path, dict]], out_dir: Path, plt) -> list[Path]:
    series: dict = {}
    for _, d in runs:
        dev = _short_device(d.get("device", "?"))
        for a in d.get("attention_alone") or []:
            series.setdefault((dev, a["variant"], a["init"]), {})[a["length"]] = a["ms"]
    if not series:
        print("no 'attention_alone' entries (prefill.py --attn-bench): attention plot skipped")
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted(series):
        dev, variant, init = key
        pts = sorted(series[key].items())
        ax.plot([n for n, _ in pts], [ms for _, ms in pts], "o--" if variant == "dense-sdpa" else "o-",
                label=f"{dev} {variant}" + ("" if variant == "dense-sdpa" else f" {init}"))
    _axes_lengths(ax, {n for pts in series.values() for n in pts})
    return [_save_log_plot(
        fig, ax, plt, "one layer's attention (ms)",
        "attention alone, one layer (32 q / 8 kv heads, d 128): dense SDPA vs index + sparse kernel",
        out_dir / "attention_per_layer.png")]


def plot_niah(evals: list[tuple[Path, dict]], out_dir: Path) -> list[Path]:
    written = []
    grids = [(p, d["niah"]) for p, d in evals if isinstance(d.get("niah"), dict)]
    if not grids:
        print("no eval JSON with a 'niah' grid: NIAH heat maps skipped")
        return written
    from .niah import NiahGrid, plot_grid

    for path, g in grids:
        try:
            grid = NiahGrid(list(g["lengths"]), list(g["depths"]), dict(g["accuracy"]))
            p = out_dir / f"niah_{path.stem}.png"
            plot_grid(grid, str(p))
            written.append(p)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"skip NIAH of {path.name}: {exc}")
    return written


def plot_ttft(runs: list[tuple[Path, dict]], out_dir: Path, plt) -> list[Path]:
    """Bars: dense time / variant time, each variant against dense compiled the same way (with
    or without CUDA graphs)."""
    def graphs(r):
        return bool(r.get("cuda_graphs"))

    def label(r):
        return r["variant"] + (" +graphs" if graphs(r) else "")

    written = []
    for path, data in runs:
        rows = data.get("rows", [])
        dense = {(r["n"], graphs(r)): r["ms"] for r in rows if r["variant"] == "dense"}
        lengths = sorted({n for n, _ in dense})
        variants = [v for v in dict.fromkeys(label(r) for r in rows if r["variant"] != "dense")]
        if not lengths or not variants:
            print(f"skip {path.name}: no dense and sparse rows")
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            speed = {r["n"]: dense[r["n"], graphs(r)] / r["ms"] for r in rows
                     if label(r) == variant and (r["n"], graphs(r)) in dense}
            xs = [j + (i - (len(variants) - 1) / 2) * width for j, n in enumerate(lengths) if n in speed]
            ax.bar(xs, [speed[n] for n in lengths if n in speed], width, label=variant)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(lengths)), [_fmt_len(n) for n in lengths])
        ax.set_ylabel("speedup over dense (x)")
        model = rows[0]["model"].split("/")[-1]
        ax.set_title(f"time to first token, {Path(model).stem}, {_short_device(data.get('device', ''))} "
                     f"({data.get('date', '')})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = out_dir / (path.stem + ".png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def main(argv=None, results_dir: Path = Path("benchmarks/results")) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", type=Path, default=results_dir, help="where the default inputs are found")
    ap.add_argument("--prefill", type=Path, nargs="*", default=None,
                    help="prefill JSONs (default: <results-dir>/prefill_*.json, probes excluded)")
    ap.add_argument("--eval", type=Path, nargs="*", default=None,
                    help="mcompile eval JSONs with a NIAH grid (default: <results-dir>/eval*.json)")
    ap.add_argument("--ttft", type=Path, nargs="*", default=None,
                    help="benchmarks/ttft.py JSONs (default: <results-dir>/ttft_*.json)")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: --results-dir")
    args = ap.parse_args(argv)
    ttft = args.ttft if args.ttft is not None else sorted(args.results_dir.glob("ttft_*.json"))
    out_dir = args.out_dir or args.results_dir
    prefill = args.prefill if args.prefill is not None else sorted(
        p for p in args.results_dir.glob("prefill_*.json") if "probe" not in p.name)
    evals = args.eval if args.eval is not None else sorted(args.results_dir.glob("eval*.json"))
    missing = [p for p in [*prefill, *evals] if not p.exists()]
    for p in missing:
        print(f"skip {p}: not found")
    prefill = [p for p in prefill if p.exists()]
    evals = [p for p in evals if p.exists()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = _load(prefill)
    written = plot_prefill(prefill_points(runs), out_dir, plt)
    written += plot_attention(runs, out_dir, plt)
    written += plot_niah(_load(evals), out_dir)
    written += plot_ttft(_load([p for p in ttft if p.exists()]), out_dir, plt)
    for p in written:
        print(f"wrote {p}")
    return written
