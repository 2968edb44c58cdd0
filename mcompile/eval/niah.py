"""Needle in a haystack: can the model retrieve a fact planted at some depth of a long text?

A grid of context lengths x needle depths; each cell holds several prompts, each with its own
needle ("The special magic number for <city> is <7 digits>.") planted at that depth of
public-domain text and a completion-style question at the end. Scored by exact match of the
number in the greedy continuation. Dense (``plan="dense"``) and the plan under test run in the
same process through the same compiled backend (the prefill, where the plan applies; decode
steps attend densely to the cache either way and run eagerly, so one graph serves every length).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Perth", "Bergen", "Cusco", "Dakar", "Hanoi"]


@dataclass
class NiahGrid:
    lengths: list[int]
    depths: list[float]
    accuracy: dict[str, list[list[float]]] = field(default_factory=dict)  # run name -> [length][depth]
    cases: list[dict] = field(default_factory=list)    # every prompt: run, length, depth, needle, answer, hit
    seconds: dict[str, float] = field(default_factory=dict)  # run name -> wall time (compilation included)

    def mean(self, name: str) -> float:
        table = self.accuracy[name]
        return sum(map(sum, table)) / (len(table) * len(table[0]))

    def to_dict(self) -> dict:
        return {"lengths": self.lengths, "depths": self.depths, "accuracy": self.accuracy,
                "mean": {name: self.mean(name) for name in self.accuracy}, "seconds": self.seconds,
                "cases": self.cases}

    def table(self) -> str:
        """Exact match per context length (rows) and needle depth (columns), one block per run."""
        lines = []
        for name, rows in self.accuracy.items():
            lines.append(f"{name:>8} " + " ".join(f"{d:>6.0%}" for d in self.depths) + "   (needle depth)")
            for n, row in zip(self.lengths, rows):
                lines.append(f"{n:>8} " + " ".join(f"{x:>6.2f}" for x in row))
        return "\n".join(lines)


def make_prompt(tokenizer, haystack_ids: list[int], length: int, depth: float, city: str, number: str):
    needle = tokenizer.encode(f" The special magic number for {city} is {number}. ", add_special_tokens=False)
    question = tokenizer.encode(f"\nWhat is the special magic number for {city}? The special magic number for "
                                f"{city} is", add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = length - len(needle) - len(question) - len(bos)
    if room <= 0:
        raise ValueError(f"length {length} leaves no room for the haystack")
    body = haystack_ids[:room]
    at = int(round(depth * room))
    return torch.tensor([bos + body[:at] + needle + body[at:] + question])


def eos_ids(model, tokenizer) -> set[int]:
    out = set()
    for t in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(t, int):
            out.add(t)
        elif isinstance(t, (list, tuple)):
            out.update(x for x in t if isinstance(x, int))
    return out


@torch.no_grad()
def greedy(model, prefill, ids: torch.Tensor, max_new_tokens: int, eos: set[int]) -> list[int]:
    """Greedy continuation of ``ids`` (1, N): the prefill through ``prefill`` (``model``
    compiled with the backend under test), the decode steps through ``model`` itself (eager
    dense attention over the cache, which is what the backend runs for decode steps too)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = prefill(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
    tokens = []
    for step in range(max_new_tokens):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(tok))
        if tokens[-1] in eos:
            break
        # positions from the prompt's length, not the cache's: a compressed cache (option
        # kv_compress) holds fewer positions than the prompt had
        position = torch.tensor([ids.shape[1] + step], device=ids.device)
        out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True, cache_position=position,
                    position_ids=position[None])
    return tokens


@torch.no_grad()
def run_grid(model, tokenizer, text: str, lengths: list[int], depths: list[float], runs: dict[str, dict],
             needles: int = 3, seed: int = 0, device: str = "cpu", max_new_tokens: int = 12) -> NiahGrid:
    """Accuracy per (length, depth) for each named set of backend options in ``runs``.

    Each run compiles the model once with ``dynamic=True`` (one prefill graph for every
    length; the plan applies there) and decodes greedily (see :func:`greedy`)."""
    rng = random.Random(seed)
    cases = [(city, str(rng.randrange(1_000_000, 10_000_000))) for city in rng.sample(CITIES, needles)]
    haystack = tokenizer.encode(text[: max(lengths) * 8], add_special_tokens=False)
    eos = eos_ids(model, tokenizer)
    grid = NiahGrid(list(lengths), list(depths))
    for name, options in runs.items():
        start = time.perf_counter()
        torch._dynamo.reset()
        prefill = torch.compile(model, backend="minference", dynamic=True, options=options)
        table = []
        for length in lengths:
            row = []
            for depth in depths:
                hits = 0
                for city, number in cases:
                    ids = make_prompt(tokenizer, haystack, length, depth, city, number).to(device)
                    answer = tokenizer.decode(greedy(model, prefill, ids, max_new_tokens, eos),
                                              skip_special_tokens=True)
                    hit = number in answer
                    hits += hit
                    grid.cases.append({"run": name, "length": length, "depth": depth, "city": city,
                                       "number": number, "answer": answer, "hit": hit})
                row.append(hits / len(cases))
            table.append(row)
        grid.accuracy[name] = table
        grid.seconds[name] = round(time.perf_counter() - start, 1)
    torch._dynamo.reset()
    return grid


def plot_grid(grid: NiahGrid, path: str) -> None:
    """Heat maps (one per run) of accuracy over context length x needle depth."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(grid.accuracy)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = torch.tensor(grid.accuracy[name]).T  # depth x length
        im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(grid.lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in grid.lengths])
        ax.set_yticks(range(len(grid.depths)), [f"{d:.0%}" for d in grid.depths])
        ax.set_xlabel("context length")
        ax.set_ylabel("needle depth")
        for (i, j), x in np.ndenumerate(data.numpy()):
            ax.text(j, i, f"{x:.2g}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{name} (mean {grid.mean(name):.0%})")
    fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
