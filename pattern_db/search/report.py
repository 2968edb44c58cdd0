"""What a search found, for people: the summary table and the per layer x head plot."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mcompile.kernels.patterns.registry import colour_of, short_name

from .candidates import MINFERENCE_DEFAULT_LABEL


def _row(name: str, m: dict[str, float]) -> str:
    return f"  {name:34s} cost {m['cost']:6.3f}   recall {m['recall']:.4f}   output error {m['error']:.4f}"


def summary_table(result) -> str:
    """Per searched layer: the patterns chosen, mean cost, recall and output error; then the
    plan against MInference's default and single-pattern plans (calibration data)."""
    s, ch = result.scores, result.choice
    lines = [f"{'layer':>5}  {'patterns (heads)':44s} {'cost':>6} {'recall':>7} {'out.err':>7}"]
    for i, layer in enumerate(s.layers):
        pats = Counter(s.candidates[c].pattern for c in ch[i])
        text = " ".join(f"{short_name(p)}x{n}" for p, n in sorted(pats.items(), key=lambda x: (-x[1], x[0])))
        h = np.arange(s.num_heads)
        lines.append(f"{layer:>5}  {text:44s} {s.cost[i, ch[i], h].mean():6.3f} "
                     f"{s.recall[i, ch[i], h].mean():7.4f} {s.error[i, ch[i], h].mean():7.4f}")
    total = Counter(s.candidates[c].pattern for c in ch.reshape(-1))
    comp = result.comparisons
    lines.append("")
    lines.append(f"searched {len(s.layers)} layers x {s.num_heads} heads, {len(s.candidates)} candidates, "
                 f"{s.samples} samples of {s.length} tokens ({s.rows_per_sample} rows scored each), "
                 f"scoring by {result.config.scoring}, budget {result.config.budget:g} of dense")
    lines.append("heads per pattern: " + ", ".join(f"{p} {n}" for p, n in total.most_common()))
    lines.append("on the calibration prompts (mean over searched heads):")
    lines.append(_row("searched plan", comp["searched"]))
    if "minference_default" in comp:
        lines.append(_row(MINFERENCE_DEFAULT_LABEL, comp["minference_default"]))
    if "searched_at_default_cost" in comp:
        lines.append(_row("searched at the default's cost", comp["searched_at_default_cost"]))
    if "best_uniform" in comp:
        lines.append(_row(f"best uniform {comp['best_uniform']['candidate']}", comp["best_uniform"]))
    for name, m in comp.get("pattern_only", {}).items():
        lines.append(_row(f"{name} only (per-head budgets)", m))
    return "\n".join(lines)


def plot_search(result, path: str) -> str:
    """PNG: pattern, recall and cost per layer x head of the chosen plan."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    s, ch = result.scores, result.choice
    L, H = ch.shape
    names = list(dict.fromkeys(c.pattern for c in s.candidates))
    pat = np.array([[names.index(s.candidates[c].pattern) for c in row] for row in ch])
    h = np.arange(H)[None, :]
    li = np.arange(L)[:, None]
    rec = s.recall[li, ch, h]
    cost = s.cost[li, ch, h]
    height = max(3.0, 0.22 * L + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(3 * max(3.0, 0.45 * H + 1.8), height), dpi=110)
    cmap = ListedColormap([colour_of(n) for n in names])
    axes[0].imshow(pat, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto", interpolation="nearest")
    axes[0].set_title("pattern")
    from matplotlib.patches import Patch
    used = sorted(set(pat.reshape(-1).tolist()))
    axes[0].legend(handles=[Patch(color=colour_of(names[i]), label=names[i]) for i in used],
                   loc="upper center", bbox_to_anchor=(0.5, -0.06), fontsize=7, ncol=2, frameon=False)
    im1 = axes[1].imshow(rec, cmap="viridis", vmin=min(0.5, float(rec.min())), vmax=1, aspect="auto",
                         interpolation="nearest")
    axes[1].set_title("recall (attention mass kept)")
    fig.colorbar(im1, ax=axes[1], fraction=0.046)
    im2 = axes[2].imshow(cost, cmap="magma", vmin=0, vmax=max(0.05, float(cost.max())), aspect="auto",
                         interpolation="nearest")
    axes[2].set_title("cost (of dense tiles)")
    fig.colorbar(im2, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("query head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.set_yticklabels([str(l) for l in s.layers], fontsize=6 if L > 16 else 8)
        ax.tick_params(axis="x", labelsize=7)
    m = result.comparisons["searched"]
    fig.suptitle(f"{result.db.model.name or 'model'}: searched at {s.length} tokens, budget "
                 f"{result.config.budget:g}; mean cost {m['cost']:.3f}, recall {m['recall']:.4f}, "
                 f"output error {m['error']:.4f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def comparisons_obj(result) -> dict[str, Any]:
    return {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(result.config).items()},
            "comparisons": result.comparisons, "offsets": result.offsets, "timings": result.timings}
