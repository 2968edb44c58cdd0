"""Accuracy of a sparse plan against dense, through the same compiled backend.

Both passes run the decoder through ``torch.compile(..., backend="minference")``: dense with
``plan="dense"``, sparse with the options under test, in the same dtype, so the comparison is
like with like. Logits are computed in chunks from the final hidden states, so the full
(N, vocab) logits never materialise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger("mcompile")


@dataclass
class PassResult:
    nll: float                    # mean next-token negative log-likelihood
    top1: torch.Tensor            # (N-1,) argmax next-token predictions
    density: float | None = None  # computed fraction of dense causal blocks in the sparse calls

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
    density: float | None         # computed fraction of dense causal blocks (sparse calls only)

    def to_dict(self) -> dict:
        return asdict(self)


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def score_pass(model, ids: torch.Tensor, options: dict, chunk: int = 1024) -> PassResult:
    """Mean NLL and top-1 predictions of ``model`` on ``ids`` (1, N), attention compiled with ``options``."""
    from . import reporting

    torch._dynamo.reset()
    reporting.reset()
    decoder = torch.compile(model.get_decoder(), backend="minference", options={**options, "stats": True})
    hidden = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
    total, top1 = 0.0, []
    n = ids.shape[1]
    for start in range(0, n - 1, chunk):
        end = min(start + chunk, n - 1)
        logits = _logits(model, hidden[:, start:end])
        total += F.cross_entropy(logits[0], ids[0, start + 1:end + 1], reduction="sum").item()
        top1.append(logits[0].argmax(-1).cpu())
    torch._dynamo.reset()
    return PassResult(total / (n - 1), torch.cat(top1), reporting.report().density())


def compare(model, ids: torch.Tensor, sparse_options: dict, chunk: int = 1024,
            dense: PassResult | None = None) -> Comparison:
    """Perplexity and top-1 agreement of a plan (``sparse_options``) against dense (computed
    here through the same backend with ``plan="dense"``, unless given)."""
    if dense is None:
        dense = score_pass(model, ids, {"min_len": sparse_options.get("min_len", 1), "plan": "dense"}, chunk)
    sparse = score_pass(model, ids, sparse_options, chunk)
    return Comparison(
        length=ids.shape[1],
        dense_perplexity=dense.perplexity,
        sparse_perplexity=sparse.perplexity,
        perplexity_change=sparse.perplexity / dense.perplexity - 1,
        top1_agreement=(dense.top1 == sparse.top1).float().mean().item(),
        density=sparse.density,
    )
