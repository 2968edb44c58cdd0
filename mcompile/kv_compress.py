"""A compressed KV cache after a long prefill: SnapKV (Li et al. 2024, "SnapKV: LLM Knows What
You are Looking for Before Generation").

``options={"kv_compress": {"method": "snapkv", "budget": 4096, "window": 64, "kernel": 7}}``:
after a prefill of N > budget + window tokens, each full-attention layer's cache keeps

  * the last ``window`` positions (the observation window), and
  * the ``budget`` earlier positions that the window's queries attend to most: each key's
    softmax probability summed over the window's queries and over the query heads of its KV
    head's group, smoothed by a max-pool of width ``kernel``, the ``budget`` largest (equal
    scores: lower position first), in ascending order.

Decode steps then read ``budget + window`` cached keys instead of N. Keys keep the rotary
positions they were computed at, and ``generate`` counts positions from the prompt's length, so
later tokens see the right positions. Shorter prompts keep their cache as it is; sliding-window
layers keep their window (transformers' cache already does). ``passes/kv_compress.py`` puts
:func:`kv_compress` between each full-attention site and the cache it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .options import OptionError

METHODS = ("snapkv",)
# keys scored at a time: the window's logits for one chunk are (B, Hkv, group x window, CHUNK)
# floats (134 MB for LLaMA-3-8B's 8 KV heads of 4 queries, window 64), whatever the length
SCORE_CHUNK = 16384


@dataclass(frozen=True)
class KVCompress:
    method: str = "snapkv"
    budget: int = 4096       # earlier positions kept, chosen by score
    window: int = 64         # the last prompt positions: kept, and their queries score the rest
    kernel: int = 7          # width of the max-pool that smooths the scores (odd)

    @property
    def keep(self) -> int:
        """Positions a compressed layer keeps."""
        return self.budget + self.window

    def describe(self) -> str:
        return f"{self.method}(budget {self.budget}, window {self.window}, kernel {self.kernel})"

    @classmethod
    def from_option(cls, value: Any) -> "KVCompress | None":
        """The ``kv_compress`` option: None (off) or a dict of the fields; OptionError naming a
        bad key or value."""
        if value is None:
            return None
        accepted = [f.name for f in fields(cls)]
        if not isinstance(value, dict):
            raise OptionError(f"bad value for minference option 'kv_compress': {value!r}; accepted: None or a dict "
                              f"with keys {accepted}")
        unknown = sorted(set(value) - set(accepted))
        if unknown:
            raise OptionError(f"unknown key(s) {unknown} in minference option 'kv_compress'; accepted: {accepted}")
        config = cls(**value)
        if config.method not in METHODS:
            raise OptionError(f"bad kv_compress method {config.method!r}; accepted: {list(METHODS)}")
        for name, low in (("budget", 1), ("window", 1), ("kernel", 1)):
            v = getattr(config, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise OptionError(f"bad kv_compress {name} {v!r}; accepted: an integer >= {low}")
        if config.kernel % 2 == 0:
            raise OptionError(f"bad kv_compress kernel {config.kernel}; accepted: an odd integer (the max-pool "
                              "keeps one score per position)")
        return config


def snapkv_scores(q: torch.Tensor, k: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """(B, Hkv, N - window) float32: each key before the last ``window`` scored by the softmax
    probability the last ``window`` queries (all of q's rows when it has fewer) give it, summed
    over those queries and over the query heads of its KV head's group. q (B, Hq, Nq, D) holds
    the last Nq of the N positions of k (B, Hkv, N, D); each query sees the keys at or before its
    own position. Two passes over the keys, ``SCORE_CHUNK`` at a time: the rows' log-sum-exp,
    then the probabilities."""
    B, Hq, Nq, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    group = Hq // Hkv
    rows = min(window, Nq)
    # the window's queries of each KV head's group as one block of group x rows
    obs = (q[:, :, Nq - rows:].float() * scale).reshape(B, Hkv, group * rows, D)
    row_pos = (N - rows + torch.arange(rows, device=q.device)).repeat(group)

    def logits(c0: int, c1: int) -> torch.Tensor:
        s = obs @ k[:, :, c0:c1].float().transpose(-1, -2)
        later = torch.arange(c0, c1, device=q.device)[None, :] > row_pos[:, None]
        return s.masked_fill_(later, float("-inf"))

    run_max = torch.full((B, Hkv, group * rows, 1), float("-inf"), device=q.device)
    run_sum = torch.zeros_like(run_max)
    for c0 in range(0, N, SCORE_CHUNK):
        s = logits(c0, min(c0 + SCORE_CHUNK, N))
        new_max = torch.maximum(run_max, s.amax(-1, keepdim=True))
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(s - new_max).sum(-1, keepdim=True)
        run_max = new_max
    lse = run_max + torch.log(run_sum)
    scored = N - window
    scores = torch.empty(B, Hkv, scored, device=q.device)
    for c0 in range(0, scored, SCORE_CHUNK):
        c1 = min(c0 + SCORE_CHUNK, scored)
        scores[..., c0:c1] = torch.exp(logits(c0, c1) - lse).sum(-2)
    return scores


def snapkv_positions(q: torch.Tensor, k: torch.Tensor, budget: int, window: int, kernel: int,
                     scale: float) -> torch.Tensor:
    """int64 (B, Hkv, budget + window), ascending: the positions SnapKV keeps of k's N > budget
    + window (:func:`snapkv_scores`, max-pooled over ``kernel`` positions, the ``budget`` best,
    equal scores lower position first; then the last ``window``)."""
    B, Hkv, N, _ = k.shape
    scores = snapkv_scores(q, k, window, scale)
    pooled = F.max_pool1d(scores.view(B * Hkv, 1, -1), kernel, stride=1, padding=kernel // 2).view(B, Hkv, -1)
    best = torch.sort(pooled, dim=-1, descending=True, stable=True).indices[..., :budget]
    last = torch.arange(N - window, N, device=k.device).expand(B, Hkv, window)
    return torch.cat([best.sort(-1).values, last], -1)


@torch.library.custom_op("mcompile::kv_compress", mutates_args=())
def kv_compress(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: Optional[torch.Tensor],
                budget: int, window: int, kernel: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values a layer's cache keeps after this call (:func:`snapkv_positions`):
    ``min(N, budget + window)`` positions of k / v (B, Hkv, N, D). A batch with padding is
    refused: transformers' attention mask for later steps indexes the cache by prompt position."""
    from .runtime import no_padding
    N = k.shape[2]
    if padding is not None and not no_padding(padding, 0, padding.shape[1]):
        raise ValueError("minference option 'kv_compress' needs a batch without padding (every attention_mask "
                         "entry 1): the attention mask of the steps after the prompt indexes the cache by position, "
                         "which a compressed cache no longer follows; pass prompts of one length or batch 1")
    if N <= budget + window:
        return k.clone(memory_format=torch.contiguous_format), v.clone(memory_format=torch.contiguous_format)
    keep = snapkv_positions(q, k, budget, window, kernel, scale)[..., None]
    return (k.gather(2, keep.expand(-1, -1, -1, k.shape[3])).contiguous(),
            v.gather(2, keep.expand(-1, -1, -1, v.shape[3])).contiguous())


@kv_compress.register_fake
def _(q, k, v, padding, budget, window, kernel, scale):
    kept = torch.sym_min(k.shape[2], budget + window)
    return (k.new_empty(k.shape[0], k.shape[1], kept, k.shape[3]),
            v.new_empty(v.shape[0], v.shape[1], kept, v.shape[3]))
