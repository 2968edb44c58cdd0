"""Needle in a haystack: can the model retrieve a fact planted at some depth of a long text?

A grid of context lengths x needle depths; each cell holds several prompts, each with its own
needle ("The special magic number for <city> is <7 digits>.") planted at that depth of
public-domain text and a completion-style question at the end. Scored by exact match of the
number in the greedy continuation. Dense (``plan="dense"``) and the plan under test run in the
same process through the same compiled backend.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Perth", "Bergen", "Cusco", "Dakar", "Hanoi"]


@dataclass
class NiahGrid:
    lengths: list[int]
    depths: list[float]
    accuracy: dict[str, list[list[float]]] = field(default_factory=dict)  # run name -> [length][depth]

    def to_dict(self) -> dict:
        return {"lengths": self.lengths, "depths": self.depths, "accuracy": self.accuracy}


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


@torch.no_grad()
def run_grid(model, tokenizer, text: str, lengths: list[int], depths: list[float], runs: dict[str, dict],
             needles: int = 3, seed: int = 0, device: str = "cpu") -> NiahGrid:
    """Accuracy per (length, depth) for each named set of backend options in ``runs``."""
    rng = random.Random(seed)
    cases = [(city, str(rng.randrange(1_000_000, 10_000_000))) for city in rng.sample(CITIES, needles)]
    haystack = tokenizer.encode(text[: max(lengths) * 8], add_special_tokens=False)
    grid = NiahGrid(list(lengths), list(depths))
    for name, options in runs.items():
        torch._dynamo.reset()
        model.compile(backend="minference", options=options)
        table = []
        for length in lengths:
            row = []
            for depth in depths:
                hits = 0
                for city, number in cases:
                    ids = make_prompt(tokenizer, haystack, length, depth, city, number).to(device)
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                         do_sample=False, pad_token_id=tokenizer.eos_token_id)
                    hits += number in tokenizer.decode(out[0, ids.shape[1]:])
                row.append(hits / len(cases))
            table.append(row)
        grid.accuracy[name] = table
    torch._dynamo.reset()
    return grid


def plot_grid(grid: NiahGrid, path: str) -> None:
    """Heat maps (one per run) of accuracy over context length x needle depth."""
    import matplotlib

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
        ax.set_title(name)
    fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
