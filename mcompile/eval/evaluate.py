"""Accuracy of a sparse plan against dense, through the same compiled backend.

Both passes run the decoder through ``torch.compile(..., backend="minference")``: dense with
``plan="dense"`` (SDPA), sparse with the options under test (the sparse kernel: Triton on a
GPU, the pure-torch reference on a CPU), in the same dtype, so the comparison is like with
like. Logits are computed in chunks from the final hidden states, so the full (N, vocab)
logits never materialise.

:func:`plan_recall` scores the plan itself on captured q/k/v (``mode="capture"``): per
full-attention layer, the attention mass the plan's index keeps, the relative output error
of the heads and the kernel cost, as the offline search measures them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("mcompile")


@dataclass
class PassResult:
    nll: float                    # mean next-token negative log-likelihood
    top1: torch.Tensor            # (N-1,) argmax next-token predictions
    density: float | None = None  # computed fraction of dense causal blocks in the sparse calls
    layer_density: dict[int, float] = field(default_factory=dict)  # per layer with sparse calls
    seconds: float = 0.0          # wall time of the pass, compilation included

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


@dataclass
class Comparison:
    length: int
    dense_perplexity: float
    sparse_perplexity: float
    perplexity_change: float      # relative: sparse / dense - 1
    top1_agreement: float         # fraction of positions whose argmax agrees with dense
    density: float | None         # computed fraction of dense causal blocks, full-attention layers' sparse calls
    density_all_sparse_calls: float | None = None  # the same over every sparse call (sliding layers too)
    layer_density: dict[int, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _sliding_layers(model) -> set[int]:
    from ..pattern_db.identity import ModelIdentity
    try:
        return set(ModelIdentity.from_hf_config(model.config).sliding_layers)
    except (ValueError, TypeError, AttributeError):
        return set()


@torch.no_grad()
def score_pass(model, ids: torch.Tensor, options: dict, chunk: int = 1024) -> PassResult:
    """Mean NLL and top-1 predictions of ``model`` on ``ids`` (1, N), attention compiled with ``options``."""
    from .. import reporting

    start = time.perf_counter()
    torch._dynamo.reset()
    reporting.reset()
    decoder = torch.compile(model.get_decoder(), backend="minference", dynamic=False,
                            options={**options, "stats": True})
    hidden = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
    total, top1 = 0.0, []
    n = ids.shape[1]
    for s in range(0, n - 1, chunk):
        end = min(s + chunk, n - 1)
        logits = _logits(model, hidden[:, s:end])
        total += F.cross_entropy(logits[0], ids[0, s + 1:end + 1], reduction="sum").item()
        top1.append(logits[0].argmax(-1).cpu())
    torch._dynamo.reset()
    layer_work: dict[int, list[float]] = {}
    for row in reporting.report().rows:
        if row.work[2]:
            w = layer_work.setdefault(row.layer, [0.0, 0.0, 0.0])
            for i in range(3):
                w[i] += row.work[i]
    layer_density = {l: (b + c / 64) / d for l, (b, c, d) in sorted(layer_work.items())}
    return PassResult(total / (n - 1), torch.cat(top1), reporting.report().density(), layer_density,
                      time.perf_counter() - start)


def _density(layer_work_density: dict[int, float], layers: set[int]) -> float | None:
    vals = [v for l, v in layer_work_density.items() if l in layers]
    return sum(vals) / len(vals) if vals else None   # every layer has the same dense work


def compare(model, ids: torch.Tensor, sparse_options: dict, chunk: int = 1024,
            dense: PassResult | None = None) -> Comparison:
    """Perplexity and top-1 agreement of a plan (``sparse_options``) against dense (computed
    here through the same backend with ``plan="dense"``, unless given)."""
    if dense is None:
        dense = score_pass(model, ids, {"min_len": sparse_options.get("min_len", 1), "plan": "dense"}, chunk)
    sparse = score_pass(model, ids, sparse_options, chunk)
    sliding = _sliding_layers(model)
    full = {l for l in sparse.layer_density if l not in sliding}
    return Comparison(
        length=ids.shape[1],
        dense_perplexity=dense.perplexity,
        sparse_perplexity=sparse.perplexity,
        perplexity_change=sparse.perplexity / dense.perplexity - 1,
        top1_agreement=(dense.top1 == sparse.top1).float().mean().item(),
        density=_density(sparse.layer_density, full),
        density_all_sparse_calls=sparse.density,
        layer_density=sparse.layer_density,
        seconds={"dense_pass": round(dense.seconds, 1), "sparse_pass": round(sparse.seconds, 1)},
    )


def pooled(cmps) -> dict:
    """Perplexity over every window's tokens together (windows have equal length: the geometric
    mean of their perplexities), top-1 agreement and density averaged over windows."""
    n = len(cmps)
    dense = math.exp(sum(math.log(c.dense_perplexity) for c in cmps) / n)
    sparse = math.exp(sum(math.log(c.sparse_perplexity) for c in cmps) / n)
    dens = [c.density for c in cmps if c.density is not None]
    return {"length": cmps[0].length, "windows_pooled": n, "dense_perplexity": dense, "sparse_perplexity": sparse,
            "perplexity_change": sparse / dense - 1,
            "top1_agreement": sum(c.top1_agreement for c in cmps) / n,
            "density": sum(dens) / len(dens) if dens else None,
            "layer_density": cmps[0].layer_density}


def scaled_budgets(n: int) -> dict[str, dict]:
    """Budgets that keep roughly a quarter of the causal 64x64 blocks at length n."""
    return {
        "a_shape": {"n_init": 128, "n_local": n // 8},
        "vertical_slash": {"vertical_size": n // 16, "slash_size": n // 8},
        "block_sparse": {"top_k": max(2, n // 512)},
        "sample_attention": {"alpha": 0.95, "window_frac": 0.08},
    }


# --- the plan on captured q/k/v ------------------------------------------------------------------
def layer_plans(model, options: dict) -> dict[int, object]:
    """The LayerPlan the backend would run per full-attention layer with ``options``
    (``plan=`` forced, or ``db=``), skipping layers without a sparse plan."""
    from ..backend import model_plans
    from ..options import Options
    from ..pattern_db.identity import ModelIdentity

    opts = Options.from_dict({k: v for k, v in options.items() if k in ("db", "plan", "force_db")})
    identity = ModelIdentity.from_hf_config(model.config)
    full = [l for l in range(identity.num_layers) if l not in identity.sliding_layers]
    plan_for, _ = model_plans(opts, identity)
    plans = {l: plan_for(l, identity.num_heads) for l in full}
    return {l: p for l, p in plans.items() if p is not None and not p.is_dense}


@torch.no_grad()
def plan_recall(model, capture_dir: str | Path, options: dict, device: str = "cpu",
                max_query_blocks: int | None = None) -> dict[int, dict]:
    """Per full-attention layer with a sparse plan: mean over heads and captured samples of the
    attention-mass recall, relative output error and kernel cost (of dense causal tiles) of
    the index the plan builds on the captured q/k; plus per-head values."""
    from ..kernels.patterns import build_layer_index
    from ..pattern_db.search import attention_scale
    from ..capture import capture_samples, load_layer
    from ..pattern_db.search.scoring import score_layer, scored_query_blocks

    scale = attention_scale(model.config)
    plans = layer_plans(model, options)
    out: dict[int, dict] = {}
    samples = capture_samples(capture_dir)
    for layer, plan in plans.items():
        acc = None
        for sdir in samples:
            d = load_layer(sdir, layer)
            q, k, v = (d[x].to(device).float() for x in ("q", "k", "v"))
            n = q.shape[2]
            ix = build_layer_index(q, k, plan, scale=scale)
            ls = score_layer(q, k, v, [ix], scale=scale, query_blocks=scored_query_blocks(n, max_query_blocks))
            part = torch.stack([ls.recall[0], ls.error[0], ls.cost[0]])
            acc = part if acc is None else acc + part
        acc = acc / len(samples)
        out[layer] = {"recall": float(acc[0].mean()), "error": float(acc[1].mean()), "cost": float(acc[2].mean()),
                      "head_recall": [round(float(x), 5) for x in acc[0]],
                      "head_error": [round(float(x), 5) for x in acc[1]],
                      "head_cost": [round(float(x), 5) for x in acc[2]],
                      "patterns": [h.pattern for h in plan.heads]}
    return out
