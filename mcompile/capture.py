"""Capture mode: record post-RoPE q, k and v (k and v before any repeat_kv) at every attention
site, for the offline pattern search.

Layout: ``<dir>/sample<NNNN>/layer<LLL>.pt`` holding ``{"q", "k", "v"}`` on the CPU in the
model's dtype, plus ``<dir>/meta.json`` (shapes per layer). A sample is one forward pass: the
counter advances when a layer already recorded in the current sample comes round again. A
capture directory that already holds files is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger("mcompile")

# capture directories this process owns: a second compile (or Dynamo's restart) may reuse them
_OWNED: dict[str, "CaptureWriter"] = {}


def forget(directory: str | Path) -> None:
    """Give up this process's hold on a capture directory: the next capture into it starts
    again at sample 0 (and needs ``overwrite`` when the directory holds files)."""
    _OWNED.pop(str(Path(directory).resolve()), None)


class CaptureWriter:
    def __init__(self, directory: Path):
        self.dir = directory
        self.sample = 0
        self.seen: set[int] = set()
        self.meta: dict[str, dict] = {}

    @classmethod
    def open(cls, directory: str | Path, overwrite: bool) -> "CaptureWriter":
        path = Path(directory).resolve()
        if str(path) in _OWNED:
            return _OWNED[str(path)]
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"capture directory {path} already holds a capture; choose another "
                                      "capture_dir or pass options={'overwrite': True} to replace it")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        _OWNED[str(path)] = writer = cls(path)
        return writer

    def record(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if layer in self.seen:  # a new forward pass started
            self.sample += 1
            self.seen.clear()
        self.seen.add(layer)
        out = self.dir / f"sample{self.sample:04d}"
        out.mkdir(exist_ok=True)
        torch.save({"q": q.detach().cpu(), "k": k.detach().cpu(), "v": v.detach().cpu()}, out / f"layer{layer:03d}.pt")
        self.meta[str(layer)] = {"num_heads": q.shape[1], "num_kv_heads": k.shape[1], "head_dim": q.shape[3]}
        (self.dir / "meta.json").write_text(json.dumps({"layers": self.meta, "samples": self.sample + 1}, indent=1))
        log.debug("captured layer %d sample %d: q %s k %s", layer, self.sample, tuple(q.shape), tuple(k.shape))


def capture_samples(directory: str | Path) -> list[Path]:
    """The sample directories of a capture, in order."""
    path = Path(directory)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path} is not a capture directory (no meta.json)")
    return sorted(p for p in path.glob("sample*") if p.is_dir())


def sample_layers(sample_dir: Path) -> list[int]:
    """The layers one sample recorded."""
    return sorted(int(f.stem[5:]) for f in sample_dir.glob("layer*.pt"))


def capture_layers(directory: str | Path) -> list[int]:
    """Layers recorded in every sample of a capture."""
    sets = [set(sample_layers(s)) for s in capture_samples(directory)]
    return sorted(set.intersection(*sets)) if sets else []


def load_layer(sample_dir: Path, layer: int) -> dict[str, torch.Tensor]:
    """One sample's {"q", "k", "v"} of one layer (read when needed: a capture can be large)."""
    return torch.load(sample_dir / f"layer{layer:03d}.pt", weights_only=True)


def load_capture(directory: str | Path) -> list[dict[int, dict[str, torch.Tensor]]]:
    """All samples of a capture: a list (one per forward) of {layer: {"q", "k", "v"}}."""
    return [{layer: load_layer(s, layer) for layer in sample_layers(s)} for s in capture_samples(directory)]
