"""Long public-domain text for demos, calibration and evaluation (no network), and the
prompt windows cut from it: the search calibrates on the first half of a text's tokens,
evaluation holds out the second half."""
from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import torch

SOURCES = {
    # Debian's bible-kjv package (apt-get install bible-kjv): about 1M tokens
    "bible-kjv": ["bible", "-f", "Gen1:1-Rev22:21"],
}


def load_text(source: str = "bible-kjv") -> str:
    """The whole text of a named source, or of a text file path."""
    if Path(source).is_file():
        return Path(source).read_text()
    if source not in SOURCES:
        raise ValueError(f"unknown text source {source!r}; known: {sorted(SOURCES)} or a path to a text file")
    cmd = SOURCES[source]
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(f"text source {source!r} needs the Debian package {source}: apt-get install -y {source}")
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def token_prompt(tokenizer, text: str, length: int, offset: int = 0):
    """(1, length) token ids from ``text``, starting ``offset`` tokens in."""
    ids = tokenizer(text[: (offset + length) * 8], return_tensors="pt").input_ids
    if ids.shape[1] < offset + length:
        raise ValueError(f"text too short for {offset + length} tokens ({ids.shape[1]} available)")
    return ids[:, offset:offset + length]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of what it encodes."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def text_tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def prompt_windows(tokens: Sequence[int], length: int, samples: int, seed: int, region: str = "calibration",
                   bos: int | None = None) -> list[tuple[int, torch.Tensor]]:
    """``samples`` non-overlapping windows (offset, (1, length) ids) from the first half of the
    tokens (``region="calibration"``) or the second half (``"heldout"``), one per equal slot
    of the region at a random place inside it (deterministic for ``seed``)."""
    body = length - (1 if bos is not None else 0)
    half = len(tokens) // 2
    lo, hi = (0, half) if region == "calibration" else (half, len(tokens))
    slot = (hi - lo) // samples
    if slot < body:
        raise ValueError(f"text too short: {samples} windows of {length} tokens need {samples * body} tokens "
                         f"in the {region} half, it has {hi - lo}")
    rng = random.Random(f"{seed}:{region}")
    out = []
    for i in range(samples):
        off = lo + i * slot + rng.randrange(slot - body + 1)
        ids = list(tokens[off:off + body])
        if bos is not None:
            ids = [bos] + ids
        out.append((off, torch.tensor([ids], dtype=torch.long)))
    return out
