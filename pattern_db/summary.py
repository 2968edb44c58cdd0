"""Human views of a database: per-layer table, heat map, and a diff of two databases."""
from __future__ import annotations

from collections import Counter
from typing import Any

from mcompile.kernels.patterns.registry import colour_of, short_name
from mcompile.reporting import text_table

from .database import HeadEntry, LayerEntry, PatternDB
from .schema import PATTERNS, Frac, Law, resolve_budget

DEFAULT_PLOT_LENGTH = 32768


def _fmt(v: Any) -> str:
    if isinstance(v, Frac):
        return f"{v.value:g}L"
    if isinstance(v, Law):
        return f"{v.scale:g}L^{v.power:g}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def head_label(h: HeadEntry) -> str:
    """``vs(1000,6096)``: short pattern name and its parameters in schema order."""
    if not h.params:
        return short_name(h.pattern)
    order = [k for k in getattr(PATTERNS.get(h.pattern), "defaults", ()) if k in h.params]
    order += [k for k in sorted(h.params) if k not in order]
    return f"{short_name(h.pattern)}({','.join(_fmt(h.params[k]) for k in order)})"


def full_label(h: HeadEntry) -> str:
    if not h.params:
        return h.pattern
    return h.pattern + "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(h.params.items())) + "}"


def estimate_density(h: HeadEntry, length: int) -> float:
    """Rough fraction of the causal attention a head computes at ``length`` tokens
    (for the heat map when no measured cost is recorded). The average causal row has
    length/2 keys; a budget of b keys per row is about b / (length/2)."""
    half = max(1.0, length / 2)
    p = h.params

    def n(key: str, unit: int = 1) -> int:
        return resolve_budget(p[key], length, unit) * unit
    if h.pattern == "dense":
        return 1.0
    if h.pattern == "a_shape":
        d = (n("n_init") + n("n_local")) / half
    elif h.pattern == "vertical_slash":
        d = (n("vertical_size") + n("slash_size")) / half
    elif h.pattern == "block_sparse":
        d = n("top_k", 64) / half
    elif h.pattern == "sliding_window":
        d = n("window") / half
    elif h.pattern == "sample_attention":
        d = 2 * p["window_frac"]   # lower bound: the selected columns are data-dependent
    else:
        return float("nan")
    return min(1.0, d)


def _layer_row(i: int, layer: LayerEntry) -> list[str]:
    if layer.kind == "sliding":
        return [str(i), "sliding", f"window {layer.window}" if layer.window else "-", "", "", ""]
    if layer.kind == "not_searched":
        return [str(i), "not_searched", layer.reason or "-", "", "", ""]
    pats = Counter(h.pattern for h in layer.heads)
    budgets = Counter(head_label(h) for h in layer.heads)
    rec = [h.recall for h in layer.heads if h.recall is not None]
    cost = [h.cost for h in layer.heads if h.cost is not None]
    return [str(i), "searched",
            ", ".join(f"{c} {short_name(p)}" for p, c in sorted(pats.items(),
                                                                   key=lambda t: -t[1])),
            ", ".join(f"{c}x {b}" for b, c in sorted(budgets.items(), key=lambda t: -t[1])),
            f"{sum(rec) / len(rec):.3f}/{min(rec):.3f}" if rec else "-",
            f"{sum(cost) / len(cost):.3f}" if cost else "-"]


def summary_text(db: PatternDB, file: str = "") -> str:
    m, p = db.model, db.provenance
    out = []
    if file:
        out.append(f"file:        {file}")
    out.append(f"model:       {m.name or '(unnamed)'}"
               + (f" ({m.architecture})" if m.architecture else ""))
    out.append(f"shape:       {m.shape_text}")
    out.append(f"fingerprint: {m.fingerprint}")
    out.append(f"made by:     {p.tool} {p.tool_version} on {p.created}")
    if p.calibration:
        out.append("calibration: " + ", ".join(f"{k}={v}" for k, v in p.calibration.items()
                                                if v is not None))
    if p.budget:
        out.append("budget:      " + ", ".join(f"{k}={v}" for k, v in p.budget.items()))
    for key in ("source", "command", "notes"):
        if getattr(p, key):
            out.append(f"{key + ':':<13}{getattr(p, key)}")
    out.append("")
    rows = [_layer_row(i, layer) for i, layer in enumerate(db.layers)]
    header = ["layer", "kind", "patterns", "heads x budgets", "recall mean/min", "cost"]
    out.append("\n".join(text_table(header, rows)))
    kinds = Counter(l.kind for l in db.layers)
    counts = db.pattern_counts()
    out.append("")
    out.append("layers: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    if counts:
        total = sum(counts.values())
        out.append("heads:  " + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)"
                                          for k, v in sorted(counts.items())))
    return "\n".join(out)


def diff_dbs(a: PatternDB, b: PatternDB) -> list[str]:
    """Differences that change behaviour (identity, layer kinds, patterns, params), plus a
    count of heads whose measured recall/cost changed. Empty list: same plan."""
    out: list[str] = []
    ma, mb = a.to_obj()["model"], b.to_obj()["model"]
    for k in ma:
        if ma[k] != mb[k]:
            out.append(f"model.{k}: {ma[k]!r} -> {mb[k]!r}")
    if len(a.layers) != len(b.layers):
        out.append(f"layers: {len(a.layers)} -> {len(b.layers)}")
    stats_changed = 0
    for i, (la, lb) in enumerate(zip(a.layers, b.layers)):
        if la.kind != lb.kind:
            out.append(f"layer {i}: {la.kind} -> {lb.kind}")
            continue
        if la.kind == "sliding" and la.window != lb.window:
            out.append(f"layer {i}: sliding window {la.window} -> {lb.window}")
        if len(la.heads) != len(lb.heads):
            out.append(f"layer {i}: {len(la.heads)} heads -> {len(lb.heads)} heads")
            continue
        for j, (ha, hb) in enumerate(zip(la.heads, lb.heads)):
            if (ha.pattern, ha.params) != (hb.pattern, hb.params):
                out.append(f"layer {i} head {j}: {full_label(ha)} -> {full_label(hb)}")
            elif (ha.recall, ha.cost) != (hb.recall, hb.cost):
                stats_changed += 1
    if stats_changed:
        out.append(f"{stats_changed} head(s) with the same plan but different recorded "
                   "recall/cost")
    return out


def plot_db(db: PatternDB, out_path: str, length: int | None = None) -> str:
    """Heat maps over layers x heads: pattern (categorical) and budget (measured cost, or
    estimated density at ``length``). Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as e:  # pragma: no cover - matplotlib is a test dependency
        raise RuntimeError("--plot needs matplotlib (pip install 'mcompile[plot]')") from e
    import numpy as np

    L, H = db.model.num_layers, db.model.num_heads
    length = length or (db.provenance.calibration or {}).get("length") or DEFAULT_PLOT_LENGTH
    pat = np.full((L, H), np.nan)
    bud = np.full((L, H), np.nan)
    names = list(PATTERNS)
    have_cost = all(h.cost is not None for l in db.layers for h in l.heads) and any(
        l.heads for l in db.layers)
    for i, layer in enumerate(db.layers):
        for j, h in enumerate(layer.heads):
            pat[i, j] = names.index(h.pattern)
            bud[i, j] = h.cost if have_cost else estimate_density(h, int(length))
    colors = [colour_of(name) for name in names]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.5, min(14, 4 + 0.5 * H)), min(12, 2.5 + 0.2 * L)), squeeze=False)
    ax0, ax1 = axes[0]
    cmap = ListedColormap(colors).with_extremes(bad="#dddddd")
    ax0.imshow(np.ma.masked_invalid(pat), cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5,
               aspect="auto", interpolation="nearest")
    ax0.set_title("pattern (grey: sliding / not searched)", fontsize=9)
    used = sorted({int(v) for v in pat[~np.isnan(pat)]})
    fig.legend(handles=[Patch(color=colors[k], label=names[k]) for k in used],
               loc="lower center", ncol=max(1, len(used)), fontsize=7, frameon=False)
    bcmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax1.imshow(np.ma.masked_invalid(bud), cmap=bcmap, vmin=0, vmax=1, aspect="auto",
                    interpolation="nearest")
    ax1.set_title("measured cost" if have_cost else f"est. density at {int(length)} tokens",
                  fontsize=9)
    fig.colorbar(im, ax=ax1, fraction=0.046)
    for ax in (ax0, ax1):
        ax.set_xlabel("query head")
        ax.set_ylabel("layer")
    fig.suptitle(f"{db.model.name or db.fingerprint}", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
