"""The offline, kernel-aware pattern search: ``mcompile search`` and :func:`search`.

It writes the database the backend resolves plans from (find sites -> resolve plan -> build
index -> one kernel). Pipeline (the command line is in README.md, "Search and evaluation"):

  1. calibration prompts from the first half of the text (:func:`calibration_prompts`);
  2. capture: post-RoPE q, k and v at every attention site (:func:`capture_prompts`);
  3. candidates of every registered pattern sized to kernel-cost levels (``candidates``),
     built and scored per head on the captured q/k (:func:`score_capture`, ``scoring``);
  4. one candidate per head under the model-wide cost budget (:func:`choose`, ``allocation``);
  5. the database is written through ``pattern_db`` with its provenance (:func:`build_database`).
"""
from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mcompile import capture
from mcompile.capture import capture_layers, capture_samples, load_layer
from mcompile.eval.text import adds_bos, prompt_windows, text_tokens
from mcompile.kernels.patterns import build_head_group
from mcompile.kernels.patterns import sample_attention as sa
from mcompile.kernels.patterns import vertical_slash as vs

from ..database import HeadEntry, LayerEntry, PatternDB, Provenance
from ..identity import ModelIdentity
from .allocation import allocate, best_uniform
from .candidates import DEFAULT_LEVELS, Candidate, build_overhead, make_candidates, minference_default_index
from .scoring import score_layer, scored_query_blocks

log = logging.getLogger("mcompile")

SCORINGS = ("output", "recall")
DEFAULT_SCORING = "output"
COSTS = ("time", "blocks")
DEFAULT_COST = "time"
DEFAULT_PRICE_LENGTH = 32768
BLOCK_SIZE = 64
KNOWN_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3-270m": "gemma-3-270m"}


@dataclass
class SearchConfig:
    length: int = 8192
    samples: int = 4
    budget: float = 0.2                       # mean kernel cost over searched heads, of dense
    scoring: str = DEFAULT_SCORING
    seed: int = 0
    device: str = "cpu"
    levels: tuple[float, ...] = DEFAULT_LEVELS
    patterns: tuple[str, ...] | None = None   # None: every registered pattern
    layers: tuple[int, ...] | None = None     # None: every full-attention layer
    max_query_blocks: int | None = None       # rows scored per sample (None: auto)
    text: str = "bible-kjv"
    lengths: tuple[int, ...] | None = None    # several calibration lengths: budgets become laws of N
    cost: str = DEFAULT_COST                  # "time": measured GPU time; "blocks": computed blocks
    # the length whose GPU times price a candidate (with the density measured at its calibration
    # length): below about 16K the online builders' fixed cost outweighs attention itself, which
    # says nothing about the long prompts a plan is for
    price_length: int = DEFAULT_PRICE_LENGTH
    # with several lengths: no head takes a member of a family whose loss mostly rises with N
    # (laws.rising_families)
    refuse_rising_families: bool = False

    def __post_init__(self) -> None:
        if self.lengths:
            self.lengths = tuple(sorted(set(self.lengths)))
            self.length = self.lengths[-1]

    @property
    def calibration_lengths(self) -> tuple[int, ...]:
        return self.lengths or (self.length,)

    def check(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget must be a fraction of dense work in (0, 1], got {self.budget!r}")
        bad = [n for n in self.calibration_lengths if isinstance(n, bool) or not isinstance(n, int) or n < 128]
        if bad or self.samples < 1:
            raise ValueError(f"need lengths >= 128 tokens and samples >= 1, got lengths "
                             f"{list(self.calibration_lengths)}, samples {self.samples}")

    def query_blocks(self, length: int | None = None) -> int | None:
        """Auto: every query block on a GPU or up to 4K tokens; beyond that on a CPU, 48 query
        blocks per sample (about 3K rows), spread evenly and always including the last."""
        if self.max_query_blocks is not None:
            return self.max_query_blocks or None
        if self.device.startswith("cuda") or (length or self.length) <= 4096:
            return None
        return 48


# --- calibration prompts ---------------------------------------------------------------------------
def calibration_prompts(tokenizer, text: str, length: int, samples: int, seed: int,
                        region: str = "calibration") -> list[tuple[int, torch.Tensor]]:
    """``samples`` windows of ``length`` tokens from the first half of the text's tokens
    (deterministic for ``seed``; the second half is left for held-out evaluation), with the
    tokenizer's BOS in front when it adds one."""
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    return prompt_windows(text_tokens(tokenizer, text), length, samples, seed, region, bos)


# --- capture ------------------------------------------------------------------------------------------
@torch.no_grad()
def capture_prompts(model, prompts: Sequence[torch.Tensor], directory: str | Path, device: str = "cpu") -> Path:
    """Run ``prompts`` through the decoder compiled in capture mode; q/k/v land in ``directory``.

    The model's decoder is compiled with ``backend="minference"`` in ``capture`` mode, which
    records post-RoPE q, k and v at every attention site (no model-specific hooks)."""
    directory = Path(directory)
    torch._dynamo.reset()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    compiled = torch.compile(decoder, backend="minference", dynamic=False,
                             options={"mode": "capture", "capture_dir": str(directory), "min_len": 1,
                                      "overwrite": True})
    try:
        for ids in prompts:
            ids = ids.to(device).contiguous()
            compiled(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        torch._dynamo.reset()
        # a later capture into the same directory in this process starts at sample 0 again
        capture.forget(directory)
    return directory


# --- scores ------------------------------------------------------------------------------------------
@dataclass
class SearchScores:
    """Per searched layer, per candidate, per query head: means over the calibration samples."""

    length: int
    candidates: list[Candidate]
    layers: list[int]                 # searched layer indices
    num_heads: int
    cost: np.ndarray                  # (L, C, H)
    recall: np.ndarray
    error: np.ndarray
    rows_per_sample: int = 0
    samples: int = 0
    seconds: float = 0.0
    density: np.ndarray | None = None     # (L, C, H) computed blocks of dense causal (cost is what is priced)

    def loss(self, scoring: str) -> np.ndarray:
        if scoring == "recall":
            return 1.0 - self.recall
        if scoring == "output":
            return self.error
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")

    def flat(self, what: np.ndarray) -> np.ndarray:
        """(L, C, H) -> (L * H, C): one row per searched head, layer-major."""
        return np.ascontiguousarray(what.transpose(0, 2, 1).reshape(-1, what.shape[1]))

    def to_obj(self) -> dict[str, Any]:
        r = lambda a: np.round(a, 6).tolist()  # noqa: E731
        return {"length": self.length, "num_heads": self.num_heads, "samples": self.samples,
                "rows_per_sample": self.rows_per_sample, "seconds": round(self.seconds, 1),
                "candidates": [c.to_obj() for c in self.candidates], "layers": self.layers,
                "cost": r(self.cost), "recall": r(self.recall), "error": r(self.error),
                "density": r(self.kernel_density)}

    @property
    def kernel_density(self) -> np.ndarray:
        return self.cost if self.density is None else self.density

    def priced(self, head_dim: int, cost_model=None, price_length: int | None = None) -> "SearchScores":
        """These scores with every candidate priced again from the density it computed
        (``candidate_costs``): a plan re-selected from a details file at another price length or
        cost is priced as a search with those options would price it. Scores that recorded no
        density (older details files) cannot be, and are refused."""
        if self.density is None:
            raise ValueError("these scores hold no densities (a details file from before they were recorded): "
                             "they can only be used as they were priced")
        cost = np.stack([candidate_costs(self.candidates, layer, self.length, head_dim, self.num_heads,
                                         cost_model, price_length) for layer in self.density])
        return replace(self, cost=cost.reshape(self.density.shape))

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "SearchScores":
        return cls(length=obj["length"], candidates=[Candidate.from_obj(c) for c in obj["candidates"]],
                   layers=list(obj["layers"]), num_heads=obj["num_heads"], cost=np.array(obj["cost"]),
                   recall=np.array(obj["recall"]), error=np.array(obj["error"]),
                   rows_per_sample=obj.get("rows_per_sample", 0), samples=obj.get("samples", 0),
                   seconds=obj.get("seconds", 0.0),
                   density=np.array(obj["density"]) if "density" in obj else None)


def build_indexes(q: torch.Tensor, k: torch.Tensor, candidates: Sequence[Candidate], scale: float | None):
    """Each candidate's index over all query heads, by the pattern's own builder.

    vertical_slash candidates share one scoring pass (its ``scores`` depend on q/k only, not on
    the budgets), then each one's ``select`` + ``index_from_selection``: the same steps as its
    ``build``, without recomputing the last-64-query softmax per candidate. sample_attention
    candidates likewise share stage 1 (:func:`_sample_attention_scores`)."""
    out = []
    vs_scores = None
    sa_scores = _sample_attention_scores(q, k, [c.params for c in candidates if c.pattern == "sample_attention"],
                                         scale)
    n = q.shape[2]
    for c in candidates:
        if c.pattern == "vertical_slash":
            if vs_scores is None:
                vs_scores = vs.scores(q, k, None, scale)
            kv, ks = vs.budgets(n, c.params)
            cols, dists = vs.select(*vs_scores, kv, ks)
            out.append(vs.index_from_selection(cols, dists, n))
        elif c.pattern == "sample_attention":
            p = sa.validate(dict(c.params))
            count, cols = sa.filter_columns(*sa_scores[_sa_key(p, "alpha")], p["alpha"], sa.column_cap(n, p))
            out.append(sa.index_from_selection(count, cols, n, p, BLOCK_SIZE, BLOCK_SIZE))
        else:
            out.append(build_head_group(q, k, c.pattern, c.params, scale=scale))
    return out


def _sa_key(p: dict, *ignored: str) -> tuple:
    return tuple((name, repr(v)) for name, v in sorted(p.items()) if name not in ignored)


def _sample_attention_scores(q, k, params: Sequence[dict], scale) -> dict:
    """sample_attention's stage 1 (``column_scores``) for each of ``params``, keyed by its
    parameters but ``alpha``, on which it does not depend. Parameters that differ only in the
    window share one sampled softmax (``column_scores_by_window``)."""
    windows: dict = {}
    for p in (sa.validate(dict(x)) for x in params):
        windows.setdefault(_sa_key(p, "alpha", "window_frac"), {})[p["window_frac"]] = p
    out = {}
    for same in windows.values():
        first = next(iter(same.values()))
        for p, scores in zip(same.values(), sa.column_scores_by_window(q, k, first, list(same), scale=scale)):
            out[_sa_key(p, "alpha")] = scores
    return out


def candidate_costs(candidates: Sequence[Candidate], density: np.ndarray, n: int, head_dim: int, heads: int,
                    cost_model=None, price_length: int | None = None) -> np.ndarray:
    """(C, H) cost of each candidate on each head from the density it computed at length n: the
    head's GPU time of dense attention's from ``cost_model`` (``pattern_db.cost.relative_time``)
    at ``price_length`` (default: n), or without a model the density plus the index builder's
    own score work (``build_overhead``)."""
    from ..cost import relative_time
    if cost_model is None:
        return density + np.array([build_overhead(c.pattern, c.params, n) for c in candidates])[:, None]
    at = price_length or n
    return np.array([[relative_time(cost_model, c.pattern, float(x), at, head_dim, heads) for x in row]
                     for c, row in zip(candidates, density)])


def score_sample(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: Sequence[Candidate], *,
                 scale: float | None = None, max_query_blocks: int | None = None,
                 cost_model=None, price_length: int | None = None) -> tuple[np.ndarray, int]:
    """One layer of one sample: (4, C, H) array of cost (``candidate_costs``), recall, output
    error and density (the kernel's computed tiles of dense causal); and the rows scored."""
    n = q.shape[2]
    idx = build_indexes(q, k, candidates, scale)
    ls = score_layer(q, k, v, idx, scale=scale, query_blocks=scored_query_blocks(n, max_query_blocks))
    density = ls.cost.numpy()
    cost = candidate_costs(candidates, density, n, q.shape[-1], q.shape[1], cost_model, price_length)
    return np.stack([cost, ls.recall.numpy(), ls.error.numpy(), density]), ls.rows


def score_capture(directory: str | Path, layers: Sequence[int], candidates: Sequence[Candidate], *,
                  scale: float | None = None, device: str = "cpu", max_query_blocks: int | None = None,
                  progress: bool = True, cost_model=None, price_length: int | None = None) -> SearchScores:
    """Score every candidate on every (layer, head) of a capture (``score_sample``), averaged
    over its samples; one tqdm step per layer.

    Each candidate's index is built by the pattern's own builder on the captured q/k and
    scored per head with the exact softmax in chunks (``scoring``): measured kernel cost,
    attention-mass recall and relative output error, averaged over the calibration samples."""
    from tqdm.auto import tqdm

    samples = capture_samples(directory)
    if not samples:
        raise ValueError(f"{directory}: the capture holds no samples")
    have = set(capture_layers(directory))
    missing = [l for l in layers if l not in have]
    if missing:
        raise ValueError(f"{directory}: layers {missing} were not captured in every sample")
    start = time.perf_counter()
    per_layer = []
    length, heads, rows = None, None, 0
    bar = tqdm(list(layers), desc="search", unit="layer", disable=not progress, dynamic_ncols=True)
    for layer in bar:
        acc = None
        for sdir in samples:
            d = load_layer(sdir, layer)
            q, k, v = (d[x].to(device).float() for x in ("q", "k", "v"))
            del d
            n = q.shape[2]
            if length is None:
                length, heads = n, q.shape[1]
            elif n != length:
                raise ValueError(f"{sdir}: layer {layer} has {n} tokens, other samples {length}")
            part, rows = score_sample(q, k, v, candidates, scale=scale, max_query_blocks=max_query_blocks,
                                      cost_model=cost_model, price_length=price_length)
            acc = part if acc is None else acc + part
            del q, k, v
        per_layer.append(acc / len(samples))
        if progress:
            bar.set_postfix(layer=layer, refresh=False)
    arr = np.stack(per_layer) if per_layer else np.zeros((0, 4, len(candidates), 0))
    return SearchScores(length=length or 0, candidates=list(candidates), layers=list(layers),
                        num_heads=heads or 0, cost=arr[:, 0], recall=arr[:, 1], error=arr[:, 2],
                        rows_per_sample=rows, samples=len(samples), seconds=time.perf_counter() - start,
                        density=arr[:, 3])


# --- plans from scores ---------------------------------------------------------------------------------
def pattern_mask(scores: SearchScores, patterns: Sequence[str] | None) -> np.ndarray:
    names = set(patterns) if patterns is not None else None
    return np.array([names is None or c.pattern in names for c in scores.candidates], dtype=bool)


def choose(scores: SearchScores, budget: float, scoring: str = DEFAULT_SCORING,
           patterns: Sequence[str] | None = None, refused: np.ndarray | None = None) -> np.ndarray:
    """(L, H) candidate index per searched head under the mean-cost budget (``allocation``),
    scored by ``scoring`` ("output": relative output error, or "recall": 1 - recall);
    ``refused`` (L * H, C) bool: candidates a head may not take."""
    allowed = pattern_mask(scores, patterns)
    if refused is not None:
        allowed = allowed[None, :] & ~refused
    ch = allocate(scores.flat(scores.cost), scores.flat(scores.loss(scoring)), budget, allowed)
    return ch.reshape(len(scores.layers), scores.num_heads)


def plan_metrics(scores: SearchScores, choice: np.ndarray) -> dict[str, float]:
    """Mean cost, recall and output error over the searched heads of a choice (L, H)."""
    L, H = choice.shape
    li = np.arange(L)[:, None]
    hi = np.arange(H)[None, :]
    return {"cost": float(scores.cost[li, choice, hi].mean()),
            "recall": float(scores.recall[li, choice, hi].mean()),
            "error": float(scores.error[li, choice, hi].mean())}


def uniform_choice(scores: SearchScores, c: int) -> np.ndarray:
    return np.full((len(scores.layers), scores.num_heads), c, dtype=int)


def comparisons(scores: SearchScores, budget: float, scoring: str, choice: np.ndarray) -> dict[str, Any]:
    """The searched plan against MInference's default plan and single-pattern plans, all on the
    calibration scores. ``pattern only``: the same per-head allocation restricted to one
    pattern; ``uniform``: one candidate on every head, the best whose mean cost fits."""
    out: dict[str, Any] = {"searched": plan_metrics(scores, choice)}
    spent = out["searched"]["cost"]
    d = minference_default_index(scores.candidates)
    if d is not None:
        out["minference_default"] = plan_metrics(scores, uniform_choice(scores, d))
        dc = out["minference_default"]["cost"]
        if dc < 0.999:
            out["searched_at_default_cost"] = plan_metrics(scores, choose(scores, dc, scoring))
    singles = {}
    for name in dict.fromkeys(c.pattern for c in scores.candidates):
        if name == "dense":
            continue
        try:
            singles[name] = plan_metrics(scores, choose(scores, spent, scoring, [name]))
        except ValueError:
            continue
    out["pattern_only"] = singles
    flat_cost, flat_loss = scores.flat(scores.cost), scores.flat(scores.loss(scoring))
    u = best_uniform(flat_cost, flat_loss, spent, ~np.array([c.pattern == "dense" for c in scores.candidates]))
    if u is not None:
        out["best_uniform"] = {"candidate": scores.candidates[u].label, **plan_metrics(scores, uniform_choice(scores, u))}
    return out


# --- the database ------------------------------------------------------------------------------------
def model_identity(model, name: str | None = None) -> ModelIdentity:
    return ModelIdentity.from_hf_config(model.config, name=name)


def attention_scale(config) -> float | None:
    """The softmax scale the model's attention uses, when it is not 1/sqrt(head_dim)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    s = getattr(text, "query_pre_attn_scalar", None)
    return float(s) ** -0.5 if s else None


def build_database(identity: ModelIdentity, scores: SearchScores, choice: np.ndarray,
                   provenance: Provenance, sliding_window: int | None = None,
                   params: Sequence[Sequence[dict]] | None = None) -> PatternDB:
    """One ``LayerEntry`` per model layer: searched layers from the choice (``params``: each
    searched head's parameters when they differ from its candidate's, e.g. fitted laws),
    sliding layers as ``sliding``, the rest ``not_searched``. A head records the recall,
    density (``cost``) and loss its candidate measured at ``scores.length``.

    The database goes through ``pattern_db`` (``PatternDB.build`` here, ``save_db`` in
    ``cli``) with the exact command, calibration data and budget in its provenance.
    Sliding-window layers (Gemma 3) are recorded as ``{"kind": "sliding"}`` and not searched."""
    by_layer = {l: i for i, l in enumerate(scores.layers)}
    layers = []
    for layer in range(identity.num_layers):
        if layer in identity.sliding_layers:
            layers.append(LayerEntry.sliding(sliding_window or identity.sliding_window))
        elif layer in by_layer:
            i = by_layer[layer]
            heads = []
            for h in range(scores.num_heads):
                c = int(choice[i, h])
                cand = scores.candidates[c]
                heads.append(HeadEntry(cand.pattern, dict(cand.params if params is None else params[i][h]),
                                       recall=round(float(min(1.0, scores.recall[i, c, h])), 4),
                                       cost=round(float(scores.kernel_density[i, c, h]), 4),
                                       score=round(float(scores.error[i, c, h]), 4)))
            layers.append(LayerEntry.searched(heads))
        else:
            layers.append(LayerEntry.not_searched("not in the searched layers"))
    return PatternDB.build(identity, layers, provenance)


# --- the whole search ---------------------------------------------------------------------------------
@dataclass
class SearchResult:
    db: PatternDB
    scores: SearchScores
    choice: np.ndarray
    comparisons: dict[str, Any]
    config: SearchConfig
    offsets: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    shorter: list[SearchScores] = field(default_factory=list)   # scores at the shorter calibration lengths


def search(model, tokenizer, text: str, config: SearchConfig, *, name: str | None = None,
           command: str | None = None, capture_dir: str | Path | None = None, reuse_capture: bool = False,
           progress: bool = True) -> SearchResult:
    """Search a plan for ``model`` (a transformers causal LM with SDPA attention) on ``text``.

    ``capture_dir``: keep the capture there (default: a temporary directory, deleted after);
    ``reuse_capture``: score an existing capture in ``capture_dir`` instead of running the
    model (its prompts must be the ones the config describes: the provenance says so)."""
    config.check()
    torch.manual_seed(config.seed)
    identity = model_identity(model, name)
    timings: dict[str, float] = {}
    tmp = None
    if capture_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mcompile-search-")
        capture_dir = Path(tmp.name) / "capture"
    capture_dir = Path(capture_dir)
    full = [l for l in range(identity.num_layers) if l not in identity.sliding_layers]
    layers = full if config.layers is None else [l for l in config.layers if l in full]
    cost_model = None
    if config.cost == "time":
        from mcompile.kernels.cost_model import shipped
        cost_model = shipped()
    per_length, offsets = [], []
    try:
        for n in config.calibration_lengths:
            t0 = time.perf_counter()
            prompts = calibration_prompts(tokenizer, text, n, config.samples, config.seed)
            offsets = [o for o, _ in prompts]
            where = capture_dir if len(config.calibration_lengths) == 1 else capture_dir / f"n{n}"
            if not (reuse_capture and (where / "meta.json").exists()):
                capture_prompts(model, [ids for _, ids in prompts], where, config.device)
            timings[f"capture_{n}_s"] = time.perf_counter() - t0
            candidates = make_candidates(n, config.levels, config.patterns)
            log.info("search: %d layers x %d heads, %d candidates, %d samples of %d tokens", len(layers),
                     identity.num_heads, len(candidates), config.samples, n)
            scores = score_capture(where, layers, candidates, scale=attention_scale(model.config),
                                   device=config.device, max_query_blocks=config.query_blocks(n), progress=progress,
                                   cost_model=cost_model, price_length=config.price_length)
            timings[f"score_{n}_s"] = scores.seconds
            per_length.append(scores)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return select(identity, per_length[-1], config, offsets=offsets, timings=timings, command=command,
                  shorter=per_length[:-1])


def select(identity: ModelIdentity, scores: SearchScores, config: SearchConfig, *, offsets: Sequence[int],
           timings: dict[str, float] | None = None, command: str | None = None,
           shorter: Sequence[SearchScores] = ()) -> SearchResult:
    """The plan under ``config.budget`` from scored candidates, as a database. ``scores`` are the
    longest calibration length's, where the plan is chosen; with ``shorter`` lengths' scores each
    chosen budget becomes a law of the length (``laws``). Cheap: a search's details file
    (``--details``) holds the scores, so another budget or scoring needs no model run
    (``mcompile search --from-details``)."""
    from .laws import fit_laws, rising_families
    config.check()
    refused = rising_families(scores, shorter, config.scoring) if shorter and config.refuse_rising_families else None
    choice = choose(scores, config.budget, config.scoring, config.patterns, refused)
    comp = comparisons(scores, config.budget, config.scoring, choice)
    params = fit_laws(scores, choice, shorter, config.scoring) if shorter else None
    calibration = {"data": config.text, "length": scores.length, "samples": config.samples}
    if shorter:
        calibration["lengths"] = sorted([s.length for s in shorter] + [scores.length])
    provenance = Provenance(
        command=command or "mcompile.pattern_db.search.search(...)",
        calibration=calibration,
        budget={"target_cost": config.budget, "achieved_cost": round(comp["searched"]["cost"], 4),
                "scoring": config.scoring, "seed": config.seed, "candidates": len(scores.candidates),
                "levels": ",".join(f"{x:g}" for x in config.levels), "priced_by": config.cost,
                "priced_at": config.price_length if config.cost == "time" else None,
                "rows_scored_per_sample": scores.rows_per_sample},
        notes=(f"mcompile search: calibration windows at token offsets {','.join(map(str, offsets))} of the "
               "text's tokens (first half; seed {seed}); per head one candidate under a model-wide mean-cost "
               "budget at {length} tokens (Lagrangian allocation by marginal gain), scored by {scoring}; the "
               "budget's cost is {priced}; recall = mean attention mass kept per row, cost = the kernel's "
               "computed 64x64 tiles (blocks + ceil(columns/64)) of dense causal attention, score = relative "
               "output error of the head; means over the calibration samples{laws}"
               ).format(seed=config.seed, length=scores.length,
                        scoring="relative output error" if config.scoring == "output" else "attention-mass recall",
                        priced=f"GPU time of dense attention's at {config.price_length} tokens, from the measured "
                               "cost model (kernel and index building)" if config.cost == "time" else
                               "computed tiles plus the index builder's own score work",
                        laws=("; budgets are laws a*N^b through the chosen budget and the budgets of the same "
                              "family reaching the same loss at the shorter lengths" if shorter else "")
                        + ("; no head took a member of a family whose loss mostly rises with the length "
                           "(refuse_rising_families)" if refused is not None else "")))
    db = build_database(identity, scores, choice, provenance, params=params)
    return SearchResult(db=db, scores=scores, choice=choice, comparisons=comp, config=config,
                        offsets=list(offsets), timings=dict(timings or {}), shorter=list(shorter))


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line as a user would type it (``mcompile search ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("mcompile", "mcompile.exe"):
        argv[0] = "mcompile"
    elif argv and Path(argv[0]).parts[-2:] == ("search", "cli.py"):
        argv[0:1] = ["python", "-m", "mcompile.pattern_db.search.cli"]
    return " ".join(shlex.quote(a) for a in argv)
